"""The brick's ``compound`` op: several sub-ops in one request, over the wire."""

from __future__ import annotations

import errno
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.brickclient import AUTH, VOLUME, BrickClient, MemoryBrick

from pyglfs.brickd.auth import Credentials
from pyglfs.brickd.server import BrickService, open_brick_service
from pyglfs.brickd.store import BrickStore, open_store
from pyglfs.rpc.brickops import AFR_DIRTY, COMPOUND_MAX, ROOT_GFID

DOMAIN = "rvol-replicate-0"


class Env:
    def __init__(self, store: BrickStore, service: BrickService, brick: MemoryBrick) -> None:
        self.store = store
        self.service = service
        self.brick = brick


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    root = tmp_path / "brick"
    root.mkdir()
    store = open_store(root, str(uuid.uuid4()))
    try:
        async with trio.open_nursery() as nursery:
            async with open_brick_service(store, VOLUME, credentials=Credentials(**AUTH)) as svc:
                yield Env(store, svc, MemoryBrick(nursery, svc, root))
            nursery.cancel_scope.cancel()
    finally:
        store.close()


@pytest.fixture
async def client(env: Env) -> AsyncIterator[BrickClient]:
    async with env.brick.connect(client_id="writer") as c:
        yield c


def ctr(data: int, meta: int = 0, entry: int = 0) -> bytes:
    return struct.pack(">iii", data, meta, entry)


def ilk(gfid: bytes, kind: str, owner: bytes = b"me", **extra: Any) -> dict[str, Any]:
    return {"gfid": gfid, "domain": DOMAIN, "type": kind, "start": 0, "len": 0,
            "owner": owner, **extra}


async def new_file(c: BrickClient, name: bytes) -> bytes:
    g = uuid.uuid4().bytes
    await c.call("create", {"pgfid": ROOT_GFID, "name": name, "gfid": g, "mode": 0o644,
                            "uid": 0, "gid": 0})
    return g


async def einval(c: BrickClient, ops: Any) -> str:
    with pytest.raises(OSError) as ei:
        await c.call("compound", {"ops": ops})
    assert ei.value.errno == errno.EINVAL, ei.value
    return str(ei.value)


async def test_sub_ops_run_in_order_and_answer_each(client: BrickClient) -> None:
    g = await new_file(client, b"f")
    r = await client.call("compound", {"ops": [
        ["write", {"gfid": g, "offset": 0, "data": b"hello", "xattrop": {AFR_DIRTY: ctr(1)}}],
        ["xattrop", {"gfid": g, "xattrop": {AFR_DIRTY: ctr(-1)}}],
        ["setattr", {"gfid": g, "size": 3}],
        ["stat", {"gfid": g}],
    ]})
    assert "error" not in r
    write, xop, setattr, stat = r["results"]
    assert write["iatt"][7] == 5
    assert xop == {"xattrs": {AFR_DIRTY: ctr(0)}}
    assert setattr["iatt"][7] == 3 and stat["iatt"][7] == 3
    assert (await client.call("read", {"gfid": g, "offset": 0, "size": 10}))["data"] == b"hel"


async def test_stops_at_the_first_failure_and_names_it(client: BrickClient) -> None:
    g = await new_file(client, b"f")
    missing = uuid.uuid4().bytes
    r = await client.call("compound", {"ops": [
        ["xattrop", {"gfid": g, "xattrop": {AFR_DIRTY: ctr(1)}}],
        ["stat", {"gfid": missing}],
        ["xattrop", {"gfid": g, "xattrop": {AFR_DIRTY: ctr(1)}}],
    ]})
    assert len(r["results"]) == 1
    index, name, msg = r["error"]
    assert (index, name) == (1, "ESTALE") and isinstance(msg, str)
    after = await client.call("xattrop", {"gfid": g, "xattrop": {AFR_DIRTY: ctr(0)}})
    assert after["xattrs"][AFR_DIRTY] == ctr(1)  # the third sub-op never ran

    r = await client.call("compound", {"ops": [["stat", {"gfid": missing}],
                                               ["stat", {"gfid": g}]]})
    assert r["results"] == [] and r["error"][:2] == [0, "ESTALE"]


async def test_bad_compounds_are_refused_before_anything_runs(
        env: Env, client: BrickClient) -> None:
    g = await new_file(client, b"f")
    first = ["xattrop", {"gfid": g, "xattrop": {AFR_DIRTY: ctr(1)}}]
    msg = await einval(client, [first, ["stat", {"gfid": b"short"}]])
    assert "sub-op 1" in msg
    assert "sub-op 1" in await einval(client, [first, ["compound", {"ops": [first]}]])
    for op, args in [("lk", {"gfid": g, "cmd": "setlk", "type": "wr", "start": 0, "len": 0,
                             "pid": 1, "owner": b"o"}),
                     ("create", {"pgfid": ROOT_GFID, "name": b"x", "gfid": g, "mode": 0o644,
                                 "uid": 0, "gid": 0}),
                     ("readdir", {"gfid": ROOT_GFID, "cookie": 0, "count": 10}),
                     ("no-such-op", {})]:
        assert "may not be part" in await einval(client, [first, [op, args]])
    await einval(client, [])
    await einval(client, [first] * (COMPOUND_MAX + 1))
    await einval(client, [first, ["stat"]])
    await einval(client, [first, ("stat", {"gfid": g}, 1)])
    await einval(client, [first, [b"stat", {"gfid": g}]])
    await einval(client, [first, ["stat", [g]]])
    await einval(client, [first, ["stat", {"gfid": g, "extra": 1}]])
    await einval(client, {"stat": {"gfid": g}})
    with pytest.raises(OSError) as ei:
        await client.call("compound", {"ops": [first], "more": 1})
    assert ei.value.errno == errno.EINVAL
    # None of these ran their first sub-op.
    after = await client.call("xattrop", {"gfid": g, "xattrop": {AFR_DIRTY: ctr(0)}})
    assert after["xattrs"][AFR_DIRTY] == ctr(0)
    assert await client.call("null") == {}
    assert env.service.locks.is_idle()


async def test_a_compound_never_waits_for_a_lock(env: Env, client: BrickClient) -> None:
    g = await new_file(client, b"f")
    async with env.brick.connect(client_id="other") as other:
        await other.call("inodelk", ilk(g, "wr", b"them"))
        msg = await einval(client, [["inodelk", ilk(g, "wr", block=True)]])
        assert "never waits" in msg
        await einval(client, [["entrylk", {"pgfid": ROOT_GFID, "domain": DOMAIN,
                                           "type": "wr", "owner": b"me", "block": True}]])
        r = await client.call("compound", {"ops": [["inodelk", ilk(g, "wr", block=False)]]})
        assert r["results"] == [] and r["error"][:2] == [0, "EAGAIN"]
        await other.call("inodelk", ilk(g, "un", b"them"))


async def test_locks_and_opens_are_the_connections_as_with_separate_requests(
        env: Env, client: BrickClient) -> None:
    g = await new_file(client, b"f")
    await client.call("open", {"gfid": g, "flags": 0})
    r = await client.call("compound", {"ops": [
        ["inodelk", ilk(g, "wr")],
        ["entrylk", {"pgfid": ROOT_GFID, "domain": DOMAIN, "type": "wr", "owner": b"me"}],
    ]})
    assert r == {"results": [{}, {}]}
    assert sum(env.store._opens.values()) == 2  # the create and the open
    async with env.brick.connect(client_id="other") as other:
        with pytest.raises(OSError) as ei:
            await other.call("inodelk", ilk(g, "wr", b"them"))
        assert ei.value.errno == errno.EAGAIN
        r = await client.call("compound", {"ops": [
            ["xattrop", {"gfid": g, "xattrop": {AFR_DIRTY: ctr(0)}}],
            ["inodelk", ilk(g, "un")],
            ["entrylk", {"pgfid": ROOT_GFID, "domain": DOMAIN, "type": "un", "owner": b"me"}],
            ["release", {"gfid": g}],
            ["release", {"gfid": g}],
        ]})
        assert "error" not in r and len(r["results"]) == 5
        assert env.store._opens.get(g) is None
        await other.call("inodelk", ilk(g, "wr", b"them"))
        await other.call("inodelk", ilk(g, "un", b"them"))
    # Locks taken in a compound go with the connection, as any others.
    async with env.brick.connect(client_id="third") as third:
        await third.call("compound", {"ops": [["inodelk", ilk(g, "wr", b"3")]]})
    with trio.fail_after(5):
        while not env.service.locks.is_idle():
            await trio.sleep(0.005)


async def test_changes_in_a_compound_reach_other_clients(env: Env, client: BrickClient) -> None:
    g = await new_file(client, b"f")
    async with env.brick.connect(client_id="watcher") as watcher:
        await watcher.call("stat", {"gfid": g})
        await client.call("compound", {"ops": [
            ["xattrop", {"gfid": g, "xattrop": {AFR_DIRTY: ctr(0)}}],
            ["write", {"gfid": g, "offset": 0, "data": b"x"}],
        ]})
        ev = await watcher.wait_event("cache-invalidation")
        assert g in ev.get("gfids", [])


async def test_malformed_compounds_never_crash_the_brick(env: Env, client: BrickClient) -> None:
    junk: list[Any] = [None, 1, b"x", "ops", [None], [[None, None]], [[1, {}]], [["stat"] * 3],
                       [["stat", None]], [[{"a": 1}, {}]], [["xattrop", {"gfid": 1}]],
                       [[["stat"], {"gfid": b"x" * 16}]]]
    for ops in junk:
        with pytest.raises(OSError) as ei:
            await client.call("compound", {"ops": ops})
        assert ei.value.errno == errno.EINVAL
        assert env.service.inline_when is not None
        assert env.service.inline_when("compound", {"ops": ops}) in (True, False)
    assert await client.call("null") == {}


async def test_inline_only_when_every_sub_op_is(env: Env) -> None:
    when = env.service.inline_when
    assert when is not None
    g = b"g" * 16
    assert when("compound", {"ops": [["xattrop", {"gfid": g}], ["inodelk", {}],
                                     ["release", {"gfid": g}]]})
    assert not when("compound", {"ops": [["xattrop", {"gfid": g}], ["fsync", {"gfid": g}]]})
    assert not when("compound", {"ops": "junk"})
    assert not when("compound", {})
