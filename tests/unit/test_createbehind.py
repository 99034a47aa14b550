"""performance/create-behind over a fake child whose lease the test grants and whose
creates it can hold (per name) and fail."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.client.createbehind import STALE_WINDOW, CreateBehind
from pyglfs.client.graph import build_graph
from pyglfs.client.layer import DirEntry, EntryReply, Layer, Lookup, WriteItem
from pyglfs.client.mdcache import EVENT
from pyglfs.client.writebehind import WriteBehind
from pyglfs.rpc.brickops import Iatt
from pyglfs.volfiles.generator import BrickSpec, VolumeSpec, client_graph
from pyglfs.volfiles.model import Graph

ROOT = b"\x01" * 16
D = b"\xd1" * 16
E = b"\xe1" * 16
WR = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _gfid(name: bytes) -> bytes:
    return (name * 16)[:16]


def _iatt(gfid: bytes, mode: int) -> Iatt:
    return Iatt(gfid, 7, mode, 2, 0, 0, 0, 0, 0, 1, 2, 3)


class Bricks(Layer):
    """The layers below: ``leases`` held; creates of names in ``gates`` wait for
    their event; ``fail`` makes a name's create fail. ``log`` is every op reached."""

    def __init__(self) -> None:
        super().__init__("bricks")
        self.leases: set[bytes] = set()
        self.wanted: list[bytes] = []
        self.gates: dict[bytes, trio.Event] = {}
        self.fail: dict[bytes, OSError] = {}
        self.log: list[tuple[str, Any]] = []
        self.settled = False

    def lease_held(self, pgfid: bytes) -> bool:
        return pgfid in self.leases

    def want_lease(self, pgfid: bytes) -> None:
        self.wanted.append(pgfid)

    async def settle(self) -> None:
        self.settled = True

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        self.log.append(("create", name))
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()
        if name in self.fail:
            raise self.fail[name]
        self.log.append(("created", name))
        return EntryReply(_iatt(gfid, mode), _iatt(pgfid, stat.S_IFDIR | 0o755))

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        self.log.append(("mkdir", name))
        return EntryReply(_iatt(gfid, stat.S_IFDIR | mode), _iatt(pgfid, stat.S_IFDIR | 0o755))

    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        self.log.append(("lookup", name))
        return Lookup(_iatt(_gfid(name), stat.S_IFREG | 0o644), {})

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        self.log.append(("readdir", gfid))
        return [], True

    async def rmdir(self, pgfid: bytes, name: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        self.log.append(("rmdir", name))
        return None

    async def stat(self, gfid: bytes) -> Iatt:
        self.log.append(("stat", gfid))
        return _iatt(gfid, stat.S_IFREG | 0o644)

    async def setattr(self, gfid: bytes, **kw: Any) -> Iatt:
        self.log.append(("setattr", gfid))
        return _iatt(gfid, stat.S_IFDIR | 0o755)

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        self.log.append(("write", gfid))
        return _iatt(gfid, stat.S_IFREG | 0o644)

    async def writev_many(self, items: list[WriteItem]) -> list[Iatt | OSError]:
        self.log.append(("writev_many", [g for g, _, _ in items]))
        return [_iatt(g, stat.S_IFREG | 0o644) for g, _, _ in items]

    async def flush(self, gfid: bytes) -> None:
        self.log.append(("flush", gfid))

    async def release(self, gfid: bytes) -> None:
        self.log.append(("release", gfid))


class Top(Layer):
    """The layers above: records the events and recalls that reach them."""

    def __init__(self, child: Layer) -> None:
        super().__init__("top", [child])
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.recalled: list[bytes] = []

    def on_event(self, child: Layer, name: str, args: dict[str, Any]) -> None:
        self.events.append((name, args))

    async def lease_recalled(self, pgfid: bytes) -> None:
        self.recalled.append(pgfid)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[tuple[CreateBehind, Bricks, Top]]:
    bricks = Bricks()
    cb = CreateBehind("cb", bricks, **kw)
    top = Top(cb)
    async with trio.open_nursery() as nursery:
        await nursery.start(cb.serve)
        with trio.fail_after(10):
            await cb.mkdir(ROOT, b"d", D, 0o755, 0, 0)
            bricks.leases.add(D)
            yield cb, bricks, top
        nursery.cancel_scope.cancel()


async def create(cb: Layer, name: bytes, pgfid: bytes = D, flags: int = WR) -> EntryReply:
    return await cb.create(pgfid, name, _gfid(name), stat.S_IFREG | 0o640, 5, 6, flags)


class Task:
    """An op run in the background: ``done`` once it returned or raised."""

    def __init__(self, nursery: trio.Nursery, fn: Any, *args: Any) -> None:
        self.done = False
        self.result: Any = None
        self.error: OSError | None = None
        nursery.start_soon(self._run, fn, args)

    async def _run(self, fn: Any, args: tuple[Any, ...]) -> None:
        try:
            self.result = await fn(*args)
        except OSError as e:
            self.error = e
        self.done = True


async def test_answers_early_while_the_lease_is_held_and_the_parent_known() -> None:
    async with running() as (cb, bricks, _):
        gate = bricks.gates[b"a"] = trio.Event()
        reply = await create(cb, b"a")
        assert reply.iatt.gfid == _gfid(b"a") and reply.iatt.mode == stat.S_IFREG | 0o640
        assert (reply.iatt.uid, reply.iatt.gid, reply.iatt.size, reply.iatt.nlink) == (5, 6, 0, 1)
        assert reply.postparent is not None and reply.postparent.gfid == D
        assert reply.postparent.mode == stat.S_IFDIR | 0o755
        assert reply.postparent.mtime_ns == reply.iatt.mtime_ns
        await trio.testing.wait_all_tasks_blocked()
        assert ("create", b"a") in bricks.log and ("created", b"a") not in bricks.log
        assert bricks.wanted.count(D) == 2  # the mkdir's lease of its new dir, the create's
        gate.set()
        await cb.settle()
        assert ("created", b"a") in bricks.log and bricks.settled


async def test_goes_through_without_lease_parent_or_write_access() -> None:
    async with running() as (cb, bricks, _), trio.open_nursery() as nursery:
        cases = [(b"nolease", E, D, WR), (b"unknown", E, E, WR),
                 (b"rdonly", D, D, os.O_RDONLY | os.O_CREAT)]
        for name, lease, pgfid, flags in cases:
            bricks.leases = {lease}
            gate = bricks.gates[name] = trio.Event()
            t = Task(nursery, create, cb, name, pgfid, flags)
            await trio.testing.wait_all_tasks_blocked()
            assert not t.done, name
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert t.done and t.error is None, name
        assert E in bricks.wanted
        bricks.leases = {D}
        gate = bricks.gates[b"xop"] = trio.Event()
        t = Task(nursery, cb.create, D, b"xop", _gfid(b"x"), 0o100644, 0, 0, WR, {})
        await trio.testing.wait_all_tasks_blocked()
        assert not t.done
        gate.set()


async def test_a_parent_learnt_from_a_create_reply_allows_early_creates() -> None:
    async with running() as (cb, bricks, _):
        bricks.leases = {E}
        await create(cb, b"first", E)  # through: E's attributes from its postparent
        bricks.gates[b"second"] = trio.Event()
        await create(cb, b"second", E)
        assert ("created", b"second") not in bricks.log
        bricks.gates[b"second"].set()


async def test_ops_on_the_new_file_wait_for_its_create() -> None:
    async with running() as (cb, bricks, _), trio.open_nursery() as nursery:
        gate = bricks.gates[b"a"] = trio.Event()
        g = (await create(cb, b"a")).iatt.gfid
        tasks = [Task(nursery, cb.stat, g), Task(nursery, cb.write, g, 0, b"x"),
                 Task(nursery, cb.flush, g), Task(nursery, cb.lookup, D, b"a"),
                 Task(nursery, cb.writev_many, [(g, [(0, b"x")], None)])]
        other = [Task(nursery, cb.stat, E), Task(nursery, cb.lookup, D, b"b")]
        await trio.testing.wait_all_tasks_blocked()
        assert all(t.done for t in other)
        assert not any(t.done for t in tasks)
        assert sorted(op for op, _ in bricks.log if op != "mkdir") == ["create", "lookup", "stat"]
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert all(t.done and t.error is None for t in tasks)
        ops = [op for op, _ in bricks.log]
        assert ops.index("created") < min(ops.index(o) for o in ("write", "flush", "writev_many"))


async def test_a_listing_waits_for_the_directory_s_creates() -> None:
    async with running() as (cb, bricks, _), trio.open_nursery() as nursery:
        gate = bricks.gates[b"a"] = trio.Event()
        await create(cb, b"a")
        t = Task(nursery, cb.readdir, D, 0, 100)
        elsewhere = Task(nursery, cb.readdir, E, 0, 100)
        await trio.testing.wait_all_tasks_blocked()
        assert elsewhere.done and not t.done
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert t.done and bricks.log[-1] == ("readdir", D)


async def test_the_directory_s_stat_and_setattr_wait_for_its_creates() -> None:
    async with running() as (cb, bricks, _), trio.open_nursery() as nursery:
        gate = bricks.gates[b"a"] = trio.Event()
        await create(cb, b"a")
        tasks = [Task(nursery, cb.stat, D), Task(nursery, cb.setattr, D)]
        await trio.testing.wait_all_tasks_blocked()
        assert not any(t.done for t in tasks)
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert all(t.done and t.error is None for t in tasks)
        ops = [op for op, _ in bricks.log]
        assert ops.index("created") < min(ops.index("stat"), ops.index("setattr"))


async def test_rmdir_waits_for_creates_in_other_directories() -> None:
    async with running() as (cb, bricks, _), trio.open_nursery() as nursery:
        gate = bricks.gates[b"a"] = trio.Event()
        await create(cb, b"a")
        t = Task(nursery, cb.rmdir, ROOT, b"d")
        await trio.testing.wait_all_tasks_blocked()
        assert not t.done
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert t.done and bricks.log[-1] == ("rmdir", b"d")


async def test_lease_recalled_waits_for_that_directory_only() -> None:
    async with running() as (cb, bricks, top), trio.open_nursery() as nursery:
        await cb.mkdir(ROOT, b"e", E, 0o755, 0, 0)
        bricks.leases.add(E)
        gate_d = bricks.gates[b"a"] = trio.Event()
        gate_e = bricks.gates[b"b"] = trio.Event()
        await create(cb, b"a", D)
        await create(cb, b"b", E)
        rd, re = Task(nursery, cb.lease_recalled, D), Task(nursery, cb.lease_recalled, E)
        await trio.testing.wait_all_tasks_blocked()
        assert not rd.done and not re.done and top.recalled == []
        gate_e.set()
        await trio.testing.wait_all_tasks_blocked()
        assert re.done and not rd.done and top.recalled == [E]
        # the directory's times answered here are dropped above
        assert top.events == [(EVENT, {"gfids": [E], "entries": []})]
        gate_d.set()
        await trio.testing.wait_all_tasks_blocked()
        assert rd.done and top.recalled == [E, D]


async def test_settle_waits_for_every_early_create() -> None:
    async with running() as (cb, bricks, _), trio.open_nursery() as nursery:
        gates = [bricks.gates.setdefault(bytes([65 + i]), trio.Event()) for i in range(3)]
        for i in range(3):
            await create(cb, bytes([65 + i]))
        t = Task(nursery, cb.settle)
        for gate in gates:
            await trio.testing.wait_all_tasks_blocked()
            assert not t.done and not bricks.settled
            gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert t.done and bricks.settled


async def test_a_failed_early_create_fails_later_ops_and_invalidates(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running() as (cb, bricks, top):
        bricks.fail[b"a"] = OSError(errno.ENOSPC, "no space")
        g = (await create(cb, b"a")).iatt.gfid
        with pytest.raises(OSError) as e:
            await cb.write(g, 0, b"x")
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as e:
            await cb.flush(g)
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as e:
            await cb.lookup_gfid(g)
        assert e.value.errno == errno.ENOSPC
        assert top.events == [(EVENT, {"gfids": [g, D], "entries": [[D, b"a"]]})]
        assert any("b'a'" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
        await cb.release(g)
        assert ("release", g) not in bricks.log
        await cb.stat(g)  # forgotten at its release: goes to the bricks
        # the parent's attributes were dropped: the next create goes through
        bricks.gates[b"b"] = trio.Event()
        with trio.move_on_after(0.2):
            await create(cb, b"b")
        assert ("create", b"b") in bricks.log
        bricks.gates[b"b"].set()


async def test_writev_many_fails_only_the_failed_files() -> None:
    async with running() as (cb, bricks, _):
        bricks.fail[b"a"] = OSError(errno.EIO, "io")
        g = (await create(cb, b"a")).iatt.gfid
        await trio.testing.wait_all_tasks_blocked()
        out = await cb.writev_many([(E, [(0, b"y")], None), (g, [(0, b"x")], None)])
        assert isinstance(out[0], Iatt) and out[0].gfid == E
        assert isinstance(out[1], OSError) and out[1].errno == errno.EIO
        assert bricks.log[-1] == ("writev_many", [E])


async def test_max_pending_bounds_outstanding_creates() -> None:
    async with running(max_pending=3) as (cb, bricks, _), trio.open_nursery() as nursery:
        gates = [bricks.gates.setdefault(bytes([65 + i]), trio.Event()) for i in range(4)]
        for i in range(3):
            await create(cb, bytes([65 + i]))
        t = Task(nursery, create, cb, b"D")
        await trio.testing.wait_all_tasks_blocked()
        assert not t.done and ("create", b"D") not in bricks.log
        gates[0].set()
        await trio.testing.wait_all_tasks_blocked()
        assert t.done and ("create", b"D") in bricks.log and ("created", b"D") not in bricks.log
        for gate in gates[1:]:
            gate.set()


async def test_an_entry_invalidation_sends_creates_through_for_a_while() -> None:
    clock = Clock()
    async with running(clock=clock) as (cb, bricks, top), trio.open_nursery() as nursery:
        cb.on_event(bricks, EVENT, {"gfids": [], "entries": [[D, b"x"]]})
        assert top.events  # passed on up
        await create(cb, b"learn")  # through (the parent was dropped too); learns it again
        gate = bricks.gates[b"a"] = trio.Event()
        t = Task(nursery, create, cb, b"a")
        await trio.testing.wait_all_tasks_blocked()
        assert not t.done
        gate.set()
        clock.now += STALE_WINDOW + 0.1
        bricks.gates[b"b"] = trio.Event()
        await create(cb, b"b")  # early again
        bricks.gates[b"b"].set()


async def test_an_invalidation_of_everything_counts_only_after_first_use() -> None:
    clock = Clock()
    bricks = Bricks()
    cb = CreateBehind("cb", bricks, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(cb.serve)
        cb.on_event(bricks, EVENT, {"all": True})  # a brick connected: nothing known yet
        await cb.mkdir(ROOT, b"d", D, 0o755, 0, 0)
        bricks.leases.add(D)
        bricks.gates[b"a"] = trio.Event()
        await create(cb, b"a")  # early
        cb.on_event(bricks, EVENT, {"all": True})  # a brick came back: events were lost
        await cb.mkdir(ROOT, b"d2", E, 0o755, 0, 0)
        bricks.leases.add(E)
        t = Task(nursery, create, cb, b"b", E)
        bricks.gates[b"b"] = trio.Event()
        await trio.testing.wait_all_tasks_blocked()
        assert not t.done
        bricks.gates[b"a"].set()
        bricks.gates[b"b"].set()
        clock.now += STALE_WINDOW + 0.1
        bricks.gates[b"c"] = trio.Event()
        await create(cb, b"c", E)  # early again
        bricks.gates[b"c"].set()
        await cb.settle()
        nursery.cancel_scope.cancel()


def _graph(wb: str = "", **options: str) -> Graph:
    spec = VolumeSpec("gv", "6a1e6c55-9f61-4a49-9f1c-6f3c3f7a8a01", 2,
                      [BrickSpec("127.0.0.2", 49750, "/b/1"),
                       BrickSpec("127.0.0.3", 49751, "/b/2")], options=dict(options))
    graph = client_graph(spec)
    if wb:
        graph.xlators["gv-write-behind"].options["create-behind"] = wb
    return graph


def _under_write_behind(top: Layer) -> Layer | None:
    layer = top
    for _ in range(8):
        if isinstance(layer, WriteBehind):
            return layer.child
        layer = layer.child
    return None


def test_the_graph_builds_it_under_write_behind() -> None:
    below = _under_write_behind(build_graph(_graph(), client_id="c"))
    assert isinstance(below, CreateBehind) and below.child.name == "gv-replicate-0"
    for top in (build_graph(_graph("off"), client_id="c"),
                build_graph(_graph(), client_id="c", write_behind=False),
                build_graph(_graph(**{"features.cache-invalidation": "off"}),
                            client_id="c")):
        below = _under_write_behind(top)
        assert below is not None and not isinstance(below, CreateBehind)


async def test_a_replacing_graph_waits_for_the_old_graph_s_creates() -> None:
    async with running() as (old, bricks, _), trio.open_nursery() as nursery:
        new = CreateBehind("cb2", bricks)
        new.share_pending(old)
        gate = bricks.gates[b"a"] = trio.Event()
        g = (await create(old, b"a")).iatt.gfid
        t = Task(nursery, new.write, g, 0, b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert not t.done
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert t.done and t.error is None


def test_a_mount_s_graphs_share_their_pending_creates() -> None:
    group: list[WriteBehind] = []
    first = _under_write_behind(build_graph(_graph(), client_id="c", wb_group=group))
    second = _under_write_behind(build_graph(_graph(), client_id="c-g2", wb_group=group))
    assert isinstance(first, CreateBehind) and isinstance(second, CreateBehind)
    assert second._pending is first._pending and second._dirs is first._dirs
