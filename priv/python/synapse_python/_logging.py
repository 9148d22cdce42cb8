"""How a worker logs, and how it reports its status to the process that runs it.

Under the process manager (`synapse-shepherd`, started by the BEAM) a worker
gets a log pipe: its descriptor number is in `SYNAPSE_LOG_FD`. Every record of
Python's `logging` is written there as one JSON object per line, level first:

    {"level":40,"logger":"synapse_python.service","message":"...","exception":"Traceback ..."}

and the BEAM turns each into one Logger entry, with its level and traceback,
without parsing text. Status reports share the pipe, as
`{"status":{"stuck_threads":2}}`. Lines are kept under `MAX_RECORD_BYTES`,
the largest line the process manager relays in one piece: a longer message
or traceback is cut, saying so.

Run by hand (no `SYNAPSE_LOG_FD`), a worker logs human-readable text on
stderr. Either way the level comes from `SYNAPSE_LOG_LEVEL` (a name such as
`DEBUG` or a number; default `INFO`), and uncaught exceptions of the main
thread and of other threads, and warnings, become records too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from types import TracebackType
from typing import Any, TextIO

from synapse_python._utf8 import escaped

LOG_FD_ENV = "SYNAPSE_LOG_FD"
LOG_LEVEL_ENV = "SYNAPSE_LOG_LEVEL"
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_RECORD_BYTES = 60_000

logger = logging.getLogger("synapse_python.worker")

_records: _RecordHandler | None = None


class _RecordFormatter(logging.Formatter):
    """One record as one line of JSON (see the module's documentation)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        exception = ""
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        if record.stack_info:
            exception = "\n".join(filter(None, (exception, self.formatStack(record.stack_info))))
        return _fit(
            lambda message, exception: {
                "level": record.levelno,
                "logger": record.name,
                "message": message,
                "exception": exception,
            },
            message,
            exception,
        )


def _fit(build: Any, message: str, exception: str) -> str:
    """`build(message, exception)` as JSON, both cut until the line fits."""
    while True:
        # Lone surrogates escaped: JSON's "\\udce9" for one is no text the
        # BEAM decodes, and the record would reach Logger as raw JSON.
        line = json.dumps(build(escaped(message), escaped(exception)), separators=(",", ":"))
        if len(line) <= MAX_RECORD_BYTES:
            return line
        if len(exception) >= len(message):
            exception = _cut(exception)
        else:
            message = _cut(message)


def _cut(text: str) -> str:
    keep = len(text) * 3 // 4
    return f"{text[:keep]}... ({len(text) - keep} characters cut)"


class _RecordHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes records, and status reports, on the log pipe."""

    def status(self, **fields: int) -> None:
        line = json.dumps({"status": fields}, separators=(",", ":"))
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(line + "\n")
                self.flush()
            except (OSError, ValueError):
                pass  # the process manager is gone; so will be this worker


def configure() -> None:
    """Set up logging for a worker process, from the environment (see the module doc)."""
    global _records
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = _log_pipe()
    if stream is not None:
        _records = _RecordHandler(stream)
        _records.setFormatter(_RecordFormatter())
        root.addHandler(_records)
    else:
        human = logging.StreamHandler(sys.stderr)
        human.setFormatter(logging.Formatter(HUMAN_FORMAT))
        root.addHandler(human)
    raw = os.environ.get(LOG_LEVEL_ENV, "").strip()
    level: int | str = int(raw) if raw.isdigit() else (raw.upper() or "INFO")
    try:
        root.setLevel(level)
    except ValueError:
        root.setLevel(logging.INFO)
        logger.warning("ignoring unknown %s=%r", LOG_LEVEL_ENV, raw)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def report_status(**fields: int) -> None:
    """Tell the process manager's owner about this worker (no-op when run by hand)."""
    if _records is not None:
        _records.status(**fields)


def _log_pipe() -> TextIO | None:
    raw = os.environ.pop(LOG_FD_ENV, "").strip()
    if not raw.isdigit():
        return None
    fd = int(raw)
    try:
        # The worker's subprocesses must not write on it (nor keep it open).
        os.set_inheritable(fd, False)
        return os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace", buffering=1)
    except OSError:
        return None


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    logger.critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "unknown"
    logger.error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
