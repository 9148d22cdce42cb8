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
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "test-key"
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"

_ids = itertools.count(1)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, and a stream ends when the connection
    # closes, so no chunked encoding is needed.
    protocol_version = "HTTP/1.0"
    server_version = "synapse-fake-openai/1"

    def do_POST(self) -> None:
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
            body = json.loads(self.rfile.read(length) or b"null")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self._error(400, f"Invalid request body: {exc}", "invalid_request_error", None)
            return

        content = _answer(body)
        model = str(body.get("model") or "fake-model")
        prompt_tokens = sum(len(_text(message).split()) for message in _messages(body))
        usage = _usage(prompt_tokens, len(content.split()))
        completion_id = f"chatcmpl-fake{next(_ids)}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(completion_id, model, content, usage if include_usage else None)
        else:
            self._json(
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": None,
                },
            )

    def do_GET(self) -> None:
        self._error(404, f"Unknown path {self.path}", "invalid_request_error", "not_found")

    def _stream(
        self, completion_id: str, model: str, content: str, usage: dict[str, int] | None
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        created = int(time.time())

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
        events.append(chunk({}, "stop"))
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

    def _json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
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


def serve(port: int = 0) -> ThreadingHTTPServer:
    """Start serving on 127.0.0.1:`port` in a daemon thread; returns the server."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="openai-server", daemon=True).start()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synapse_fixtures.openai_server")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    args = parser.parse_args(argv)
    server = serve(args.port)
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
