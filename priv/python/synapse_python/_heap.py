"""The worker process's heap: what it loads once is kept out of the collector's way.

A worker imports pydantic-ai, grpc, protobuf and the user's modules (about
90,000 objects the collector tracks) and then serves runs that allocate
many short-lived objects. CPython's full collections walk every tracked
object, the loaded ones included, though those live as long as the
process: under concurrent runs that walk was about a tenth of a worker's
CPU (`bench/split.exs --path run --concurrency 16`). `settle` moves what is
loaded into the permanent generation (`gc.freeze`), which no collection
walks; objects made later are collected as before.

It also collects the young generation less often (`YOUNG_THRESHOLD`
allocations between collections instead of CPython's 700), unless the
user's code set the collector's thresholds itself: a run's short-lived
objects are mostly freed by their reference counts before a collection
would have walked them, so fewer collections cost less, for at most that
many more objects (a few MB) waiting in garbage cycles.

Only for a process the worker owns (`serve`): a program that embeds a
`Worker` keeps its collector as it set it.
"""

from __future__ import annotations

import gc

# Objects allocated (net of those freed) between two collections of the
# youngest generation: CPython's default is 700. In paired rounds of runs at
# concurrency 16, a worker spent about a tenth less CPU per run with this.
YOUNG_THRESHOLD = 10_000

# The thresholds as the interpreter set them, before any user module loaded:
# thresholds found otherwise later were set by the user's code, and stay.
_INTERPRETERS_THRESHOLDS = gc.get_threshold()


def settle() -> None:
    """Collect what is garbage now, then freeze every object still tracked,
    and raise the young generation's threshold (see the module's doc).

    Collecting first keeps garbage out of the permanent generation, where it
    would never be freed. What is frozen stays reachable as before: freezing
    only takes it out of later collections (a cycle among frozen objects
    that becomes garbage later is not freed, which is why only what is
    loaded, at load time, is frozen).
    """
    gc.collect()
    gc.freeze()
    young, *older = gc.get_threshold()
    if (young, *older) == _INTERPRETERS_THRESHOLDS and young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *older)
