"""Drop-behind of streaming brick writes (brickd/dropbehind.py).

What a client must not notice: every byte written reads back, whether the
brick dropped its pages or not, and fsync still works. What the brick should
gain: a long sequential write leaves only its last few MiB in the page cache,
while the same writes without drop-behind, random-offset writes and small
writes leave theirs cached.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.pagecache import resident_mib
from test_brick_store import F, mkfile

from pyglfs.brickd import dropbehind
from pyglfs.brickd.dropbehind import Advice, DropBehind
from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import ROOT_GFID

MIB = 1024 * 1024
G1, G2 = b"\x01" * 16, b"\x02" * 16



def test_a_stream_gets_advice_every_window_and_drops_lag_behind() -> None:
    db = DropBehind(window=4 * MIB, lag=8 * MIB)
    got = [db.note(G1, i * MIB, MIB) for i in range(16)]
    due = [(i, a) for i, a in enumerate(got) if a is not None]
    assert [i for i, _ in due] == [3, 7, 11, 15]
    # Writeback from where the stream began; nothing dropped until lag is reached.
    assert due[0][1] == Advice(0, 4 * MIB, 0, 0)
    assert due[1][1] == Advice(4 * MIB, 8 * MIB, 0, 0)
    assert due[2][1] == Advice(8 * MIB, 12 * MIB, 0, 4 * MIB)
    assert due[3][1] == Advice(12 * MIB, 16 * MIB, 0, 8 * MIB)
    # Each drop covers again RECOVER lags before the last one, for pages that
    # were still under writeback.
    for i in range(16, 48, 4):
        db.note(G1, i * MIB, 4 * MIB)
    back = dropbehind.RECOVER * 8 * MIB
    assert db.note(G1, 48 * MIB, 4 * MIB) == Advice(48 * MIB, 52 * MIB, 40 * MIB - back, 44 * MIB)


def test_small_random_and_interleaved_writes() -> None:
    db = DropBehind(window=4 * MIB, lag=8 * MIB)
    assert all(db.note(G1, i * 4096, 4096) is None for i in range(10_000))
    assert all(db.note(G1, (i * 7 % 13) * MIB, MIB) is None for i in range(40))
    # Two streams interleaved: each is followed on its own.
    got = [(db.note(G1, i * MIB, MIB), db.note(G2, i * MIB, MIB)) for i in range(6)]
    assert [i for i, (a, b) in enumerate(got) if a and b] == [3]


def test_writes_finished_a_little_out_of_order_stay_one_stream() -> None:
    db = DropBehind(window=4 * MIB, lag=8 * MIB)
    order = [0, 2, 1, 3, 5, 4, 7, 6, 9, 8, 10, 11, 13, 12, 15, 14]
    got = [db.note(G1, i * MIB, MIB) for i in order]
    due = [a for a in got if a is not None]
    assert [(a.write_from, a.write_to) for a in due] == [
        (0, 4 * MIB), (4 * MIB, 8 * MIB), (8 * MIB, 12 * MIB), (12 * MIB, 16 * MIB)]


def test_a_rewind_starts_a_new_stream_and_old_files_are_forgotten() -> None:
    db = DropBehind(window=2 * MIB, lag=2 * MIB, keep=2)
    for i in range(6):
        db.note(G1, i * MIB, MIB)
    assert db.note(G1, 0, MIB) is None  # rewound: a new stream from 0
    assert db.note(G1, MIB, MIB) == Advice(0, 2 * MIB, 0, 0)
    assert db.note(G1, 2 * MIB, MIB) is None
    assert db.note(G1, 3 * MIB, MIB) == Advice(2 * MIB, 4 * MIB, 0, 2 * MIB)
    db.note(G2, 0, MIB)
    db.note(b"\x03" * 16, 0, MIB)  # keep=2: G1, the least recently written, goes
    assert db.note(G1, 3 * MIB, MIB) is None
    assert db.note(G1, 40 * MIB, MIB) is None  # a jump ahead: a new stream too
    assert db.note(G1, 41 * MIB, MIB) == Advice(40 * MIB, 42 * MIB, 40 * MIB, 40 * MIB)
    with pytest.raises(ValueError):
        DropBehind(window=4 * MIB, lag=2 * MIB)


async def stream(store: BrickStore, name: bytes, mib: int,
                 settle: bool = False) -> tuple[bytes, bytes]:
    """Writes ``mib`` MiB in 1 MiB writes; with ``settle``, each write's pages are
    written back before the next (a disk that keeps up with the writer)."""
    g = await mkfile(store, ROOT_GFID, name)
    blocks = [os.urandom(MIB) for _ in range(4)]
    for i in range(mib):
        r = await store.write(gfid=g, offset=i * MIB, data=blocks[i % 4])
        assert r["iatt"][F["size"]] == (i + 1) * MIB
        if settle:
            await store.fsync(gfid=g, datasync=True)
    return g, b"".join(blocks[i % 4] for i in range(mib))


async def test_a_long_stream_leaves_little_in_the_page_cache(
        store: BrickStore, root: Path) -> None:
    store.streams = DropBehind(window=4 * MIB, lag=8 * MIB)
    g, expected = await stream(store, b"f", 32, settle=True)
    # The last lag (8 MiB), plus up to a window not yet due.
    assert resident_mib(root / "f") <= 12
    assert (root / "f").read_bytes() == expected


def test_drop_behind_is_on_by_default(store: BrickStore) -> None:
    assert store.drop_behind is True


async def test_a_stream_faster_than_the_disk_reads_back_whole(
        store: BrickStore, root: Path) -> None:
    store.streams = DropBehind(window=2 * MIB, lag=4 * MIB)
    g, expected = await stream(store, b"f", 64)
    await store.fsync(gfid=g)
    assert (root / "f").read_bytes() == expected
    got = b"".join([(await store.read(gfid=g, offset=o, size=MIB))["data"]
                    for o in range(0, 64 * MIB, MIB)])
    assert got == expected


async def test_without_drop_behind_the_stream_stays_cached(
        store: BrickStore, root: Path) -> None:
    store.drop_behind = False
    g, expected = await stream(store, b"f", 24, settle=True)
    assert resident_mib(root / "f") >= 23
    assert (root / "f").read_bytes() == expected


async def test_advice_errors_are_left_to_fsync(
        store: BrickStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise OSError(5, "refused")

    monkeypatch.setattr(dropbehind.os, "posix_fadvise", refuse)
    store.streams = DropBehind(window=2 * MIB, lag=2 * MIB)
    g, expected = await stream(store, b"f", 8)
    await store.fsync(gfid=g)
    assert (root / "f").read_bytes() == expected
