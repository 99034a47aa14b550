"""Files and directories at scale through a real mount: deep trees, big
directories, O_DIRECT, many opens, locks between processes, sqlite."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import select
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest
from mountdiff import assert_same

COMPONENT = "d" * 60


def _walk_down(root, depth: int, make: bool) -> int:
    """chdir-relative descent ``depth`` levels; returns the fd of the deepest dir."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        if make:
            os.mkdir(COMPONENT, 0o755, dir_fd=fd)
        nfd = os.open(COMPONENT, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def test_tree_deeper_than_path_max(pair):
    depth = 80  # 80 * 61 bytes: well past PATH_MAX (4096)
    fd = _walk_down(pair.mount, depth, make=True)
    try:
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"deep")
        old = os.getcwd()
        os.fchdir(fd)
        try:
            assert len(os.getcwd()) > 4096
            assert open("leaf", "rb").read() == b"deep"
            with pytest.raises(OSError) as e:
                os.stat(os.getcwd() + "/leaf")
            assert e.value.errno == errno.ENAMETOOLONG
        finally:
            os.chdir(old)
    finally:
        os.close(fd)
    fd = _walk_down(pair.mount, depth, make=False)
    try:
        assert os.stat("leaf", dir_fd=fd).st_size == 4
    finally:
        os.close(fd)
    # tear down bottom-up, relative to each parent
    for level in range(depth, 0, -1):
        fd = _walk_down(pair.mount, level - 1, make=False)
        try:
            if level == depth:
                inner = os.open(COMPONENT, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.unlink("leaf", dir_fd=inner)
                os.close(inner)
            os.rmdir(COMPONENT, dir_fd=fd)
        finally:
            os.close(fd)
    assert os.listdir(pair.mount) == []


def test_big_directory_listing(pair):
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(400)}
    for n in names:
        os.mknod(pair.mount / n, stat.S_IFREG | 0o644)
    os.mkdir(pair.mount / "subdir")
    listed = os.listdir(pair.mount)
    assert len(listed) == len(names) + 1  # no repeats, nothing skipped
    assert set(listed) == names | {"subdir"}
    with os.scandir(pair.mount) as it:
        kinds = {e.name: e.is_dir() for e in it}
    assert kinds["subdir"] and not any(v for k, v in kinds.items() if k != "subdir")
    out = subprocess.run(["ls", "-a", str(pair.mount)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[:2] == [".", ".."] and len(out) == len(names) + 3
    # removing while listing skips nothing that stays and repeats nothing
    seen = []
    with os.scandir(pair.mount) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 100:
                for n in sorted(names)[:150]:
                    os.unlink(pair.mount / n)
    assert len(seen) == len(set(seen))
    assert set(sorted(names)[150:]) <= set(seen)


def test_o_direct(pair):
    block = mmap.mmap(-1, 1 << 16)  # page aligned
    block.write(b"D" * (1 << 16))
    fd = os.open(pair.mount / "direct", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.write(fd, block) == 1 << 16
        assert os.pwrite(fd, block, 1 << 16) == 1 << 16
        buf = mmap.mmap(-1, 1 << 17)
        assert os.preadv(fd, [buf], 0) == 1 << 17
        assert bytes(buf) == b"D" * (1 << 17)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.stat(pair.mount / "direct").st_size == 1 << 17
    # a buffered open of the same file sees the data written around the cache
    with open(pair.mount / "direct", "rb") as f:
        assert f.read() == b"D" * (1 << 17)


def test_many_opens_with_different_modes(pair):
    p = pair.mount / "f"
    p.write_bytes(b"0" * 100)
    fds = []
    try:
        for i in range(60):
            mode = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND)[i % 4]
            fds.append((mode, os.open(p, mode)))
        for i, (mode, fd) in enumerate(fds):
            acc = mode & os.O_ACCMODE
            if acc == os.O_RDONLY:
                assert os.pread(fd, 1, 0) == b"0"  # byte 0 is never written
                with pytest.raises(OSError) as e:
                    os.write(fd, b"x")
                assert e.value.errno == errno.EBADF
            elif mode & os.O_APPEND:
                assert os.write(fd, b"A") == 1
            else:
                assert os.pwrite(fd, b"w", i) == 1
                if acc == os.O_WRONLY:
                    with pytest.raises(OSError) as e:
                        os.read(fd, 1)
                    assert e.value.errno == errno.EBADF
    finally:
        for _, fd in fds:
            os.close(fd)
    data = p.read_bytes()
    assert len(data) == 100 + 15 and data.endswith(b"A" * 15)
    assert data[1:2] == b"w" and data[0:1] == b"0"


def test_append_from_two_handles(pair):
    assert_same(pair.local, pair.mount, [
        ("open", "a", "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        ("open", "b", "log", os.O_WRONLY | os.O_APPEND),
        ("write", "a", b"one\n"),
        ("write", "b", b"two\n"),
        ("write", "a", b"three\n"),
        ("close", "a"),
        ("close", "b"),
        ("read_file", "log"),
    ])


_LOCKER = textwrap.dedent("""
    import fcntl, os, sys, time
    path, kind = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_RDWR)
    if kind == "fcntl":
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("kind", ["fcntl", "flock"])
def test_locks_between_processes(pair, kind):
    p = pair.mount / "lockfile"
    p.write_bytes(b"x" * 100)
    holder = subprocess.Popen([sys.executable, "-c", _LOCKER, str(p), kind],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        ready, _, _ = select.select([holder.stdout], [], [], 10)
        assert ready and holder.stdout.readline().strip() == "locked"
        fd = os.open(p, os.O_RDWR)
        try:
            with pytest.raises(OSError) as e:
                if kind == "fcntl":
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert e.value.errno in (errno.EAGAIN, errno.EACCES)
            if kind == "fcntl":
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)  # other range: fine
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(10) == 0
            if kind == "fcntl":
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)


def test_sqlite_transactions(pair):
    db = sqlite3.connect(pair.mount / "test.db")
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
        for batch in range(20):
            with db:
                db.executemany("INSERT INTO t (name, payload) VALUES (?, ?)",
                               [(f"row-{batch}-{i}", os.urandom(64)) for i in range(500)])
        with db:
            db.execute("DELETE FROM t WHERE id % 7 = 0")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = db.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        db.close()
    assert n == 10000 - 10000 // 7
    db = sqlite3.connect(pair.mount / "test.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == n
    finally:
        db.close()


def test_statfs(pair):
    st = os.statvfs(pair.mount)
    local = os.statvfs(pair.mnt.mountpoint.parent)  # the brick lives on this filesystem
    assert st.f_namemax == 255
    assert st.f_blocks > 0 and st.f_bsize > 0
    assert abs(st.f_blocks * st.f_frsize - local.f_blocks * local.f_frsize) < 1 << 30
