"""GNU tar extracting into the mount: what setattr-behind must keep.

tar creates each file, writes it, then sets its times, owner and mode through
the open descriptor (utimensat, fchown, fchmod), which write-behind queues and
sends as one setattr after the data. The same archive extracted to local disk
is the reference: every inode's type, mode, owner, mtime, size and contents
must match through the mount and, once the background setattrs have landed,
on every brick.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.mounts import Volume, mounted_volume, wait_for
from mountdiff import assert_same

RW_CREAT = os.O_RDWR | os.O_CREAT
T1, T2 = 1_000_000_000_123_456_789, 1_200_000_000_987_654_321

# (path, mode, uid, gid, size); directories end with "/".
TREE: list[tuple[str, int, int, int, int]] = [
    ("d1/", 0o755, 0, 0, 0),
    ("d1/sub/", 0o750, 1000, 1000, 0),
    ("d2/", 0o700, 1234, 4321, 0),
    ("d1/sub/deep/", 0o775, 0, 100, 0),
]
_MODES = [0o644, 0o600, 0o755, 0o640, 0o444, 0o700, 0o664, 0o4755, 0o2750, 0o1777]
_OWNERS = [(0, 0), (1000, 1000), (1234, 4321), (0, 100), (65534, 65534)]
_SIZES = [0, 1, 100, 4096, 5000, 70000, 131073]
for _k in range(36):
    _dir = ["", "d1/", "d1/sub/", "d2/", "d1/sub/deep/"][_k % 5]
    _uid, _gid = _OWNERS[_k % len(_OWNERS)]
    TREE.append((f"{_dir}f{_k}", _MODES[_k % len(_MODES)], _uid, _gid, _SIZES[_k % len(_SIZES)]))


def _make_source(src: Path) -> None:
    """The tree above, with distinct mtimes, a symlink and a hard link."""
    src.mkdir()
    for rel, mode, uid, gid, size in TREE:
        p = src / rel
        if rel.endswith("/"):
            p.mkdir()
        else:
            p.write_bytes(hashlib.sha256(rel.encode()).digest() * (size // 32 + 1))
            os.truncate(p, size)
        os.chown(p, uid, gid)
        os.chmod(p, mode)
    os.symlink("f0", src / "d1" / "link")
    os.link(src / "f5", src / "d2" / "hard")
    for k, (rel, *_rest) in enumerate(reversed(TREE)):
        t = 1_500_000_000 + 3600 * k
        os.utime(src / rel, (t, t), follow_symlinks=False)


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".pyglfs")
        for name in [".", *dirnames, *sorted(filenames)]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            is_dir = stat.S_ISDIR(st.st_mode)
            mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns
            out[os.path.normpath(os.path.relpath(p, root))] = (
                stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
                mtime, None if is_dir else st.st_size, body)
    return out


def _untar(archive: Path, dest: Path) -> None:
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(archive), "-C", str(dest)],
                   check=True, timeout=60, capture_output=True)


def _check_untar(tmp_path: Path, local: Path, dest: Path, on_bricks: list[Path]) -> None:
    """Extract the tree's tar into ``local`` and ``dest`` (on the mount, ``on_bricks``
    on each brick): every inode the same through the mount and, soon, on the bricks."""
    src = tmp_path / "src"
    _make_source(src)
    archive = tmp_path / "t.tar"
    subprocess.run(["tar", "--numeric-owner", "-cf", str(archive), "-C", str(src), "."],
                   check=True, timeout=60, capture_output=True)
    _untar(archive, local)
    want = _snapshot(local)
    assert len(want) == len(TREE) + 3
    assert want["d1/sub/f7"][1:4] == ("0o4755", 1234, 4321)  # set-id bits go through

    _untar(archive, dest)
    got = _snapshot(dest)
    assert got.keys() == want.keys()
    diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not diff, f"through the mount: {diff}"

    # The last setattrs may still be on their way to the bricks when tar exits.
    ok = wait_for(lambda: all(_snapshot(b) == want for b in on_bricks), 15.0, 0.1)
    for b in on_bricks:
        snap = _snapshot(b)
        diff = {k: (snap.get(k), want[k]) for k in want if snap.get(k) != want[k]}
        assert ok and not diff, f"brick {b}: {diff}"


@pytest.mark.skipif(shutil.which("tar") is None, reason="tar is missing")
def test_untar_keeps_modes_owners_times_and_data(pair: Any, volume: Volume,
                                                 tmp_path: Path) -> None:
    _check_untar(tmp_path, pair.local, pair.mount,
                 [b.brick / pair.mount.name for b in volume.bricks])


@pytest.mark.skipif(shutil.which("tar") is None, reason="tar is missing")
def test_untar_through_the_kernels_writeback_cache(volume: Volume, tmp_path: Path) -> None:
    """With ``kernel-writeback-cache=yes`` the data reaches the mount from the page
    cache, around the setattrs: the times must still be tar's."""
    local = tmp_path / "local"
    local.mkdir()
    with mounted_volume(volume.volfile, tmp_path / "mnt", "kernel-writeback-cache=yes") as m:
        dest = m.mountpoint / f"wb-{tmp_path.name}"
        dest.mkdir()
        _check_untar(tmp_path, local, dest, [b.brick / dest.name for b in volume.bricks])


def test_attribute_changes_on_an_open_file_match_local_disk(pair: Any) -> None:
    """Queued and merged setattrs between writes, set-id bits (which go through,
    and which a chown clears), reads and truncates of the open file."""
    out = assert_same(pair.local, pair.mount, [
        ("open", "f", "a", RW_CREAT, 0o600),
        ("write", "f", b"hello"),
        ("utime", "a", (T1, T2)),
        ("chown", "a", 1000, 1000),
        ("fchmod", "f", 0o640),
        ("fstat", "f", True),
        ("stat", "a", True),
        ("pread", "f", 5, 0),
        ("pwrite", "f", b"XY", 1),
        ("fstat", "f"),
        ("ftruncate", "f", 2),
        ("utime", "a", (T2, T1)),
        ("stat", "a", True),
        ("fchmod", "f", 0o4755),
        ("chown", "a", 0, 0),
        ("stat", "a"),
        ("close", "f"),
        ("stat", "a", True),
        ("read_file", "a"),
    ])
    assert out[5][1]["perm"] == oct(0o640) and out[5][1]["uid"] == 1000
    assert out[5][1]["mtime_ns"] == T2
    assert out[15][1]["perm"] == oct(0o755)  # the chown cleared S_ISUID
    assert out[17][1]["mtime_ns"] == T1


def test_owner_changes_as_a_user_with_queued_writes(pair: Any) -> None:
    """The kernel checks permissions against the attributes the queued setattrs
    answered: the owner may chmod and set times, not give the file away."""
    out = assert_same(pair.local, pair.mount, [
        ("open", "f", "u", RW_CREAT, 0o644),
        ("write", "f", b"data"),
        ("fchmod", "f", 0o600),
        ("utime", "u", (T1, T1)),
        ("chown", "u", 0, 0),
        ("fstat", "f", True),
        ("close", "f"),
        ("stat", "u", True),
        ("chmod", "u", 0o400),
        ("open", "g", "u", os.O_WRONLY),
        ("stat", "u", True),
    ], uid=1000, gid=1000)
    assert out[4] == ("err", "EPERM")
    assert out[7][1]["perm"] == oct(0o600) and out[7][1]["mtime_ns"] == T1
    assert out[9] == ("err", "EACCES") and out[10][1]["perm"] == oct(0o400)
