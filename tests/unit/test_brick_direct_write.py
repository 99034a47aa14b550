"""Big aligned brick writes bypass the brick's page cache (O_DIRECT) and stay coherent.

What a client must not notice: every read, buffered or not, sees what the last
write put there, whichever path either took; sizes grow as with buffered
writes; unaligned and small writes still work; a filesystem that refuses
O_DIRECT gets buffered writes. What the brick should gain: an aligned 1 MiB
write leaves nothing of its range in the page cache, and no descriptor behind.
Direct writes are off unless the volume option storage.direct-writes turns
them on (brickd/main.py sets the store's ``direct_writes``); these tests turn
them on per store.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from test_brick_store import F, mkfile

from pyglfs.brickd import fileio
from pyglfs.brickd.store import BrickStore
from pyglfs.rpc.brickops import ROOT_GFID

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

MIB = 1024 * 1024
KIB = 1024


@pytest.fixture(autouse=True)
def direct_on(store: BrickStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "direct_writes", True)


def test_direct_writes_are_off_by_default() -> None:
    assert fileio.FileOps.direct_writes is False


def direct_supported(root: Path) -> bool:
    probe = root / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


@pytest.fixture
def direct(root: Path) -> None:
    if not direct_supported(root):
        pytest.skip("the test directory's filesystem refuses O_DIRECT")


def cached(path: Path, offset: int, size: int) -> bool:
    """Whether the page cache holds the range now (a non-waiting read succeeds)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(size)
        try:
            return os.preadv(fd, [buf], offset, os.RWF_NOWAIT) == size
        except BlockingIOError:
            return False
    finally:
        os.close(fd)


def spy_direct(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records (offset, size) of the writes that took the O_DIRECT path."""
    calls: list[tuple[int, int]] = []
    real = fileio._pwrite_direct

    def spy(fd: int, data: bytes, offset: int) -> bool:
        calls.append((offset, len(data)))
        return real(fd, data, offset)

    monkeypatch.setattr(fileio, "_pwrite_direct", spy)
    return calls


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_an_aligned_big_write_bypasses_the_page_cache(
        store: BrickStore, root: Path, direct: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_direct(monkeypatch)
    g = await mkfile(store, ROOT_GFID, b"f")
    block = os.urandom(MIB)
    fds = open_fds()
    r = await store.write(gfid=g, offset=0, data=block)
    assert r["iatt"][F["size"]] == MIB
    assert calls == [(0, MIB)]
    assert open_fds() == fds
    assert not cached(root / "f", 0, 64 * KIB)
    assert (root / "f").read_bytes() == block
    assert (await store.read(gfid=g, offset=4096, size=256 * KIB))["data"] == block[4096:][:256 * KIB]


async def test_small_and_unaligned_writes_stay_buffered(
        store: BrickStore, root: Path, direct: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_direct(monkeypatch)
    g = await mkfile(store, ROOT_GFID, b"f")
    a = os.urandom(fileio.DIRECT_MIN - 4 * KIB)  # aligned but under DIRECT_MIN
    b = os.urandom(MIB + 100)  # unaligned length: a file's short tail
    c = os.urandom(MIB)  # aligned length at an unaligned offset
    await store.write(gfid=g, offset=0, data=a)
    await store.write(gfid=g, offset=len(a), data=b)
    end = len(a) + len(b)
    r = await store.write(gfid=g, offset=end, data=c)
    assert calls == []
    assert r["iatt"][F["size"]] == end + len(c)
    assert cached(root / "f", 0, len(a))
    assert (root / "f").read_bytes() == a + b + c


async def test_direct_over_buffered_and_buffered_over_direct(
        store: BrickStore, root: Path, direct: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_direct(monkeypatch)
    g = await mkfile(store, ROOT_GFID, b"f")
    expected = bytearray(os.urandom(2 * MIB))
    # Buffered (dirty in the page cache), then a direct write over part of it:
    # the kernel must write back and drop those pages first.
    await store.write(gfid=g, offset=0, data=bytes(expected[:MIB + 3]))
    await store.write(gfid=g, offset=MIB + 3, data=bytes(expected[MIB + 3:]))
    over = os.urandom(MIB)
    await store.write(gfid=g, offset=512 * KIB, data=over)
    expected[512 * KIB:512 * KIB + MIB] = over
    assert calls == [(512 * KIB, MIB)]
    assert (root / "f").read_bytes() == expected
    # Read into the page cache, then direct over it, then a small buffered write
    # inside the direct range: every reader sees the last write.
    assert (await store.read(gfid=g, offset=0, size=2 * MIB))["data"] == expected
    over2 = os.urandom(fileio.DIRECT_MIN)
    await store.write(gfid=g, offset=MIB, data=over2)
    expected[MIB:MIB + len(over2)] = over2
    await store.write(gfid=g, offset=MIB + 10, data=b"tiny")
    expected[MIB + 10:MIB + 14] = b"tiny"
    assert (await store.read(gfid=g, offset=0, size=2 * MIB))["data"] == expected
    assert (root / "f").read_bytes() == expected
    assert len(calls) == 2


async def test_direct_writes_extend_the_file_and_leave_holes(
        store: BrickStore, root: Path, direct: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_direct(monkeypatch)
    g = await mkfile(store, ROOT_GFID, b"f", b"head")
    block = os.urandom(fileio.DIRECT_MIN)
    r = await store.write(gfid=g, offset=4 * MIB, data=block)
    assert calls == [(4 * MIB, fileio.DIRECT_MIN)]
    assert r["iatt"][F["size"]] == 4 * MIB + len(block)
    data = (root / "f").read_bytes()
    assert data[:4] == b"head" and data[4:4 * MIB] == bytes(4 * MIB - 4)
    assert data[4 * MIB:] == block
    await store.fsync(gfid=g)
    assert os.stat(root / "f").st_size == 4 * MIB + len(block)


async def test_concurrent_direct_writes_of_two_clients(
        store: BrickStore, root: Path, direct: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_direct(monkeypatch)
    g = await mkfile(store, ROOT_GFID, b"f")
    await store.open(gfid=g, flags=os.O_RDWR, conn_id=1)
    await store.open(gfid=g, flags=os.O_RDWR, conn_id=2)
    blocks = [os.urandom(MIB) for _ in range(8)]
    sizes: list[int] = []

    async def put(i: int) -> None:
        r = await store.write(gfid=g, offset=i * MIB, data=blocks[i])
        sizes.append(r["iatt"][F["size"]])

    fds = open_fds()
    async with trio.open_nursery() as nursery:
        for i in reversed(range(8)):
            nursery.start_soon(put, i)
    assert sorted(calls) == [(i * MIB, MIB) for i in range(8)]
    assert max(sizes) == 8 * MIB
    assert open_fds() == fds
    assert (root / "f").read_bytes() == b"".join(blocks)
    await store.release(gfid=g, conn_id=1)
    await store.release(gfid=g, conn_id=2)


async def test_direct_write_to_an_open_file_whose_name_is_gone(
        store: BrickStore, root: Path, direct: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_direct(monkeypatch)
    g = await mkfile(store, ROOT_GFID, b"f")
    await store.open(gfid=g, flags=os.O_RDWR, conn_id=1)
    await store.unlink(pgfid=ROOT_GFID, name=b"f")
    block = os.urandom(MIB)
    await store.write(gfid=g, offset=0, data=block)
    assert calls == [(0, MIB)]
    assert (await store.read(gfid=g, offset=0, size=MIB))["data"] == block
    await store.release(gfid=g, conn_id=1)


def refuse_direct_open(monkeypatch: pytest.MonkeyPatch, code: int) -> list[int]:
    """O_DIRECT opens fail with ``code``; returns the flags of those tried."""
    real_open = os.open
    tried: list[int] = []

    def no_direct(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_DIRECT:
            tried.append(flags)
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", no_direct)
    return tried


# EINVAL: a filesystem without O_DIRECT; ENOENT: no /proc; EACCES: a security module.
@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOENT, errno.EACCES])
async def test_refused_open_falls_back_to_buffered_for_good(
        store: BrickStore, root: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, code: int) -> None:
    tried = refuse_direct_open(monkeypatch, code)
    g = await mkfile(store, ROOT_GFID, b"f")
    blocks = [os.urandom(MIB) for _ in range(3)]
    with caplog.at_level(logging.INFO, logger=fileio.__name__):
        for i, b in enumerate(blocks):
            r = await store.write(gfid=g, offset=i * MIB, data=b)
            assert r["iatt"][F["size"]] == (i + 1) * MIB
    assert len(tried) == 1
    assert store.direct_writes is False
    assert sum("O_DIRECT writes refused" in m for m in caplog.messages) == 1
    assert (root / "f").read_bytes() == b"".join(blocks)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.EPERM])
async def test_other_reopen_failures_send_one_write_buffered(
        store: BrickStore, root: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    tried = refuse_direct_open(monkeypatch, code)
    g = await mkfile(store, ROOT_GFID, b"f")
    blocks = [os.urandom(MIB) for _ in range(2)]
    for i, b in enumerate(blocks):
        await store.write(gfid=g, offset=i * MIB, data=b)
    assert len(tried) == 2
    assert store.direct_writes is True
    assert (root / "f").read_bytes() == b"".join(blocks)


async def test_refused_write_falls_back_to_buffered(
        store: BrickStore, root: Path, direct: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    refused: list[int] = []

    def picky(fd: int, data: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "alignment not accepted")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", picky)
    g = await mkfile(store, ROOT_GFID, b"f")
    fds = open_fds()
    block = os.urandom(MIB)
    await store.write(gfid=g, offset=0, data=block)
    await store.write(gfid=g, offset=MIB, data=block)
    assert refused == [0]
    assert store.direct_writes is False
    assert open_fds() == fds
    assert (root / "f").read_bytes() == block + block


async def test_a_failing_direct_write_reports_its_error(
        store: BrickStore, root: Path, direct: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def full(fd: int, data: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.ENOSPC, "no space left")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    g = await mkfile(store, ROOT_GFID, b"f")
    fds = open_fds()
    with pytest.raises(OSError) as e:
        await store.write(gfid=g, offset=0, data=os.urandom(MIB))
    assert e.value.errno == errno.ENOSPC
    assert store.direct_writes is True
    assert open_fds() == fds
