"""The client's LRU tables are bounded so that a full, churning table's hash
table stays under glibc's mmap threshold (rpc/tuning.py ``TABLE_LIMIT``):
rebuilt in place on the heap, not mapped afresh, so the client's RSS does not
rise and fall from one pass over many files to the next."""

from __future__ import annotations

import sys
from collections import deque

from pyglfs.client.layer import Layer
from pyglfs.client.mdcache import MdCache
from pyglfs.client.replicate.readsel import InodeTable
from pyglfs.rpc.tuning import MALLOC_ENV, TABLE_LIMIT


def _largest_churned(limit: int) -> int:
    """The largest size a dict of ``limit`` entries reaches while entries go
    through it, oldest out first, three times over."""
    table: dict[bytes, None] = {}
    order: deque[bytes] = deque()
    largest = 0
    for i in range(4 * limit):
        key = i.to_bytes(16, "big")
        table[key] = None
        order.append(key)
        if len(table) > limit:
            del table[order.popleft()]
        if i % 512 == 0:
            largest = max(largest, sys.getsizeof(table))
    return max(largest, sys.getsizeof(table))


def test_a_full_churning_table_stays_under_the_mmap_threshold() -> None:
    threshold = int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"])
    assert _largest_churned(TABLE_LIMIT) < threshold
    # and the bound is not loose by accident: the next size up is over it
    assert _largest_churned(2 * TABLE_LIMIT) > threshold


def test_the_tables_are_bounded_by_it() -> None:
    assert MdCache("mdc", Layer("leaf")).limit == TABLE_LIMIT
    assert InodeTable(2).limit == TABLE_LIMIT
