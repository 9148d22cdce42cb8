"""Who may call a worker: TLS credentials and the bearer token the server checks.

A worker reachable over TCP serves TLS and requires every call (the agent
service, Bridge services and the health service alike) to carry the metadata
`authorization: Bearer <token>`. `TokenInterceptor` checks it before any handler
runs, and refuses anything else with UNAUTHENTICATED (kind `unauthenticated`).

The token is a secret: it is held by a `BearerToken`, whose repr and str are
redacted, and it appears in no log line, error message or exception.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

logger = logging.getLogger("synapse_python.auth")

TOKEN_ENV = "SYNAPSE_WORKER_TOKEN"
"""The environment variable a worker takes its bearer token from (without `--token-file`)."""

AUTHORIZATION_KEY = "authorization"
_BEARER = "bearer "

PemSource = bytes | str | os.PathLike[str]
"""PEM data (`bytes`) or the path of a PEM file (`str` or path-like)."""


class BearerToken:
    """A bearer token that keeps itself out of reprs, logs and messages."""

    __slots__ = ("_secret",)

    def __init__(self, value: str) -> None:
        """`value` is the token itself: printable ASCII, no whitespace (it goes in a header)."""
        if not isinstance(value, str):
            raise TypeError("a bearer token must be a str")
        if not value:
            raise ValueError("the bearer token is empty")
        if not all("!" <= char <= "~" for char in value):
            raise ValueError(
                "the bearer token must be printable ASCII without whitespace "
                "(it is sent in a gRPC metadata value)"
            )
        self._secret = value.encode("ascii")

    def matches(self, presented: bytes) -> bool:
        """Whether `presented` is this token, in time independent of where they differ."""
        return hmac.compare_digest(self._secret, presented)

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a BearerToken cannot be pickled")


def bearer_token(token: str | BearerToken | None) -> BearerToken | None:
    """`token` as a `BearerToken` (None stays None)."""
    if token is None or isinstance(token, BearerToken):
        return token
    return BearerToken(token)


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    """A server certificate chain and its private key, both PEM (not shown by repr)."""

    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)

    @classmethod
    def load(cls, certificate_chain: PemSource, private_key: PemSource) -> TlsCredentials:
        """From PEM bytes or PEM file paths (each argument either way)."""
        return cls(_pem(certificate_chain, "certificate"), _pem(private_key, "private key"))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(((self.private_key, self.certificate_chain),))


def _pem(source: PemSource, what: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        with open(source, "rb") as file:
            data = file.read()
    if b"-----BEGIN " not in data:
        raise ValueError(
            f"the TLS {what} is not PEM"
            + ("" if isinstance(source, bytes) else f" ({os.fspath(source)})")
        )
    return data


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without the metadata `authorization: Bearer <token>`.

    The scheme is matched case-insensitively and the token with
    `hmac.compare_digest`; a call with no such entry, several, or the wrong
    token ends UNAUTHENTICATED, "missing or invalid bearer token", with the
    usual `ErrorDetail` trailer (kind `unauthenticated`). Nothing of what the
    client sent is logged or echoed.
    """

    def __init__(self, token: BearerToken) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if self._authorized(handler_call_details.invocation_metadata or ()):
            return await continuation(handler_call_details)
        return _refusal(handler_call_details.method)

    def _authorized(self, metadata: Any) -> bool:
        values = [value for key, value in metadata if key == AUTHORIZATION_KEY]
        if len(values) != 1 or not isinstance(values[0], str):
            return False
        scheme, presented = values[0][: len(_BEARER)], values[0][len(_BEARER) :]
        if scheme.lower() != _BEARER:
            return False
        return self._token.matches(presented.encode("utf-8", "surrogateescape"))


def _refusal(method: str | bytes) -> grpc.RpcMethodHandler:
    """A handler that ends the call UNAUTHENTICATED without reading (or parsing) a message.

    Stream-stream whatever the method's real kind: its behaviour starts at once
    without waiting for a request, and on the wire a unary client cannot tell
    the difference. Unknown methods are refused the same way, so an
    unauthenticated client learns nothing about which methods exist.
    """
    # Here, not at the top: the CLI checks tokens before it loads pydantic-ai (via _errors).
    from synapse_python import _errors

    name = method.decode("utf-8", "replace") if isinstance(method, bytes) else method

    async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        logger.warning("refused %s from %s: missing or invalid bearer token", name, context.peer())
        await _errors.abort(context, _errors.unauthenticated("missing or invalid bearer token"))

    return grpc.stream_stream_rpc_method_handler(refuse)
