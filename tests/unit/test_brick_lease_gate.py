"""The brick's lease gate (brickd/leases.py): waits, recall timeout, ordering, cost.

Gate-level tests drive ``LeaseGate`` over a ``LockManager`` with an autojump
clock (handlers that wait on events stand for requests in progress); wire
tests run an in-process brick over memory streams.
"""

from __future__ import annotations

import errno
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers.brickclient import BrickClient, MemoryBrick
from helpers.replica import wait_for

from pyglfs.brickd.leases import GATED_OPS, LeaseGate
from pyglfs.brickd.locks import LockManager
from pyglfs.brickd.server import BrickService, open_brick_service
from pyglfs.brickd.store import open_store
from pyglfs.brickd.upcall import EVENT
from pyglfs.rpc import messages
from pyglfs.rpc.brickops import LEASE_DOMAIN, ROOT_GFID
from pyglfs.rpc.framing import FrameReader, encode_frame
from pyglfs.rpc.server import serve_rpc_stream

D = b"d" * 16
E = b"e" * 16
RECALL = 0.5


def lease(gfid: bytes, owner: bytes, kind: str = "wr", block: bool = False) -> dict[str, Any]:
    return {"gfid": gfid, "domain": LEASE_DOMAIN, "type": kind, "start": 0, "len": 0,
            "owner": owner, "block": block}


class Gate:
    """A LeaseGate over its LockManager, recording contention calls."""

    def __init__(self) -> None:
        self.told: list[tuple[Any, bytes, str, bytes]] = []
        self.locks = LockManager(on_contention=lambda *a: self.told.append(a),
                                 contention_delay=0.0)
        self.gate = LeaseGate(self.locks, RECALL)

    async def take(self, conn: str, gfid: bytes, owner: bytes = b"L") -> None:
        await self.locks.inodelk(conn_id=conn, **lease(gfid, owner))

    async def give(self, conn: str, gfid: bytes, owner: bytes = b"L") -> None:
        await self.locks.inodelk(conn_id=conn, **lease(gfid, owner, "un"))


class Request:
    """A gated request whose handler, once it runs, waits for ``finish``."""

    def __init__(self, nursery: trio.Nursery, g: Gate, conn: str, op: str,
                 args: dict[str, Any]) -> None:
        self.started = trio.Event()
        self.finish = trio.Event()
        self.done = trio.Event()
        self.at: float | None = None
        nursery.start_soon(self._run, g, conn, op, args)

    async def _handler(self, args: dict[str, Any], conn: Any) -> str:
        self.at = trio.current_time()
        self.started.set()
        await self.finish.wait()
        return "ran"

    async def _run(self, g: Gate, conn: str, op: str, args: dict[str, Any]) -> None:
        try:
            assert await g.gate.run(op, args, conn, self._handler) == "ran"  # type: ignore[arg-type]
        finally:
            self.done.set()


def lookup(pgfid: bytes) -> dict[str, Any]:
    return {"pgfid": pgfid, "name": b"x"}


async def test_a_request_waits_for_the_lease_and_its_gate_lock_keeps_it_off(
        autojump_clock: trio.testing.MockClock) -> None:
    g = Gate()
    await g.take("A", D)
    async with trio.open_nursery() as n:
        r = Request(n, g, "B", "lookup", lookup(D))
        await wait_for(lambda: g.told)
        assert g.told == [("A", D, LEASE_DOMAIN, b"L")]
        await trio.sleep(RECALL / 2)
        assert not r.started.is_set()
        await g.give("A", D)
        await r.started.wait()
        # B's request holds its gate lock while it runs: the lease cannot come back.
        with pytest.raises(OSError) as ei:
            await g.take("A", D)
        assert ei.value.errno == errno.EAGAIN
        assert len(g.gate.gate_owners) == 1
        r.finish.set()
    await g.take("A", D)
    assert not g.gate.gate_owners
    await g.give("A", D)
    assert g.locks.is_idle()


async def test_the_holders_own_connection_is_never_held(
        autojump_clock: trio.testing.MockClock) -> None:
    g = Gate()
    await g.take("A", D)
    async with trio.open_nursery() as n:
        other = Request(n, g, "B", "lookup", lookup(D))
        await wait_for(lambda: g.told)
        own = Request(n, g, "A", "create", {"pgfid": D, "name": b"y"})
        await own.started.wait()
        own.finish.set()
        await own.done.wait()
        assert not other.started.is_set()
        await g.give("A", D)
        other.finish.set()
    assert g.locks.is_idle()


async def test_recall_timeout_takes_the_lease_away_and_logs_it(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    g = Gate()
    await g.take("A", D)
    t0 = trio.current_time()
    with caplog.at_level(logging.WARNING, logger="pyglfs.brickd.leases"):
        async with trio.open_nursery() as n:
            r = Request(n, g, "B", "readdir", {"gfid": D, "cookie": 0, "count": 1})
            await r.started.wait()
            assert r.at is not None and r.at - t0 == pytest.approx(RECALL)
            # A lost it, and B's gate lock holds it off while B runs.
            with pytest.raises(OSError):
                await g.take("C", D)
            r.finish.set()
    assert g.gate.taken_away == 1
    assert D.hex() in caplog.text and "'A'" in caplog.text
    await g.give("A", D)  # the holder's late unlock is harmless
    await g.take("C", D)


async def test_one_recall_timeout_per_request_whatever_it_names(
        autojump_clock: trio.testing.MockClock) -> None:
    g = Gate()
    await g.take("A", D)
    await g.take("A", E)
    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        r = Request(n, g, "B", "rename", {"old_pgfid": E, "old_name": b"a",
                                          "new_pgfid": D, "new_name": b"b"})
        await r.started.wait()
        r.finish.set()
    assert r.at is not None and r.at - t0 == pytest.approx(RECALL)
    assert g.gate.taken_away == 2


async def test_a_lease_requested_during_the_wait_still_lets_the_request_go(
        autojump_clock: trio.testing.MockClock) -> None:
    g = Gate()
    await g.take("A", D)
    async with trio.open_nursery() as n:
        r = Request(n, g, "B", "unlink", {"pgfid": D, "name": b"x"})
        await wait_for(lambda: g.told)
        n.start_soon(lambda: g.locks.inodelk(conn_id="C", **lease(D, b"C", block=True)))
        await r.started.wait()
        r.finish.set()
    assert g.gate.taken_away == 1


async def test_a_connection_waiting_for_the_lease_is_not_held_by_its_own_request(
        autojump_clock: trio.testing.MockClock) -> None:
    g = Gate()
    await g.take("C", D)
    async with trio.open_nursery() as n:
        n.start_soon(lambda: g.locks.inodelk(conn_id="A", **lease(D, b"A", block=True)))
        await wait_for(lambda: g.told)
        r = Request(n, g, "A", "lookup", lookup(D))
        await trio.sleep(RECALL / 2)
        assert not r.started.is_set()  # C's lease holds A's request
        await g.give("C", D)
        given = trio.current_time()
        await r.started.wait()  # A's own lease, granted first, does not
        assert r.at == given
        r.finish.set()
    assert g.gate.taken_away == 0
    await g.locks.inodelk(conn_id="A", **lease(D, b"other-owner"))  # one connection's owners
    await g.give("A", D, b"A")
    await g.give("A", D, b"other-owner")
    assert g.locks.is_idle()


def test_gated_ops_name_their_directories() -> None:
    assert {"lookup", "readdir", "create", "mkdir", "mknod", "symlink", "link", "unlink",
            "rmdir", "rename"} <= GATED_OPS
    assert "stat" not in GATED_OPS and "inodelk" not in GATED_OPS


# ---- an in-process brick over memory streams ----------------------------------------------


@pytest.fixture
async def brick(tmp_path: Path) -> AsyncIterator[MemoryBrick]:
    root = tmp_path / "brick"
    root.mkdir()
    store = open_store(root, str(uuid.uuid4()))
    try:
        async with trio.open_nursery() as nursery:
            async with open_brick_service(store, "cvol", lease_recall_timeout=RECALL) as svc:
                yield MemoryBrick(nursery, svc, root)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def mkdir(c: BrickClient, name: bytes) -> bytes:
    g = uuid.uuid4().bytes
    await c.call("mkdir", {"pgfid": ROOT_GFID, "name": name, "gfid": g, "mode": 0o755,
                           "uid": 0, "gid": 0})
    return g


async def test_entry_ops_run_inline_only_while_their_dir_has_no_lease(
        brick: MemoryBrick) -> None:
    svc: BrickService = brick.service
    assert not svc.inline_ops & {"lookup", "create", "readdir", "rename"}
    when = svc.inline_when
    assert when is not None
    async with brick.connect() as a:
        d = await mkdir(a, b"d")
        assert when("lookup", {"pgfid": d, "name": b"x"})
        assert when("rename", {"old_pgfid": d, "new_pgfid": ROOT_GFID})
        await a.call("inodelk", lease(d, b"A"))
        assert not when("lookup", {"pgfid": d, "name": b"x"})
        assert not when("rename", {"old_pgfid": ROOT_GFID, "new_pgfid": d})
        assert when("lookup", {"pgfid": ROOT_GFID, "name": b"x"})
        when("lookup", {"pgfid": ["junk"], "name": b"x"})  # unvalidated args: never raises
        assert when("compound", {"ops": [["stat", {"gfid": d}]]})
        await a.call("inodelk", lease(d, b"A", "un"))
        assert when("lookup", {"pgfid": d, "name": b"x"})


async def test_recall_timeout_over_the_wire(brick: MemoryBrick) -> None:
    async with brick.connect() as a, brick.connect() as b:
        d = await mkdir(a, b"d")
        await a.call("inodelk", lease(d, b"A"))
        t0 = trio.current_time()
        with pytest.raises(OSError) as ei:
            await b.call("lookup", {"pgfid": d, "name": b"x"})
        assert ei.value.errno == errno.ENOENT
        assert trio.current_time() - t0 >= RECALL * 0.9
        await wait_for(lambda: any(e[0] == "lock-contention" for e in a.events))
        await b.call("inodelk", lease(d, b"B"))  # A's lease is gone
        assert brick.service.leases.taken_away == 1


async def test_bad_arguments_are_still_einval_while_leased(brick: MemoryBrick) -> None:
    async with brick.connect() as a, brick.connect() as b:
        d = await mkdir(a, b"d")
        await a.call("inodelk", lease(d, b"A"))
        for op, args in [("lookup", {"pgfid": d}), ("lookup", {"pgfid": b"short", "name": b"x"}),
                         ("rename", {"old_pgfid": d, "old_name": b"a", "new_pgfid": 5,
                                     "new_name": b"b"})]:
            with trio.fail_after(2), pytest.raises(OSError) as ei:
                await b.call(op, args)
            assert ei.value.errno == errno.EINVAL


class RawClient:
    """A client connection read frame by frame, in the order the brick sent them."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream)  # type: ignore[arg-type]
        self.got: list[Any] = []

    async def send(self, msg: dict[str, Any]) -> None:
        await self.stream.send_all(encode_frame(msg))

    async def until(self, key: str, value: Any = None) -> list[Any]:
        with trio.fail_after(5):
            while not any(key in m and (value is None or m[key] == value) for m in self.got):
                msgs = await self.reader.receive()
                assert msgs is not None
                self.got += msgs
        return self.got


async def test_a_lease_grant_is_answered_after_the_invalidations_owed(
        brick: MemoryBrick) -> None:
    svc: BrickService = brick.service
    # A lockstep stream: the brick's sends to A wait until A reads, so A's events
    # pile up in the brick while A holds back.
    a_side, server_side = trio.testing.lockstep_stream_pair()
    brick.nursery.start_soon(serve_rpc_stream, svc, server_side)
    a = RawClient(a_side)
    async with trio.open_nursery() as n:  # lockstep: A reads while it sends
        n.start_soon(a.send, messages.hello(volume="cvol", client_id="A"))
        await a.until("welcome")
    await a.send(messages.request(1, "null", {}))
    await a.until("id", 1)
    async with brick.connect(client_id="B") as b:
        d = await mkdir(b, b"d")
        await b.call("create", {"pgfid": d, "name": b"f2", "gfid": uuid.uuid4().bytes,
                                "mode": 0o644, "uid": 0, "gid": 0})
        # A's sender is stuck on the mkdir's event; the create's waits behind it.
        await wait_for(lambda: svc.upcall._senders and svc.upcall._pending)
        await a.send(messages.request(2, "inodelk", lease(d, b"A")))
        got = await a.until("id", 2)
    reply_at = next(i for i, m in enumerate(got) if m.get("id") == 2)
    assert got[reply_at] == {"id": 2, "ok": {}}
    before = [n for m in got[:reply_at] if m.get("event") == EVENT
              for _, n in m["args"]["entries"]]
    assert b"f2" in before, got
