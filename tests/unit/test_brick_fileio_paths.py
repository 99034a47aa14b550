"""Which path a brick read or write takes: inline on the event loop or in a thread.

The results must be the same either way; these tests pin down when the thread
hop is skipped (writes up to INLINE_IO_MAX, reads the page cache can serve at
once) and that a stalling write or a filesystem without RWF_NOWAIT reads falls
back to threads.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_brick_store import F, mkfile

from pyglfs.brickd import fileio
from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import ROOT_GFID

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

MIB = 1024 * 1024


def count_threads(store: BrickStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts ``_in_thread`` calls of ``store`` (they still run)."""
    calls: list[int] = []
    real = store._in_thread

    async def counted(fd: int, fn: Callable[[int], Any]) -> Any:
        calls.append(fd)
        return await real(fd, fn)

    monkeypatch.setattr(store, "_in_thread", counted)
    return calls


async def test_writes_up_to_the_limit_run_inline(store: BrickStore, root: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    threads = count_threads(store, monkeypatch)
    # Aligned big writes go O_DIRECT through a thread (test_brick_direct_write.py).
    monkeypatch.setattr(store, "direct_writes", False)
    g = await mkfile(store, ROOT_GFID, b"f")
    one = os.urandom(fileio.INLINE_IO_MAX)
    r = await store.write(gfid=g, offset=0, data=one)
    assert r["iatt"][F["size"]] == len(one)
    assert threads == []
    more = os.urandom(fileio.INLINE_IO_MAX + 1)
    r = await store.write(gfid=g, offset=len(one), data=more)
    assert r["iatt"][F["size"]] == len(one) + len(more)
    assert len(threads) == 1
    assert (root / "f").read_bytes() == one + more


async def test_a_slow_inline_write_sends_writes_to_threads(
        store: BrickStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = count_threads(store, monkeypatch)
    g = await mkfile(store, ROOT_GFID, b"f")
    monkeypatch.setattr(fileio, "SLOW_WRITE", -1.0)  # every inline write counts as slow
    blocks = [os.urandom(fileio.BIG_IO) for _ in range(3)]
    await store.write(gfid=g, offset=0, data=blocks[0])
    assert threads == []
    await store.write(gfid=g, offset=fileio.BIG_IO, data=blocks[1])
    assert len(threads) == 1
    store._inline_writes_after = 0.0  # the back-off has passed
    monkeypatch.setattr(fileio, "SLOW_WRITE", 60.0)
    await store.write(gfid=g, offset=2 * fileio.BIG_IO, data=blocks[2])
    assert len(threads) == 1
    assert (root / "f").read_bytes() == b"".join(blocks)


async def test_cached_reads_run_inline_and_uncached_ones_in_threads(
        store: BrickStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(2 * MIB + 5)
    g = await mkfile(store, ROOT_GFID, b"f", data)
    threads = count_threads(store, monkeypatch)
    real_preadv = os.preadv
    answer: dict[str, Any] = {"mode": "real"}

    def preadv(fd: int, bufs: Any, offset: int, flags: int = 0) -> int:
        if answer["mode"] == "eagain":
            raise BlockingIOError(errno.EAGAIN, "not cached")
        if answer["mode"] == "unsupported":
            raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT here")
        return real_preadv(fd, bufs, offset, flags)

    monkeypatch.setattr(fileio.os, "preadv", preadv)
    size = 128 * 1024
    if store._nowait_reads:
        assert (await store.read(gfid=g, offset=size, size=size))["data"] == data[size:2 * size]
        inline_ok = store._nowait_reads  # the filesystem of tmp_path may lack RWF_NOWAIT
        assert len(threads) == (0 if inline_ok else 1)
    threads.clear()
    answer["mode"] = "eagain"
    r = await store.read(gfid=g, offset=0, size=size)
    assert r["data"] == data[:size] and type(r["data"]) is bytes
    # The last block is short: only a blocking read can say it is the end of the file.
    answer["mode"] = "real"
    r = await store.read(gfid=g, offset=2 * MIB, size=size)
    assert r["data"] == data[2 * MIB:]
    assert (await store.read(gfid=g, offset=3 * MIB, size=size))["data"] == b""
    answer["mode"] = "unsupported"
    store._nowait_reads = True
    r = await store.read(gfid=g, offset=MIB, size=MIB)
    assert r["data"] == data[MIB:2 * MIB]
    assert store._nowait_reads is False
    answer["mode"] = "eagain"  # never asked again on this store
    assert (await store.read(gfid=g, offset=0, size=size))["data"] == data[:size]
    assert len(threads) == 5


async def test_read_errors_other_than_unsupported_propagate(
        store: BrickStore, monkeypatch: pytest.MonkeyPatch) -> None:
    g = await mkfile(store, ROOT_GFID, b"f", os.urandom(fileio.BIG_IO))

    def preadv(fd: int, bufs: Any, offset: int, flags: int = 0) -> int:
        raise OSError(errno.EIO, "disk error")

    monkeypatch.setattr(fileio.os, "preadv", preadv)
    store._nowait_reads = True
    with pytest.raises(OSError) as e:
        await store.read(gfid=g, offset=0, size=fileio.BIG_IO)
    assert e.value.errno == errno.EIO
