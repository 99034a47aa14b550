"""Cluster transactions: lock, stage, commit, unlock across participants."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.lowlevel

from pyglfs.mgmt.transaction import (
    LocalParticipant,
    Txn,
    TxnBusy,
    TxnEngine,
    TxnError,
    TxnOp,
    run_transaction,
)


class Node:
    """One node's engine with a key/value store changed by the "set" operation."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[str, Any] = {}
        self.staged: list[dict[str, Any]] = []
        self.refuse: str | None = None
        self.engine = TxnEngine({"set": TxnOp(self._stage, self._commit)})

    async def _stage(self, args: dict[str, Any]) -> None:
        self.staged.append(args)
        if self.refuse:
            raise TxnError(self.refuse, errno.EEXIST)

    async def _commit(self, args: dict[str, Any]) -> Any:
        self.data[args["k"]] = args["v"]
        return {"node": self.name}


class Remote:
    """A peer reached 'over the network': can be down, or slow to stage."""

    is_local = False

    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self.down = False
        self.stage_gate: trio.Event | None = None
        self.calls: list[str] = []

    async def _go(self, phase: str, txn: Txn) -> Any:
        self.calls.append(phase)
        if self.down:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        if phase == "stage" and self.stage_gate is not None:
            await self.stage_gate.wait()
        return await getattr(self.node.engine, phase)(Txn.from_wire(txn.to_wire()))

    async def lock(self, txn: Txn) -> None:
        await self._go("lock", txn)

    async def stage(self, txn: Txn) -> None:
        await self._go("stage", txn)

    async def commit(self, txn: Txn) -> Any:
        return await self._go("commit", txn)

    async def unlock(self, txn: Txn) -> None:
        await self._go("unlock", txn)


def cluster() -> tuple[list[Node], list[Any]]:
    nodes = [Node("localhost"), Node("127.0.0.3"), Node("127.0.0.4")]
    parts: list[Any] = [LocalParticipant(nodes[0].engine)]
    parts += [Remote(n) for n in nodes[1:]]
    return nodes, parts


def no_locks(nodes: list[Node]) -> bool:
    return all(n.engine.locks.holder("cluster") is None for n in nodes)


async def test_commit_everywhere() -> None:
    nodes, parts = cluster()
    res = await run_transaction(parts, Txn("set", {"k": "a", "v": 1}))
    assert [n.data for n in nodes] == [{"a": 1}] * 3
    assert res == {"localhost": {"node": "localhost"}, "127.0.0.3": {"node": "127.0.0.3"},
                   "127.0.0.4": {"node": "127.0.0.4"}}
    assert no_locks(nodes)


async def test_peer_down_commits_nothing_and_names_peer() -> None:
    nodes, parts = cluster()
    parts[2].down = True
    with pytest.raises(TxnError) as ei:
        await run_transaction(parts, Txn("set", {"k": "a", "v": 1}))
    msg = str(ei.value)
    assert "127.0.0.4" in msg and "Transport endpoint is not connected" in msg
    assert "127.0.0.3" not in msg
    assert ei.value.code == errno.ENOTCONN
    assert all(n.data == {} and n.staged == [] for n in nodes)
    assert no_locks(nodes)
    assert parts[1].calls == ["lock", "unlock"]


async def test_stage_refusal_on_peer_commits_nothing() -> None:
    nodes, parts = cluster()
    nodes[1].refuse = "Volume gvol0 already exists"
    with pytest.raises(TxnError) as ei:
        await run_transaction(parts, Txn("set", {"k": "a", "v": 1}))
    assert str(ei.value) == "Staging failed on 127.0.0.3. Error: Volume gvol0 already exists"
    assert ei.value.code == errno.EEXIST
    assert all(n.data == {} for n in nodes)
    assert no_locks(nodes)


async def test_local_stage_refusal_is_the_plain_reason() -> None:
    nodes, parts = cluster()
    nodes[0].refuse = "Volume gvol0 already exists"
    with pytest.raises(TxnError) as ei:
        await run_transaction(parts, Txn("set", {"k": "a", "v": 1}))
    assert str(ei.value) == "Volume gvol0 already exists"
    assert all(n.data == {} for n in nodes)


async def test_concurrent_transaction_is_refused_and_first_completes() -> None:
    nodes, parts = cluster()
    gate = trio.Event()
    parts[1].stage_gate = gate
    first: dict[str, Any] = {}

    async def run_first() -> None:
        first.update(await run_transaction(parts, Txn("set", {"k": "a", "v": 1}, key="gvol0")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_first)
        with trio.fail_after(5):
            while nodes[1].engine.locks.holder("gvol0") is None:
                await trio.lowlevel.checkpoint()
        other_parts: list[Any] = [LocalParticipant(nodes[1].engine, "localhost")]
        with pytest.raises(TxnBusy) as ei:
            await run_transaction(other_parts, Txn("set", {"k": "b", "v": 2}, key="gvol0"))
        assert str(ei.value) == ("Another transaction is in progress for gvol0. "
                                 "Please try again after some time.")
        # A different key is not blocked by the first transaction.
        await run_transaction(other_parts, Txn("set", {"k": "c", "v": 3}, key="gvol1"))
        gate.set()
    assert first and all(n.data.get("a") == 1 for n in nodes)
    assert "b" not in nodes[1].data and nodes[1].data["c"] == 3
    assert all(n.engine.locks.holder("gvol0") is None for n in nodes)


async def test_busy_lock_releases_the_ones_taken() -> None:
    nodes, parts = cluster()
    await nodes[2].engine.lock(Txn("set", {}, id="other"))
    with pytest.raises(TxnBusy):
        await run_transaction(parts, Txn("set", {"k": "a", "v": 1}))
    assert nodes[0].engine.locks.holder("cluster") is None
    assert nodes[1].engine.locks.holder("cluster") is None
    assert nodes[2].engine.locks.holder("cluster") == "other"


async def test_stage_without_lock_is_refused() -> None:
    node = Node("x")
    with pytest.raises(TxnError) as ei:
        await node.engine.stage(Txn("set", {"k": "a", "v": 1}))
    assert ei.value.code == errno.ENOLCK


async def test_unknown_op_fails_stage_and_unlocks() -> None:
    nodes, parts = cluster()
    with pytest.raises(TxnError) as ei:
        await run_transaction(parts, Txn("nope", {}))
    assert "unknown operation nope" in str(ei.value)
    assert no_locks(nodes)


async def test_lock_expires_after_ttl(autojump_clock: trio.abc.Clock) -> None:
    engine = TxnEngine(lock_ttl=10)
    await engine.lock(Txn("set", {}, id="dead-originator"))
    with pytest.raises(TxnBusy):
        await engine.lock(Txn("set", {}, id="next"))
    await trio.sleep(11)
    await engine.lock(Txn("set", {}, id="next"))
    assert engine.locks.holder("cluster") == "next"


def test_txn_from_wire_refuses_malformed() -> None:
    with pytest.raises(TxnError):
        Txn.from_wire({"id": 1, "op": "set", "args": {}, "key": "k", "originator": ""})
    t = Txn("set", {"a": 1}, originator="u")
    assert Txn.from_wire(t.to_wire()) == t


async def test_commit_failure_on_peer_is_reported_and_unlocks() -> None:
    nodes, parts = cluster()

    async def broken_commit(args: dict[str, Any]) -> Any:
        raise TxnError("disk full", errno.ENOSPC)

    nodes[2].engine.ops["set"] = TxnOp(nodes[2].engine.ops["set"].stage, broken_commit)
    with pytest.raises(TxnError) as ei:
        await run_transaction(parts, Txn("set", {"k": "a", "v": 1}))
    assert str(ei.value) == "Commit failed on 127.0.0.4: disk full"
    assert nodes[0].data == {"a": 1} and nodes[1].data == {"a": 1}
    assert no_locks(nodes)


async def test_cancelled_originator_still_unlocks_everywhere(
        autojump_clock: trio.abc.Clock) -> None:
    nodes, parts = cluster()
    parts[1].stage_gate = trio.Event()
    with trio.move_on_after(0.2) as scope:
        await run_transaction(parts, Txn("set", {"k": "a", "v": 1}))
    assert scope.cancelled_caught
    assert all(n.data == {} for n in nodes)
    assert no_locks(nodes)
