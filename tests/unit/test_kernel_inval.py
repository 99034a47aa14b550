"""KernelInvalidator: only what the kernel holds is invalidated, inode ones off the
event loop; pyfuse3's calls are replaced by recorders (no FUSE session here)."""

from __future__ import annotations

from typing import Any

import pyfuse3
import pytest
import trio

from pyglfs.client.fuse.inodes import InodeTable, ino_of
from pyglfs.client.fuse.kernelinval import KernelInvalidator
from pyglfs.rpc.brickops import ROOT_GFID

HELD = b"\x01" * 8 + (77).to_bytes(8, "big")
NOT_HELD = b"\x02" * 8 + (78).to_bytes(8, "big")
SAME_INO = b"\x03" * 8 + (77).to_bytes(8, "big")  # another gfid on HELD's number


async def test_only_what_the_kernel_holds(monkeypatch: pytest.MonkeyPatch,
                                          nursery: trio.Nursery) -> None:
    inodes_done: list[int] = []
    entries: list[tuple[Any, ...]] = []

    def inval_inode(ino: int, attr_only: bool = False) -> None:
        with pytest.raises(RuntimeError):  # not on the event loop's thread
            trio.lowlevel.current_trio_token()
        assert attr_only
        inodes_done.append(ino)

    monkeypatch.setattr(pyfuse3, "invalidate_inode", inval_inode)
    monkeypatch.setattr(pyfuse3, "invalidate_entry_async",
                        lambda *a, **kw: entries.append((*a, kw)))
    table = InodeTable()
    table.add(ino_of(HELD), HELD)
    inval = KernelInvalidator()
    inval.inodes = table
    inval([HELD], [(ROOT_GFID, b"x")])
    assert inodes_done == [] and entries == []  # not serving yet
    await nursery.start(inval.serve)
    inval([HELD, NOT_HELD, SAME_INO, ROOT_GFID],
          [(ROOT_GFID, b"a"), (NOT_HELD, b"b"), (HELD, b"c")])
    assert entries == [(1, b"a", {"ignore_enoent": True}),
                       (ino_of(HELD), b"c", {"ignore_enoent": True})]
    with trio.fail_after(5):
        while len(inodes_done) < 2:
            await trio.sleep(0.01)
    assert sorted(inodes_done) == [1, ino_of(HELD)]
    inval.stop()
    inval([HELD], [(ROOT_GFID, b"z")])
    assert len(entries) == 2
