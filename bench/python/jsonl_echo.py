"""The Erlang Port baseline's server: JSON lines in, the same JSON lines out.

    python bench/python/jsonl_echo.py

Reads one JSON value per line from stdin and answers each with its compact `json.dumps`
(no spaces, UTF-8, so a compact line comes back byte for byte) and a newline on stdout,
flushed per line; exits at EOF. Nothing else is written to stdout.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    loads, dumps = json.loads, json.dumps
    for line in stdin:
        stdout.write(dumps(loads(line), separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
