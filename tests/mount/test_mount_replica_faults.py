"""Replica 2 through a real FUSE mount with a brick killed (kill -9 by PID).

Two ``pyglfs-brickd`` processes on 127.0.0.2 and 127.0.0.3 serve ``gvol0`` with
``quorum-type auto`` (the default: the first brick must be up to write). The
application only sees the mount; the assertions look at both brick trees: the
changelog (``trusted.afr.*``) and the heal index of the surviving brick must
name exactly what the dead brick missed, and reads must never come from a copy
the changelog blames.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers.brickd import start_brickd
from helpers.mounts import (
    Mount,
    Volume,
    files_hold,
    fuse_skip_reason,
    mount_entry,
    mounted_volume,
    start_volume,
    wait_for,
)

from pyglfs.client.replicate.changelog import decode
from pyglfs.rpc.brickops import AFR_DIRTY, AFR_PREFIX, GFID_XATTR, afr_xattr
from pyglfs.volfiles.generator import generate, with_options
from pyglfs.volfiles.parser import parse_file

_skip = fuse_skip_reason()
pytestmark = [pytest.mark.mount, pytest.mark.skipif(_skip is not None, reason=_skip or "")]

MIB = 1 << 20
NO_CACHE = "attribute-timeout=0,entry-timeout=0"
# Seconds after which a closed file's queued write and post-op are surely done.
SETTLED = 1.0


# -- the volume and its bricks ------------------------------------------------------
@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Volume]:
    """gvol0 on two fresh bricks, quorum-type auto; bricks stopped by PID afterwards."""
    vol = start_volume(tmp_path, "replica2")
    try:
        graph = parse_file(vol.volfile)
        rep = graph.by_type("cluster/replicate")[0].name
        vol.volfile.write_text(generate(with_options(graph, {rep: {"quorum-type": "auto"}})))
        yield vol
    finally:
        vol.stop()


def restart_brick(vol: Volume, i: int, tmp_path: Path) -> None:
    """Start brick ``i`` again on its old address, directory and volume id."""
    old = vol.bricks[i]
    assert not old.alive()
    vol.bricks[i] = start_brickd(tmp_path, brick=old.brick, volume=old.volume,
                                 volume_id=old.volume_id, host=old.host, port=old.port)


def _log_count(m: Mount, text: str) -> int:
    return m.log_text().count(text)


def wait_connected(m: Mount, vol: Volume, i: int, before: int) -> None:
    """Wait until the mount logged one more connection to brick ``i`` than ``before``."""
    b = vol.bricks[i]
    line = f"connected to brick {b.host}:{b.port} "
    assert wait_for(lambda: _log_count(m, line) > before, 15), f"no reconnect to brick {i}"


def connections(m: Mount, vol: Volume, i: int) -> int:
    b = vol.bricks[i]
    return _log_count(m, f"connected to brick {b.host}:{b.port} ")


def wait_disconnected(m: Mount, vol: Volume, i: int) -> None:
    b = vol.bricks[i]
    line = f"disconnected from brick {b.host}:{b.port} "
    assert wait_for(lambda: line in m.log_text(), 15), f"the mount never saw brick {i} go"


def heal_index(brick: Path) -> set[bytes]:
    """The gfids in a brick's heal index, read from its directory."""
    d = brick / ".pyglfs" / "indices" / "xattrop"
    return {bytes.fromhex(n) for n in os.listdir(d) if not n.startswith("base-")}


def counters(path: Path, name: str) -> tuple[int, int, int]:
    """A changelog xattr of a file on a brick; absent counts as zeros."""
    try:
        return decode(os.getxattr(path, name, follow_symlinks=False))
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        return (0, 0, 0)


def gfid_of(path: Path) -> bytes:
    return os.getxattr(path, GFID_XATTR, follow_symlinks=False)


def drop_caches(*paths: Path) -> None:
    """Make the next reads reach the mount: drop the kernel's page cache."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        for p in paths:  # clean pages of these files at least
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def errno_of(fn: Callable[[], object]) -> int | None:
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


def sha256_of(path: Path) -> tuple[int, bytes]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        for _ in range(100_000):
            b = f.read(MIB)
            if not b:
                break
            h.update(b)
            size += len(b)
    return size, h.digest()


class Worker(threading.Thread):
    """The application: runs ``step(k)`` for k in range(steps), then ``finish()``.

    ``done`` counts the finished steps, so the test can kill a brick at a known
    point; an exception stops the worker and is kept in ``error`` for the test.
    """

    def __init__(self, steps: int, step: Callable[[int], None],
                 finish: Callable[[], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.steps = steps
        self.step = step
        self.finish = finish
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for k in range(self.steps):
                self.step(k)
                self.done = k + 1
            if self.finish is not None:
                self.finish()
        except BaseException as e:  # reported by the test
            self.error = e

    def wait(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"the application is stuck after {self.done} steps"
        if self.error is not None:
            raise AssertionError(f"the application got an error after {self.done} steps: "
                                 f"{self.error!r}") from self.error


def kill_when(vol: Volume, i: int, w: Worker, at: int) -> tuple[int, int]:
    """kill -9 brick ``i`` once ``w`` finished ``at`` steps; (done before, done after)."""
    assert wait_for(lambda: w.done >= at or not w.is_alive(), 60), "the worker made no progress"
    before = w.done
    assert before < w.steps, "the worker finished before the kill"
    vol.bricks[i].kill()
    return before, w.done


# -- 1. the second brick dies during a big sequential write -------------------------
def _block(base: bytes, i: int) -> bytes:
    return struct.pack(">Q", i) + base[8:]


def test_second_brick_killed_during_200mib_write(replica: Volume, tmp_path: Path) -> None:
    vol, nblocks = replica, 200
    base = os.urandom(MIB)
    want = hashlib.sha256(b"".join(_block(base, i) for i in range(nblocks))).digest()
    b0, b1 = (b.brick / "big" for b in vol.bricks)
    with mounted_volume(vol.volfile, tmp_path / "mnt") as m:
        path = m.mountpoint / "big"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

        def write(i: int) -> None:
            buf = memoryview(_block(base, i))
            while buf:
                buf = buf[os.write(fd, buf):]

        def finish() -> None:
            os.fsync(fd)
            os.close(fd)

        w = Worker(nblocks, write, finish)
        w.start()
        try:
            before, _ = kill_when(vol, 1, w, 50)
            w.wait(60)
        finally:
            if w.is_alive() or w.error is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        print(f"brick 1 killed after {before} MiB of {nblocks}")

        gfid = gfid_of(b0)
        # The post-op after close runs in the background: wait until it took
        # the dirty mark back, then the index holds only real blame.
        assert wait_for(lambda: counters(b0, AFR_DIRTY) == (0, 0, 0), 10)
        assert counters(b0, afr_xattr(vol.name, 1))[0] > 0
        # The root's entry lock (from the create) keeps its dirty mark, and so
        # its index entry, until that lock is idle for the post-op delay.
        assert wait_for(lambda: heal_index(vol.bricks[0].brick) == {gfid}, 10)
        assert b1.stat().st_size < nblocks * MIB

        drop_caches(path)
        assert os.stat(path).st_size == nblocks * MIB
        assert sha256_of(path) == (nblocks * MIB, want)

        # Make the stale copy wrong everywhere (offline, keeping inode, size and
        # xattrs), so that any read it served would show.
        stale = b1.stat().st_size
        with open(b1, "r+b") as f:
            for off in range(0, stale, MIB):
                f.write(b"\xee" * min(MIB, stale - off))
        seen = connections(m, vol, 1)
        restart_brick(vol, 1, tmp_path)
        wait_connected(m, vol, 1, seen)

        assert heal_index(vol.bricks[0].brick) == {gfid}
        assert counters(b0, afr_xattr(vol.name, 1))[0] > 0
        # Brick 1 is back in use: a new file reaches it.
        (m.mountpoint / "after").write_bytes(b"both")
        assert files_hold([vol.bricks[1].brick / "after"], b"both")

        drop_caches(path)
        assert sha256_of(path) == (nblocks * MIB, want)
        with mounted_volume(vol.volfile, tmp_path / "mnt2", NO_CACHE) as m2:
            p2 = m2.mountpoint / "big"
            assert os.stat(p2).st_size == nblocks * MIB
            assert sha256_of(p2) == (nblocks * MIB, want)
        assert b1.stat().st_size == stale
        assert wait_for(lambda: heal_index(vol.bricks[0].brick) == {gfid}, 10)


# -- 2. the second brick dies while many small files are created ---------------------
def _content(k: int) -> bytes:
    return (b"%06d:" % k) * 585 + b"0123456789"[: 4096 - 7 * 585]


def test_second_brick_killed_during_2000_creates(replica: Volume, tmp_path: Path) -> None:
    vol, n = replica, 2000
    assert len(_content(0)) == 4096
    names = [f"f{k:05d}" for k in range(n)]
    d0, d1 = (b.brick / "many" for b in vol.bricks)
    with mounted_volume(vol.volfile, tmp_path / "mnt") as m:
        d = m.mountpoint / "many"
        os.mkdir(d)

        closed_at = [math.inf] * n

        def create(k: int) -> None:
            fd = os.open(d / names[k], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                assert os.write(fd, _content(k)) == 4096
            finally:
                os.close(fd)
                closed_at[k] = time.monotonic()

        w = Worker(n, create)
        t0 = time.monotonic()
        w.start()
        # Some files must have settled before the kill for the check below.
        wait_for(lambda: time.monotonic() - t0 > SETTLED + 0.5 or w.done >= n // 2, 30)
        _, after = kill_when(vol, 1, w, n // 3)
        killed = time.monotonic()
        w.wait(120)
        elapsed = time.monotonic() - t0
        # With flush-behind a close returns before the file's write reaches the
        # bricks, and its post-op follows within the give-back delay: files
        # 0..before-1 were closed SETTLED seconds before the kill, so both bricks
        # had all of them. Files after+1.. were started after brick 1 was
        # reaped; those between were in flight, and the kill may have cut any of
        # their create, write or post-op on brick 1.
        before = sum(1 for t in closed_at if t < killed - SETTLED)
        in_flight = range(before, after + 1)
        assert 0 < before and after + 1 < n
        print(f"{n} files in {elapsed:.1f}s, brick 1 killed after {before} "
              f"(in flight: {before}..{after})")

        gfids = [gfid_of(d0 / name) for name in names]
        assert len(set(gfids)) == n
        assert wait_for(lambda: all(counters(d0 / x, AFR_DIRTY) == (0, 0, 0) for x in names)
                        and counters(d0, AFR_DIRTY) == (0, 0, 0), 15)
        dgfid = gfid_of(d0)
        index = heal_index(vol.bricks[0].brick)
        assert dgfid in index
        assert counters(d0, afr_xattr(vol.name, 1))[2] > 0
        assert index.isdisjoint(gfids[:before]), "files settled before the kill are blamed"
        assert set(gfids[after + 1:]) <= index, "files made after the kill are not blamed"
        # A file in flight at the kill is blamed exactly when its change may
        # have missed brick 1; unblamed, its copy there must be whole.
        for k in in_flight:
            if gfids[k] not in index:
                assert (d1 / names[k]).read_bytes() == _content(k)
        assert index <= {dgfid, *gfids[before:]}
        for k in range(after + 1, n):
            assert counters(d0 / names[k], afr_xattr(vol.name, 1))[:2] != (0, 0)
            assert not (d1 / names[k]).exists()

        drop_caches()
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda name: (d / name).read_bytes(), names, timeout=60))
        assert [k for k in range(n) if got[k] != _content(k)] == []
        print(f"read back in {time.monotonic() - t0:.1f}s")

        seen = connections(m, vol, 1)
        restart_brick(vol, 1, tmp_path)
        wait_connected(m, vol, 1, seen)
        assert heal_index(vol.bricks[0].brick) == index
        drop_caches()
        assert sorted(os.listdir(d)) == names
        for k in (after + 1, (after + n) // 2, n - 1):
            assert (d / names[k]).read_bytes() == _content(k)


# -- 3. the first brick dies: no quorum, read-only in effect ------------------------
def _assert_read_only(root: Path) -> None:
    """Every kind of change fails with EROFS; nothing reaches a brick."""
    changes: list[Callable[[], object]] = [
        lambda: os.open(root / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.mkdir(root / "newdir"),
        lambda: os.open(root / "a", os.O_WRONLY),
        lambda: os.open(root / "a", os.O_RDWR | os.O_TRUNC),
        lambda: os.truncate(root / "a", 1),
        lambda: os.chmod(root / "a", 0o600),
        lambda: os.unlink(root / "a"),
        lambda: os.rename(root / "a", root / "a2"),
        lambda: os.symlink("a", root / "ln"),
        lambda: os.setxattr(root / "a", "user.k", b"v"),
        lambda: os.rmdir(root / "sub" / "empty"),
    ]
    for k, change in enumerate(changes):
        assert errno_of(change) == errno.EROFS, f"change {k} did not fail with EROFS"


def _populate(root: Path) -> dict[str, bytes]:
    files = {"a": os.urandom(300_000), "sub/b": b"bee" * 1000}
    os.mkdir(root / "sub")
    os.mkdir(root / "sub" / "empty")
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return files


def _assert_reads(root: Path, files: dict[str, bytes]) -> None:
    drop_caches()
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data
    assert sorted(os.listdir(root)) == ["a", "sub"]
    assert sorted(os.listdir(root / "sub")) == ["b", "empty"]
    assert os.statvfs(root).f_blocks > 0


def test_first_brick_killed_quorum_lost(replica: Volume, tmp_path: Path) -> None:
    vol = replica
    with mounted_volume(vol.volfile, tmp_path / "mnt", NO_CACHE) as m:
        root = m.mountpoint
        files = _populate(root)
        fd = os.open(root / "a", os.O_WRONLY)
        try:
            vol.bricks[0].kill()
            wait_disconnected(m, vol, 0)
            assert errno_of(lambda: os.pwrite(fd, b"x", 0)) == errno.EROFS
        finally:
            os.close(fd)
        _assert_read_only(root)
        _assert_reads(root, files)
        for b in vol.bricks:
            assert sorted(os.listdir(b.brick)) == [".pyglfs", "a", "sub"]
        assert (vol.bricks[1].brick / "a").read_bytes() == files["a"]


# -- 4. a mount made while the first brick is down ----------------------------------
def test_mount_while_first_brick_down(replica: Volume, tmp_path: Path) -> None:
    """As GlusterFS: the mount succeeds, reads work, changes fail with EROFS; once
    the first brick is back, changes work again without a remount."""
    vol = replica
    with mounted_volume(vol.volfile, tmp_path / "mnt0") as m:
        files = _populate(m.mountpoint)
    vol.bricks[0].kill()
    with mounted_volume(vol.volfile, tmp_path / "mnt", NO_CACHE) as m:
        root = m.mountpoint
        assert mount_entry(root)["fstype"] == "fuse.pyglfs"
        _assert_reads(root, files)
        _assert_read_only(root)

        seen = connections(m, vol, 0)
        restart_brick(vol, 0, tmp_path)
        wait_connected(m, vol, 0, seen)
        (root / "c").write_bytes(b"sea")
        os.mkdir(root / "newdir")
        assert files_hold([b.brick / "c" for b in vol.bricks], b"sea")
        for b in vol.bricks:
            assert (b.brick / "newdir").is_dir()


# -- 5. a clean unmount leaves nothing for heal -------------------------------------
def _changelog_on(path: Path) -> dict[str, tuple[int, int, int]]:
    return {n: counters(path, n) for n in os.listxattr(path, follow_symlinks=False)
            if n.startswith(AFR_PREFIX)}


def test_clean_unmount_leaves_no_marks(replica: Volume, tmp_path: Path) -> None:
    vol = replica
    with mounted_volume(vol.volfile, tmp_path / "mnt") as m:
        root = m.mountpoint
        os.makedirs(root / "d" / "e")
        (root / "big").write_bytes(os.urandom(8 * MIB))
        for k in range(20):
            (root / "d" / f"s{k}").write_bytes(b"%d" % k * 100)
        with open(root / "synced", "wb") as f:
            f.write(b"x" * 10_000)
            os.fsync(f.fileno())
        os.rename(root / "d" / "s0", root / "d" / "e" / "moved")
        os.chmod(root / "d" / "s1", 0o600)
        os.setxattr(root / "d" / "s2", "user.k", b"v")
        os.truncate(root / "big", MIB)
        os.unlink(root / "d" / "s3")
        (root / "last").write_bytes(b"written just before the unmount")
        os.chmod(root / "last", 0o640)
        # The eager locks still hold dirty marks (post-op delay): the unmount
        # has to take them back.
        b0 = vol.bricks[0].brick
        marks = [counters(b0 / "last", AFR_DIRTY), counters(b0, AFR_DIRTY)]
        assert any(v != (0, 0, 0) for v in marks), marks
    assert not m.unexpected_errors()
    for b in vol.bricks:
        assert heal_index(b.brick) == set(), f"brick {b.brick} has a heal index"
        seen = 0
        for dirpath, dirnames, filenames in os.walk(b.brick):
            here = Path(dirpath)
            if here == b.brick:
                dirnames.remove(".pyglfs")
            for name in (".", *filenames):
                p = here / name
                marks = _changelog_on(p)
                assert all(v == (0, 0, 0) for v in marks.values()), (p, marks)
                seen += 1
        # root, d, d/e; big, synced, last, moved and d/s1..s19 without s3
        assert seen == 3 + 22, seen
