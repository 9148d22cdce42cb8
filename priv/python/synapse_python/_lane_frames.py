"""What the lane's two kinds of connection share: frames on the socket, and
how a call answered without a handler ends (`proto/synapse/v1/lane.proto`).

The connections read by the event loop are in `_lane`, those read by the
worker's threads in `_lane_threads`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import grpc

from synapse_python._errors import ERROR_METADATA_KEY
from synapse_python._proto.synapse.v1 import lane_pb2

HEADER = struct.Struct(">I")
"""A frame's length, ahead of it."""

FRAME_SLACK = 64 * 1024
"""Room for a frame's own fields around a message of the maximum size."""

LaneFrame = lane_pb2.LaneFrame
LaneStatus = lane_pb2.LaneStatus

DEADLINE_EXCEEDED = (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
"""How a call whose deadline passed ends, in grpc's words."""

METHOD_NOT_FOUND = "Method not found!"
"""How a call of a method the worker does not serve ends UNIMPLEMENTED, in grpc's words."""

WORKER_STOPPING = "the worker is stopping"
"""Why the calls the worker's stop cuts short end UNAVAILABLE."""


class Refused(Exception):
    """Ends a call answered at once with a status, as `abort` ends a handler's:
    `code`, `details`, and the `synapse-error-bin` entry of `trailing_metadata`."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details
        # As given, for a gRPC handler to `abort` with; `detail` for the lane's status.
        self.trailing_metadata = tuple(trailing_metadata)
        self.detail = error_detail(trailing_metadata)


def error_detail(trailing_metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes:
    """The serialized `ErrorDetail` a status carries in its trailing metadata (or none)."""
    for key, value in trailing_metadata or ():
        if key == ERROR_METADATA_KEY and isinstance(value, bytes):
            return value
    return b""


class ProtocolError(Exception):
    """The client broke the lane protocol: its connection is closed."""


def frame_too_long(length: int, limit: int) -> ProtocolError:
    """The error for a frame of `length` bytes, over the connection's `limit`."""
    return ProtocolError(f"a frame of {length} bytes, over the maximum of {limit}")


def too_large(direction: str, size: int, limit: int) -> str:
    """grpc's own words for a message over the maximum size."""
    return f"{direction} message larger than max ({size} vs. {limit})"


def unexpected(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status a handler's unexpected exception ends its call with (grpc's words)."""
    return grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}"


def status_frame(call_id: int, code: grpc.StatusCode, message: str, detail: bytes = b"") -> bytes:
    """The frame, length included, that ends call `call_id` with a status."""
    status = LaneStatus(code=code.value[0], message=message, detail=detail)
    return framed(LaneFrame(call=call_id, status=status))


def framed(frame: lane_pb2.LaneFrame) -> bytes:
    """`frame` as it goes on the socket: its length, then itself."""
    data = frame.SerializeToString()
    return HEADER.pack(len(data)) + data
