"""Synapse's Python side: pydantic-ai agents served over gRPC to the BEAM.

A `Worker` hosts agents (from "module:attr" references, specs sent by Elixir, or
agent objects) behind a grpc.aio server speaking `synapse.v1.AgentService`;
`serve` runs one until SIGTERM/SIGINT and is what `python -m
synapse_python.worker` calls.
"""

from synapse_python._worker import DEFAULT_SHUTDOWN_GRACE, Worker, serve

__version__ = "0.1.0"

__all__ = ["DEFAULT_SHUTDOWN_GRACE", "Worker", "__version__", "serve"]
