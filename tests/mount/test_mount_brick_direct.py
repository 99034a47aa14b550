"""Writes through a replica-2 mount whose bricks mix O_DIRECT and buffered writes.

The bricks (started with PYGLFS_BRICK_DIRECT_WRITES=1, the environment form of
brickd's --direct-writes) write big aligned blocks with O_DIRECT and everything else through
their page cache (brickd/fileio.py). Through a real mount: a file made of
aligned blocks, unaligned overwrites inside them, aligned blocks over ranges
written buffered just before, a sparse extension and a short tail ends up the
same on both bricks and in a read through the mount, after fsync and after
close, and a second writer's blocks in between are not lost.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mounts import Mount, Volume, fuse_skip_reason, mounted_volume, start_volume, wait_for

_skip = fuse_skip_reason()
pytestmark = [pytest.mark.mount, pytest.mark.skipif(_skip is not None, reason=_skip or "")]

MIB = 1 << 20
KIB = 1 << 10
DIRECT_WRITES_ENV = "PYGLFS_BRICK_DIRECT_WRITES"


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Volume]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DIRECT_WRITES_ENV, "1")
        vol = start_volume(tmp_path_factory.mktemp("brickdirect"), "replica2")
    try:
        yield vol
    finally:
        vol.stop()


@pytest.fixture(scope="module")
def mnt(replica: Volume) -> Iterator[Mount]:
    with mounted_volume(replica.volfile, replica.volfile.parent / "mnt") as m:
        yield m


def digests(vol: Volume, name: str) -> list[str]:
    return [hashlib.sha256((b.brick / name).read_bytes()).hexdigest() for b in vol.bricks]


def in_page_cache(path: Path, offset: int, size: int) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.preadv(fd, [bytearray(size)], offset, os.RWF_NOWAIT) == size
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_mixed_direct_and_buffered_writes_agree_on_both_bricks(
        replica: Volume, mnt: Mount) -> None:
    name = "mixed"
    want = bytearray()
    fd = os.open(mnt.mountpoint / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        def put(off: int, data: bytes) -> None:
            assert os.pwrite(fd, data, off) == len(data)
            end = off + len(data)
            if end > len(want):
                want.extend(bytes(end - len(want)))
            want[off:end] = data

        for i in range(8):  # aligned 1 MiB blocks (direct on the bricks)
            put(i * MIB, os.urandom(MIB))
        put(3 * MIB + 100, os.urandom(5000))  # unaligned, inside a direct block
        put(5 * MIB + 4096, b"x" * 300)
        os.fsync(fd)
        # Block 6 went O_DIRECT on both bricks: their page cache does not hold it.
        assert [in_page_cache(b.brick / name, 6 * MIB, 64 * KIB)
                for b in replica.bricks] == [False, False]
        put(2 * MIB, os.urandom(256 * KIB + 1))  # buffered (odd length) ...
        put(2 * MIB, os.urandom(256 * KIB))  # ... then direct over it
        put(12 * MIB, os.urandom(512 * KIB))  # sparse extension, direct
        put(12 * MIB + 512 * KIB, os.urandom(777))  # short tail, buffered
        os.fsync(fd)
        expect = hashlib.sha256(want).hexdigest()
        assert digests(replica, name) == [expect, expect]
        assert os.pread(fd, len(want) + 10, 0) == want
    finally:
        os.close(fd)


def test_two_writers_blocks_all_land(replica: Volume, mnt: Mount) -> None:
    name = "two"
    blocks = [os.urandom(MIB) for _ in range(6)]
    a = os.open(mnt.mountpoint / name, os.O_WRONLY | os.O_CREAT, 0o644)
    b = os.open(mnt.mountpoint / name, os.O_WRONLY)
    try:
        for i, blk in enumerate(blocks):
            os.pwrite(a if i % 2 else b, blk, i * MIB)
    finally:
        os.close(a)
        os.close(b)
    expect = hashlib.sha256(b"".join(blocks)).hexdigest()
    assert wait_for(lambda: digests(replica, name) == [expect, expect], 10.0)
    assert (mnt.mountpoint / name).read_bytes() == b"".join(blocks)
