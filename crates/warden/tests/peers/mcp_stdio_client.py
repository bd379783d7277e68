"""The official MCP Python SDK's stdio client, starting a server through `warden mcp-stdio`.

Usage: mcp_stdio_client.py COMMAND [ARGS...]
Prints one JSON document with what it saw.
"""

import asyncio
import json
import sys

from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client


async def main(command: list[str]) -> None:
    seen = {}
    params = StdioServerParameters(command=command[0], args=command[1:])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
            allowed = await session.call_tool("delete_records", {"table": "scratch"})
            seen["allowed"] = allowed.content[0].text
            echoed = await session.call_tool("echo", {"text": "mail ann@example.com"})
            seen["echoed"] = echoed.content[0].text
            try:
                looked = await session.call_tool("lookup", {"word": "x"})
                seen["lookup"] = looked.content[0].text
            except MCPError as e:
                seen["lookup"] = {"code": e.code, "message": e.error.message, "data": e.error.data}
            try:
                await session.call_tool("read_secrets", {})
                seen["denied"] = None
            except MCPError as e:
                seen["denied"] = {"code": e.code, "message": e.error.message}
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
