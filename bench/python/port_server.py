"""The Python side of the path benchmarks' two Port baselines.

    python bench/python/port_server.py etf     # ErlPort-shaped: Port + packet 4 + ETF
    python bench/python/port_server.py jsonl   # a Port speaking JSON lines

Serves calls from the BEAM on stdin/stdout, in the shape an ErlPort Python instance
has (this is the benchmark's own code, written to that shape, not ErlPort's): calls
run one at a time, in order of arrival; a function may call back into the BEAM (the
Elixir tool's stand-in), and waits on the same pipe for the answer while calls that
arrive meanwhile wait their turn.

Messages, the same in both codecs:

* BEAM to Python: a call `{call, Id, Function, Args}` (ETF) or
  `{"id": Id, "call": Function, "args": Args}` (JSON); the answer to a callback,
  `{callback_result, Cid, Value}` / `{callback_error, Cid, Reason}` or
  `{"callback": Cid, "result": Value}` / `{"callback": Cid, "error": Reason}`.
* Python to BEAM: `{result, Id, Value}` / `{error, Id, Reason}` or
  `{"id": Id, "result": Value}` / `{"id": Id, "error": Reason}`; a callback
  `{callback, Cid, Name, Args}` or `{"callback": Cid, "name": Name, "args": Args}`;
  an event of a streamed call, before its result, `{event, Id, Value}` or
  `{"id": Id, "event": Value}` (`run_stream` sends each text delta of a run so, as an
  ErlPort function sends messages to an Erlang process while it runs).

In ETF, strings travel as binaries and `None` as the atom `nil`; with `{packet, 4}`,
every term is preceded by its length as 4 bytes, big-endian. JSON lines are compact,
one value per line. Nothing else is written to stdout. Exits at EOF.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections import deque
from typing import IO, Any, Protocol

import erlang
from bench_add import add
from bench_agents import (
    callback_agent,
    minimal_agent,
    python_tool_agent,
    stream_agent,
    stream_text_deltas,
    summary,
)
from pydantic_ai import Agent

# A logical message: its kind first ("call", "result", "error", "callback",
# "callback_result", "callback_error"), then its fields in the order above.
Message = tuple[Any, ...]


class Codec(Protocol):
    def read(self) -> Message | None: ...
    def write(self, message: Message) -> None: ...


class EtfCodec:
    """Erlang's external term format, each term framed as `{packet, 4}` frames it."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self._stdin, self._stdout = stdin, stdout
        self._atoms: dict[str, erlang.OtpErlangAtom] = {}

    def read(self) -> Message | None:
        header = self._stdin.read(4)
        if len(header) < 4:
            return None
        (length,) = struct.unpack(">I", header)
        term = erlang.binary_to_term(self._stdin.read(length))
        return tuple(_from_term(field) for field in term)

    def write(self, message: Message) -> None:
        kind, *fields = message
        data = erlang.term_to_binary((self._atom(kind), *(_to_term(f) for f in fields)))
        self._stdout.write(struct.pack(">I", len(data)) + data)
        self._stdout.flush()

    def _atom(self, name: str) -> erlang.OtpErlangAtom:
        atom = self._atoms.get(name)
        if atom is None:
            atom = self._atoms[name] = erlang.OtpErlangAtom(name.encode())
        return atom


def _from_term(term: Any) -> Any:
    """Python values of decoded terms: binaries and atoms become `str`.

    erlang-py answers a list of small integers, which the VM sends as a `STRING_EXT`,
    as `bytes`: it is a list, `[1, 2]` in Elixir.
    """
    if isinstance(term, erlang.OtpErlangBinary):
        return term.value.decode()
    if isinstance(term, bytes):
        return list(term)
    if isinstance(term, erlang.OtpErlangAtom):
        name = term.value.decode()
        return None if name == "nil" else name
    if isinstance(term, list):
        return [_from_term(item) for item in term]
    if isinstance(term, tuple):
        return tuple(_from_term(item) for item in term)
    if isinstance(term, dict):
        return {_from_term(k): _from_term(v) for k, v in term.items()}
    return term


def _to_term(value: Any) -> Any:
    """Terms of Python values: `str` as a binary (erlang-py would send a charlist)."""
    if isinstance(value, str):
        return erlang.OtpErlangBinary(value.encode())
    if value is None:
        return erlang.OtpErlangAtom(b"nil")
    if isinstance(value, list):
        return [_to_term(item) for item in value]
    if isinstance(value, dict):
        return {_to_term(k): _to_term(v) for k, v in value.items()}
    return value


class JsonLinesCodec:
    """One compact JSON object per line."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self._stdin, self._stdout = stdin, stdout

    def read(self) -> Message | None:
        line = self._stdin.readline()
        if not line:
            return None
        message = json.loads(line)
        if "call" in message:
            return ("call", message["id"], message["call"], message["args"])
        if "error" in message:
            return ("callback_error", message["callback"], message["error"])
        return ("callback_result", message["callback"], message["result"])

    def write(self, message: Message) -> None:
        match message:
            case ("callback", cid, name, args):
                value = {"callback": cid, "name": name, "args": args}
            case (kind, call_id, payload):
                value = {"id": call_id, kind: payload}
        self._stdout.write(json.dumps(value, separators=(",", ":")).encode() + b"\n")
        self._stdout.flush()


class Server:
    """Runs calls one at a time; lets a running call ask the BEAM for a value."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._waiting: deque[Message] = deque()
        self._callbacks = 0
        # The call being run: where a streamed call's events go.
        self._call_id: Any = None
        # One event loop for the process's life, as a long-lived instance keeps one.
        self._runner = asyncio.Runner()
        elixir_tool_agent = callback_agent(self.call_beam)
        self._functions: dict[str, Any] = {
            "run_minimal": lambda prompt: self._run(minimal_agent, prompt),
            "run_python_tool": lambda prompt: self._run(python_tool_agent, prompt),
            "run_elixir_tool": lambda prompt: self._run(elixir_tool_agent, prompt),
            "run_stream": self._run_stream,
            "add": add,
        }

    def _run(self, agent: Agent[None, str], prompt: str) -> dict[str, Any]:
        return summary(self._runner.run(agent.run(prompt)))

    def _run_stream(self, prompt: str) -> dict[str, Any]:
        call_id = self._call_id

        def send(delta: str) -> None:
            self._codec.write(("event", call_id, delta))

        return summary(self._runner.run(stream_text_deltas(stream_agent, prompt, send)))

    def serve(self) -> int:
        while True:
            message = self._waiting.popleft() if self._waiting else self._codec.read()
            if message is None:
                return 0
            match message:
                case ("call", call_id, name, args) if name in self._functions:
                    self._call_id = call_id
                    try:
                        reply = ("result", call_id, self._functions[name](*args))
                    except Exception as exc:
                        reply = ("error", call_id, f"{type(exc).__name__}: {exc}")
                case ("call", call_id, name, _args):
                    reply = ("error", call_id, f"no function named {name!r}")
                case _:
                    raise RuntimeError(f"unexpected message {message!r}")
            self._codec.write(reply)

    def call_beam(self, name: str, arguments: dict[str, Any]) -> Any:
        """Ask the BEAM to run `name`; blocks until it answers, as an ErlPort callback."""
        self._callbacks += 1
        cid = self._callbacks
        self._codec.write(("callback", cid, name, arguments))
        while True:
            message = self._codec.read()
            if message is None:
                raise EOFError("the BEAM closed the port during a callback")
            if message[0] == "call":
                self._waiting.append(message)
            elif message[1] != cid:
                raise RuntimeError(f"answer to callback {message[1]}, waiting for {cid}")
            elif message[0] == "callback_result":
                return message[2]
            else:
                raise RuntimeError(f"callback {name} failed: {message[2]}")


def main(argv: list[str]) -> int:
    codecs = {"etf": EtfCodec, "jsonl": JsonLinesCodec}
    if len(argv) != 1 or argv[0] not in codecs:
        print("usage: port_server.py etf|jsonl", file=sys.stderr)
        return 2
    return Server(codecs[argv[0]](sys.stdin.buffer, sys.stdout.buffer)).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
