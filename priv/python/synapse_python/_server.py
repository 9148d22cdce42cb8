"""Where and how a worker listens: addresses, socket permissions, server options.

Workers listen on a Unix socket in a private (0700) directory by default, so
only the user running the BEAM can reach them. TCP exists for remote workers: it
always needs TLS and a bearer token (`synapse_python._auth`), and a host other
than loopback needs the caller's explicit permission (`allow_remote`) as well.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TextIO
from urllib.parse import urlsplit

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from synapse_python._proto.synapse.v1 import agent_pb2

logger = logging.getLogger("synapse_python.server")

DEFAULT_SHUTDOWN_GRACE = 3.0
"""Seconds in-flight runs get to finish on shutdown before they are cancelled.

Shorter than the process manager's own SIGTERM-to-SIGKILL delay, so a worker
always gets to cancel its runs and remove its socket itself.
"""

READY_PREFIX = "SYNAPSE_READY"
DEFAULT_MAX_MESSAGE_BYTES = agent_pb2.LIMIT_DEFAULT_MAX_MESSAGE_BYTES
MAX_MESSAGE_BYTES_ENV = "SYNAPSE_MAX_MESSAGE_BYTES"
SOCKET_NAME = "worker.sock"

# sockaddr_un.sun_path, minus its terminating NUL.
_MAX_UNIX_PATH_BYTES = 103 if sys.platform == "darwin" else 107


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed `--listen` value."""

    scheme: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def grpc_address(self) -> str:
        """The address as `add_insecure_port` / `add_secure_port` want it."""
        if self.scheme == "unix":
            return f"unix:{self.path}"
        return f"{_bracketed(self.host)}:{self.port}"

    def announced(self, bound_port: int) -> str:
        """The address as the readiness line gives it, with the port actually bound."""
        if self.scheme == "unix":
            return f"unix:{self.path}"
        return f"tcp://{_bracketed(self.host)}:{bound_port}"


def parse_listen(listen: str, *, allow_remote: bool = False) -> Endpoint:
    """Parse `unix:PATH` or `tcp://HOST:PORT`.

    Raises `ValueError` for anything else, for a Unix path too long for a socket
    address, and for a TCP host that is not loopback unless `allow_remote`.
    """
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        if path.startswith("//"):  # gRPC's own unix:///abs/path form
            path = path[2:]
        if not path:
            raise ValueError("unix: address without a path")
        path = os.path.abspath(path)
        if len(os.fsencode(path)) > _MAX_UNIX_PATH_BYTES:
            raise ValueError(
                f"Unix socket path is longer than {_MAX_UNIX_PATH_BYTES} bytes: {path}"
            )
        return Endpoint("unix", path=path)
    if listen.startswith("tcp://"):
        parts = urlsplit(listen)
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid port in {listen!r}: {exc}") from exc
        host = parts.hostname
        if not host or port is None or parts.path or parts.query or parts.fragment:
            raise ValueError(f"TCP address must be tcp://HOST:PORT, got {listen!r}")
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"refusing to listen on non-loopback host {host!r} unless allowed (--allow-remote)"
            )
        return Endpoint("tcp", host=host, port=port)
    raise ValueError(f"listen address must be unix:PATH or tcp://HOST:PORT, got {listen!r}")


def missing_for_tcp(endpoint: Endpoint, *, tls: bool, token: bool) -> list[str]:
    """What a TCP endpoint still lacks of its mandatory `"TLS"` and `"token"` (none for Unix)."""
    if endpoint.scheme != "tcp":
        return []
    return [name for name, present in (("TLS", tls), ("token", token)) if not present]


def private_endpoint() -> tuple[Endpoint, str]:
    """A socket in a fresh 0700 directory; returns the endpoint and the directory."""
    directory = tempfile.mkdtemp(prefix="synapse-")  # created 0700
    return Endpoint("unix", path=os.path.join(directory, SOCKET_NAME)), directory


def bind(
    server: grpc.aio.Server,
    endpoint: Endpoint,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind `endpoint` (grpc binds at once); returns the bound TCP port, or 0 for Unix.

    With `credentials` the port serves TLS. A Unix socket is created 0600
    (under a restrictive umask, then chmod to be sure): the directory's 0700 is
    what keeps others out, this is the second lock.
    """

    def add_port() -> int:
        try:
            if credentials is None:
                return server.add_insecure_port(endpoint.grpc_address)
            return server.add_secure_port(endpoint.grpc_address, credentials)
        except RuntimeError as exc:
            raise BindError(endpoint, _why_unbindable(endpoint)) from exc

    if endpoint.scheme == "tcp":
        return add_port()
    _warn_if_directory_is_shared(os.path.dirname(endpoint.path))
    with _umask(0o177):
        add_port()
    os.chmod(endpoint.path, 0o600)
    return 0


class BindError(RuntimeError):
    """The address to listen on cannot be bound (in use, no such directory, not allowed...).

    A `RuntimeError`, as gRPC's own failure to bind is. Its message names the
    address and, when the system tells, why: a worker started by hand on a
    port already in use says so in one line.
    """

    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        super().__init__(f"cannot listen on {endpoint.announced(endpoint.port)}: {reason}")
        self.endpoint = endpoint


def _why_unbindable(endpoint: Endpoint) -> str:
    """Why binding `endpoint` fails, asked of the system with a plain socket.

    gRPC only says that it failed (the reason goes to its own log, if
    enabled): binding the same address here gets the system's error.
    """
    unknown = "gRPC could not bind it (GRPC_VERBOSITY=debug logs why)"
    if endpoint.scheme == "unix":
        families = [(socket.AF_UNIX, endpoint.path)]
    else:
        try:
            infos = socket.getaddrinfo(
                endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            return f"cannot resolve {endpoint.host!r}: {exc.strerror or exc}"
        families = [(family, address) for family, _, _, _, address in infos]
    for family, address in families:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(address)
            except OSError as exc:
                return exc.strerror or str(exc)
        if family == socket.AF_UNIX:
            # The probe's own socket file: the bind made it.
            with contextlib.suppress(OSError):
                os.unlink(endpoint.path)
    return unknown


def cleanup(endpoint: Endpoint, owned_directory: str | None) -> None:
    """Remove the socket file, and the directory if this worker created it."""
    if endpoint.scheme == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(endpoint.path)
    if owned_directory is not None:
        shutil.rmtree(owned_directory, ignore_errors=True)


_announced = False


def announce_ready(address: str, stream: TextIO | None = None) -> None:
    """Print the one readiness line the process manager waits for."""
    global _announced
    stream = stream if stream is not None else sys.stdout
    stream.write(f"{READY_PREFIX} {address}\n")
    stream.flush()
    _announced = True


def announced() -> bool:
    """Whether this process announced its readiness: a failure after it is not a startup one."""
    return _announced


def max_message_bytes_from_env() -> int:
    """`SYNAPSE_MAX_MESSAGE_BYTES`, or the contract's default (agent.proto's `Limit`)."""
    raw = os.environ.get(MAX_MESSAGE_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MESSAGE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{MAX_MESSAGE_BYTES_ENV} must be a positive integer, got {raw!r}")
    return value


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Without this, Linux lets a second server bind the same TCP port and
        # silently share its connections.
        ("grpc.so_reuseport", 0),
        # gRPC core cancels calls the event loop has not picked up yet beyond
        # 3,000 waiting (or 30 s of waiting): thousands of concurrent runs,
        # which is what the BEAM side sends, must queue instead. What bounds
        # them is the callers' own deadlines.
        ("grpc.server.max_pending_requests", 1_000_000),
        ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
        ("grpc.server_max_unrequested_time_in_server", 3_600),
    ]


def is_loopback(host: str) -> bool:
    """Whether `host` is surely this machine: `localhost` or a loopback IP."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _warn_if_directory_is_shared(directory: str) -> None:
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return  # bind reports the real problem
    if stat.S_IMODE(mode) & 0o077:
        logger.warning(
            "socket directory %s is accessible to other users (mode %o); it should be 0700",
            directory,
            stat.S_IMODE(mode),
        )


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def method_table(service: ServiceDescriptor, servicer: object) -> dict[str, grpc.RpcMethodHandler]:
    """The handlers of every method of `service`, bound to `servicer`'s methods of the same names.

    Built from the descriptor, not written by hand: the `.proto` stays the single
    list of methods, and a method the servicer does not implement fails at startup
    instead of answering UNIMPLEMENTED at run time.
    """
    table: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        implementation = getattr(servicer, method.name, None)
        if implementation is None:
            raise TypeError(
                f"{type(servicer).__name__} does not implement {service.full_name}/{method.name}"
            )
        make = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        table[method.name] = make(
            implementation,
            request_deserializer=GetMessageClass(method.input_type).FromString,
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    return table


_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
