"""Tool calls through Warden's gateway with the official MCP Python SDK client, one session.

Usage: mcp_calls.py URL CREDENTIALS_DIR CALLS_JSON [sse]
CREDENTIALS_DIR `-`: send no credential (an agent confined by `warden run`).
With `sse`, the older HTTP+SSE transport (URL is the event stream).
CALLS_JSON is a list of {"tool", "args", "meta"?}, or {"list": true} for the tools offered. Prints `{"progress": n}` lines as a call reports
progress (so a test can act mid-call), then one JSON list with each call's outcome:
{"ok": text}, {"error": {"code", "message", "data"}}, or {"cut": text} when the connection broke.
"""

import asyncio
import json
import ssl
import sys

import httpx2
from mcp import ClientSession, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, creds: str, calls: list, transport: str) -> None:
    if creds == "-":
        # No credential at all: an agent under `warden run`, known to the gateway by its cgroup.
        tls, credential = True, {}
    else:
        tls = ssl.create_default_context(cafile=f"{creds}/bundle.pem")
        tls.load_cert_chain(f"{creds}/svid.pem", f"{creds}/svid-key.pem")
        with open(f"{creds}/grant") as f:
            credential = {"Authorization": f"Bearer {f.read().strip()}"}
    outcomes = []

    async def progress(done, total, message):
        print(json.dumps({"progress": done}), flush=True)

    def http_client(headers=None, timeout=None, auth=None):
        return httpx2.AsyncClient(
            verify=tls, headers={**(headers or {}), **credential}, timeout=timeout or 60, auth=auth
        )

    async with http_client() as http:
        if transport == "sse":
            connection = sse_client(url, httpx_client_factory=http_client)
        else:
            connection = streamable_http_client(url, http_client=http)
        try:
            async with connection as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    for call in calls:
                        if call.get("list"):
                            listed = await session.list_tools()
                            outcomes.append({"tools": sorted(tool.name for tool in listed.tools)})
                            continue
                        try:
                            result = await asyncio.wait_for(
                                session.call_tool(
                                    call["tool"],
                                    call.get("args", {}),
                                    progress_callback=progress,
                                    meta=call.get("meta"),
                                ),
                                timeout=30,
                            )
                            outcomes.append({"ok": result.content[0].text})
                        except MCPError as e:
                            outcomes.append(
                                {"error": {"code": e.code, "message": e.error.message, "data": e.error.data}}
                            )
        except BaseException as e:  # the gateway cut the stream or the connection
            outcomes.append({"cut": repr(e)[:500]})
    print(json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    transport = sys.argv[4] if len(sys.argv) > 4 else "streamable"
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), transport))
