"""Replicate when bricks disagree, fail, stall, or another client writes too."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.replica import index_dir, open_replica, tree, wait_for
from helpers.tcpproxy import FreezableProxy

from pyglfs.client.layer import Layer
from pyglfs.client.replicate.changelog import ZERO, decode
from pyglfs.rpc.brickops import ROOT_GFID, afr_xattr

V = "rvol"


def g() -> bytes:
    return uuid.uuid4().bytes


class Faulty(Layer):
    """Forwards to one protocol client; ``fail[op]`` makes that op fail with an errno."""

    def __init__(self, child: Layer) -> None:
        self.fail: dict[str, int] = {}
        self.calls: list[str] = []
        super().__init__(child.name, [child])

    def __getattribute__(self, name: str) -> Any:
        fail = object.__getattribute__(self, "fail")
        if name in fail:
            async def failing(*args: Any, **kwargs: Any) -> Any:
                raise OSError(fail[name], os.strerror(fail[name]))
            return failing
        if name in ("read", "stat", "write", "readdir"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


async def test_lookup_answers_from_the_brick_that_has_the_entry(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as env:
        rep = env.rep
        f = g()
        pc0 = env.brick_client(rep, 0)
        await pc0.create(ROOT_GFID, b"only0", f, 0o644, 0, 0)
        await pc0.write(f, 0, b"from brick 0")
        lk = await rep.lookup(ROOT_GFID, b"only0")
        assert lk.iatt.gfid == f and lk.xattrs == {}
        assert rep.needs_heal(f)
        for _ in range(5):
            assert await rep.read(f, 0, 100) == b"from brick 0"
        with pytest.raises(OSError) as ei:
            await rep.lookup(ROOT_GFID, b"nowhere")
        assert ei.value.errno == errno.ENOENT


async def test_gfid_mismatch_is_eio(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with open_replica(tmp_path) as env:
        rep = env.rep
        await env.brick_client(rep, 0).create(ROOT_GFID, b"x", g(), 0o644, 0, 0)
        await env.brick_client(rep, 1).create(ROOT_GFID, b"x", g(), 0o644, 0, 0)
        with pytest.raises(OSError) as ei:
            await rep.lookup(ROOT_GFID, b"x")
        assert ei.value.errno == errno.EIO
        assert any("gfid mismatch" in r.message and r.levelname == "ERROR"
                   for r in caplog.records)


async def test_failure_on_one_brick_blames_it(tmp_path: Path) -> None:
    faulty: list[Faulty] = []

    def wrap(i: int, child: Layer) -> Layer:
        f = Faulty(child)
        faulty.append(f)
        return f

    async with open_replica(tmp_path, client=False) as env:
        rep = await env.new_client(wrap=wrap)
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await rep.write(f, 0, b"aaaa")
        faulty[1].fail["write"] = errno.ENOSPC
        await rep.write(f, 0, b"bbbb")
        await rep.write(f, 4, b"cccc")
        faulty[1].calls.clear()
        assert await rep.read(f, 0, 8) == b"bbbbcccc"
        assert "read" not in faulty[1].calls
        faulty[0].fail["write"] = errno.ENOSPC
        with pytest.raises(OSError) as ei:
            await rep.write(f, 8, b"dddd")
        assert ei.value.errno == errno.ENOSPC
        faulty[1].fail.clear()
        faulty[0].fail.clear()
        await rep.settle()
        b0 = env.bricks[0].root
        assert decode(os.getxattr(b0 / "f", afr_xattr(V, 1)))[0] >= 1
        assert index_dir(b0) == {f}
        assert (env.bricks[1].root / "f").read_bytes() == b"aaaa"
        # A fresh mount learns the blame from the changelog and reads brick 0 only.
        rep2 = await env.new_client(wrap=wrap)
        await rep2.lookup(ROOT_GFID, b"f")
        faulty[3].calls.clear()
        assert await rep2.read(f, 0, 8) == b"bbbbcccc"
        assert faulty[3].calls == []


async def test_contention_moves_the_lock_between_clients(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=60.0) as env:
        a = env.rep
        b = await env.new_client(post_op_delay=60.0)
        f = g()
        await a.create(ROOT_GFID, b"shared", f, 0o644, 0, 0)
        await b.lookup(ROOT_GFID, b"shared")
        for k in range(6):
            writer, reader = (a, b) if k % 2 == 0 else (b, a)
            with trio.fail_after(5):
                await writer.write(f, 0, b"round %d" % k)
            assert await reader.read(f, 0, 100) == b"round %d" % k
        with trio.fail_after(5):
            await a.settle()
            await b.settle()
        t0, t1 = tree(env.bricks[0].root), tree(env.bricks[1].root)
        assert t0 == t1
        for br in env.bricks:
            assert index_dir(br.root) == set()
            assert os.getxattr(br.root / "shared", "trusted.afr.dirty") == ZERO


async def test_silent_brick_declared_down_after_ping_timeout(tmp_path: Path) -> None:
    async with open_replica(tmp_path, client=False) as env:
        b1 = env.bricks[1]
        proxy = FreezableProxy(b1.host, b1.host, b1.port)
        await env.nursery.start(proxy.serve)
        rep = await env.new_client(ping_timeout=1.0, ports=[env.bricks[0].port, proxy.port],
                                   post_op_delay=30.0)
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await rep.write(f, 0, b"before")
        proxy.freeze()
        t0 = trio.current_time()
        with trio.fail_after(5):
            await rep.write(f, 0, b"during")
        took = trio.current_time() - t0
        assert 0.5 < took < 4, took
        assert not rep.children[1].is_up
        assert await rep.read(f, 0, 10) == b"during"
        await rep.settle()
        assert f in index_dir(env.bricks[0].root)
        proxy.thaw()
        await wait_for(lambda: rep.children[1].is_up, 10, "brick 1 reconnected")
        assert await rep.read(f, 0, 10) == b"during"


async def test_two_clients_create_in_one_directory(tmp_path: Path) -> None:
    async with open_replica(tmp_path, post_op_delay=60.0) as env:
        a = env.rep
        b = await env.new_client(post_op_delay=60.0)
        names = []
        for k in range(6):
            writer = a if k % 2 == 0 else b
            with trio.fail_after(2):
                await writer.create(ROOT_GFID, b"n%d" % k, g(), 0o644, 0, 0)
            names.append(f"n{k}")
        await a.settle()
        await b.settle()
        for br in env.bricks:
            assert sorted(p.name for p in br.root.iterdir() if p.name != ".pyglfs") == names
            assert index_dir(br.root) == set()


async def test_name_removed_while_brick_down_stays_removed(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"doomed", f, 0o644, 0, 0)
        await rep.settle()
        await env.bricks[1].stop()
        await wait_for(lambda: not rep.children[1].is_up, 5, "brick 1 down")
        await rep.unlink(ROOT_GFID, b"doomed")
        await rep.settle()
        await env.bricks[1].start()
        await wait_for(lambda: rep.children[1].is_up, 10, "brick 1 back")
        assert (env.bricks[1].root / "doomed").exists()
        fresh = await env.new_client()
        for client in (rep, fresh):
            await client.lookup_gfid(ROOT_GFID)
            with pytest.raises(OSError) as ei:
                await client.lookup(ROOT_GFID, b"doomed")
            assert ei.value.errno == errno.ENOENT
            entries, _ = await client.readdir(ROOT_GFID, 0, 100)
            assert b"doomed" not in [e.name for e in entries]


async def test_open_is_replayed_on_a_brick_that_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="pyglfs.client.replicate")
    async with open_replica(tmp_path) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"kept", f, 0o644, 0, 0)
        await rep.write(f, 0, b"still here")
        await rep.release(f)
        await rep.open(f, os.O_RDONLY)
        await env.bricks[1].stop()
        await wait_for(lambda: not rep.children[1].is_up, 5, "brick 1 down")
        await env.bricks[1].start()
        await wait_for(lambda: any("replayed 1 opens on brick 1" in r.getMessage()
                                   for r in caplog.records), 10, "open replayed")
        await rep.unlink(ROOT_GFID, b"kept")
        # Unlinked while open: each brick keeps the data for this client's open.
        for i in range(2):
            assert await env.brick_client(rep, i).read(f, 0, 100) == b"still here"
        await rep.release(f)


async def test_errors_from_both_bricks_reach_the_caller_unwrapped(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_WRONLY)
        for flags in (os.O_WRONLY, os.O_RDONLY):
            with pytest.raises(OSError) as ei:
                await rep.create(ROOT_GFID, b"f", g(), 0o644, 0, 0, flags)
            assert ei.value.errno == errno.EEXIST
        with pytest.raises(OSError) as ei:
            await rep.mkdir(g(), b"d", g(), 0o755, 0, 0)
        assert ei.value.errno == errno.ESTALE
        with pytest.raises(OSError) as ei:
            await rep.rmdir(ROOT_GFID, b"f")
        assert ei.value.errno == errno.ENOTDIR
        with pytest.raises(OSError) as ei:
            await rep.getxattr(f, "user.none")
        assert ei.value.errno == errno.ENODATA
        await rep.settle()
        for br in env.bricks:
            assert index_dir(br.root) == set()


async def test_listing_goes_on_from_the_other_brick(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as env:
        rep = env.rep
        want = set()
        for k in range(40):
            await rep.create(ROOT_GFID, b"e%02d" % k, g(), 0o644, 0, 0)
            want.add(b"e%02d" % k)
        await rep.settle()
        entries, eof = await rep.readdir(ROOT_GFID, 0, 10)
        assert not eof and entries
        info = rep.inodes.get(ROOT_GFID)
        assert info is not None and info.read_child >= 0
        reader = info.read_child
        await env.bricks[reader].stop()
        await wait_for(lambda: not rep.children[reader].is_up, 5, "read brick down")
        seen = [e.name for e in entries]
        cookie = entries[-1].cookie
        for _ in range(20):
            if eof:
                break
            entries, eof = await rep.readdir(ROOT_GFID, cookie, 10)
            seen += [e.name for e in entries]
            if entries:
                cookie = entries[-1].cookie
        assert eof
        assert len(seen) == len(set(seen))
        assert set(seen) - {b".", b".."} == want


async def test_split_brain_reads_are_eio(tmp_path: Path) -> None:
    from pyglfs.client.replicate.changelog import encode

    async with open_replica(tmp_path) as env:
        rep = env.rep
        f = g()
        await rep.create(ROOT_GFID, b"sb", f, 0o644, 0, 0)
        await rep.write(f, 0, b"data")
        await rep.settle()
        await env.brick_client(rep, 0).xattrop(f, {afr_xattr(V, 1): encode(1, 0, 0)})
        await env.brick_client(rep, 1).xattrop(f, {afr_xattr(V, 0): encode(1, 0, 0)})
        fresh = await env.new_client()
        assert (await fresh.lookup(ROOT_GFID, b"sb")).iatt.gfid == f
        with pytest.raises(OSError) as ei:
            await fresh.read(f, 0, 4)
        assert ei.value.errno == errno.EIO
        assert fresh.needs_heal(f)


class Stalling(Layer):
    """Forwards to a protocol client; while ``stall`` is set, inodelk never answers."""

    def __init__(self, child: Layer) -> None:
        super().__init__(child.name, [child])
        self.stall = False

    async def inodelk(self, gfid: bytes, domain: str, type: str, start: int, len: int,
                      owner: bytes, block: bool = False) -> None:
        if self.stall and type != "un":
            await trio.sleep_forever()
        await self.child.inodelk(gfid, domain, type, start, len, owner, block)


async def test_cancelled_lock_request_gives_back_what_it_got(tmp_path: Path) -> None:
    wrapped: list[Stalling] = []

    def wrap(i: int, child: Layer) -> Layer:
        wrapped.append(Stalling(child))
        return wrapped[-1]

    async with open_replica(tmp_path, client=False) as env:
        rep = await env.new_client(wrap=wrap, post_op_delay=30.0)
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        wrapped[1].stall = True
        with trio.move_on_after(0.3) as scope:
            await rep.write(f, 0, b"never")
        assert scope.cancelled_caught
        await wait_for(lambda: f not in rep.locks.inode, 5, "abandoned lock forgotten")
        # Brick 0 granted the lock before the cancel; it must have been given back.
        other = await env.new_client(post_op_delay=0.0)
        with trio.fail_after(3):
            await env.brick_client(other, 0).inodelk(f, rep.name, "wr", 0, 0, b"other", False)
            await env.brick_client(other, 0).inodelk(f, rep.name, "un", 0, 0, b"other", False)
        wrapped[1].stall = False
        with trio.fail_after(3):
            await rep.write(f, 0, b"later")
        await rep.settle()
        for br in env.bricks:
            assert (br.root / "f").read_bytes() == b"later"


async def test_contention_for_a_lock_we_lost_track_of_unlocks_it(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as env:
        a = env.rep
        f = g()
        await a.create(ROOT_GFID, b"f", f, 0o644, 0, 0)
        await a.settle()
        # A grant whose reply never reached replicate (a timed-out request).
        for i in range(2):
            await env.brick_client(a, i).inodelk(f, a.name, "wr", 0, 0, a.owner, False)
        assert f not in a.locks.inode
        b = await env.new_client()
        with trio.fail_after(5):
            await b.write(f, 0, b"not stuck")
        await b.settle()
        for br in env.bricks:
            assert (br.root / "f").read_bytes() == b"not stuck"


async def test_lock_taken_by_create_is_given_back_or_held_where_the_file_is(
    tmp_path: Path,
) -> None:
    async with open_replica(tmp_path, post_op_delay=30.0) as env:
        rep = env.rep
        await rep.create(ROOT_GFID, b"taken", g(), 0o644, 0, 0)
        f = g()
        with pytest.raises(OSError) as ei:
            await rep.create(ROOT_GFID, b"taken", f, 0o644, 0, 0, os.O_WRONLY)
        assert ei.value.errno == errno.EEXIST
        await wait_for(lambda: f not in rep.locks.inode, 5, "failed create's lock state gone")
        for i in range(2):  # and no brick holds it
            await env.brick_client(rep, i).rpc.call("inodelk", {
                "gfid": f, "domain": rep.name, "type": "wr", "start": 0, "len": 0,
                "owner": b"probe"})
        await env.bricks[1].stop()
        await wait_for(lambda: not rep.children[1].is_up, 5, "brick 1 down")
        h = g()
        await rep.create(ROOT_GFID, b"one", h, 0o644, 0, 0, os.O_WRONLY)
        assert rep.locks.inode[h].locked_on == 0b01
        await rep.write(h, 0, b"while brick 1 is down")
        await rep.release(h)
        await rep.settle()
        assert h in index_dir(env.bricks[0].root)
        assert (env.bricks[0].root / "one").read_bytes() == b"while brick 1 is down"
