"""Create-behind through real mounts of one replica-2 volume (bricks on 127.0.0.2 and
127.0.0.3, md-cache and nl-cache with the bricks' invalidations, as generated
volfiles have them): a create answered before the bricks have it is still exact
across mounts, because the other mount's lookups, listings and creates in the
directory wait at the bricks until this mount's creates there landed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from helpers.mounts import Mount, Volume, mount_volume, mounted_volume, start_volume, wait_for
from helpers.tcpproxy import FreezableProxy
from test_mount_nlcache import with_caches
from test_mount_replica_faults import Worker, kill_when

from pyglfs.volfiles.parser import parse_file

EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL
EARLY = "answered before the bricks had it"  # create-behind's warning of a failed one
PROMPT = 5.0  # flush-behind: a closed file's data reaches the bricks moments later


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Volume]:
    v = start_volume(tmp_path_factory.mktemp("cb"), "replica2")
    try:
        yield v
    finally:
        v.stop()


@pytest.fixture(scope="module")
def two(vol: Volume) -> Iterator[tuple[Path, Path]]:
    base = vol.volfile.parent
    vf = with_caches(vol, base / "cached.vol")
    with mounted_volume(vf, base / "mnt-a") as a, mounted_volume(vf, base / "mnt-b") as b:
        yield a.mountpoint, b.mountpoint
        assert EARLY not in a.log_text() + b.log_text()


def _make(path: Path, data: bytes) -> None:
    fd = os.open(path, EXCL, 0o644)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def _data(name: str) -> bytes:
    return name.encode() * (4096 // len(name))


def _read(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None


def test_files_made_through_one_mount_are_there_at_once_through_the_other(
        two: tuple[Path, Path]) -> None:
    a, b = two
    d = f"seen-{uuid.uuid4().hex[:8]}"
    os.mkdir(a / d)
    names = [f"f{i:04d}" for i in range(300)]
    for name in names:
        _make(a / d / name, _data(name))
    # no wait: B's lookups and listing wait at the bricks for A's creates
    assert sorted(os.listdir(b / d)) == names
    for name in names:
        assert os.stat(b / d / name).st_ino == os.stat(a / d / name).st_ino
    assert wait_for(lambda: all(_read(b / d / n) == _data(n) for n in names), PROMPT)
    # one at a time, each looked at through B right after A made it
    for name in (f"g{i:03d}" for i in range(40)):
        _make(a / d / name, _data(name))
        assert os.stat(b / d / name).st_nlink == 1
        assert wait_for(lambda n=name: _read(b / d / n) == _data(n), PROMPT)


def test_o_excl_over_names_the_other_mount_just_made_fails(two: tuple[Path, Path]) -> None:
    a, b = two
    d = f"excl-{uuid.uuid4().hex[:8]}"
    os.mkdir(a / d)
    names = [f"f{i:04d}" for i in range(200)]
    for name in names:
        _make(a / d / name, b"a")
    for name in names:
        with pytest.raises(FileExistsError):
            os.open(b / d / name, EXCL, 0o644)
    assert wait_for(lambda: all(_read(b / d / n) == b"a" for n in names), PROMPT)


async def test_two_mounts_racing_for_the_same_names(two: tuple[Path, Path]) -> None:
    a, b = two
    d = f"race-{uuid.uuid4().hex[:8]}"
    os.mkdir(a / d)
    assert os.listdir(b / d) == []
    names = [f"f{i:04d}" for i in range(200)]
    won: dict[str, list[str]] = {"a": [], "b": []}

    def run(root: Path, me: str) -> None:
        for name in names:
            try:
                fd = os.open(root / d / name, EXCL, 0o644)
            except FileExistsError:
                continue
            try:
                os.write(fd, me.encode() * 10)
            finally:
                os.close(fd)
            won[me].append(name)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, run, a, "a")
            nursery.start_soon(trio.to_thread.run_sync, run, b, "b")
    assert set(won["a"]).isdisjoint(won["b"]), "a name was won by both mounts"
    assert sorted(won["a"] + won["b"]) == names
    want = {n: me.encode() * 10 for me in won for n in won[me]}

    def landed() -> bool:
        return all(_read(root / d / n) == want[n] for root in (a, b) for n in names)

    assert await trio.to_thread.run_sync(wait_for, landed, PROMPT)


async def test_a_create_is_answered_while_the_bricks_cannot_answer(
        vol: Volume, tmp_path: Path) -> None:
    """With the directory's lease held, open(O_CREAT|O_EXCL), write and close
    return although no brick answers; the files are on both bricks after."""
    clients = parse_file(vol.volfile).by_type("protocol/client")
    proxies = [FreezableProxy("127.0.0.1", c.opt("remote-host") or "",
                              int(c.opt("remote-port") or 0)) for c in clients]
    d = f"frozen-{uuid.uuid4().hex[:8]}"

    def make(root: Path, names: list[str]) -> None:
        for name in names:
            _make(root / d / name, _data(name))

    async with trio.open_nursery() as nursery:
        for p in proxies:
            await nursery.start(p.serve)
        vf = with_caches(vol, tmp_path / "proxied.vol",
                         {c.name: (p.host, p.port) for c, p in zip(clients, proxies,
                                                                   strict=True)})
        m: Mount = await trio.to_thread.run_sync(mount_volume, vf, tmp_path / "mnt")
        try:
            # in threads: the proxies forward in this one
            await trio.to_thread.run_sync(os.mkdir, m.mountpoint / d)
            await trio.to_thread.run_sync(make, m.mountpoint, ["warm0", "warm1", "warm2"])
            for p in proxies:
                p.freeze()
            try:
                with trio.fail_after(3):
                    await trio.to_thread.run_sync(make, m.mountpoint, ["while0", "while1"])
            finally:
                for p in proxies:
                    p.thaw()
            bricks = [b.brick / d for b in vol.bricks]
            names = ["warm0", "warm1", "warm2", "while0", "while1"]

            def stored() -> bool:
                return all(_read(bd / n) == _data(n) for bd in bricks for n in names)

            assert await trio.to_thread.run_sync(wait_for, stored, PROMPT)
        finally:
            await trio.to_thread.run_sync(m.unmount)
            nursery.cancel_scope.cancel()
    bad = m.unexpected_errors()
    assert bad is None, bad


def test_second_brick_killed_during_2000_creates(tmp_path: Path) -> None:
    vol, n = start_volume(tmp_path, "replica2"), 2000
    try:
        vf = with_caches(vol, tmp_path / "cached.vol")
        with mounted_volume(vf, tmp_path / "mnt") as m:
            d = m.mountpoint / "many"
            os.mkdir(d)
            names = [f"f{k:05d}" for k in range(n)]
            w = Worker(n, lambda k: _make(d / names[k], _data(names[k])))
            w.start()
            kill_when(vol, 1, w, n // 3)
            w.wait(120)
            assert sorted(os.listdir(d)) == names
            assert [x for x in names if (d / x).read_bytes() != _data(x)] == []
            assert EARLY not in m.log_text()
    finally:
        vol.stop()
