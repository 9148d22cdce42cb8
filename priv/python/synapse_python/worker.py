"""Command line entry point of a worker process: `python -m synapse_python.worker`.

    python -m synapse_python.worker [--listen unix:PATH | tcp://HOST:PORT] [--lane unix:PATH]
                                    [--agent ID=package.module:attr]... [--bridge MODULE]...
                                    [--tls-cert PEM --tls-key PEM] [--token-file PATH]
                                    [--allow-remote] [--grace SECONDS]

`--bridge my_module` serves the Synapse Bridge generated for the Python module
`my_module` (`python -m synapse_python.bridge generate --module my_module --out
DIR`): DIR (holding `synapse_bridge_my_module.py`, `my_module.ir.json` and
`my_module.desc`) and the directory `my_module` is imported from must be on
PYTHONPATH.

`--lane unix:PATH` serves every method on the local lane as well
(`proto/synapse/v1/lane.proto`): the same calls, for a client on this machine,
over far cheaper framing than gRPC's. It is how `SynapseCore` reaches the
workers it starts.

`tcp://HOST:PORT` requires TLS (`--tls-cert` and `--tls-key`, PEM files) and a
bearer token, and a host that is not loopback `--allow-remote` as well. The
token is the content of `--token-file` (surrounding whitespace stripped) or,
without that option, of the environment variable `SYNAPSE_WORKER_TOKEN`; it is
never taken from the command line, where `ps` would show it, and the variable
is removed from the worker's environment so that its subprocesses do not
inherit it. With a token every call (health checks included) must carry the
metadata `authorization: Bearer <token>`, on a Unix socket too; without it the
call fails UNAUTHENTICATED. `--tls-cert`/`--tls-key` on a Unix socket make it
speak TLS too.

Stdout carries one line of its own, `SYNAPSE_READY <address>`, once the server
accepts connections (and whatever the agents print). Logs go to the log pipe
whose descriptor is in SYNAPSE_LOG_FD, as structured records, or without it to
stderr as text; the level comes from SYNAPSE_LOG_LEVEL (default INFO): see
`synapse_python._logging`. Before its event loop sleeps, the worker polls for
the next call for up to SYNAPSE_BUSY_WAIT_US microseconds (0: never; the default
is agent.proto's `Limit`; see `synapse_python._busy_wait`). SIGTERM or SIGINT
stop the worker gracefully with exit code 0. Exit code 78 (EX_CONFIG) means the
worker failed before it was ready (an --agent or a --bridge did not load, the
address cannot be bound, ...: starting it again will not help), with the error
logged; 1 that it failed later; 2 a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import ssl
import sys
from collections.abc import Callable, Sequence

EXIT_FAILED = 1
EXIT_STARTUP_FAILED = 78

try:
    from synapse_python import _logging, _server
    from synapse_python._auth import TOKEN_ENV, BearerToken, TlsCredentials
    from synapse_python._busy_wait import BusyWaitSelector, busy_wait_from_env
    from synapse_python._server import DEFAULT_SHUTDOWN_GRACE, missing_for_tcp, parse_listen
    from synapse_python._threads import any_busy
except ImportError as exc:
    # An interpreter without the worker's dependencies: starting it again
    # will not help.
    print(
        f"synapse_python.worker: {type(exc).__name__}: {exc} "
        f"(is {sys.executable} the Python environment of `mix synapse.setup`?)",
        file=sys.stderr,
    )
    sys.exit(EXIT_STARTUP_FAILED)

logger = logging.getLogger("synapse_python.worker")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the worker until signalled, return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    env_token = os.environ.pop(TOKEN_ENV, None)
    tls = _tls(parser, args.tls_cert, args.tls_key)
    token = _token(parser, args.token_file, env_token)
    if args.lane is not None and (not args.lane.startswith("unix:") or args.lane == "unix:"):
        parser.error(f"--lane must be unix:PATH, got {args.lane!r}")
    if args.listen:
        try:
            endpoint = parse_listen(args.listen, allow_remote=args.allow_remote)
        except ValueError as exc:
            parser.error(f"--listen: {exc}")
        missing = missing_for_tcp(endpoint, tls=tls is not None, token=token is not None)
        if missing:
            wanted = {
                "TLS": "TLS (--tls-cert and --tls-key)",
                "token": f"a bearer token (--token-file or {TOKEN_ENV})",
            }
            parser.error(
                f"--listen {args.listen}: a TCP worker requires TLS and a bearer token; "
                f"missing {' and '.join(wanted[name] for name in missing)}"
            )
    agents: dict[str, str] = {}
    for item in args.agent:
        agent_id, sep, ref = item.partition("=")
        if not sep or not agent_id or ":" not in ref:
            parser.error(f"--agent must be ID=package.module:attr, got {item!r}")
        agents[agent_id] = ref

    _logging.configure()
    try:
        busy_wait_us = busy_wait_from_env()
    except ValueError as exc:
        logger.error("worker failed to start: %s", exc)
        return EXIT_STARTUP_FAILED
    # Only now: a bad command line fails fast, without loading pydantic-ai.
    from synapse_python import serve

    try:
        with asyncio.Runner(loop_factory=_loop_factory(busy_wait_us)) as runner:
            runner.run(
                serve(
                    args.listen,
                    agents=agents,
                    bridges=args.bridge,
                    allow_remote=args.allow_remote,
                    grace=args.grace,
                    tls_cert=tls.certificate_chain if tls else None,
                    tls_key=tls.private_key if tls else None,
                    token=token,
                    lane=args.lane,
                    busy_wait_us=busy_wait_us,
                )
            )
    except _server.BindError as exc:
        # The address says it all: a traceback through grpc would hide it.
        logger.error("worker failed to start: %s", exc)
        return EXIT_STARTUP_FAILED
    except Exception:
        if _server.announced():
            logger.exception("worker failed")
            return EXIT_FAILED
        logger.exception("worker failed to start")
        return EXIT_STARTUP_FAILED
    return 0


def _loop_factory(busy_wait_us: int) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the worker's event loop: one that polls for up to
    `busy_wait_us` before it sleeps (see `synapse_python._busy_wait`), or,
    with 0, asyncio's own (None: as `asyncio.run` makes it)."""
    if busy_wait_us == 0:
        return None

    def new_loop() -> asyncio.AbstractEventLoop:
        selector = BusyWaitSelector(busy_wait_us / 1e6, may_poll=lambda: not any_busy())
        return asyncio.SelectorEventLoop(selector)

    return new_loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m synapse_python.worker",
        description="Serve pydantic-ai agents (synapse.v1.AgentService) and Synapse Bridges "
        "over gRPC.",
        # Abbreviations would read `--token SECRET` as `--token-file SECRET`.
        allow_abbrev=False,
    )
    parser.add_argument(
        "--listen",
        metavar="ADDRESS",
        help="unix:PATH or tcp://HOST:PORT (default: a socket in a new private directory)",
    )
    parser.add_argument(
        "--lane",
        metavar="ADDRESS",
        help="also serve every method on the local lane at unix:PATH",
    )
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="ID=MODULE:ATTR",
        help="load this agent before serving (repeatable)",
    )
    parser.add_argument(
        "--bridge",
        action="append",
        default=[],
        metavar="MODULE",
        help="serve the Synapse Bridge generated for this Python module (repeatable)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PATH",
        help="serve TLS with this certificate chain (PEM); needs --tls-key; required for tcp://",
    )
    parser.add_argument(
        "--tls-key",
        metavar="PATH",
        help="the private key (PEM) of --tls-cert",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="require 'authorization: Bearer <token>' on every call, the token being "
        f"this file's content (default: ${TOKEN_ENV}, if set); required for tcp://",
    )
    parser.add_argument("--token", nargs="?", action=_RefuseToken, help=argparse.SUPPRESS)
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback TCP host (TLS and a token are mandatory for any TCP address)",
    )
    parser.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULT_SHUTDOWN_GRACE,
        metavar="SECONDS",
        help=f"on SIGTERM, how long in-flight runs may finish (default {DEFAULT_SHUTDOWN_GRACE})",
    )
    return parser


def _seconds(text: str) -> float:
    """A `--grace`: finite and not negative.

    `inf` would let one hung run keep the worker from ever stopping, and
    `nan` or a negative number mean no grace that anyone asked for.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite, non-negative number of seconds, got {text!r}"
        )
    return value


class _RefuseToken(argparse.Action):
    """`--token`: refused without echoing its value, which `ps` has already shown."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        parser.error(
            f"--token is not accepted (the command line is visible to other users); "
            f"use --token-file PATH or {TOKEN_ENV}"
        )


def _tls(
    parser: argparse.ArgumentParser, cert: str | None, key: str | None
) -> TlsCredentials | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        parser.error("--tls-cert and --tls-key must be given together")
    try:
        credentials = TlsCredentials.load(cert, key)
        # grpc would only fail to bind, without saying why: check the pair here.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        parser.error(f"--tls-cert/--tls-key: not a usable certificate and key: {exc.reason}")
    except OSError as exc:
        parser.error(f"--tls-cert/--tls-key: cannot read {exc.filename}: {exc.strerror}")
    except ValueError as exc:
        parser.error(f"--tls-cert/--tls-key: {exc}")
    return credentials


def _token(
    parser: argparse.ArgumentParser, token_file: str | None, env_token: str | None
) -> BearerToken | None:
    """The token from `--token-file`, else the environment; errors never include it."""
    if token_file is not None:
        source = f"--token-file {token_file}"
        try:
            with open(token_file, encoding="utf-8") as file:
                value = file.read().strip()
        except OSError as exc:
            parser.error(f"--token-file: cannot read {token_file}: {exc.strerror}")
        except UnicodeDecodeError:
            parser.error(f"{source}: the token must be printable ASCII")
    elif env_token is not None and env_token.strip():
        source, value = TOKEN_ENV, env_token.strip()
    else:
        return None
    try:
        return BearerToken(value)
    except ValueError as exc:
        parser.error(f"{source}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
