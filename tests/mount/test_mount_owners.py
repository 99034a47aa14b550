"""Owners, groups, umask and permission checks: what the bridge (and the kernel,
with ``default_permissions``) must do for callers other than root.

Scripts run in forked children with the caller's credentials, on a local
directory and on the mount, and must agree; the key values are also checked
against what POSIX says outright, so both sides cannot be wrong together.
"""

from __future__ import annotations

import os
import stat

import pytest
from mountdiff import assert_same

USER = 1000
GROUP = 1000
OTHER_GROUP = 4242
WR_CREAT = os.O_WRONLY | os.O_CREAT


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0])
def test_umask_applied_once(pair, umask):
    out = assert_same(pair.local, pair.mount, [
        ("open", "f", "file", WR_CREAT, 0o666),
        ("close", "f"),
        ("stat", "file"),
        ("mkdir", "dir", 0o777),
        ("stat", "dir"),
        ("mkfifo", "fifo", 0o666),
        ("stat", "fifo"),
        ("open", "g", "file2", WR_CREAT, 0o751),
        ("close", "g"),
        ("stat", "file2"),
    ], uid=USER, gid=GROUP, umask=umask)
    assert out[2][1]["perm"] == oct(0o666 & ~umask)
    assert out[4][1]["perm"] == oct(0o777 & ~umask)
    assert out[6][1]["perm"] == oct(0o666 & ~umask)
    assert out[9][1]["perm"] == oct(0o751 & ~umask)
    assert {out[i][1]["uid"] for i in (2, 4, 6, 9)} == {USER}
    assert {out[i][1]["gid"] for i in (2, 4, 6, 9)} == {GROUP}


def test_new_inodes_belong_to_the_caller(pair):
    out = assert_same(pair.local, pair.mount, [
        ("write_file", "f", b"x"),
        ("mkdir", "d"),
        ("symlink", "f", "s"),
        ("mkfifo", "p"),
        ("link", "f", "h"),
        ("stat", "f"),
        ("stat", "d"),
        ("lstat", "s"),
        ("stat", "p"),
        ("stat", "h"),
    ], uid=USER, gid=GROUP, groups=[OTHER_GROUP])
    for i in range(5, 10):
        assert (out[i][1]["uid"], out[i][1]["gid"]) == (USER, GROUP)


def test_setgid_directory(pair):
    assert_same(pair.local, pair.mount, [
        ("mkdir", "sg", 0o777),
        ("chown", "sg", 0, OTHER_GROUP),
        ("chmod", "sg", 0o2777),
        ("stat", "sg"),
    ])
    out = assert_same(pair.local, pair.mount, [
        ("write_file", "sg/f", b"x"),
        ("mkdir", "sg/d", 0o755),
        ("mkdir", "sg/d/deeper", 0o755),
        ("symlink", "f", "sg/s"),
        ("mkfifo", "sg/p"),
        ("open", "x", "sg/x", WR_CREAT, 0o2755),
        ("close", "x"),
        ("stat", "sg/f"),
        ("stat", "sg/d"),
        ("stat", "sg/d/deeper"),
        ("lstat", "sg/s"),
        ("stat", "sg/p"),
        ("stat", "sg/x"),
    ], uid=USER, gid=GROUP, groups=[])
    f, d, deeper, s, p, x = (out[i][1] for i in range(7, 13))
    assert {f["gid"], d["gid"], deeper["gid"], s["gid"], p["gid"], x["gid"]} == {OTHER_GROUP}
    assert int(d["perm"], 8) & stat.S_ISGID and int(deeper["perm"], 8) & stat.S_ISGID
    assert not int(f["perm"], 8) & stat.S_ISGID
    # not a member of the directory's group: setgid of a new file is dropped
    assert not int(x["perm"], 8) & stat.S_ISGID


def test_setgid_kept_for_group_member(pair):
    assert_same(pair.local, pair.mount, [
        ("mkdir", "sg", 0o777),
        ("chown", "sg", 0, OTHER_GROUP),
        ("chmod", "sg", 0o2777),
    ])
    out = assert_same(pair.local, pair.mount, [
        ("open", "x", "sg/x", WR_CREAT, 0o2755),
        ("close", "x"),
        ("stat", "sg/x"),
    ], uid=USER, gid=GROUP, groups=[OTHER_GROUP], umask=0)
    assert out[2][1]["perm"] == oct(0o2755)


def test_permission_checks(pair):
    assert_same(pair.local, pair.mount, [
        ("mkdir", "rootdir", 0o755),
        ("write_file", "rootdir/ro", b"secret"),
        ("chmod", "rootdir/ro", 0o600),
        ("write_file", "shared", b"shared"),
        ("chmod", "shared", 0o666),
        ("write_file", "readonly", b"r"),
        ("chmod", "readonly", 0o444),
        ("mkdir", "sticky", 0o777),
        ("chmod", "sticky", 0o1777),
        ("write_file", "sticky/roots", b"r"),
        ("chmod", "sticky/roots", 0o666),
        ("mkdir", "closed", 0o700),
    ])
    assert_same(pair.local, pair.mount, [
        ("open", "x", "rootdir/new", WR_CREAT),
        ("mkdir", "rootdir/sub"),
        ("unlink", "rootdir/ro"),
        ("read_file", "rootdir/ro"),
        ("open", "x", "readonly", os.O_WRONLY),
        ("chmod", "shared", 0o600),
        ("chown", "shared", USER, GROUP),
        ("truncate", "shared", 1),
        ("read_file", "shared"),
        ("unlink", "sticky/roots"),
        ("rename", "sticky/roots", "sticky/mine"),
        ("write_file", "sticky/mine", b"m"),
        ("unlink", "sticky/mine"),
        ("listdir", "closed"),
        ("stat", "closed/x"),
        ("setxattr", "shared", "user.x", b"v"),
        ("utime", "shared", (10**9, 10**9)),
        ("utime", "shared"),
        ("stat", "shared"),
    ], uid=USER, gid=GROUP)


def test_setuid_cleared_on_write_and_chown(pair):
    assert_same(pair.local, pair.mount, [
        ("write_file", "suid", b"prog"),
        ("chmod", "suid", 0o6777),
        ("write_file", "suid2", b"prog"),
        ("chmod", "suid2", 0o6777),
        ("write_file", "mine", b"x"),
        ("chown", "mine", USER, GROUP),
        ("chmod", "mine", 0o6775),
    ])
    out = assert_same(pair.local, pair.mount, [
        ("open", "w", "suid", os.O_WRONLY),
        ("write", "w", b"patched"),
        ("close", "w"),
        ("stat", "suid"),
        ("truncate", "suid2", 0),
        ("stat", "suid2"),
        ("chown", "mine", USER, GROUP),
        ("stat", "mine"),
    ], uid=USER, gid=GROUP)
    assert not int(out[3][1]["perm"], 8) & stat.S_ISUID
    out = assert_same(pair.local, pair.mount, [
        ("chmod", "suid2", 0o6755),
        ("chown", "suid2", USER, GROUP),
        ("stat", "suid2"),
    ])
    assert not int(out[2][1]["perm"], 8) & stat.S_ISUID
