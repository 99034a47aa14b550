"""md-cache through real mounts: a long-lived cache stays coherent between two
mounts because the bricks push invalidations; without them, a short timeout
bounds how stale it may be; and it serves cold lookups without a brick."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mounts import Mount, Volume, mounted_volume, wait_for

from pyglfs.volfiles.generator import generate
from pyglfs.volfiles.model import Graph, Xlator
from pyglfs.volfiles.parser import parse_file

# The kernel's own attribute/entry timeout (1 s) plus slack: md-cache's 600 s
# must not show.
PROMPT = 1.0 + 3.0


def with_md_cache(volume: Volume, path: Path, **options: str) -> Path:
    """``volume``'s volfile with a performance/md-cache under its top."""
    g = parse_file(volume.volfile)
    top = g.top
    mdc = Xlator(f"{top.name}-md-cache", "performance/md-cache", dict(options),
                 list(top.subvolumes))
    new_top = Xlator(top.name, top.type, dict(top.options), [mdc])
    xls = [x for x in g if x.name != top.name] + [mdc, new_top]
    path.write_text(generate(Graph.from_xlators(xls)))
    return path


@pytest.fixture(scope="module")
def cached_mounts(volume: Volume) -> Iterator[tuple[Mount, Mount]]:
    base = volume.volfile.parent
    vf = with_md_cache(volume, base / "mdcache.vol", **{"cache-invalidation": "on",
                                                        "md-cache-timeout": "600"})
    with mounted_volume(vf, base / "mnt-mdc-a") as a, \
            mounted_volume(vf, base / "mnt-mdc-b") as b:
        yield a, b


def _read(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None


def _mode(p: Path) -> int | None:
    try:
        return os.stat(p).st_mode & 0o777
    except FileNotFoundError:
        return None


def test_changes_cross_cached_mounts_promptly(cached_mounts: tuple[Mount, Mount]) -> None:
    a, b = (m.mountpoint for m in cached_mounts)
    d = f"mdc-{uuid.uuid4().hex[:8]}"
    os.mkdir(a / d)
    assert os.stat(b / d).st_ino == os.stat(a / d).st_ino
    (a / d / "f").write_bytes(b"v1")
    assert (b / d / "f").read_bytes() == b"v1"  # b caches f now
    assert os.stat(b / d / "f").st_size == 2
    (a / d / "f").write_bytes(b"version two")
    assert wait_for(lambda: _read(b / d / "f") == b"version two", PROMPT)
    os.chmod(a / d / "f", 0o600)
    assert wait_for(lambda: _mode(b / d / "f") == 0o600, PROMPT)
    os.setxattr(a / d / "f", "user.k", b"v1")
    assert wait_for(lambda: os.getxattr(b / d / "f", "user.k") == b"v1", PROMPT)
    os.setxattr(a / d / "f", "user.k", b"v2")
    assert wait_for(lambda: os.getxattr(b / d / "f", "user.k") == b"v2", PROMPT)
    os.rename(a / d / "f", a / d / "g")
    assert wait_for(lambda: not os.path.exists(b / d / "f"), PROMPT)
    assert (b / d / "g").read_bytes() == b"version two"
    assert sorted(os.listdir(b / d)) == ["g"]
    os.unlink(a / d / "g")
    assert wait_for(lambda: not os.path.exists(b / d / "g"), PROMPT)
    # the other way round, a directory's own attributes too
    os.mkdir(b / d / "sub")
    assert os.stat(a / d / "sub").st_mode & 0o777 == 0o755
    os.chmod(b / d / "sub", 0o700)
    assert wait_for(lambda: _mode(a / d / "sub") == 0o700, PROMPT)
    os.rmdir(b / d / "sub")
    assert wait_for(lambda: not os.path.exists(a / d / "sub"), PROMPT)
    os.rmdir(b / d)
    assert wait_for(lambda: not os.path.exists(a / d), PROMPT)


def test_cold_lookups_after_drop_caches_are_served(cached_mounts: tuple[Mount, Mount]) -> None:
    a = cached_mounts[0].mountpoint
    d = a / f"cold-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    names = [f"f{i}" for i in range(50)]
    for n in names:
        (d / n).write_bytes(n.encode())
    before = {n: os.stat(d / n) for n in names}
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    after = {n: os.stat(d / n) for n in names}
    for n in names:
        assert (after[n].st_ino, after[n].st_size, after[n].st_mode) == \
            (before[n].st_ino, before[n].st_size, before[n].st_mode)
    for n in names:
        os.unlink(d / n)
    d.rmdir()


def test_without_invalidation_the_timeout_bounds_staleness(volume: Volume) -> None:
    base = volume.volfile.parent
    vf = with_md_cache(volume, base / "mdcache-noinval.vol",
                       **{"cache-invalidation": "off", "md-cache-timeout": "1"})
    with mounted_volume(vf, base / "mnt-noinval-a") as ma, \
            mounted_volume(vf, base / "mnt-noinval-b") as mb:
        a, b = ma.mountpoint, mb.mountpoint
        name = f"t-{uuid.uuid4().hex[:8]}"
        (a / name).write_bytes(b"one")
        assert (b / name).read_bytes() == b"one"
        os.chmod(a / name, 0o640)
        # md-cache 1 s + kernel attribute timeout 1 s + slack
        assert wait_for(lambda: _mode(b / name) == 0o640, 1.0 + 1.0 + 3.0)
        os.unlink(a / name)
        assert wait_for(lambda: not os.path.exists(b / name), 1.0 + 1.0 + 3.0)


def test_appends_from_two_cached_mounts(cached_mounts: tuple[Mount, Mount]) -> None:
    """O_APPEND offsets come from the bricks, not from a cache an invalidation
    is still on its way to."""
    a, b = (m.mountpoint for m in cached_mounts)
    name = f"log-{uuid.uuid4().hex[:8]}"
    fa = os.open(a / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    fb = os.open(b / name, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(20):
            os.write(fa, f"a{i}\n".encode())
            os.write(fb, f"b{i}\n".encode())
    finally:
        os.close(fa)
        os.close(fb)
    expected = sorted([f"a{i}".encode() for i in range(20)] + [f"b{i}".encode() for i in range(20)])
    assert wait_for(lambda: sorted((a / name).read_bytes().split()) == expected, PROMPT)
    assert sorted((b / name).read_bytes().split()) == expected
    os.unlink(a / name)
