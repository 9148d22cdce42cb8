"""An agent module that dies at import while a flag file exists.

Every import (one per worker start) is appended to the log file, so a test
can count the starts. Both paths come from the environment.
"""

import os

from pydantic_ai import Agent

_log = os.environ.get("SYNAPSE_TEST_CRASH_LOG")
_flag = os.environ.get("SYNAPSE_TEST_CRASH_FLAG")

if _log:
    with open(_log, "a", encoding="utf-8") as log:
        log.write("start\n")

if _flag and os.path.exists(_flag):
    os._exit(3)

agent = Agent("test")
