"""A worker's logs as the BEAM reads them: one JSON record per line on the log pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(
    [str(REPO / "priv" / "python"), str(REPO / "test" / "support" / "python")]
)


def run_with_log_pipe(code: str, *, level: str = "INFO") -> tuple[list[dict], str, int]:
    """Run `code` in a Python configured as a worker is, with a log pipe on descriptor 3.

    Returns the decoded lines of the pipe, stderr and the exit code.
    """
    read, write = os.pipe()
    script = "from synapse_python import _logging\n_logging.configure()\n" + code
    # The pipe's write end becomes descriptor 3, as the shepherd gives it.
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env={
            **os.environ,
            "PYTHONPATH": PYTHONPATH,
            "SYNAPSE_LOG_FD": "3",
            "SYNAPSE_LOG_LEVEL": level,
        },
        stderr=subprocess.PIPE,
        # dup2 leaves descriptor 3 inheritable, and only inheritable ones survive exec.
        close_fds=False,
        preexec_fn=lambda: os.dup2(write, 3),
    )
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        lines = pipe.read().splitlines()
    _, stderr = process.communicate(timeout=30)
    return [json.loads(line) for line in lines], stderr.decode(), process.returncode


def test_each_record_is_one_line_with_its_level_logger_and_traceback() -> None:
    records, stderr, code = run_with_log_pipe(
        "import logging\n"
        "log = logging.getLogger('my_app.agents')\n"
        "log.debug('not shown at INFO')\n"
        "log.info('hello %s', 'there')\n"
        "try:\n"
        "    raise ValueError('bad\\nvalue')\n"
        "except ValueError:\n"
        "    log.exception('it failed')\n"
    )
    assert code == 0, stderr
    assert stderr == ""
    assert records == [
        {"level": 20, "logger": "my_app.agents", "message": "hello there", "exception": ""},
        {
            "level": 40,
            "logger": "my_app.agents",
            "message": "it failed",
            "exception": records[1]["exception"],
        },
    ]
    assert records[1]["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad\nvalue" in records[1]["exception"]


def test_the_level_comes_from_the_environment() -> None:
    records, _, _ = run_with_log_pipe(
        "import logging\nlogging.getLogger('x').debug('shown')\n", level="DEBUG"
    )
    assert [(r["level"], r["message"]) for r in records] == [(10, "shown")]


def test_long_records_are_cut_to_fit_one_frame() -> None:
    records, _, _ = run_with_log_pipe(
        "import logging\n"
        "try:\n"
        "    raise RuntimeError('x' * 200_000)\n"
        "except RuntimeError:\n"
        "    logging.getLogger('x').exception('y' * 100_000)\n"
    )
    [record] = records
    line = json.dumps(record, separators=(",", ":"))
    assert len(line) <= 60_000
    assert "characters cut)" in record["message"]
    assert "characters cut)" in record["exception"]


def test_uncaught_exceptions_and_warnings_are_records() -> None:
    records, stderr, code = run_with_log_pipe(
        "import threading, warnings\n"
        "warnings.warn('careful')\n"
        "thread = threading.Thread(target=lambda: 1 / 0, name='helper')\n"
        "thread.start(); thread.join()\n"
        "raise SystemError('the end')\n"
    )
    assert code == 1
    assert stderr == ""
    by_message = {record["message"]: record for record in records}
    assert "careful" in next(m for m in by_message if "careful" in m)
    assert "ZeroDivisionError" in by_message["uncaught exception in thread helper"]["exception"]
    assert by_message["uncaught exception"]["level"] == 50
    assert "SystemError: the end" in by_message["uncaught exception"]["exception"]


def test_status_reports_share_the_pipe() -> None:
    records, _, _ = run_with_log_pipe("_logging.report_status(stuck_threads=3)\n")
    assert records == [{"status": {"stuck_threads": 3}}]


def test_the_pipe_is_not_inherited_by_subprocesses() -> None:
    records, _, code = run_with_log_pipe(
        "import os, subprocess, sys\n"
        "assert 'SYNAPSE_LOG_FD' not in os.environ\n"
        "subprocess.run([sys.executable, '-c', 'import os; os.fstat(3)'], check=True,"
        " close_fds=False, stderr=subprocess.DEVNULL)\n",
    )
    assert code == 1
    assert "CalledProcessError" in records[-1]["exception"]


def test_without_a_pipe_logs_are_text_on_stderr() -> None:
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            "from synapse_python import _logging\n_logging.configure()\n"
            "import logging\nlogging.getLogger('my_app').warning('plain text')\n",
        ],
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "WARNING my_app: plain text" in process.stderr
