"""An agent module that starts a long-lived subprocess at import: the worker's child,
its shepherd's grandchild, in the worker's process group. Its pid is written to the
file named by SYNAPSE_TEST_GRANDCHILD_PID (one line per worker start).
"""

import os
import subprocess

from pydantic_ai import Agent

_sleeper = subprocess.Popen(["sleep", "1000"])

_pid_file = os.environ.get("SYNAPSE_TEST_GRANDCHILD_PID")
if _pid_file:
    with open(_pid_file, "a", encoding="utf-8") as file:
        file.write(f"{_sleeper.pid}\n")

agent = Agent("test")
