"""The Bridge benchmark's module: one trivial typed function.

`bench/run` generates its Bridge as a user would (`mix synapse.gen.bridge bench_add
--python-path bench/bridge`); the baselines call the same function.
"""

from __future__ import annotations


def add(a: int, b: int) -> int:
    """The sum of two integers."""
    return a + b
