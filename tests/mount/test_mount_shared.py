"""Two mounts of one volume: each sees the other's changes within the cache
timeouts (1 s by default, 0.2 s given as options on the second mount), and
names made through one at once (negative lookups are not cached)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from helpers.mounts import Mount, Volume, mounted_volume, wait_for

TIMEOUT = 1.0 + 2.0  # attribute/entry timeout plus slack


@pytest.fixture(scope="module")
def two_mounts(volume: Volume) -> Iterator[tuple[Mount, Mount]]:
    base = volume.volfile.parent
    with mounted_volume(volume.volfile, base / "mnt-a") as a, \
            mounted_volume(volume.volfile, base / "mnt-b",
                           "attribute-timeout=0.2,entry-timeout=0.2") as b:
        yield a, b


def _read(p) -> bytes | None:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None


def test_changes_cross_mounts(two_mounts):
    a, b = (m.mountpoint for m in two_mounts)
    d = f"shared-{uuid.uuid4().hex[:8]}"
    # a directory made through one mount is there at once through the other
    os.mkdir(a / d)
    assert os.stat(b / d).st_ino == os.stat(a / d).st_ino
    assert d in os.listdir(b)
    # a new file: another mount finds what was written before its close
    (a / d / "f").write_bytes(b"v1")
    assert (b / d / "f").read_bytes() == b"v1"
    # flush-behind: the close of a file the other mount has seen returns
    # before the data is on the bricks; it is there a round trip later
    (a / d / "f").write_bytes(b"version two")
    assert wait_for(lambda: _read(b / d / "f") == b"version two", TIMEOUT)
    os.rename(a / d / "f", a / d / "g")
    assert wait_for(lambda: not os.path.exists(b / d / "f"), TIMEOUT)
    assert (b / d / "g").read_bytes() == b"version two"
    assert sorted(os.listdir(b / d)) == ["g"]
    os.unlink(a / d / "g")
    assert wait_for(lambda: not os.path.exists(b / d / "g"), TIMEOUT)
    assert os.listdir(b / d) == []
    # and the other way round
    (b / d / "h").write_bytes(b"from b")
    assert wait_for(lambda: _read(a / d / "h") == b"from b", TIMEOUT)
    with open(b / d / "h", "ab") as f:
        f.write(b" and more")
    assert wait_for(lambda: _read(a / d / "h") == b"from b and more", TIMEOUT)
    os.chmod(b / d / "h", 0o600)
    assert wait_for(lambda: os.stat(a / d / "h").st_mode & 0o777 == 0o600, TIMEOUT)
    os.mkdir(b / d / "sub")
    os.rename(b / d / "h", b / d / "sub" / "h")
    assert wait_for(lambda: not os.path.exists(a / d / "h"), TIMEOUT)
    assert (a / d / "sub" / "h").read_bytes() == b"from b and more"
    os.unlink(b / d / "sub" / "h")
    os.rmdir(b / d / "sub")
    os.rmdir(b / d)
    assert wait_for(lambda: not os.path.exists(a / d), TIMEOUT)


def test_a_new_files_data_is_found_once_its_close_returned(two_mounts):
    """Close-to-open for files the other mount has never seen, in fresh
    directories (no lease yet: the close waits for the data) and in one
    directory (under the lease a lookup elsewhere recalls it, which sends
    the data first), both ways round."""
    a, b = (m.mountpoint for m in two_mounts)
    d = f"c2o-{uuid.uuid4().hex[:8]}"
    os.mkdir(a / d)
    for k in range(120):
        src, dst = (a, b) if k % 4 < 2 else (b, a)
        sub = f"{d}/n{k}" if k % 2 else d
        if k % 2:
            os.mkdir(src / sub)
        data = b"%d " % k * (1 + k % 7)
        (src / sub / f"f{k}").write_bytes(data)
        assert (dst / sub / f"f{k}").read_bytes() == data, (k, sub)


def test_appends_from_two_mounts(two_mounts):
    a, b = (m.mountpoint for m in two_mounts)
    name = f"log-{uuid.uuid4().hex[:8]}"
    fa = os.open(a / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    fb = os.open(b / name, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(5):
            os.write(fa, f"a{i}\n".encode())
            os.write(fb, f"b{i}\n".encode())
    finally:
        os.close(fa)
        os.close(fb)
    lines = (a / name).read_bytes().split()
    assert sorted(lines) == sorted([f"a{i}".encode() for i in range(5)]
                                   + [f"b{i}".encode() for i in range(5)])


def test_negative_timeout_caches_misses(volume, two_mounts, tmp_path):
    a, b = (m.mountpoint for m in two_mounts)
    name = f"late-{uuid.uuid4().hex[:8]}"
    with mounted_volume(volume.volfile, tmp_path / "neg", "negative-timeout=60") as n:
        assert not os.path.exists(n.mountpoint / name)
        assert not os.path.exists(b / name)
        os.mkdir(a / name)
        assert os.path.isdir(b / name)  # misses are not cached by default
        assert not os.path.exists(n.mountpoint / name)  # cached for 60 s
        assert name in os.listdir(n.mountpoint)  # listings are not cached
    os.rmdir(a / name)


def test_create_over_a_name_another_mount_made(volume, two_mounts, tmp_path):
    """The kernel sends CREATE when it believes a name is missing; when another
    mount made it meanwhile, O_CREAT without O_EXCL opens what is there."""
    a = two_mounts[0].mountpoint
    names = [f"race-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    with mounted_volume(volume.volfile, tmp_path / "neg", "negative-timeout=60") as n:
        for name in names:
            assert not os.path.exists(n.mountpoint / name)  # a cached miss
            (a / name).write_bytes(b"made by a")
        with open(n.mountpoint / names[0], "ab") as f:  # O_CREAT|O_APPEND
            f.write(b", appended by n")
        assert (a / names[0]).read_bytes() == b"made by a, appended by n"
        with pytest.raises(FileExistsError):
            os.open(n.mountpoint / names[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with open(n.mountpoint / names[2], "wb") as f:  # O_CREAT|O_TRUNC
            f.write(b"rewritten")
        assert wait_for(lambda: _read(a / names[2]) == b"rewritten", TIMEOUT)
    for name in names:
        os.unlink(a / name)
