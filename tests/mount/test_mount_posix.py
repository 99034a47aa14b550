"""POSIX behaviour through a real mount, step by step against the local filesystem.

Each test runs one script (see ``mountdiff``) on a fresh local directory and on
a fresh directory of a single-brick mount and requires the same outcome, errno
included, at every step.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
from mountdiff import RENAME_NOREPLACE, assert_same

WR_CREAT = os.O_WRONLY | os.O_CREAT
DATA = bytes(range(256)) * 64


def test_files_write_read_truncate(pair):
    assert_same(pair.local, pair.mount, [
        ("open", "f", "f", WR_CREAT | os.O_EXCL, 0o640),
        ("write", "f", b"hello world"),
        ("pwrite", "f", b"XY", 3),
        ("fstat", "f"),
        ("close", "f"),
        ("read_file", "f"),
        ("stat", "f"),
        ("truncate", "f", 4),
        ("read_file", "f"),
        ("truncate", "f", 10000),
        ("stat", "f"),
        ("open", "r", "f", os.O_RDONLY),
        ("pread", "r", 8, 2),
        ("pread", "r", 100, 9990),
        ("pread", "r", 10, 20000),
        ("read", "r", 3),
        ("lseek", "r", 0, os.SEEK_END),
        ("close", "r"),
        ("open", "x", "f", WR_CREAT | os.O_EXCL),
        ("open", "x", "missing", os.O_RDONLY),
        ("unlink", "f"),
        ("stat", "f"),
        ("unlink", "f"),
        ("listdir",),
    ])


def test_large_file_contents(pair):
    big = DATA * 40  # 640 KiB: several FUSE requests each way
    assert_same(pair.local, pair.mount, [
        ("write_file", "big", big),
        ("stat", "big"),
        ("read_file", "big"),
        ("open", "w", "big", os.O_WRONLY),
        ("pwrite", "w", b"z" * 5000, 300000),
        ("close", "w"),
        ("read_file", "big"),
    ])


def test_open_flags(pair):
    assert_same(pair.local, pair.mount, [
        ("write_file", "f", b"0123456789"),
        ("open", "t", "f", os.O_WRONLY | os.O_TRUNC),
        ("fstat", "t"),
        ("write", "t", b"abc"),
        ("close", "t"),
        ("read_file", "f"),
        ("open", "a", "f", os.O_WRONLY | os.O_APPEND),
        ("write", "a", b"def"),
        ("lseek", "a", 0, os.SEEK_SET),
        ("write", "a", b"ghi"),
        ("close", "a"),
        ("read_file", "f"),
        ("open", "ro", "f", os.O_RDONLY),
        ("write", "ro", b"no"),
        ("open", "wo", "f", os.O_WRONLY),
        ("read", "wo", 1),
        ("open", "x", "f", os.O_RDONLY | os.O_DIRECTORY),
        ("mkdir", "d"),
        ("open", "x", "d", os.O_WRONLY),
        ("open", "x", "d", os.O_RDWR),
        ("open", "dd", "d", os.O_RDONLY | os.O_DIRECTORY),
        ("open", "n", "new", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600),
        ("stat", "new"),
        ("open", "x", "d/sub/x", WR_CREAT),
        ("open", "x", "f/x", WR_CREAT),
    ])


def test_directories(pair):
    assert_same(pair.local, pair.mount, [
        ("mkdir", "a", 0o755),
        ("mkdir", "a"),
        ("mkdir", "a/b", 0o700),
        ("stat", "a"),
        ("stat", "a/b"),
        ("write_file", "a/f", b"x"),
        ("rmdir", "a"),
        ("rmdir", "a/f"),
        ("unlink", "a/b"),
        ("mkdir", "a/f/x"),
        ("scandir", "a"),
        ("unlink", "a/f"),
        ("rmdir", "a/b"),
        ("rmdir", "a"),
        ("rmdir", "a"),
        ("mkdir", "missing/x"),
        ("listdir",),
    ])


def test_rename(pair):
    assert_same(pair.local, pair.mount, [
        ("write_file", "a", b"A"),
        ("write_file", "b", b"B"),
        ("rename", "a", "b"),
        ("read_file", "b"),
        ("exists", "a"),
        ("rename", "missing", "c"),
        ("mkdir", "d1"),
        ("mkdir", "d2"),
        ("write_file", "d2/f", b"F"),
        ("rename", "b", "d1"),
        ("rename", "d1", "b"),
        ("rename", "d1", "d2"),
        ("unlink", "d2/f"),
        ("rename", "d1", "d2"),
        ("exists", "d1"),
        ("mkdir", "d2/sub"),
        ("rename", "d2", "d2/sub/x"),
        ("write_file", "c", b"C"),
        ("rename", "c", "b", RENAME_NOREPLACE),
        ("rename", "c", "e", RENAME_NOREPLACE),
        ("rename", "e", "d2/sub/e"),
        ("read_file", "d2/sub/e"),
        ("rename", "d2/sub", "s"),
        ("listdir",),
        ("listdir", "s"),
        ("rename", "b", "b"),
    ])


def test_rename_over_open_file(pair):
    assert_same(pair.local, pair.mount, [
        ("write_file", "old", b"old data"),
        ("open", "o", "old", os.O_RDONLY),
        ("write_file", "new", b"new data"),
        ("rename", "new", "old"),
        ("read", "o", 100),
        ("read_file", "old"),
        ("close", "o"),
    ])


def test_links_and_symlinks(pair):
    assert_same(pair.local, pair.mount, [
        ("write_file", "f", b"data"),
        ("link", "f", "g"),
        ("stat", "f"),
        ("link", "f", "g"),
        ("link", "missing", "h"),
        ("mkdir", "d"),
        ("link", "d", "d2"),
        ("unlink", "f"),
        ("stat", "g"),
        ("read_file", "g"),
        ("symlink", "g", "s"),
        ("symlink", "nowhere", "dangling"),
        ("readlink", "s"),
        ("lstat", "s"),
        ("stat", "s"),
        ("read_file", "s"),
        ("stat", "dangling"),
        ("readlink", "g"),
        ("symlink", "x", "s"),
        ("symlink", "../" * 20 + "t" * 200, "long"),
        ("readlink", "long"),
        ("scandir",),
    ])


def test_unlink_open_file(pair):
    assert_same(pair.local, pair.mount, [
        ("write_file", "f", b"still here"),
        ("open", "o", "f", os.O_RDWR),
        ("unlink", "f"),
        ("exists", "f"),
        ("pread", "o", 100, 0),
        ("pwrite", "o", b"STILL", 0),
        ("pread", "o", 100, 0),
        ("close", "o"),
        ("listdir",),
    ])


def test_fifo_and_mknod(pair):
    assert_same(pair.local, pair.mount, [
        ("mkfifo", "p", 0o640),
        ("lstat", "p"),
        ("mkfifo", "p"),
        ("mknod", "r", stat.S_IFREG | 0o600),
        ("lstat", "r"),
        ("scandir",),
        ("unlink", "p"),
    ])


def test_attributes(pair):
    assert_same(pair.local, pair.mount, [
        ("write_file", "f", b"abc"),
        ("chmod", "f", 0o4755),
        ("stat", "f"),
        ("chmod", "f", 0o2644),
        ("stat", "f"),
        ("chown", "f", 1234, 5678),
        ("stat", "f"),
        ("chmod", "f", 0o6755),
        ("chown", "f", 1234, 5678),
        ("stat", "f"),
        ("utime", "f", (1_000_000_000_123_456_789, 1_100_000_000_987_654_321)),
        ("stat", "f", True),
        ("mkdir", "d"),
        ("chmod", "d", 0o1777),
        ("stat", "d"),
        ("symlink", "f", "s"),
        ("lchown", "s", 42, 43),
        ("lstat", "s"),
        ("stat", "s"),
        ("chmod", "missing", 0o600),
    ])


def test_utime_now(pair):
    for root in (pair.local, pair.mount):
        p = root / "f"
        p.write_bytes(b"x")
        os.utime(p, ns=(10**9, 10**9))
        before = os.stat(p)
        os.utime(p)  # UTIME_NOW for both
        after = os.stat(p)
        assert before.st_mtime_ns == 10**9
        assert after.st_mtime_ns > 10**18 and after.st_atime_ns > 10**18


def test_xattrs(pair):
    assert_same(pair.local, pair.mount, [
        ("write_file", "f", b""),
        ("getxattr", "f", "user.missing"),
        ("setxattr", "f", "user.a", b"1"),
        ("setxattr", "f", "user.b", b"\x00bin\xff" * 100),
        ("getxattr", "f", "user.a"),
        ("getxattr", "f", "user.b"),
        ("listxattr", "f"),
        ("setxattr", "f", "user.a", b"2", os.XATTR_CREATE),
        ("setxattr", "f", "user.c", b"3", os.XATTR_REPLACE),
        ("setxattr", "f", "user.a", b"22", os.XATTR_REPLACE),
        ("getxattr", "f", "user.a"),
        ("setxattr", "f", "user.c", b"", os.XATTR_CREATE),
        ("getxattr", "f", "user.c"),
        ("removexattr", "f", "user.b"),
        ("removexattr", "f", "user.b"),
        ("listxattr", "f"),
        ("mkdir", "d"),
        ("setxattr", "d", "user.dir", b"v"),
        ("getxattr", "d", "user.dir"),
        ("getxattr", "missing", "user.a"),
    ])


def test_xattr_erange(pair):
    for root in (pair.local, pair.mount):
        p = root / "f"
        p.write_bytes(b"")
        os.setxattr(p, "user.big", b"v" * 300)
        assert os.getxattr(p, "user.big") == b"v" * 300
        # os.getxattr sizes its buffer itself; a too-small one must be ERANGE
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(10)
        r = libc.getxattr(os.fsencode(p), b"user.big", buf, 10)
        assert r == -1 and ctypes.get_errno() == 34  # ERANGE
        assert libc.getxattr(os.fsencode(p), b"user.big", None, 0) == 300


def test_name_too_long(pair):
    long = "n" * 256
    ok = "n" * 255
    assert_same(pair.local, pair.mount, [
        ("open", "x", long, WR_CREAT),
        ("mkdir", long),
        ("stat", long),
        ("symlink", "t", long),
        ("write_file", ok, b"max"),
        ("read_file", ok),
        ("rename", ok, long),
        ("link", ok, long),
        ("mkfifo", long),
        ("unlink", long),
        ("listdir",),
    ])


def test_huge_offset_write(pair):
    offsets = [2**40, 2**44 - 1, 2**44, 2**50, 2**62, 2**63 - 2]
    steps: list[tuple] = [("open", "f", "f", os.O_RDWR | os.O_CREAT, 0o644)]
    for off in offsets:
        steps += [("pwrite", "f", b"x", off)]
    steps += [("ftruncate", "f", 2**50), ("close", "f")]
    local = assert_same(pair.local, pair.mount, steps)
    # whatever the local filesystem allows, offsets past its limit are refused
    assert ("err", "EFBIG") in local or ("err", "EINVAL") in local



def test_xattr_name_not_utf8(pair):
    """Names travel as UTF-8: one that is not cannot exist on the volume."""
    p = pair.mount / "f"
    p.write_bytes(b"")
    name = b"user.\xff\xfe"
    with pytest.raises(OSError) as e:
        os.setxattr(p, name, b"v")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.getxattr(p, name)
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        os.removexattr(p, name)
    assert e.value.errno == errno.ENODATA
    assert os.listxattr(p) == []


def test_fsync_file_and_directory(pair):
    for root in (pair.local, pair.mount):
        fd = os.open(root / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"durable")
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    assert (pair.mount / "f").read_bytes() == b"durable"


def test_rename_exchange_all_or_nothing(pair):
    from mountdiff import RENAME_EXCHANGE, run_steps
    steps = [
        ("write_file", "a", b"A"),
        ("mkdir", "b"),
        ("rename", "a", "b", RENAME_EXCHANGE),
        ("lstat", "a"),
        ("lstat", "b"),
    ]
    local = run_steps(str(pair.local), steps)
    remote = run_steps(str(pair.mount), steps)
    if remote[2] == ("err", "EINVAL"):  # exchange not supported: nothing changed
        assert remote[3][1]["type"] == stat.S_IFREG and remote[4][1]["type"] == stat.S_IFDIR
    else:
        assert remote == local


@pytest.mark.parametrize("name, value, get_errno", [
    ("security.capability", b"\x01\x00\x00\x02" + bytes(16), errno.ENODATA),
    ("security.selinux", b"system_u:object_r:etc_t:s0\x00", errno.EOPNOTSUPP),
    ("system.posix_acl_access", b"\x02\x00\x00\x00" + bytes.fromhex(
        "01000600ffffffff" "04000400ffffffff" "20000400ffffffff"), errno.EOPNOTSUPP),
])
def test_security_xattrs_answered_locally(pair, name, value, get_errno):
    p = pair.mount / "f"
    p.write_bytes(b"")
    with pytest.raises(OSError) as e:
        os.getxattr(p, name)
    assert e.value.errno == get_errno
    with pytest.raises(OSError) as e:
        os.setxattr(p, name, value)
    assert e.value.errno == errno.EOPNOTSUPP
    assert name not in os.listxattr(p)


def test_unlink_file_still_open_from_create(pair):
    assert_same(pair.local, pair.mount, [
        ("open", "o", "new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600),
        ("write", "o", b"created, written, unlinked"),
        ("unlink", "new"),
        ("pread", "o", 100, 0),
        ("fstat", "o"),
        ("ftruncate", "o", 7),
        ("pread", "o", 100, 0),
        ("close", "o"),
        ("exists", "new"),
    ])


def test_special_modes_and_long_targets(pair):
    # devices are made and listed alike; opening one differs by design: FUSE
    # mounts are nodev (libfuse's default) unlike the local filesystem
    assert_same(pair.local, pair.mount, [
        ("mkdir", "sticky", 0o3777),
        ("stat", "sticky"),
        ("symlink", "t" * 4095, "longest"),
        ("readlink", "longest"),
        ("symlink", "t" * 4096, "toolong"),
        ("mknod", "null", stat.S_IFCHR | 0o600, os.makedev(1, 3)),
        ("lstat", "null"),
        ("mknod", "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200)),
        ("lstat", "blk"),
        ("mknod", "sock", stat.S_IFSOCK | 0o600),
        ("lstat", "sock"),
        ("scandir",),
    ])
