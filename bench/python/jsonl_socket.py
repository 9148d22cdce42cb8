"""The peer of bench/socket_readers.exs: a JSON-lines server on a Unix socket.

    python bench/python/jsonl_socket.py PATH
    python bench/python/jsonl_socket.py --stdio

Listens on PATH and prints `ready`; then serves one connection at a time,
reading `[id, a, b]` per line and answering `[id, a + b]`, flushed per line,
in arrival order, until the connection ends. Python blocks in its reads, as
a Port's does: what differs between the contenders is the BEAM's side only.
It exits when its standard input ends (the Port that started it closed).

With `--stdio` it serves its standard input and output the same way (a
Port's pipes, no socket), until its input ends.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from typing import BinaryIO


def _exit_with_stdin() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def serve(lines: BinaryIO, out: BinaryIO) -> None:
    """Answers every line of `lines` on `out`, one flushed line each."""
    loads, dumps = json.loads, json.dumps
    for line in lines:
        call, a, b = loads(line)
        out.write(dumps([call, a + b], separators=(",", ":")).encode() + b"\n")
        out.flush()


def main(path: str) -> int:
    if path == "--stdio":
        serve(sys.stdin.buffer, sys.stdout.buffer)
        return 0
    threading.Thread(target=_exit_with_stdin, daemon=True).start()
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    print("ready", flush=True)
    while True:
        connection, _ = server.accept()
        with connection, connection.makefile("rb") as lines, connection.makefile("wb") as out:
            serve(lines, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
