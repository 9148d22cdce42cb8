"""An agent module whose import waits until SYNAPSE_TEST_RENDEZVOUS_COUNT workers
import it at once: each leaves its pid in SYNAPSE_TEST_RENDEZVOUS_DIR and waits for
the others. Workers started one after another never meet: the first gives up after
SYNAPSE_TEST_RENDEZVOUS_SECONDS (default 20) and fails to load.
"""

import os
import time
from pathlib import Path

from pydantic_ai import Agent

_dir = Path(os.environ["SYNAPSE_TEST_RENDEZVOUS_DIR"])
_count = int(os.environ["SYNAPSE_TEST_RENDEZVOUS_COUNT"])
_deadline = time.monotonic() + float(os.environ.get("SYNAPSE_TEST_RENDEZVOUS_SECONDS", "20"))

(_dir / str(os.getpid())).touch()
while len(list(_dir.iterdir())) < _count:
    if time.monotonic() > _deadline:
        raise RuntimeError(f"alone: {len(list(_dir.iterdir()))} of {_count} workers started")
    time.sleep(0.05)

agent = Agent("test")
