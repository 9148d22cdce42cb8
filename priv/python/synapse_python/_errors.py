"""How failures become data: `ErrorDetail`s, in run failures and gRPC statuses.

A run's failure is its last event, a `RunFailure` carrying an `ErrorDetail`
(kind, Python type, message, traceback, data, and the gRPC status code it
stands for) and what the run did (see `_run`). Every non-OK
status this worker produces (loading agents, bridges, authentication)
carries the `ErrorDetail` in the binary trailing metadata entry
`synapse-error-bin`. Either way the Elixir side gets the failure as data and
never parses a message. The kinds are the proto's `ErrorKind` enum, the one
list of them; below they are spelled as the Elixir side spells them.

Mapping of exceptions raised by a run (see `from_run_exception`):

| exception (`pydantic_ai.exceptions`)          | status             | kind                        |
|-----------------------------------------------|--------------------|-----------------------------|
| `RunTimedOut` (the run's `timeout_ms` passed) | DEADLINE_EXCEEDED  | `timeout`                   |
| `RunCancelled` (a `cancel` from the client)   | CANCELLED          | `cancelled`                 |
| `UsageLimitExceeded`                          | RESOURCE_EXHAUSTED | `usage_limit_exceeded`      |
| `UnexpectedModelBehavior`, output retries out | INTERNAL           | `output_validation_failed`  |
| `UnexpectedModelBehavior`, tool retries out   | INTERNAL           | `tool_failed`               |
| any other `UnexpectedModelBehavior`           | INTERNAL           | `unexpected_model_behavior` |
| `ModelHTTPError`                              | UNAVAILABLE        | `model_http_error`          |
| `ModelConnectionError`, `ModelRequestTimeout` | UNAVAILABLE        | `model_unavailable`         |
| `UserError` (the run cannot be made as asked) | INVALID_ARGUMENT   | `invalid_argument`          |
| any other `Exception`                         | UNKNOWN            | `python_error`              |

A `python_error`'s message starts with the exception's class, as Python
prints it ("RuntimeError: boom", "my_app.errors.BankError: ..."). A
`model_http_error` carries the provider's answer as data (`data_json`):
`{"status_code": 429, "body": ..., "retry_after": 1.5, "model_name": ...,
"provider_error_code": ..., "provider_error_type": ...}`; a
`model_unavailable` (the provider could not be reached: connection refused,
DNS, TLS, a transport timeout, or no answer within the model's
`request_timeout`) carries `{"model_name": ..., "phase": "connect"}` (the
phase when known). Whatever its kind, the failure of a run that began
carries what the run did (`RunFailure.state`; see `_run`).

`unrepresentable` is a value the client cannot hold exactly (NaN or an
infinite float in the output): INTERNAL, named with its path.

`UserError` is pydantic-ai refusing the request itself (e.g. no prompt, no
history and no instructions): the caller's to fix, so INVALID_ARGUMENT.

`output_validation_failed` is the model failing to produce an output that
validates (output type, output tool arguments, an output validator's
`ModelRetry`, a spec's JSON schema) within the agent's output retries:
pydantic-ai's "Exceeded maximum output retries (N)". Its
message ends with the last problem found, taken from the exception's
`__cause__` chain, e.g. "Exceeded maximum output retries (1); last problem:
1 validation error(s): population: Input should be a valid integer, ...".

`tool_failed` is a tool (the agent's own or the client's, or a tool name the
model made up) that still asked for a retry after its retries were used up
(`max_retries` of the tool, else the agent's): pydantic-ai's "Tool 'x'
exceeded max retries count of N". The message names the tool and ends with the
last problem, e.g. "Tool 'lookup' exceeded max retries count of 1; last
problem: no order 42" (a client's `retry_message`, a tool's `ModelRetry`, its
arguments' validation errors, or "Unknown tool name: ...").

All three kinds of `UnexpectedModelBehavior` are INTERNAL rather than
FAILED_PRECONDITION: nothing about the request or the worker's state was wrong
(a client must not "fix the state" and retry); the model, a server-side
dependency, broke its contract. A client that does not know the newer
`output_validation_failed` and `tool_failed` kinds thus still sees what it saw
before: INTERNAL.

Request-level failures produced by the service itself: unknown agent id →
NOT_FOUND `not_found`; malformed request fields (history, settings, usage
limits, tools), tools on `RunSync`, and a `Run` stream that breaks its
protocol (not starting with `start`, another `start`, an empty `RunInput`, a
malformed `tool_result`, half-closing with tool requests unanswered) →
INVALID_ARGUMENT `invalid_argument`; any failure while loading an
agent (including an output schema outside the supported subset) →
FAILED_PRECONDITION `load_failed`.

Refused before any handler runs (`synapse_python._auth.TokenInterceptor`, on a
worker configured with a bearer token, which every TCP worker is):

| condition                                           | status          | kind              |
|-----------------------------------------------------|-----------------|-------------------|
| missing or wrong `authorization: Bearer <token>`    | UNAUTHENTICATED | `unauthenticated` |

Its message is always "missing or invalid bearer token", whatever was sent; it
applies to every method of every service the worker serves, health included.

Bridge calls (`synapse_python.bridge`): arguments Pydantic rejects, and a
`pydantic.ValidationError` the function itself raises, are INVALID_ARGUMENT
`invalid_argument` with the errors as data in `ErrorDetail.data_json`:
`{"errors": [{"loc": ["data", "age"], "msg": "...", "type": "..."}, ...]}`
(`validation_failed`); any other exception is classified as above
(`from_run_exception`), so usually UNKNOWN `python_error`.
"""

from __future__ import annotations

import builtins
import json
import re
import traceback
from typing import Any, NoReturn, TypeAlias

import grpc
import pydantic
import pydantic_core
from pydantic_ai.exceptions import (
    ModelConnectionError,
    ModelHTTPError,
    ModelRequestTimeout,
    ModelRetry,
    RunCancelled,
    RunTimedOut,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UserError,
)

from synapse_python._proto.synapse.v1 import agent_pb2
from synapse_python._utf8 import escaped

ERROR_METADATA_KEY = "synapse-error-bin"
"""Trailing metadata key of the serialized `ErrorDetail` (binary: gRPC base64s it)."""

# Trailing metadata travels in HTTP/2 headers, and clients cap their size
# (grpc-core's default soft limit is 8 KiB, and the status message is sent in a
# header too). pydantic-ai tracebacks alone are often 5 KiB+, so the detail is
# kept well under the limit: the message's head and the traceback's tail (where
# the exception was raised) are what a reader needs. The full traceback is logged.
_MAX_MESSAGE_CHARS = 1000
_MAX_TRACEBACK_CHARS = 2500
_MAX_STATUS_DETAILS_CHARS = 500
_ELISION = "…"
_MAX_REPORTED_VALIDATION_ERRORS = 5
# data_json shares the trailing metadata's budget with the rest of the detail.
_MAX_DATA_JSON_BYTES = 3000
_MAX_ERROR_MSG_CHARS = 200
# How much of an input a validation error's message may quote (see `_error_msg`).
_MAX_QUOTED_INPUT_CHARS = 40

# How pydantic-ai words "the model's output never validated" (pydantic_ai/_agent_graph.py,
# _tool_execution.py). It has no exception class of its own.
_OUTPUT_RETRIES_EXCEEDED = "Exceeded maximum output retries"
# ... and "a tool asked for one retry too many" (pydantic_ai/tool_manager.py), the
# match being the message's first sentence (the rest is advice and a docs link).
_TOOL_RETRIES_EXCEEDED = re.compile(r"Tool '.*' exceeded max retries count of \d+", re.DOTALL)


# The kinds are the proto's `ErrorKind` enum (agent.proto), the one list of
# them for this worker, the Rust client and `SynapseCore.Error`.
ErrorKind: TypeAlias = agent_pb2.ErrorKind.ValueType


def kind_name(kind: ErrorKind) -> str:
    """A kind as the Elixir side spells it: `ERROR_KIND_NOT_FOUND` is "not_found"."""
    return agent_pb2.ErrorKind.Name(kind).removeprefix("ERROR_KIND_").lower()


class SynapseError(Exception):
    """A failure already classified into a gRPC status and an error kind.

    Raised inside the service and turned into a status with `abort`. When it
    stands for a Python exception (`cause`), the detail reports that exception's
    type and traceback, never this wrapper's: the user should see the error their
    code raised.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        kind: ErrorKind,
        message: str,
        *,
        cause: BaseException | None = None,
        data_json: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message
        self.cause = cause
        self.data_json = data_json

    def detail(self) -> agent_pb2.ErrorDetail:
        """The `ErrorDetail` sent to the client, truncated to fit in trailing metadata."""
        return agent_pb2.ErrorDetail(
            kind=self.kind,
            type=type_name(self.cause) if self.cause is not None else "",
            # An exception's text may hold what UTF-8 cannot (a file name
            # that is not UTF-8): escaped, else the error itself fails to send.
            message=_head(escaped(self.message), _MAX_MESSAGE_CHARS),
            traceback=_tail(escaped(format_traceback(self.cause)), _MAX_TRACEBACK_CHARS)
            if self.cause is not None
            else "",
            data_json=self.data_json,
            code=self.code.value[0],
        )


def type_name(exc: BaseException) -> str:
    """The exception's qualified type name: `ValueError`, `pydantic_ai.exceptions.UserError`."""
    cls = type(exc)
    if cls.__module__ == builtins.__name__:
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def format_traceback(exc: BaseException) -> str:
    """The traceback as Python prints it, chained causes included; but a
    pydantic `ValidationError`'s own text, which quotes every value it refused
    (`input_value=...`: deps may hold an API key), is its summary instead."""
    if isinstance(exc, pydantic.ValidationError):
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return (
            f"Traceback (most recent call last):\n{frames}"
            f"{type_name(exc)}: {summarize_validation_error(exc)}\n"
        )
    return "".join(traceback.format_exception(exc))


def load_failed(exc: BaseException) -> SynapseError:
    """Any failure while importing, building or resolving an agent."""
    return SynapseError(
        grpc.StatusCode.FAILED_PRECONDITION, agent_pb2.ERROR_KIND_LOAD_FAILED, str(exc), cause=exc
    )


def invalid_argument(message: str, *, cause: BaseException | None = None) -> SynapseError:
    """A request field the worker cannot use."""
    return SynapseError(
        grpc.StatusCode.INVALID_ARGUMENT,
        agent_pb2.ERROR_KIND_INVALID_ARGUMENT,
        message,
        cause=cause,
    )


def validation_failed(
    message: str, errors: list[dict[str, Any]], *, cause: BaseException | None = None
) -> SynapseError:
    """INVALID_ARGUMENT whose detail carries `errors` (Pydantic's, `loc`/`msg`/`type`) as data.

    As many errors as fit in the trailing metadata's budget are sent, in
    order; `message` should say how many there were.
    """
    kept = [
        {
            "loc": list(error["loc"]),
            "msg": _head(_error_msg(error), _MAX_ERROR_MSG_CHARS),
            "type": error["type"],
        }
        for error in errors
    ]
    while True:
        data = json.dumps({"errors": kept}, ensure_ascii=False, separators=(",", ":"))
        encoded = data.encode()
        if len(encoded) <= _MAX_DATA_JSON_BYTES or not kept:
            break
        kept.pop()
    error = invalid_argument(message, cause=cause)
    error.data_json = encoded
    return error


def not_found(message: str) -> SynapseError:
    """A request naming something this worker does not have."""
    return SynapseError(grpc.StatusCode.NOT_FOUND, agent_pb2.ERROR_KIND_NOT_FOUND, message)


def unauthenticated(message: str) -> SynapseError:
    """A call without the bearer token the worker requires (never says what was sent)."""
    return SynapseError(
        grpc.StatusCode.UNAUTHENTICATED, agent_pb2.ERROR_KIND_UNAUTHENTICATED, message
    )


def unrepresentable(message: str) -> SynapseError:
    """A value the client cannot hold exactly (NaN, an infinite float)."""
    return SynapseError(grpc.StatusCode.INTERNAL, agent_pb2.ERROR_KIND_UNREPRESENTABLE, message)


# A provider's error body can be a whole HTML page: it is kept to this size.
_MAX_BODY_CHARS = 8192


def from_run_exception(exc: Exception) -> SynapseError:
    """Classify an exception raised by an agent run (see the module docstring)."""
    data: dict[str, Any] | None = None
    if isinstance(exc, RunTimedOut):
        code, kind, message = (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            agent_pb2.ERROR_KIND_TIMEOUT,
            str(exc),
        )
    elif isinstance(exc, RunCancelled):
        code, kind, message = grpc.StatusCode.CANCELLED, agent_pb2.ERROR_KIND_CANCELLED, str(exc)
    elif isinstance(exc, UsageLimitExceeded):
        code, kind, message = (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            agent_pb2.ERROR_KIND_USAGE_LIMIT_EXCEEDED,
            str(exc),
        )
    elif isinstance(exc, UnexpectedModelBehavior) and exc.message.startswith(
        _OUTPUT_RETRIES_EXCEEDED
    ):
        code, kind, message = (
            grpc.StatusCode.INTERNAL,
            agent_pb2.ERROR_KIND_OUTPUT_VALIDATION_FAILED,
            str(exc),
        )
        if problem := _last_problem(exc):
            message = f"{message}; last problem: {problem}"
    elif isinstance(exc, UnexpectedModelBehavior) and (
        exceeded := _TOOL_RETRIES_EXCEEDED.match(exc.message)
    ):
        code, kind, message = (
            grpc.StatusCode.INTERNAL,
            agent_pb2.ERROR_KIND_TOOL_FAILED,
            exceeded.group(),
        )
        if problem := _last_problem(exc):
            message = f"{message}; last problem: {problem}"
    elif isinstance(exc, UnexpectedModelBehavior):
        code, kind, message = (
            grpc.StatusCode.INTERNAL,
            agent_pb2.ERROR_KIND_UNEXPECTED_MODEL_BEHAVIOR,
            str(exc),
        )
    elif isinstance(exc, ModelHTTPError):
        code, kind = grpc.StatusCode.UNAVAILABLE, agent_pb2.ERROR_KIND_MODEL_HTTP_ERROR
        message = f"model request failed with HTTP status {exc.status_code}: {exc}"
        data = {
            "status_code": exc.status_code,
            "body": _bounded_body(exc.body),
            "retry_after": exc.retry_after,
            "model_name": exc.model_name,
            "provider_error_code": exc.provider_error_code,
            "provider_error_type": exc.provider_error_type,
        }
    elif isinstance(exc, ModelConnectionError | ModelRequestTimeout):
        code, kind = grpc.StatusCode.UNAVAILABLE, agent_pb2.ERROR_KIND_MODEL_UNAVAILABLE
        message = f"the model {exc.model_name!r} cannot be reached: {_with_cause(exc)}"
        data = {"model_name": exc.model_name, "phase": getattr(exc, "phase", None)}
    elif isinstance(exc, UserError):
        code, kind, message = (
            grpc.StatusCode.INVALID_ARGUMENT,
            agent_pb2.ERROR_KIND_INVALID_ARGUMENT,
            str(exc),
        )
    else:
        code, kind, message = (
            grpc.StatusCode.UNKNOWN,
            agent_pb2.ERROR_KIND_PYTHON_ERROR,
            python_message(exc),
        )
    error = SynapseError(code, kind, message, cause=exc)
    if data is not None:
        error.data_json = pydantic_core.to_json(data, fallback=str)
    return error


def python_message(exc: BaseException) -> str:
    """The exception as Python's traceback ends with it: "RuntimeError: boom"."""
    text = str(exc)
    return f"{type_name(exc)}: {text}" if text else type_name(exc)


def _with_cause(exc: BaseException) -> str:
    """`exc`'s message, and its cause's when that says more ("Connection error." alone does not)."""
    cause = exc.__cause__
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is None or str(cause) in str(exc):
        return str(exc)
    return f"{exc} ({python_message(cause)})"


def _bounded_body(body: object) -> object:
    """A provider's error body as is, or as the head of its text when it is too long."""
    text = body if isinstance(body, str) else pydantic_core.to_json(body, fallback=str).decode()
    if len(text) <= _MAX_BODY_CHARS:
        return body
    return _head(text, _MAX_BODY_CHARS)


def summarize_validation_error(exc: pydantic.ValidationError) -> str:
    """pydantic's errors as one line: count, then `location: message` for the first few."""
    errors = exc.errors(include_url=False, include_input=False)
    shown = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {_error_msg(error)}"
        for error in errors[:_MAX_REPORTED_VALIDATION_ERRORS]
    )
    more = len(errors) - _MAX_REPORTED_VALIDATION_ERRORS
    suffix = f"; and {more} more" if more > 0 else ""
    return f"{len(errors)} validation error(s): {shown}{suffix}"


def _error_msg(error: Any) -> str:
    """pydantic's message for one error, the input it quotes shortened.

    Errors are reported without their input, but a discriminated union's
    message quotes the tag it got (`Input tag '...' found using ...`): a long
    one (a whole payload, a secret put in the wrong field) would fill the
    message, and the log line, and hide the errors after it.
    """
    msg = str(error["msg"])
    tag = (error.get("ctx") or {}).get("tag")
    if isinstance(tag, str) and len(tag) > _MAX_QUOTED_INPUT_CHARS:
        msg = msg.replace(tag, _head(tag, _MAX_QUOTED_INPUT_CHARS))
    return msg


def _last_problem(exc: BaseException) -> str | None:
    """Why the last attempt (at an output, or a tool call) was rejected, from the `__cause__` chain.

    pydantic-ai chains the last rejection: a pydantic `ValidationError` (output
    type, output tool or tool arguments), a `ModelRetry` (from an output
    validator or a tool, a client's `retry_message`, an unknown tool name), or
    a `ToolRetryError` wrapping either. The most specific one wins.
    """
    fallback: str | None = None
    seen: set[int] = set()
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, pydantic.ValidationError):
            return summarize_validation_error(cause)
        if isinstance(cause, ModelRetry):
            return cause.message
        if fallback is None and not isinstance(cause, UnexpectedModelBehavior):
            fallback = " ".join(str(cause).split())
        cause = cause.__cause__
    return fallback


def abort_status(
    error: SynapseError,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """`error`'s status: its code, its details, and its `ErrorDetail` as trailing metadata."""
    detail = error.detail()
    # A python_error's message already starts with the type.
    details = (
        f"{detail.type}: {detail.message}"
        if detail.type and not detail.message.startswith(detail.type)
        else detail.message
    )
    return (
        error.code,
        _head(details, _MAX_STATUS_DETAILS_CHARS),
        ((ERROR_METADATA_KEY, detail.SerializeToString()),),
    )


async def abort(context: grpc.aio.ServicerContext, error: SynapseError) -> NoReturn:
    """End the RPC with `error`'s status and its `ErrorDetail` in the trailing metadata."""
    code, details, trailing_metadata = abort_status(error)
    await context.abort(code, details, trailing_metadata=trailing_metadata)


def _head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_ELISION)] + _ELISION


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else _ELISION + text[len(text) - limit + len(_ELISION) :]
