"""`Worker` (hosts agents behind a grpc.aio server) and `serve` (runs one until signalled)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from pydantic_ai import Agent
from pydantic_ai.agent import AbstractAgent

from synapse_python import (
    _agents,
    _auth,
    _heap,
    _lane,
    _logging,
    _probe,
    _server,
    _service,
    _threads,
)
from synapse_python._busy_wait import MAX_BUSY_WAIT_US
from synapse_python._server import DEFAULT_SHUTDOWN_GRACE

if TYPE_CHECKING:
    from synapse_python.bridge import BridgeService

logger = logging.getLogger("synapse_python.worker")

# How much longer than the grace `stop` waits for grpc to wind down before
# giving up on it: a worker asked to stop must exit, not hang.
_STOP_SLACK = 5.0

MAX_STUCK_THREADS_ENV = "SYNAPSE_MAX_STUCK_THREADS"
DEFAULT_MAX_STUCK_THREADS = 10

AGENT_HEALTH_PREFIX = "synapse.agent/"
"""The health service `<prefix><agent_id>`: the worker's own status while it hosts that agent.

A worker that does not (it was restarted at the same address, so the client's
connection came back to a process that never loaded it) answers NOT_FOUND: the
client then loads the agent again, where the worker's own health would pass.
"""

BRIDGE_HEALTH_PREFIX = "synapse.bridge.module/"
"""The health service `<prefix><module>` reports the bridge of the Python module `module`.

Bridge services are named by their proto package, which a client that attaches
to a worker by module name (SynapseCore's `module:`) does not know: this name
lets it check that the worker serves that module before it sends calls.
"""


class _HealthServicer(health_aio.HealthServicer):
    """gRPC's health service, which also answers for each agent (`AGENT_HEALTH_PREFIX`).

    Read from the registry at each check, not kept in the status table: a load
    is visible to the very next check, with no update to await.
    """

    def __init__(self, registry: _agents.AgentRegistry) -> None:
        super().__init__()
        self._registry = registry

    async def Check(  # named as in health.proto
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service.startswith(AGENT_HEALTH_PREFIX):
            agent_id = request.service.removeprefix(AGENT_HEALTH_PREFIX)
            if self._registry.get(agent_id) is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no agent loaded with id {agent_id!r}"
                )
            request = health_pb2.HealthCheckRequest()
        return await super().Check(request, context)


class Worker:
    """Hosts pydantic-ai agents and serves them as `synapse.v1.AgentService` over gRPC.

    One worker is one grpc.aio server on one event loop: every run is a
    coroutine on that loop, so N concurrent calls are N concurrent runs. The
    standard gRPC health service reports SERVING for "", the agent service and
    every bridge service (`load_bridge`) while it runs.

    Sync tools, and the sync functions of bridges (but `on_loop` ones), run
    in a bounded pool of threads (`_threads.SyncThreads`). One still running
    after its call ended (timed out, cancelled) holds its thread, stuck,
    until it returns: Python cannot stop it. Past
    `max_stuck_threads` stuck threads the worker reports NOT_SERVING, so
    that its process manager replaces it once its other calls are done; the
    number is reported as a status record (`_logging.report_status`).

        worker = Worker()
        await worker.load_agent("support", "my_app.agents:support_agent")
        address = await worker.start("unix:/run/me/worker.sock")
        ...
        await worker.stop()

    A worker on TCP needs TLS and a bearer token:

        worker = Worker(tls_cert="cert.pem", tls_key="key.pem", token=secret)
        address = await worker.start("tcp://127.0.0.1:0")   # "tcp://127.0.0.1:PORT"
    """

    def __init__(
        self,
        *,
        max_message_bytes: int | None = None,
        tls_cert: _auth.PemSource | None = None,
        tls_key: _auth.PemSource | None = None,
        token: str | _auth.BearerToken | None = None,
        max_stuck_threads: int | None = None,
        busy_wait_us: int = 0,
    ) -> None:
        """`max_message_bytes` caps gRPC messages both ways.

        It defaults to `SYNAPSE_MAX_MESSAGE_BYTES` or the contract's 64 MiB: message histories
        grow with a conversation and gRPC's own 4 MiB default is too small.

        `tls_cert` (the server's certificate chain) and `tls_key` (its private
        key), given together, make the server speak TLS, whatever the address;
        each is PEM `bytes` or the path (`str` or path-like) of a PEM file, read
        here. With `token` (printable ASCII, no whitespace) every call, health
        checks included, must carry the metadata `authorization: Bearer
        <token>` or is refused UNAUTHENTICATED. A TCP address requires both
        (see `start`). Neither the token nor the key shows in this object's
        repr, in logs or in errors.

        `max_stuck_threads` defaults to `SYNAPSE_MAX_STUCK_THREADS` or 10.

        `busy_wait_us` is how long the thread reading a lane connection of
        sync Bridge calls polls for the next one before it sleeps (0: never;
        see `_busy_wait`): the worker command gives what it gives its event
        loop.
        """
        if not 0 <= busy_wait_us <= MAX_BUSY_WAIT_US:
            raise ValueError(
                f"busy_wait_us must be from 0 to {MAX_BUSY_WAIT_US}, got {busy_wait_us}"
            )
        self._busy_wait_us = busy_wait_us
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        self._tls = (
            _auth.TlsCredentials.load(tls_cert, tls_key)
            if tls_cert is not None and tls_key is not None
            else None
        )
        self._token = _auth.bearer_token(token)
        self._registry = _agents.AgentRegistry()
        self._max_message_bytes = max_message_bytes or _server.max_message_bytes_from_env()
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._endpoint: _server.Endpoint | None = None
        self._owned_directory: str | None = None
        self._address: str | None = None
        self._lane: _lane.LaneServer | None = None
        self._bridges: dict[str, BridgeService] = {}
        self._max_stuck_threads = (
            max_stuck_threads if max_stuck_threads is not None else _max_stuck_threads_from_env()
        )
        self._sync_threads = _threads.SyncThreads(on_stuck=self._on_stuck)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._healthy = True
        self._health_update: asyncio.Future[None] | None = None
        # Set by `serve`, whose process is the worker's own: what it loads
        # is then settled out of the collector's way (`_heap`).
        self._owns_process = False

    def __repr__(self) -> str:
        return (
            f"<Worker address={self._address!r} tls={self._tls is not None} "
            f"token={'required' if self._token is not None else 'none'}>"
        )

    @property
    def address(self) -> str | None:
        """`unix:/abs/path` or `tcp://host:port` once started, else None."""
        return self._address

    async def load_agent(
        self,
        agent_id: str,
        source: str | AbstractAgent[Any, Any],
        *,
        model: str | None = None,
        deps_factory: str | Callable[..., Any] | None = None,
    ) -> None:
        """Host `source` under `agent_id`, replacing any agent with that id.

        `source` is an agent or a "package.module:attr" reference to one (or to
        a zero-argument factory returning one). `model` overrides the agent's
        model on every run. `deps_factory` makes each run's deps from the
        caller's data (see `synapse_python._deps`). Raises the underlying
        exception if loading fails.
        """
        self._registry.put(
            await _agents.load(agent_id, source, model=model, deps_factory=deps_factory)
        )

    def _loaded(self) -> None:
        """After an agent is loaded: a process of the worker's own settles its heap."""
        if self._owns_process:
            _heap.settle()

    def load_bridge(self, bridge: str | BridgeService) -> BridgeService:
        """Serve a generated Synapse Bridge too (before `start`).

        `bridge` is the bridged Python module's name (`my_module`): its
        generated server module `synapse_bridge_my_module` is imported from
        PYTHONPATH (it imports `my_module`, which must be importable too) and
        its `SERVICE` served. Or a `BridgeService` itself. Import errors, and a
        `StaleBridgeError` when the generated files no longer match the module,
        propagate.
        """
        if self._server is not None:
            raise RuntimeError("bridges must be loaded before the worker starts")
        if isinstance(bridge, str):
            from synapse_python.bridge import BridgeService, server_module_name

            generated = importlib.import_module(server_module_name(bridge))
            service = getattr(generated, "SERVICE", None)
            if not isinstance(service, BridgeService):
                raise TypeError(
                    f"{generated.__name__}.SERVICE is not a BridgeService; regenerate the bridge"
                )
            bridge = service
        self._bridges[bridge.name] = bridge
        return bridge

    async def start(
        self,
        listen: str | None = None,
        *,
        allow_remote: bool = False,
        lane: str | None = None,
    ) -> str:
        """Bind and start serving; returns the address clients connect to.

        `listen` is `unix:PATH` (its directory must exist, and should be 0700)
        or `tcp://HOST:PORT` (port 0 picks a free port; TLS and a token are
        required, see `Worker`, and non-loopback hosts need `allow_remote`
        too). Without it the socket goes in a fresh private directory, removed
        again by `stop`. An address it refuses raises `ValueError`, one it
        cannot bind (a port in use) a `RuntimeError` saying why.

        `lane` (`unix:PATH`) serves every method on the local lane too
        (`synapse_python._lane`): the same calls for a client on this machine,
        at a fraction of a gRPC call's cost.
        """
        if self._server is not None:
            raise RuntimeError("worker already started")
        lane_endpoint = _server.parse_listen(lane) if lane else None
        if lane_endpoint is not None and lane_endpoint.scheme != "unix":
            raise ValueError(f"the lane must be a Unix socket (unix:PATH), got {lane!r}")
        if listen:
            endpoint, owned_directory = (
                _server.parse_listen(listen, allow_remote=allow_remote),
                None,
            )
            missing = _server.missing_for_tcp(
                endpoint, tls=self._tls is not None, token=self._token is not None
            )
            if missing:
                raise ValueError(
                    f"a TCP worker needs TLS (tls_cert and tls_key) and a bearer token "
                    f"(token); missing: {' and '.join(missing)}"
                )
        else:
            endpoint, owned_directory = _server.private_endpoint()
        server = grpc.aio.server(
            options=_server.server_options(self._max_message_bytes),
            interceptors=[_auth.TokenInterceptor(self._token)] if self._token is not None else None,
        )
        health = _HealthServicer(self._registry)
        services = self._services(health)
        for name, table in services.items():
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, table),))
            server.add_registered_method_handlers(name, table)
        lane_server = None
        try:
            port = _server.bind(
                server, endpoint, self._tls.server_credentials() if self._tls else None
            )
            # The servers' calls run in contexts copied from this one now
            # (the lane's: from its listening socket's): each runs its sync
            # tools in the worker's threads.
            with Agent.using_thread_executor(self._sync_threads):
                await server.start()
                if lane_endpoint is not None:
                    lane_server = _lane.LaneServer(
                        {
                            f"/{name}/{method}": handler
                            for name, table in services.items()
                            for method, handler in table.items()
                        },
                        max_message_bytes=self._max_message_bytes,
                        token=self._token,
                        threads=self._sync_threads,
                        busy_wait=self._busy_wait_us / 1e6,
                    )
                    await lane_server.start(lane_endpoint.path)
            for service in self._health_services():
                await health.set(service, health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            if lane_server is not None:
                await lane_server.stop(None)
            await server.stop(None)
            _server.cleanup(endpoint, owned_directory)
            raise
        self._server, self._health, self._lane = server, health, lane_server
        self._loop = asyncio.get_running_loop()
        _logging.report_status(stuck_threads=self._sync_threads.stuck)
        self._endpoint, self._owned_directory = endpoint, owned_directory
        self._address = endpoint.announced(port)
        logger.info(
            "serving %s on %s (%s, %s)%s",
            ", ".join([_service.SERVICE_NAME, *self._bridges]),
            self._address,
            "TLS" if self._tls else "no TLS",
            "bearer token required" if self._token is not None else "no token",
            f", and on the lane {lane}" if lane_endpoint is not None else "",
        )
        return self._address

    def _services(
        self, health: health_aio.HealthServicer
    ) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        """Every service this worker serves: method handlers by method name, by service."""
        services = _ServiceTables()
        _, table = _service.generic_handler(
            _service.AgentService(
                self._registry, loaded=self._loaded, max_message_bytes=self._max_message_bytes
            )
        )
        services.add_registered_method_handlers(_service.SERVICE_NAME, table)
        services.add_registered_method_handlers(_probe.SERVICE_NAME, _probe.method_table())
        for name, bridge in self._bridges.items():
            _, bridge_table = bridge.handlers(self._sync_threads)
            services.add_registered_method_handlers(name, bridge_table)
        health_pb2_grpc.add_HealthServicer_to_server(health, services)
        return services.tables

    async def stop(self, grace: float | None = DEFAULT_SHUTDOWN_GRACE) -> None:
        """Stop serving: refuse new calls, give in-flight runs `grace` seconds, cancel the rest.

        Health turns NOT_SERVING first, so watchers see the shutdown. The socket
        (and the private directory, if the worker made it) is removed. Calling
        it again, or on a worker never started, does nothing.
        """
        server, self._server = self._server, None
        if server is None:
            return
        assert self._health is not None and self._endpoint is not None
        lane, self._lane = self._lane, None
        try:
            await self._health.enter_graceful_shutdown()
            timeout = (grace or 0.0) + _STOP_SLACK
            stopping = [server.stop(grace)] + ([lane.stop(grace)] if lane is not None else [])
            try:
                await asyncio.wait_for(asyncio.gather(*stopping), timeout)
            except TimeoutError:
                logger.warning("the servers did not stop within %.1f s; exiting anyway", timeout)
        finally:
            self._sync_threads.shutdown()
            _server.cleanup(self._endpoint, self._owned_directory)
            self._address = None
            logger.info("stopped")

    @property
    def stuck_threads(self) -> int:
        """Threads of sync tools or Bridge functions still running after their call ended."""
        return self._sync_threads.stuck

    def _health_services(self) -> tuple[str, ...]:
        modules = (BRIDGE_HEALTH_PREFIX + bridge.ir.module for bridge in self._bridges.values())
        return ("", _service.SERVICE_NAME, *self._bridges, *modules)

    def _on_stuck(self, stuck: int) -> None:
        # From any thread: the health service lives on the event loop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stuck_changed, stuck)

    def _stuck_changed(self, stuck: int) -> None:
        _logging.report_status(stuck_threads=stuck)
        healthy = stuck <= self._max_stuck_threads
        if healthy == self._healthy or self._health is None or self._server is None:
            return
        self._healthy = healthy
        if healthy:
            logger.info("%d threads are stuck: healthy again", stuck)
            status = health_pb2.HealthCheckResponse.SERVING
        else:
            logger.error(
                "%d threads are stuck (sync tools or Bridge functions still running after "
                "their call ended), more than %d: reporting NOT_SERVING so that the worker "
                "is replaced",
                stuck,
                self._max_stuck_threads,
            )
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        self._health_update = asyncio.ensure_future(self._set_health(self._health, status))

    async def _set_health(self, health: health_aio.HealthServicer, status: int) -> None:
        for service in self._health_services():
            await health.set(service, status)

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class _ServiceTables:
    """Collects method tables as a grpc server would be given them (generated `add_*_to_server`)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the registered tables below hold the same handlers

    def add_registered_method_handlers(
        self, service: str, table: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.tables[service] = dict(table)


def _max_stuck_threads_from_env() -> int:
    raw = os.environ.get(MAX_STUCK_THREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_STUCK_THREADS
    if not raw.isdigit():
        raise ValueError(f"{MAX_STUCK_THREADS_ENV} must be a non-negative integer, got {raw!r}")
    return int(raw)


async def serve(
    listen: str | None = None,
    *,
    agents: Mapping[str, str] | None = None,
    bridges: Sequence[str] = (),
    allow_remote: bool = False,
    grace: float = DEFAULT_SHUTDOWN_GRACE,
    max_message_bytes: int | None = None,
    tls_cert: _auth.PemSource | None = None,
    tls_key: _auth.PemSource | None = None,
    token: str | _auth.BearerToken | None = None,
    lane: str | None = None,
    busy_wait_us: int = 0,
) -> None:
    """Run a worker until SIGTERM or SIGINT, announcing readiness on stdout.

    `agents` maps ids to "module:attr" references loaded before the worker
    serves, and `bridges` names the Python modules whose generated Synapse
    Bridge it serves too (see `Worker.load_bridge`); if one fails, its
    exception propagates and nothing is served. Once
    the server accepts connections, exactly one line `SYNAPSE_READY <address>`
    is printed to stdout, which is what the process manager waits for. A signal
    stops the worker gracefully (see `Worker.stop`) and `serve` returns.
    `tls_cert`, `tls_key`, `token` (required for TCP) and `busy_wait_us` are
    `Worker`'s; `lane` is `Worker.start`'s.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if stopping.is_set():
            logger.info("%s received while already stopping", signum.name)
        else:
            logger.info("%s received, stopping", signum.name)
            stopping.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        worker = Worker(
            max_message_bytes=max_message_bytes,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=token,
            busy_wait_us=busy_wait_us,
        )
        loop.set_default_executor(_DefaultExecutor(worker._sync_threads))
        for agent_id, ref in (agents or {}).items():
            await worker.load_agent(agent_id, ref)
            logger.info("loaded agent %r from %s", agent_id, ref)
        for module in bridges:
            service = worker.load_bridge(module)
            logger.info("loaded the bridge of %s (%s)", module, service.name)
        if stopping.is_set():
            return
        address = await worker.start(listen, allow_remote=allow_remote, lane=lane)
        # Everything imported and loaded so far (agents, bridged modules) lives
        # as long as the process: out of the collector's way before any call.
        worker._owns_process = True
        _heap.settle()
        try:
            _server.announce_ready(address)
            await stopping.wait()
        finally:
            await worker.stop(grace)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        # The worker's threads are shut down: later calls get a pool of their own.
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())


class _DefaultExecutor(concurrent.futures.ThreadPoolExecutor):
    """The event loop's default executor under `serve`: the worker's own threads.

    What user code hands to it (`asyncio.to_thread`, `run_in_executor(None,
    ...)`) then runs as sync tools do: a call abandoned while it runs is
    counted as stuck (`Worker.stuck_threads`), and, those threads being
    daemon threads, it never keeps the stopped worker from exiting.
    asyncio's own pool would: `asyncio.run` waits for its threads when the
    loop closes, and so does Python at exit, forever for a call that never
    returns. A `ThreadPoolExecutor` only because the loop accepts no other
    kind; it starts no thread of its own.
    """

    def __init__(self, threads: _threads.SyncThreads) -> None:
        super().__init__(max_workers=1)
        self._sync_threads = threads

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        return self._sync_threads.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # `Worker.stop` shuts the threads down; waiting for a stuck one is
        # what this executor is here to avoid.
        super().shutdown(wait=False)
