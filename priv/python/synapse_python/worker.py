"""Command line entry point of a worker process: `python -m synapse_python.worker`.

    python -m synapse_python.worker [--listen unix:PATH | tcp://HOST:PORT]
                                    [--agent ID=package.module:attr]... [--bridge MODULE]...
                                    [--allow-remote] [--grace SECONDS]

`--bridge my_module` serves the Synapse Bridge generated for the Python module
`my_module` (`python -m synapse_python.bridge generate --module my_module --out
DIR`): DIR (holding `synapse_bridge_my_module.py`, `my_module.ir.json` and
`my_module.desc`) and the directory `my_module` is imported from must be on
PYTHONPATH.

Stdout carries exactly one line, `SYNAPSE_READY <address>`, once the server
accepts connections; logs go to stderr (level from SYNAPSE_LOG_LEVEL, default
INFO). SIGTERM or SIGINT stop the worker gracefully with exit code 0. Exit code 1
means the worker failed (e.g. an --agent or a --bridge did not load, with its
traceback on stderr, before any readiness line), 2 a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from synapse_python import DEFAULT_SHUTDOWN_GRACE, serve
from synapse_python._server import parse_listen

logger = logging.getLogger("synapse_python.worker")

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
LOG_LEVEL_ENV = "SYNAPSE_LOG_LEVEL"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the worker until signalled, return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.listen:
        try:
            parse_listen(args.listen, allow_remote=args.allow_remote)
        except ValueError as exc:
            parser.error(f"--listen: {exc}")
    agents: dict[str, str] = {}
    for item in args.agent:
        agent_id, sep, ref = item.partition("=")
        if not sep or not agent_id or ":" not in ref:
            parser.error(f"--agent must be ID=package.module:attr, got {item!r}")
        agents[agent_id] = ref

    _configure_logging()
    try:
        asyncio.run(
            serve(
                args.listen,
                agents=agents,
                bridges=args.bridge,
                allow_remote=args.allow_remote,
                grace=args.grace,
            )
        )
    except Exception:
        logger.exception("worker failed")
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m synapse_python.worker",
        description="Serve pydantic-ai agents (synapse.v1.AgentService) and Synapse Bridges "
        "over gRPC.",
    )
    parser.add_argument(
        "--listen",
        metavar="ADDRESS",
        help="unix:PATH or tcp://HOST:PORT (default: a socket in a new private directory)",
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
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback TCP host (no TLS yet: trusted networks only)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_SHUTDOWN_GRACE,
        metavar="SECONDS",
        help=f"on SIGTERM, how long in-flight runs may finish (default {DEFAULT_SHUTDOWN_GRACE})",
    )
    return parser


def _configure_logging() -> None:
    raw = os.environ.get(LOG_LEVEL_ENV, "").strip()
    level: int | str = int(raw) if raw.isdigit() else (raw.upper() or "INFO")
    logging.basicConfig(stream=sys.stderr, format=LOG_FORMAT)
    try:
        logging.getLogger().setLevel(level)
    except ValueError:
        logging.getLogger().setLevel(logging.INFO)
        logger.warning("ignoring unknown %s=%r", LOG_LEVEL_ENV, raw)


if __name__ == "__main__":
    sys.exit(main())
