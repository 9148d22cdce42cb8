"""A tiny OpenAI-compatible chat completions server, for tests that go over HTTP.

    python -m synapse_fixtures.openai_server [--port PORT]

Binds 127.0.0.1 (port 0, the default, picks a free one), prints exactly one
line `LISTENING <port>` on stdout once it accepts connections, and serves until
its stdin reaches end of file (so it never outlives the test harness that
started it with a pipe on stdin) or it is killed. Standard library only.

`POST /v1/chat/completions` answers from the text of the last user message:
the content is "echo: <text>", plus " (temperature=<t>)" when the request has
a temperature. Without `stream`, a `chat.completion` object with usage; with
`"stream": true`, server-sent events: one `chat.completion.chunk` carrying the
role, one per word (spaces kept, so the deltas concatenate to the content), one
with `finish_reason` "stop", one with the usage if `stream_options.include_usage`
is set, then `data: [DONE]`. Requests without `Authorization: Bearer test-key`
get a 401 in OpenAI's error shape.

Point pydantic-ai at it with no code: model "openai-chat:<any name>" and the
environment OPENAI_BASE_URL=http://127.0.0.1:<port>/v1, OPENAI_API_KEY=test-key.
("openai:<name>" is the Responses API, which this server does not speak.)

Options, for tests that compare what two clients send:

* `--record PATH`: each request's raw body is appended to PATH as one JSON
  line `{"body": "<the body, exactly, as text>"}`, before it is answered.
* `--script PATH`: a JSON list of answers, the n-th request (of the server's
  life) getting the n-th; requests past the end are answered as above. An
  answer is `{"content": "text"}`, `{"tool_calls": [{"id": "call_1", "name":
  "get_weather", "arguments": "{...}"}, ...]}` (with `"content"` too if
  wanted), or an error `{"status": 429, "body": {...}, "headers":
  {"retry-after": "3"}}`. Streamed answers carry each tool call as one chunk.
  Usage is counted the same way for every answer.
* `--no-stream-usage`: streams never carry a usage chunk, even when asked
  (some OpenAI-compatible servers do that).

`POST /_control/rewind` (no body) starts the script over, so that a second
client can be served the same answers by the same server (same URL, so the
same `provider_url` in both clients' messages).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API_KEY = "test-key"
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
REWIND_PATH = "/_control/rewind"


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, and a stream ends when the connection
    # closes, so no chunked encoding is needed.
    protocol_version = "HTTP/1.0"
    server_version = "synapse-fake-openai/1"

    server: _Server

    def do_POST(self) -> None:
        if self.path == REWIND_PATH:
            self.server.rewind()
            self._json(200, {"rewound": True})
            return
        if self.path != CHAT_COMPLETIONS_PATH:
            self._error(404, f"Unknown path {self.path}", "invalid_request_error", "not_found")
            return
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self._error(
                401,
                "Incorrect API key provided. The fake server accepts only 'test-key'.",
                "invalid_request_error",
                "invalid_api_key",
            )
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            self.server.record(raw)
            body = json.loads(raw or b"null")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self._error(400, f"Invalid request body: {exc}", "invalid_request_error", None)
            return

        number, scripted = self.server.next_answer()
        if scripted is not None and "status" in scripted:
            self._json(
                int(scripted["status"]),
                {"error": scripted.get("body")},
                headers=scripted.get("headers") or {},
            )
            return
        if scripted is not None:
            content = str(scripted.get("content") or "")
            tool_calls = list(scripted.get("tool_calls") or [])
        else:
            content, tool_calls = _answer(body), []
        model = str(body.get("model") or "fake-model")
        prompt_tokens = sum(len(_text(message).split()) for message in _messages(body))
        answered = content + "".join(call["name"] + call["arguments"] for call in tool_calls)
        usage = _usage(prompt_tokens, len(answered.split()))
        completion_id = f"chatcmpl-fake{number}"
        finish_reason = "tool_calls" if tool_calls else "stop"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            if self.server.no_stream_usage:
                include_usage = False
            self._stream(
                completion_id, model, content, tool_calls, usage if include_usage else None
            )
        else:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": content or None,
                "refusal": None,
            }
            if tool_calls:
                message["tool_calls"] = [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                    for call in tool_calls
                ]
            self._json(
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": _CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": None,
                },
            )

    def do_GET(self) -> None:
        self._error(404, f"Unknown path {self.path}", "invalid_request_error", "not_found")

    def _stream(
        self,
        completion_id: str,
        model: str,
        content: str,
        tool_calls: list[dict[str, str]],
        usage: dict[str, int] | None,
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        created = _CREATED

        def chunk(
            delta: dict[str, Any], finish_reason: str | None = None, *, with_choice: bool = True
        ) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ]
                if with_choice
                else [],
                "usage": None,
            }

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in _words(content)]
        events += [
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": call["arguments"]},
                        }
                    ]
                }
            )
            for index, call in enumerate(tool_calls)
        ]
        events.append(chunk({}, "tool_calls" if tool_calls else "stop"))
        if usage is not None:
            events.append({**chunk({}, with_choice=False), "usage": usage})
        try:
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, type_: str, code: str | None) -> None:
        self._json(
            status, {"error": {"message": message, "type": type_, "param": None, "code": code}}
        )

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read stdout and stderr


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _text(message: dict[str, Any]) -> str:
    """A message's text: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _answer(body: dict[str, Any]) -> str:
    user_texts = [_text(m) for m in _messages(body) if m.get("role") == "user"]
    answer = f"echo: {user_texts[-1] if user_texts else ''}"
    if body.get("temperature") is not None:
        answer += f" (temperature={body['temperature']})"
    return answer


def _words(content: str) -> Iterator[str]:
    """`content` in pieces of one word and the spaces after it; they concatenate to `content`."""
    return (piece for piece in re.split(r"(?<=\s)(?=\S)", content) if piece)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# Answers carry a fixed creation time, so that two runs get the same bytes.
_CREATED = 1_700_000_000


class _Server(ThreadingHTTPServer):
    """The HTTP server, with the script and the record file of `main`'s options."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        script: list[dict[str, Any]] | None = None,
        record: Path | None = None,
        no_stream_usage: bool = False,
    ) -> None:
        super().__init__(address, _Handler)
        self.script = script or []
        self.record_path = record
        self.no_stream_usage = no_stream_usage
        self._lock = threading.Lock()
        self._answered = 0

    def next_answer(self) -> tuple[int, dict[str, Any] | None]:
        """The request's number (from 1, since the last rewind) and its scripted answer."""
        with self._lock:
            index, self._answered = self._answered, self._answered + 1
        return index + 1, self.script[index] if index < len(self.script) else None

    def rewind(self) -> None:
        with self._lock:
            self._answered = 0

    def record(self, raw: bytes) -> None:
        if self.record_path is None:
            return
        with self._lock, self.record_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"body": raw.decode("utf-8", "surrogateescape")}) + "\n")


def serve(
    port: int = 0,
    *,
    script: list[dict[str, Any]] | None = None,
    record: Path | None = None,
    no_stream_usage: bool = False,
) -> _Server:
    """Start serving on 127.0.0.1:`port` in a daemon thread; returns the server."""
    server = _Server(
        ("127.0.0.1", port), script=script, record=record, no_stream_usage=no_stream_usage
    )
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="openai-server", daemon=True).start()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synapse_fixtures.openai_server")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    parser.add_argument("--script", type=Path, help="a JSON list of answers, in order")
    parser.add_argument("--record", type=Path, help="append each request's raw body here")
    parser.add_argument("--no-stream-usage", action="store_true", help="no usage chunk in streams")
    args = parser.parse_args(argv)
    script = json.loads(args.script.read_text()) if args.script else None
    server = serve(
        args.port, script=script, record=args.record, no_stream_usage=args.no_stream_usage
    )
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
