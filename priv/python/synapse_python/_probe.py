"""`synapse.v1.ProbeService`: round trips with no agent in them, for probes and benchmarks."""

from __future__ import annotations

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from synapse_python import _server
from synapse_python._proto.synapse.v1 import probe_pb2

SERVICE: ServiceDescriptor = probe_pb2.DESCRIPTOR.services_by_name["ProbeService"]
SERVICE_NAME: str = SERVICE.full_name


class ProbeService:
    """Answers what it is sent: the bare cost of a call (no decorator, no logging)."""

    async def Echo(  # named as in probe.proto
        self, request: probe_pb2.EchoRequest, context: grpc.aio.ServicerContext
    ) -> probe_pb2.EchoReply:
        return probe_pb2.EchoReply(payload=request.payload)

    async def EchoStream(  # named as in probe.proto
        self, request: probe_pb2.EchoStreamRequest, context: grpc.aio.ServicerContext
    ) -> None:
        reply = probe_pb2.EchoReply(payload=request.payload)
        for _ in range(request.count):
            await context.write(reply)


def method_table() -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers, by method name."""
    return _server.method_table(SERVICE, ProbeService())
