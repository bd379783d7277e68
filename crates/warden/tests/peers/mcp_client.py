"""An unchanged official MCP Python SDK client, pointed at Warden's gateway.

Usage: mcp_client.py URL CREDENTIALS_DIR [sse]
With `sse`, the client uses the older HTTP+SSE transport (URL is the event stream). Prints one JSON document with what it saw. Only the URL and the credentials (mTLS with the
agent's SVID, its grant as a bearer token) differ from talking to the server directly.
"""

import asyncio
import json
import ssl
import sys

import httpx2
from mcp import ClientSession, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, creds: str, transport: str) -> None:
    tls = ssl.create_default_context(cafile=f"{creds}/bundle.pem")
    tls.load_cert_chain(f"{creds}/svid.pem", f"{creds}/svid-key.pem")
    with open(f"{creds}/grant") as f:
        grant = f.read().strip()
    credential = {"Authorization": f"Bearer {grant}"}
    seen = {}

    def http_client(headers=None, timeout=None, auth=None):
        return httpx2.AsyncClient(
            verify=tls, headers={**(headers or {}), **credential}, timeout=timeout or 30, auth=auth
        )

    async with http_client() as http:
        if transport == "sse":
            connection = sse_client(url, httpx_client_factory=http_client)
        else:
            connection = streamable_http_client(url, http_client=http)
        async with connection as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                seen["tools"] = sorted(tool.name for tool in listed.tools)
                allowed = await session.call_tool("delete_records", {"table": "scratch"})
                seen["allowed"] = allowed.content[0].text
                try:
                    await session.call_tool("delete_records", {"table": "customers"})
                    seen["denied"] = None
                except MCPError as e:
                    seen["denied"] = {"code": e.code, "message": e.error.message}
                echo = await session.call_tool("echo", {"text": "through warden"})
                seen["echo"] = echo.content[0].text
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "streamable"))
