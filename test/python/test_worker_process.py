"""`python -m synapse_python.worker` as the process manager runs it, and the health service."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from conftest import TOKEN, AgentClient, Served, TlsFiles, error_detail, tls_channel
from synapse_python import _heap
from synapse_python._errors import kind_name

REPO = Path(__file__).resolve().parents[2]
SERVICE = "synapse.v1.AgentService"
SERVING = health_pb2.HealthCheckResponse.SERVING
TOKEN_ENV = "SYNAPSE_WORKER_TOKEN"


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    stderr_path: Path

    async def ready_address(self) -> str:
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line.startswith(b"SYNAPSE_READY "), (line, self.stderr())
        return line.decode().removeprefix("SYNAPSE_READY ").rstrip("\n")

    async def exit_code(self) -> int:
        return await asyncio.wait_for(self.process.wait(), 15)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


@asynccontextmanager
async def worker_process(
    tmp_path: Path, *args: str, pythonpath: str | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[WorkerProcess]:
    """The worker with `args`; `env` adds to (never inherits SYNAPSE_WORKER_TOKEN from) ours."""
    default_path = os.pathsep.join(
        [str(REPO / "priv" / "python"), str(REPO / "test" / "support" / "python")]
    )
    inherited = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    env = {**inherited, "PYTHONPATH": pythonpath or default_path, **(env or {})}
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "synapse_python.worker",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        yield WorkerProcess(process, stderr_path)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_default_socket_readiness_and_sigterm(tmp_path: Path) -> None:
    async with worker_process(
        tmp_path,
        "--agent",
        "echo=synapse_fixtures.agents:echo_agent",
        "--agent",
        "slow=synapse_fixtures.agents:slow_agent",
        "--grace",
        "0.5",
    ) as worker:
        address = await worker.ready_address()
        socket = Path(address.removeprefix("unix:"))
        assert address.startswith("unix:/")
        assert socket.name == "worker.sock"
        assert socket.parent.name.startswith("synapse-")
        assert stat.S_ISSOCK(socket.stat().st_mode)
        assert mode(socket.parent) == 0o700
        assert mode(socket) == 0o600

        async with grpc.aio.insecure_channel(address) as channel:
            client = AgentClient(channel)
            # Right after the readiness line, without waiting for the channel to get ready.
            for service in ("", SERVICE):
                health = await client.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert health.status == SERVING
            assert (await client.run_sync("echo", "hi")).text == "success (no tool calls)"

            in_flight = client.run_sync_call("slow", "60", timeout=60)
            await asyncio.sleep(0.3)
            signalled = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await in_flight
            assert raised.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
            assert await worker.exit_code() == 0, worker.stderr()

        assert time.monotonic() - signalled < 5
        assert not socket.exists()
        assert not socket.parent.exists()
        assert await worker.process.stdout.read() == b""
        assert "run of agent 'slow' cancelled: its call ended first" in worker.stderr()


async def test_given_unix_socket_and_sigint(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    socket = directory / "worker.sock"

    async with worker_process(tmp_path, "--listen", f"unix:{socket}") as worker:
        assert await worker.ready_address() == f"unix:{socket}"
        assert mode(socket) == 0o600
        async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
            client = AgentClient(channel)
            await client.load_agent("echo", ref="synapse_fixtures.agents:echo_agent")
            assert (await client.run_sync("echo", "hi")).text == "success (no tool calls)"

        worker.process.send_signal(signal.SIGINT)
        assert await worker.exit_code() == 0, worker.stderr()

    assert not socket.exists()
    assert directory.is_dir()  # not ours to remove


@pytest.mark.parametrize("quiet", [True, False])
async def test_a_runs_response_headers_come_as_it_starts(tmp_path: Path, quiet: bool) -> None:
    # Not with its first event, which a quiet run sends last: a client's
    # HTTP/2 stack holds what waits for them (see `_service._headers_now`).
    async with worker_process(
        tmp_path, "--agent", "slow=synapse_fixtures.agents:slow_agent"
    ) as worker:
        address = await worker.ready_address()
        async with grpc.aio.insecure_channel(address) as channel:
            call = await AgentClient(channel).start_run("slow", "30", deadline=60, quiet=quiet)

            async with asyncio.timeout(10):
                await call.initial_metadata()

            assert not call.done()
            call.cancel()


async def test_sigterm_exits_although_a_default_executor_call_never_returns(
    tmp_path: Path,
) -> None:
    # asyncio.run would wait for that thread when the loop closes, and
    # Python again at exit: the worker logged "stopped" and never exited.
    async with worker_process(
        tmp_path, "--agent", "stuck=synapse_fixtures.faults:stuck_executor_agent"
    ) as worker:
        await worker.ready_address()
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_code() == 0, worker.stderr()


def tls_args(tls: TlsFiles) -> tuple[str, ...]:
    return ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))


async def test_tcp_with_tls_and_the_token_from_the_environment(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    async with worker_process(
        tmp_path,
        "--listen",
        "tcp://127.0.0.1:0",
        *tls_args(tls_files),
        "--agent",
        "echo=synapse_fixtures.agents:echo_agent",
        env={TOKEN_ENV: f"{TOKEN}\n", "SYNAPSE_LOG_LEVEL": "DEBUG"},
    ) as worker:
        address = await worker.ready_address()
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        assert (host, port.isdigit(), port != "0") == ("127.0.0.1", True, True)

        async with tls_channel(address, tls_files, TOKEN) as channel:
            client = AgentClient(channel)
            for service in ("", SERVICE):
                health = await client.health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert health.status == SERVING
            assert (await client.run_sync("echo", "hi")).text == "success (no tool calls)"
        for token in (None, "wrong"):
            async with tls_channel(address, tls_files, token) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await AgentClient(channel).run_sync("echo", "hi")
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert kind_name(error_detail(raised.value).kind) == "unauthenticated"
        async with grpc.aio.insecure_channel(address.removeprefix("tcp://")) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await AgentClient(channel).health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_code() == 0, worker.stderr()

    stderr = worker.stderr()
    assert "refused /synapse.v1.AgentService/RunSync" in stderr
    assert TOKEN not in stderr


async def test_a_port_in_use_is_one_line_saying_so(tmp_path: Path, tls_files: TlsFiles) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with worker_process(
            tmp_path,
            "--listen",
            f"tcp://127.0.0.1:{port}",
            *tls_args(tls_files),
            env={TOKEN_ENV: TOKEN},
        ) as worker:
            # EX_CONFIG: starting it again at the same address will not help.
            assert await worker.exit_code() == 78
            assert await worker.process.stdout.read() == b""
    stderr = worker.stderr()
    assert f"cannot listen on tcp://127.0.0.1:{port}: Address already in use" in stderr
    assert "Traceback" not in stderr


async def test_the_token_from_a_file_on_a_unix_socket(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    token_file.chmod(0o600)
    # --token-file wins over the environment.
    async with worker_process(
        tmp_path, "--token-file", str(token_file), env={TOKEN_ENV: "ignored"}
    ) as worker:
        address = await worker.ready_address()
        async with grpc.aio.insecure_channel(address) as channel:
            health = AgentClient(channel).health
            request = health_pb2.HealthCheckRequest()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await health.Check(request, timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            bearer = (("authorization", f"Bearer {TOKEN}"),)
            assert (await health.Check(request, metadata=bearer, timeout=5)).status == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await health.Check(request, metadata=(("authorization", "Bearer ignored"),))
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED

        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_code() == 0, worker.stderr()
    assert TOKEN not in worker.stderr()


@pytest.fixture
def other_key(tmp_path: Path) -> Path:
    """A private key that is not the one of `tls_files.cert`."""
    path = tmp_path / "other-key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True
    )
    return path


async def test_bad_security_options_are_usage_errors(
    tmp_path: Path, tls_files: TlsFiles, other_key: Path
) -> None:
    """Each case is a worker that must exit 2 with its message; they run concurrently."""
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "spaced").write_text("two words\n")
    tcp = ("--listen", "tcp://127.0.0.1:0")
    tls = ("--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key))
    token = {TOKEN_ENV: TOKEN}
    needs = "a TCP worker requires TLS and a bearer token; missing "
    cases: list[tuple[tuple[str, ...], dict[str, str], str]] = [
        (tcp, {}, needs + "TLS (--tls-cert and --tls-key) and a bearer token "),
        (tcp, token, needs + "TLS (--tls-cert and --tls-key)\n"),
        ((*tcp, *tls), {}, needs + "a bearer token (--token-file or SYNAPSE_WORKER_TOKEN)\n"),
        ((*tcp, *tls), {TOKEN_ENV: "  \n"}, needs + "a bearer token"),
        (("--listen", "tcp://0.0.0.0:0", *tls), token, "--allow-remote"),
        (("--listen", "tcp://0.0.0.0:0", "--allow-remote"), token, needs + "TLS "),
        (
            ("--tls-cert", str(tls_files.cert)),
            {},
            "--tls-cert and --tls-key must be given together",
        ),
        (
            (*tcp, "--tls-cert", str(tmp_path / "spaced"), "--tls-key", str(tls_files.key)),
            token,
            "is not PEM",
        ),
        (
            (*tcp, "--tls-cert", str(tls_files.cert), "--tls-key", str(other_key)),
            token,
            "not a usable certificate and key: KEY_VALUES_MISMATCH",
        ),
        (("--token-file", "absent"), {}, "--token-file: cannot read absent"),
        (("--token-file", str(tmp_path / "empty")), token, "the bearer token is empty"),
        (("--token-file", str(tmp_path / "spaced")), {}, "printable ASCII without whitespace"),
        ((), {TOKEN_ENV: "two words"}, f"{TOKEN_ENV}: the bearer token must be printable ASCII"),
        (("--token", "two words"), {}, "--token is not accepted"),
        (("--token=two words",), {}, "--token is not accepted"),
        (("--token-f", str(tmp_path / "spaced")), {}, "unrecognized arguments: --token-f"),
    ]

    async def check(case: int, args: tuple[str, ...], env: dict[str, str], message: str) -> None:
        directory = tmp_path / f"case{case}"
        directory.mkdir()
        async with worker_process(directory, *args, env=env) as worker:
            assert await worker.exit_code() == 2, (args, worker.stderr())
            assert await worker.process.stdout.read() == b""
            stderr = worker.stderr()
            assert message in stderr, (args, stderr)
            assert TOKEN not in stderr and "two words" not in stderr, (args, stderr)

    await asyncio.gather(*(check(case, *spec) for case, spec in enumerate(cases)))


@pytest.mark.parametrize("grace", ["-1", "nan", "inf"])
async def test_a_grace_that_is_not_a_finite_duration_is_a_usage_error(
    tmp_path: Path, grace: str
) -> None:
    # `inf` would let one hung run keep the worker from ever stopping.
    async with worker_process(tmp_path, f"--grace={grace}") as worker:
        assert await worker.exit_code() == 2, worker.stderr()
        assert await worker.process.stdout.read() == b""
        assert "--grace: must be a finite, non-negative number of seconds" in worker.stderr()


@pytest.mark.parametrize("lane", ["unix:", "tcp://127.0.0.1:0", ""])
async def test_a_lane_that_is_not_a_unix_socket_path_is_a_usage_error(
    tmp_path: Path, lane: str
) -> None:
    async with worker_process(tmp_path, f"--lane={lane}") as worker:
        assert await worker.exit_code() == 2, worker.stderr()
        assert await worker.process.stdout.read() == b""
        assert f"--lane must be unix:PATH, got {lane!r}" in worker.stderr()


async def test_refuses_non_loopback_tcp_without_allow_remote(tmp_path: Path) -> None:
    async with worker_process(tmp_path, "--listen", "tcp://0.0.0.0:0") as worker:
        assert await worker.exit_code() == 2
        assert await worker.process.stdout.read() == b""
        assert "--allow-remote" in worker.stderr()


async def test_an_agent_that_does_not_load_stops_the_worker_before_readiness(
    tmp_path: Path,
) -> None:
    async with worker_process(
        tmp_path, "--agent", "broken=synapse_fixtures.broken_import:agent"
    ) as worker:
        # EX_CONFIG: starting it again will not help.
        assert await worker.exit_code() == 78
        assert await worker.process.stdout.read() == b""
        assert "RuntimeError: boom at import" in worker.stderr()


async def loop_report(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """What `synapse_fixtures.event_loop`'s agent reports of a worker process's event loop."""
    async with worker_process(tmp_path, env=env) as worker:
        address = await worker.ready_address()
        async with grpc.aio.insecure_channel(address) as channel:
            client = AgentClient(channel)
            await client.load_agent("loop", ref="synapse_fixtures.event_loop:loop_agent")
            return json.loads((await client.run_sync("loop", "hi")).text)


@pytest.mark.parametrize(("value", "expected"), [("", 100), ("250", 250), ("0", None)])
async def test_the_event_loop_polls_before_it_sleeps_for_what_the_environment_says(
    tmp_path: Path, value: str, expected: int | None
) -> None:
    report = await loop_report(tmp_path, {"SYNAPSE_BUSY_WAIT_US": value})
    assert report == {"busy_wait_us": expected}  # None: asyncio's own selector


@pytest.mark.parametrize("value", ["abc", "-5", "10001"])
async def test_a_busy_wait_that_is_no_number_of_microseconds_stops_the_worker_before_readiness(
    tmp_path: Path, value: str
) -> None:
    async with worker_process(tmp_path, env={"SYNAPSE_BUSY_WAIT_US": value}) as worker:
        # EX_CONFIG: starting it again will not help.
        assert await worker.exit_code() == 78
        assert await worker.process.stdout.read() == b""
    stderr = worker.stderr()
    assert (
        "SYNAPSE_BUSY_WAIT_US must be an integer from 0 to 10000 (microseconds), "
        f"got {value!r}" in stderr
    )
    assert "Traceback" not in stderr


async def heap_report(tmp_path: Path, ref: str) -> dict[str, Any]:
    """What `synapse_fixtures.heap`'s agent, loaded from `ref` in a worker process, reports."""
    # Loaded by RPC once the worker serves, as SynapseCore.Worker loads agents.
    async with worker_process(tmp_path) as worker:
        address = await worker.ready_address()
        async with grpc.aio.insecure_channel(address) as channel:
            client = AgentClient(channel)
            await client.load_agent("heap", ref=ref)
            return json.loads((await client.run_sync("heap", "hi")).text)


async def test_what_the_worker_loads_is_kept_out_of_the_collectors_walks(tmp_path: Path) -> None:
    report = await heap_report(tmp_path, "synapse_fixtures.heap:heap_agent")
    assert report["agent_frozen"] is True
    assert report["frozen_objects"] > 10_000  # pydantic-ai and the rest, frozen at start
    assert report["thresholds"] == [_heap.YOUNG_THRESHOLD, *gc.get_threshold()[1:]]


async def test_the_collectors_thresholds_set_by_the_users_code_are_kept(tmp_path: Path) -> None:
    report = await heap_report(tmp_path, "synapse_fixtures.heap:tuned_heap_agent")
    assert report["agent_frozen"] is True
    assert report["thresholds"] == [1234, 5, 6]


async def test_an_embedded_worker_leaves_its_programs_collector_alone(served: Served) -> None:
    await served.client.load_agent("heap", ref="synapse_fixtures.heap:heap_agent")
    report = json.loads((await served.client.run_sync("heap", "hi")).text)
    assert report == {
        "agent_frozen": False,
        "frozen_objects": 0,
        "thresholds": list(gc.get_threshold()),
    }
    assert gc.get_threshold()[0] < _heap.YOUNG_THRESHOLD  # this process's, untouched
