"""The worker process's heap: what it loads once is kept out of the collector's way.

A worker imports pydantic-ai, grpc, protobuf and the user's modules (about
90,000 objects the collector tracks) and then serves runs that allocate
many short-lived objects. CPython's full collections walk every tracked
object, the loaded ones included, though those live as long as the
process: under concurrent runs that walk was about a tenth of a worker's
CPU (`bench/split.exs --path run --concurrency 16`). `settle` moves what is
loaded into the permanent generation (`gc.freeze`), which no collection
walks; objects made later are collected as before.

Only for a process the worker owns (`serve`): a program that embeds a
`Worker` keeps its collector as it set it.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect what is garbage now, then freeze every object still tracked.

    Collecting first keeps garbage out of the permanent generation, where it
    would never be freed. What is frozen stays reachable as before: freezing
    only takes it out of later collections (a cycle among frozen objects
    that becomes garbage later is not freed, which is why only what is
    loaded, at load time, is frozen).
    """
    gc.collect()
    gc.freeze()
