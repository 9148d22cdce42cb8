"""`bench/python/lane_python.py` still drives the lane it measures.

The script talks to `_lane._Connection` directly, with a transport of its
own, or hands a connection of the worker's threads its pipes
(`LaneServer.hand_over`) and a forked client of its own; a change to what
the connection asks of its transport breaks it, and no other test would
notice.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "bench" / "python" / "lane_python.py"


@pytest.mark.parametrize("how", ["on_loop", "thread", "threads"])
def test_lane_python_answers_every_call(how: str) -> None:
    paths = [REPO / "priv" / "python", REPO / "bench" / "python"]
    command = [sys.executable, str(SCRIPT), "--how", how, "--batches", "20", "--rounds", "1"]
    done = subprocess.run(
        command,
        env={"PYTHONPATH": ":".join(str(path) for path in paths), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["how"] == how
    assert result["cpu_us_per_call"] > 0
    # Every call's answer came back: the script waits for them, and the
    # profiled round counts the Python calls they took.
    assert result["python_calls_per_call"] > 10
