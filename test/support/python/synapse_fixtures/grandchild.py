"""An agent module that starts a long-lived subprocess at import: the worker's child,
its shepherd's grandchild, in the worker's process group. Its pid is written to the
file named by SYNAPSE_TEST_GRANDCHILD_PID (one line per worker start).
"""

import os
import subprocess

from pydantic_ai import Agent

# With SYNAPSE_TEST_GRANDCHILD_SESSION set, the subprocess leaves the worker's
# process group (a session of its own, as daemons make).
_sleeper = subprocess.Popen(
    ["sleep", "1000"], start_new_session="SYNAPSE_TEST_GRANDCHILD_SESSION" in os.environ
)

_pid_file = os.environ.get("SYNAPSE_TEST_GRANDCHILD_PID")
if _pid_file:
    with open(_pid_file, "a", encoding="utf-8") as file:
        file.write(f"{_sleeper.pid}\n")

agent = Agent("test")
