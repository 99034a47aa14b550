"""Entry changes return the parent's attributes (postparent): with md-cache, the
GETATTR of the directory that the kernel sends after each create, mkdir,
rename or unlink is answered without a brick request (counted by a proxy in
front of each brick), and the directory's new times and link count are what
stat shows, through this mount at once and through another one promptly."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio
from helpers.countproxy import CountingProxy
from helpers.mounts import Volume, mount_volume, mounted_volume, start_volume, wait_for
from test_mount_mdcache import with_md_cache

from pyglfs.rpc.brickops import GFID_XATTR
from pyglfs.volfiles.generator import generate, with_options
from pyglfs.volfiles.parser import parse_file

# The kernel's attribute timeout (1 s) plus slack.
PROMPT = 1.0 + 3.0
CACHE = {"cache-invalidation": "on", "md-cache-timeout": "600"}
OLD_NS = 10**9  # a directory time far in the past, so any change shows


def _stats_of(proxies: list[CountingProxy], gfids: set[bytes]) -> int:
    return sum(1 for p in proxies for op, args in p.requests
               if op == "stat" and args.get("gfid") in gfids)


def _entry_changes(d: Path) -> None:
    """What untar and build trees do in a directory; each path walk through ``d``
    needs its attributes again after the change before it."""
    for i in range(20):
        fd = os.open(d / f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
    os.mkdir(d / "e")
    os.rmdir(d / "e")
    os.symlink("f0", d / "sym")
    os.link(d / "f0", d / "hard")
    os.rename(d / "f1", d / "g1")
    os.rename(d / "f2", d / "sub" / "f2")
    os.unlink(d / "f3")
    assert os.stat(d / "sub" / "f2").st_size == 4096


async def test_entry_changes_send_no_stat_of_the_parent(volume: Volume, tmp_path: Path) -> None:
    # Bricks of its own, of the same kind: another client's changes would
    # invalidate (and so drop) what md-cache holds while an entry change is under way.
    own = await trio.to_thread.run_sync(start_volume, tmp_path, volume.volfile.stem)
    try:
        await _count_parent_stats(own, tmp_path)
    finally:
        await trio.to_thread.run_sync(own.stop)


async def _count_parent_stats(volume: Volume, tmp_path: Path) -> None:
    graph = parse_file(volume.volfile)
    proxies = [CountingProxy("127.0.0.1", (xl.opt("remote-host") or "",
                                           int(xl.opt("remote-port") or 0)))
               for xl in graph.by_type("protocol/client")]
    names = [xl.name for xl in graph.by_type("protocol/client")]
    async with trio.open_nursery() as nursery:
        for p in proxies:
            await nursery.start(p.serve)
        direct = tmp_path / "proxied.vol"
        direct.write_text(generate(with_options(graph, {
            n: {"remote-host": p.host, "remote-port": str(p.port)}
            for n, p in zip(names, proxies, strict=True)})))
        vf = with_md_cache(SimpleNamespace(volfile=direct), tmp_path / "counted.vol",  # type: ignore[arg-type]
                           **CACHE)
        m = await trio.to_thread.run_sync(mount_volume, vf, tmp_path / "mnt")
        try:
            def work() -> tuple[int, int, Any]:
                d = m.mountpoint / f"pp-{uuid.uuid4().hex[:8]}"
                d.mkdir()
                (d / "sub").mkdir()
                brick = volume.bricks[0].brick
                dirs = {os.getxattr(brick / d.name, GFID_XATTR),
                        os.getxattr(brick / d.name / "sub", GFID_XATTR)}
                before = _stats_of(proxies, dirs)
                creates = sum(p.ops["create"] for p in proxies)
                _entry_changes(d)
                os.stat(d)
                return before, creates, (dirs, sum(p.ops["create"] for p in proxies))

            before, creates_before, (dirs, creates_after) = await trio.to_thread.run_sync(work)
        finally:
            await trio.to_thread.run_sync(m.unmount)
            nursery.cancel_scope.cancel()
    assert creates_after - creates_before == 20 * len(proxies)  # the proxies did count
    assert _stats_of(proxies, dirs) == before, "a parent's stat reached the bricks"
    assert m.unexpected_errors() is None


def test_parent_times_after_a_change_show_on_both_mounts(volume: Volume, tmp_path: Path) -> None:
    vf = with_md_cache(volume, tmp_path / "cached.vol", **CACHE)
    with mounted_volume(vf, tmp_path / "mnt-a") as ma, mounted_volume(vf, tmp_path / "mnt-b") as mb:
        name = f"times-{uuid.uuid4().hex[:8]}"
        a, b = ma.mountpoint / name, mb.mountpoint / name
        a.mkdir()
        os.utime(a, ns=(OLD_NS, OLD_NS))
        assert wait_for(lambda: os.stat(b).st_mtime_ns == OLD_NS, PROMPT)
        (a / "f").write_bytes(b"new")
        after_create = os.stat(a)
        assert after_create.st_mtime_ns > OLD_NS and after_create.st_nlink == 2
        # create-behind answers the parent's times itself until its lease goes back
        # (the other mount's listing recalls it)
        assert os.listdir(b) == ["f"]
        assert wait_for(lambda: os.stat(b).st_mtime_ns == os.stat(a).st_mtime_ns, PROMPT)
        os.mkdir(a / "sub")
        assert os.stat(a).st_nlink == 3
        assert wait_for(lambda: os.stat(b).st_nlink == 3, PROMPT)
        os.utime(a, ns=(OLD_NS, OLD_NS))
        os.unlink(a / "f")
        assert os.stat(a).st_mtime_ns > OLD_NS
        os.rmdir(b / "sub")
        assert wait_for(lambda: os.stat(a).st_nlink == 2, PROMPT)
        os.rmdir(b)
