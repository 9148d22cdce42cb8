"""`bench/python/run_costs.py`'s worker group still runs the worker's `Run`.

The script drives `_run.Run` directly, with a sender of its own that answers
the client tool's requests; a change to what a `Run` asks of its transport
breaks it, and no other test would notice. The script checks, before timing
anything, that the worker's run answers what `agent.run` answers.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "bench" / "python" / "run_costs.py"
PATHS = [REPO / "priv" / "python", REPO / "bench" / "python"]


def _run_costs(*args: str, paths: list[object] = PATHS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={"PYTHONPATH": ":".join(str(path) for path in paths), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_worker_group_times_each_run_against_its_own_kind() -> None:
    done = _run_costs("--groups", "worker", "--blocks", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "== worker (median of 1 blocks of 100 runs)"
    compared = {line.split(":  ")[0].strip(): line.rsplit(" times ", 1)[1] for line in lines[1:]}
    minimal = "minimal: agent.run)"
    one_tool = "one tool: agent.run, tool awaiting)"
    assert compared == {
        "minimal: agent.run": minimal,
        "minimal: the worker's Run": minimal,
        "minimal: the worker's Run, messages: false": minimal,
        "one tool: agent.run, tool awaiting": one_tool,
        "one tool: the worker's Run, client tool": one_tool,
        "one tool: the worker's Run, messages: false": one_tool,
    }


def test_the_worker_group_without_the_workers_package_says_what_is_missing() -> None:
    done = _run_costs("--groups", "worker", "--blocks", "1", paths=[REPO / "bench" / "python"])
    assert done.returncode != 0
    assert "the worker group needs priv/python on PYTHONPATH" in done.stderr


def test_an_unknown_group_is_refused() -> None:
    done = _run_costs("--groups", "idle,workers")
    assert done.returncode == 2
    assert "unknown groups ['workers']" in done.stderr
