"""The write path through a real replica-2 mount: write-behind (on by default) and
the kernel's writeback cache (``kernel-writeback-cache=yes``, off by default).

What both must keep: data is on both bricks soon after close(2) returns (at
once with ``flush-behind off``; flush-behind, on by default, lets close return
before the queued writes land), and once fsync(2) returns; a write is
seen at once by stat and read through the same mount; overlapping writes and
truncates apply in order; O_DIRECT and mmap writes work; another mount sees an
append within its attribute timeout (the reason the kernel cache is off by
default: with it the kernel trusts its own idea of a cached file's size).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mounts import Mount, Volume, fuse_skip_reason, mounted_volume, start_volume, wait_for

_skip = fuse_skip_reason()
pytestmark = [pytest.mark.mount, pytest.mark.skipif(_skip is not None, reason=_skip or "")]

MIB = 1 << 20
WRITEBACK = "kernel-writeback-cache=yes"


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Volume]:
    vol = start_volume(tmp_path_factory.mktemp("writepath"), "replica2")
    try:
        yield vol
    finally:
        vol.stop()


@pytest.fixture(scope="module", params=["default", "writeback"])
def mnt(request: pytest.FixtureRequest, replica: Volume) -> Iterator[Mount]:
    opts = WRITEBACK if request.param == "writeback" else ""
    with mounted_volume(replica.volfile, replica.volfile.parent / f"mnt-{request.param}",
                        opts) as m:
        yield m


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _on_bricks(vol: Volume, rel: str) -> list[str]:
    return [_digest((b.brick / rel).read_bytes()) for b in vol.bricks]


def _name(request: pytest.FixtureRequest) -> str:
    return "".join(c if c.isalnum() else "_" for c in request.node.name)


def _reach_bricks(vol: Volume, rel: str, want: str, timeout: float = 10.0) -> bool:
    return wait_for(lambda: _on_bricks(vol, rel) == [want] * len(vol.bricks), timeout)


def test_closed_data_reaches_both_bricks(replica: Volume, mnt: Mount,
                                         request: pytest.FixtureRequest) -> None:
    name = _name(request)
    chunks = [os.urandom(MIB) for _ in range(6)] + [os.urandom(12345), os.urandom(3)]
    with open(mnt.mountpoint / name, "wb", buffering=0) as f:
        for c in chunks:
            f.write(c)
    assert _reach_bricks(replica, name, _digest(b"".join(chunks)))


def test_small_files_closed_in_a_loop_reach_the_bricks(
        replica: Volume, mnt: Mount, request: pytest.FixtureRequest) -> None:
    """The create loop flush-behind speeds up: every file's data lands after close."""
    d = mnt.mountpoint / _name(request)
    d.mkdir()
    blobs = [os.urandom(4096) for _ in range(30)]
    for k, blob in enumerate(blobs):
        fd = os.open(d / f"f{k}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, blob)
        finally:
            os.close(fd)
    for k, blob in enumerate(blobs):
        assert _reach_bricks(replica, f"{d.name}/f{k}", _digest(blob))
        assert (d / f"f{k}").read_bytes() == blob


def test_stat_and_read_see_a_write_at_once(mnt: Mount, request: pytest.FixtureRequest) -> None:
    p = mnt.mountpoint / _name(request)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        expect = bytearray()
        for k in range(40):
            block = bytes([k]) * (1000 + 97 * k)
            os.pwrite(fd, block, len(expect))
            expect += block
            assert os.fstat(fd).st_size == len(expect)
            assert os.stat(p).st_size == len(expect)
            assert os.pread(fd, len(block), len(expect) - len(block)) == block
        assert os.pread(fd, len(expect) + 10, 0) == bytes(expect)
    finally:
        os.close(fd)


def test_overlapping_writes_and_truncate_keep_their_order(
        replica: Volume, mnt: Mount, request: pytest.FixtureRequest) -> None:
    name = _name(request)
    fd = os.open(mnt.mountpoint / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for k in range(20):
            os.pwrite(fd, bytes([65 + k]) * 8192, 4096 * (k % 3))
        os.pwrite(fd, b"x" * MIB, 0)
        os.ftruncate(fd, 10)
        os.pwrite(fd, b"tail", 8)
    finally:
        os.close(fd)
    want = b"x" * 8 + b"tail"
    assert (mnt.mountpoint / name).read_bytes() == want
    assert _reach_bricks(replica, name, _digest(want))


def test_append_and_write_only_partial_pages(replica: Volume, mnt: Mount,
                                             request: pytest.FixtureRequest) -> None:
    name = _name(request)
    p = mnt.mountpoint / name
    p.write_bytes(b"a" * 10000)
    # write-only open, a write inside a page: the kernel cache must read the page
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"B" * 100, 5000)
    finally:
        os.close(fd)
    for part in (b"one", b"two"):
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, part)
        finally:
            os.close(fd)
    want = b"a" * 5000 + b"B" * 100 + b"a" * 4900 + b"onetwo"
    assert p.read_bytes() == want
    assert _reach_bricks(replica, name, _digest(want))


def test_mmap_writes_reach_the_bricks(replica: Volume, mnt: Mount,
                                      request: pytest.FixtureRequest) -> None:
    name = _name(request)
    p = mnt.mountpoint / name
    p.write_bytes(b"\0" * (64 * 1024))
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[100:105] = b"hello"
        m[40000:40003] = b"end"
        m.flush()
    want = bytearray(64 * 1024)
    want[100:105] = b"hello"
    want[40000:40003] = b"end"
    assert p.read_bytes() == bytes(want)
    assert _reach_bricks(replica, name, _digest(bytes(want)))


def test_o_direct_writes_reach_the_bricks_before_returning(
        replica: Volume, mnt: Mount, request: pytest.FixtureRequest) -> None:
    name = _name(request)
    block = mmap.mmap(-1, 8192)  # page-aligned buffer, as O_DIRECT wants
    block.write(os.urandom(8192))
    fd = os.open(mnt.mountpoint / name, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.pwrite(fd, block, 0) == 8192
        assert _on_bricks(replica, name) == [_digest(bytes(block))] * 2
        out = mmap.mmap(-1, 8192)
        assert os.preadv(fd, [out], 0) == 8192
        assert bytes(out) == bytes(block)
    finally:
        os.close(fd)


def test_fsync_without_close(replica: Volume, mnt: Mount,
                             request: pytest.FixtureRequest) -> None:
    name = _name(request)
    data = os.urandom(3 * MIB + 17)
    fd = os.open(mnt.mountpoint / name, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        assert _on_bricks(replica, name) == [_digest(data)] * 2
    finally:
        os.close(fd)


def test_sqlite(replica: Volume, mnt: Mount, request: pytest.FixtureRequest) -> None:
    name = _name(request) + ".db"
    db = sqlite3.connect(mnt.mountpoint / name)
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        for k in range(10):
            with db:
                db.executemany("INSERT INTO t (v) VALUES (?)",
                               [(os.urandom(200 + j),) for j in range(100 * k, 100 * k + 100)])
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    finally:
        db.close()
    assert wait_for(lambda: len(set(_on_bricks(replica, name))) == 1, 10.0)


def test_another_mount_sees_an_append(replica: Volume, tmp_path: Path) -> None:
    """Mount a holds the file in its caches while mount b appends to it."""
    base = replica.volfile.parent
    with mounted_volume(replica.volfile, base / "mnt-append-a", "attribute-timeout=0.2") as a, \
            mounted_volume(replica.volfile, base / "mnt-append-b") as b:
        pa, pb = a.mountpoint / "appended", b.mountpoint / "appended"
        pa.write_bytes(b"first;")
        fd = os.open(pa, os.O_RDONLY)  # keeps the inode in a's kernel
        try:
            assert os.fstat(fd).st_size == 6
            with open(pb, "ab") as f:
                f.write(b"second;")
            assert wait_for(lambda: os.stat(pa).st_size == 13, 5.0)
            assert wait_for(lambda: pa.read_bytes() == b"first;second;", 5.0)
        finally:
            os.close(fd)


def _write_and_kill(vol: Volume, m: Mount, nblocks: int) -> None:
    base = os.urandom(MIB)
    blocks = [k.to_bytes(8, "big") + base[8:] for k in range(nblocks)]
    done = [0]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with open(m.mountpoint / "big", "wb", buffering=0) as f:
                for blk in blocks:
                    f.write(blk)
                    done[0] += 1
                os.fsync(f.fileno())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    assert wait_for(lambda: done[0] >= nblocks // 6 or not t.is_alive(), 60)
    vol.bricks[1].kill()
    t.join(120)
    assert not t.is_alive() and errors == []
    got = (m.mountpoint / "big").read_bytes()
    assert _digest(got) == _digest(b"".join(blocks))


@pytest.mark.parametrize("opts", ["", WRITEBACK])
def test_writer_sees_no_error_when_a_brick_dies(tmp_path: Path, opts: str) -> None:
    """The second brick killed during a 48 MiB write: no error for the application,
    every byte reads back."""
    vol = start_volume(tmp_path, "replica2")
    try:
        with mounted_volume(vol.volfile, tmp_path / "mnt", opts) as m:
            _write_and_kill(vol, m, 48)
    finally:
        vol.stop()
