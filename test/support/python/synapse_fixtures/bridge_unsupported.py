"""A module the Synapse Bridge refuses: `count_distinct` takes a set."""

from __future__ import annotations


def count_distinct(values: set[int]) -> int:
    """How many different values."""
    return len(values)
