"""A small MCP server (the `mcp` package's `MCPServer`) over streamable HTTP, for tests.

    python -m synapse_fixtures.mcp_server

Binds 127.0.0.1 on a free port, prints exactly one line `LISTENING <port>` on
stdout once it accepts connections (the endpoint is `http://127.0.0.1:<port>/mcp`),
and serves until its stdin reaches end of file (so it never outlives the test
harness that started it with a pipe on stdin) or it is killed.

Its tools: `add(a, b)`, the sum, and `shout(text)`, the text in capitals.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer(
    "synapse-test-tools", instructions="Tools for Synapse's tests.", log_level="WARNING"
)


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


async def _until_stdin_closes() -> None:
    await asyncio.to_thread(sys.stdin.read)


async def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        server.streamable_http_app(),
        log_level="warning",
        lifespan="on",
        # Open MCP sessions do not keep it alive once stdin closes.
        timeout_graceful_shutdown=2,
    )
    http = uvicorn.Server(config)
    serving = asyncio.create_task(http.serve(sockets=[listener]))
    while not http.started:
        if serving.done():
            await serving
            return
        await asyncio.sleep(0.01)
    print(f"LISTENING {port}", flush=True)
    await _until_stdin_closes()
    http.should_exit = True
    await serving


if __name__ == "__main__":
    asyncio.run(main())
