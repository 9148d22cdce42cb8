"""Synapse's Python side: pydantic-ai agents served over gRPC to the BEAM.

A `Worker` hosts agents (from "module:attr" references, specs sent by Elixir, or
agent objects) behind a grpc.aio server speaking `synapse.v1.AgentService`;
`serve` runs one until SIGTERM/SIGINT and is what `python -m
synapse_python.worker` calls. `synapse_python.bridge` generates and serves
typed bridges of plain Python functions.

The worker is imported on first use, so that the bridge generator (`python -m
synapse_python.bridge`) starts without loading pydantic-ai.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synapse_python._worker import DEFAULT_SHUTDOWN_GRACE, Worker, serve

__version__ = "0.1.0"

__all__ = ["DEFAULT_SHUTDOWN_GRACE", "Worker", "__version__", "serve"]

_WORKER_NAMES = ("DEFAULT_SHUTDOWN_GRACE", "Worker", "serve")


def __getattr__(name: str) -> Any:
    if name in _WORKER_NAMES:
        from synapse_python import _worker

        return getattr(_worker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
