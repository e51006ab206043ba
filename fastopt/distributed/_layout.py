"""How a ``ZeroOptimizer`` lays the buffer out: the ranks' slices, where each
parameter lies, and a digest of the setup that every rank must share."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from ..flat import FlatParams, FlatSegment


def shard_bounds(size: int, ranks: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` slice of ``size`` elements that each of ``ranks`` holds.

    Contiguous, in rank order, as equal as possible: the first
    ``size % ranks`` ranks hold one element more, none more than
    ``ceil(size / ranks)``.

    >>> shard_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(size, ranks)
    bounds, start = [], 0
    for r in range(ranks):
        stop = start + base + (r < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


def _difference(descriptions: list[dict]) -> str:
    """Which field of the ranks' setups first differs, and how."""
    first = descriptions[0]
    for rank, d in enumerate(descriptions[1:], 1):
        for key in first:
            if d.get(key) != first.get(key):
                a, b = (json.dumps(x, default=repr)[:200] for x in (first[key], d.get(key)))
                return f"rank 0's {key} is {a}, rank {rank}'s is {b}"
    return "they hash differently"


# What the layout hash of a shard covers (not the hyperparameters, which a
# loaded state replaces).
_LAYOUT_KEYS = ("class", "dtype", "size", "entries", "params")


def _group_list(groups: Any) -> list:
    if isinstance(groups, dict) or not isinstance(groups, (list, tuple)):
        raise TypeError(f"groups must be a list of parameter-group dicts, got {type(groups).__name__}")
    if not groups:
        raise ValueError("groups is empty")
    return list(groups)


def _hyper(group: dict) -> dict[str, Any]:
    """A group's hyperparameters (everything but its parameters)."""
    return {k: v for k, v in group.items() if k != "params"}


def _span(name: str, flat: FlatParams, p: Any) -> tuple[int, int]:
    """Where parameter ``p`` (``flat`` or a segment of it) lies in ``flat``'s buffer."""
    if p is flat:
        return 0, flat.data.size
    if not isinstance(p, FlatSegment):
        raise TypeError(f"{name} must be flat or a segment of it (flat.segment(...)), "
                        f"got {type(p).__name__}")
    base = flat.data.__array_interface__["data"][0]
    if not isinstance(p.data, np.ndarray):
        raise TypeError(f"{name} is a GPU segment; ZeroOptimizer takes host FlatParams")
    start, rem = divmod(p.data.__array_interface__["data"][0] - base, flat.data.itemsize)
    if (rem or start < 0 or start + p.data.size > flat.data.size or p.data.dtype != flat.dtype
            or not np.shares_memory(p.data, flat.data) and p.data.size):
        raise ValueError(f"{name} is a segment of another FlatParams, not of flat")
    return start, start + p.data.size
