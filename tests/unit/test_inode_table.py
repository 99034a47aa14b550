"""The FUSE bridge's inode table: lookup counts against a model, and its memory."""

from __future__ import annotations

import random
import tracemalloc

from pyglfs.client.fuse.inodes import ROOT_INODE, InodeTable, new_gfid


def test_counts_follow_a_model_through_random_adds_and_forgets() -> None:
    rng = random.Random(7)
    t = InodeTable()
    gfids = [new_gfid() for _ in range(40)]
    model: dict[int, int] = {}
    for _ in range(5000):
        g = rng.choice(gfids)
        ino = t.ino(g)
        if rng.random() < 0.55:
            t.add(ino, g)
            model[ino] = model.get(ino, 0) + 1
        else:
            n = rng.randint(1, 3)
            t.forget(ino, n)
            if ino in model:
                model[ino] -= n
                if model[ino] <= 0:
                    del model[ino]
        assert t.lookup_count(ino) == model.get(ino, 0)
        assert len(t) == len(model) + 1
    for g in gfids:
        ino = t.ino(g)
        assert t.lookup_count(ino) == model.get(ino, 0)
        if ino in model:
            assert t.gfid(ino) == g
    assert t.lookup_count(ROOT_INODE) == 0
    t.forget(ROOT_INODE, 3)
    assert t.gfid(ROOT_INODE) == t.root_gfid


def test_an_inode_the_kernel_holds_once_costs_under_110_bytes() -> None:
    # what the kernel keeps after drop_caches varies with its memory pressure
    # (tens of thousands of inodes from run to run), and the client's RSS with it
    gfids = [new_gfid() for _ in range(50_000)]
    tracemalloc.start()
    try:
        t = InodeTable()
        before = tracemalloc.get_traced_memory()[0]
        for g in gfids:
            t.add(t.ino(g), g)
        per_inode = (tracemalloc.get_traced_memory()[0] - before) / len(gfids)
    finally:
        tracemalloc.stop()
    assert len(t) == len(gfids) + 1
    assert per_inode < 110, per_inode
