"""An agent module whose import, in one worker of a pool, waits for the test.

The first worker to import it claims SYNAPSE_TEST_HOLD_DIR/held (created
exclusively, with the worker's pid in it) and waits until
SYNAPSE_TEST_HOLD_DIR/release exists before it goes on; every other import (the
pool's other workers, a worker started again) goes on at once. A worker held
for SYNAPSE_TEST_HOLD_SECONDS (default 60) fails to load.
"""

import os
import time
from pathlib import Path

from pydantic_ai import Agent

_dir = Path(os.environ["SYNAPSE_TEST_HOLD_DIR"])
_seconds = float(os.environ.get("SYNAPSE_TEST_HOLD_SECONDS", "60"))


def _claim() -> bool:
    try:
        fd = os.open(_dir / "held", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as held:
        held.write(str(os.getpid()))
    return True


if _claim():
    _deadline = time.monotonic() + _seconds
    while not (_dir / "release").exists():
        if time.monotonic() > _deadline:
            raise RuntimeError(f"held for {_seconds} s and never released")
        time.sleep(0.05)

agent = Agent("test")
