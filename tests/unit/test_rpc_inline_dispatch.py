"""Which requests a server runs in the connection's reader task (inline) and which in
a task of their own: ``inline_ops`` by name, ``inline_when(op, args)`` per request.

A handler tells the two apart by the trio task it runs in: a spawned request runs
in ``ServerConnection._run_task``.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.brickclient import AUTH, VOLUME, MemoryBrick

from pyglfs.brickd.auth import Credentials
from pyglfs.brickd.fileio import BIG_IO
from pyglfs.brickd.server import open_brick_service
from pyglfs.brickd.store import BrickStore, open_store
from pyglfs.rpc.brickops import ROOT_GFID
from pyglfs.rpc.server import ServerConnection
from pyglfs.rpc.testing import EchoService, open_memory_connection


def _spawned() -> bool:
    return trio.lowlevel.current_task().name.endswith("._run_task")


class SizeService(EchoService):
    """``get`` {size} runs inline below 100 bytes; ``boom`` {size} raises."""

    def __init__(self) -> None:
        super().__init__()
        self.where: list[tuple[str, bool]] = []
        self.asked: list[tuple[str, Any]] = []

    def inline_when(self, op: str, args: dict[str, Any]) -> bool:
        self.asked.append((op, args.get("size")))
        size = args.get("size")
        return op in ("get", "boom") and type(size) is int and size < 100

    async def handle(self, op: str, args: dict[str, Any], conn: ServerConnection) -> Any:
        self.where.append((op, _spawned()))
        if op == "get":
            return b"x" * args["size"]
        if op == "boom":
            if args.get("oserror"):
                raise OSError(errno.EROFS, "read-only")
            raise RuntimeError("a bug in an inline handler")
        return await super().handle(op, args, conn)


async def test_small_requests_run_inline_big_ones_in_a_task() -> None:
    svc = SizeService()
    async with open_memory_connection(svc) as conn:
        assert await conn.call("get", {"size": 10}) == b"x" * 10
        assert await conn.call("get", {"size": 1000}) == b"x" * 1000
        with pytest.raises(OSError) as info:
            await conn.call("get", {"size": "junk"})
        assert info.value.errno == errno.EIO
    assert svc.where == [("get", False), ("get", True), ("get", True)]


async def test_inline_ops_by_name_are_not_asked_about() -> None:
    svc = SizeService()
    async with open_memory_connection(svc) as conn:
        await conn.call("null", {})
        await conn.call("sleep", {"t": 0, "n": 1})
    assert ("null", False) in svc.where and ("sleep", True) in svc.where
    assert [op for op, _ in svc.asked] == ["sleep"]


async def test_a_failing_inline_request_answers_an_error_and_the_connection_lives() -> None:
    svc = SizeService()
    async with open_memory_connection(svc) as conn:
        with pytest.raises(OSError) as info:
            await conn.call("boom", {"size": 1})
        assert info.value.errno == errno.EIO
        with pytest.raises(OSError) as info:
            await conn.call("boom", {"size": 1, "oserror": True})
        assert info.value.errno == errno.EROFS
        assert await conn.call("get", {"size": 3}) == b"xxx"
        assert not conn.closed
    assert [w for w in svc.where if w[0] == "boom"] == [("boom", False)] * 2


async def test_inline_and_spawned_replies_in_one_batch_all_arrive() -> None:
    svc = SizeService()
    async with open_memory_connection(svc) as conn:
        got: dict[int, Any] = {}

        async def one(i: int) -> None:
            got[i] = await conn.call("get", {"size": 50 + 30 * i})

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, i)
    assert got == {i: b"x" * (50 + 30 * i) for i in range(6)}
    assert {spawned for _, spawned in svc.where} == {False, True}


# ---- the brick: reads and writes under BIG_IO run inline --------------------------------


def test_brick_store_inline_when_is_size_aware() -> None:
    when = BrickStore.inline_when
    assert when("read", {"size": 4096}) and when("read", {"size": BIG_IO - 1})
    assert not when("read", {"size": BIG_IO}) and not when("read", {"size": 1 << 20})
    assert when("write", {"data": b"x" * 4096})
    assert not when("write", {"data": b"x" * BIG_IO})
    for junk in ({}, {"size": "4096"}, {"size": 4.0}, {"size": None}, {"data": "text"}):
        assert not when("read", junk) and not when("write", junk)
    assert not when("fsync", {"size": 1})


@pytest.fixture
async def brick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[MemoryBrick, list[tuple[int, bool]]]]:
    seen: list[tuple[int, bool]] = []
    real_read = BrickStore.read

    async def read(self: BrickStore, gfid: bytes, offset: int, size: int) -> dict[str, Any]:
        seen.append((size, _spawned()))
        return await real_read(self, gfid, offset, size)

    monkeypatch.setattr(BrickStore, "read", read)
    root = tmp_path / "brick"
    root.mkdir()
    store = open_store(root, str(uuid.uuid4()))
    try:
        async with trio.open_nursery() as nursery:
            async with open_brick_service(store, VOLUME, credentials=Credentials(**AUTH)) as svc:
                yield MemoryBrick(nursery, svc, root), seen
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_brick_reads_small_inline_and_big_in_a_task(
        brick: tuple[MemoryBrick, list[tuple[int, bool]]]) -> None:
    mem, seen = brick
    data = bytes(range(256)) * 1024
    async with mem.connect() as c:
        g = uuid.uuid4().bytes
        await c.call("create", {"pgfid": ROOT_GFID, "name": b"f", "gfid": g, "mode": 0o644,
                                "uid": 0, "gid": 0})
        await c.call("write", {"gfid": g, "offset": 0, "data": data})
        assert (await c.call("read", {"gfid": g, "offset": 4096, "size": 4096}))["data"] == \
            data[4096:8192]
        assert (await c.call("read", {"gfid": g, "offset": 0, "size": 1 << 20}))["data"] == data
        with pytest.raises(OSError) as info:
            await c.call("read", {"gfid": uuid.uuid4().bytes, "offset": 0, "size": 10})
        assert info.value.errno == errno.ESTALE
        assert await c.call("null") == {}
    assert seen == [(4096, False), (1 << 20, True), (10, False)]
