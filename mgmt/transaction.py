"""Cluster transactions: lock every node, stage, commit, unlock.

A cluster-wide change (a volume created, started, an option set) runs on every
node of the pool as one transaction, in the four phases GlusterFS's glusterd uses:

1. lock: each node takes the transaction's lock key (a volume name, or
   ``"cluster"``) for the transaction. A key held by another transaction fails
   the lock at once (``TxnBusy``): no queueing, no deadlock between two
   originators. A lock expires after ``ttl`` seconds so an originator that died
   mid-way does not wedge the pool.
2. stage: each node validates the operation against its own state. Nothing is
   changed yet, so a failure anywhere leaves the pool as it was.
3. commit: the originator commits first, then the peers.
4. unlock: always, on every node that was locked, whatever happened before.

A node that cannot be reached fails the phase it is in, naming that node; as
locking comes first, a peer that is down means nothing was staged or committed
anywhere.

``TxnEngine`` is the per-node side (locks and the op table); ``Participant`` is
how the originator talks to one node (``LocalParticipant`` in-process, the peer
link over RPC for others); ``run_transaction`` drives the phases.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

log = logging.getLogger(__name__)

DEFAULT_LOCK_TTL = 180.0
CLUSTER_LOCK = "cluster"


class TxnError(Exception):
    """A transaction phase failed; ``str()`` is the message for the operator."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.code = code


class TxnBusy(TxnError):
    """The lock key is held by another transaction."""

    def __init__(self, key: str) -> None:
        what = "" if key == CLUSTER_LOCK else f" for {key}"
        super().__init__(
            f"Another transaction is in progress{what}. Please try again after some time.",
            errno.EBUSY)
        self.key = key


@dataclass
class Txn:
    """One transaction as every node sees it."""

    op: str
    args: dict[str, Any]
    key: str = CLUSTER_LOCK
    originator: str = ""
    id: str = field(default_factory=lambda: str(uuidlib.uuid4()))

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "op": self.op, "args": self.args, "key": self.key,
                "originator": self.originator}

    @classmethod
    def from_wire(cls, d: Any) -> Txn:
        if (type(d) is not dict or any(type(d.get(k)) is not str
                                       for k in ("id", "op", "key", "originator"))
                or type(d.get("args")) is not dict):
            raise TxnError("malformed transaction", errno.EINVAL)
        return cls(op=d["op"], args=d["args"], key=d["key"], originator=d["originator"],
                   id=d["id"])


StageFn = Callable[[dict[str, Any]], Awaitable[None]]
CommitFn = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class TxnOp:
    """An operation's two halves on one node. ``stage`` raises TxnError to refuse
    and must not change state; ``commit`` applies the change and returns a result
    for the originator (msgpack-able)."""

    stage: StageFn
    commit: CommitFn


class TxnLocks:
    """Per-key locks held by transaction id, each with an expiry."""

    def __init__(self, ttl: float = DEFAULT_LOCK_TTL) -> None:
        self.ttl = ttl
        self._held: dict[str, tuple[str, float]] = {}

    def holder(self, key: str) -> str | None:
        entry = self._held.get(key)
        if entry is None:
            return None
        if entry[1] <= trio.current_time():
            log.warning("transaction lock %s of txn=%s expired", key, entry[0])
            del self._held[key]
            return None
        return entry[0]

    def acquire(self, key: str, txn_id: str) -> None:
        holder = self.holder(key)
        if holder is not None and holder != txn_id:
            raise TxnBusy(key)
        self._held[key] = (txn_id, trio.current_time() + self.ttl)

    def release(self, key: str, txn_id: str) -> bool:
        if self.holder(key) == txn_id:
            del self._held[key]
            return True
        return False


class TxnEngine:
    """One node's side of transactions: its locks and the operations it knows."""

    def __init__(self, ops: dict[str, TxnOp] | None = None, *,
                 lock_ttl: float = DEFAULT_LOCK_TTL) -> None:
        self.ops: dict[str, TxnOp] = dict(ops or {})
        self.locks = TxnLocks(lock_ttl)

    def register(self, name: str, op: TxnOp) -> None:
        self.ops[name] = op

    def _op(self, txn: Txn) -> TxnOp:
        if self.locks.holder(txn.key) != txn.id:
            raise TxnError(f"transaction {txn.id} does not hold the lock {txn.key}",
                           errno.ENOLCK)
        op = self.ops.get(txn.op)
        if op is None:
            raise TxnError(f"unknown operation {txn.op}", errno.ENOSYS)
        return op

    async def lock(self, txn: Txn) -> None:
        self.locks.acquire(txn.key, txn.id)

    async def stage(self, txn: Txn) -> None:
        await self._op(txn).stage(txn.args)

    async def commit(self, txn: Txn) -> Any:
        return await self._op(txn).commit(txn.args)

    async def unlock(self, txn: Txn) -> None:
        self.locks.release(txn.key, txn.id)


class Participant(Protocol):
    """How the originator reaches one node. ``name`` is how the operator knows the
    node (its hostname; ``"localhost"`` for the originator). Every method raises
    TxnError for a refusal and OSError (or trio.TooSlowError) when the node cannot
    be reached; each call has its own deadline."""

    name: str
    is_local: bool

    async def lock(self, txn: Txn) -> None: ...
    async def stage(self, txn: Txn) -> None: ...
    async def commit(self, txn: Txn) -> Any: ...
    async def unlock(self, txn: Txn) -> None: ...


class LocalParticipant:
    """The originating node itself, called in-process."""

    is_local = True

    def __init__(self, engine: TxnEngine, name: str = "localhost") -> None:
        self.engine = engine
        self.name = name

    async def lock(self, txn: Txn) -> None:
        await self.engine.lock(txn)

    async def stage(self, txn: Txn) -> None:
        await self.engine.stage(txn)

    async def commit(self, txn: Txn) -> Any:
        return await self.engine.commit(txn)

    async def unlock(self, txn: Txn) -> None:
        await self.engine.unlock(txn)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TxnError):
        return str(exc)
    if isinstance(exc, trio.TooSlowError):
        return "Connection timed out"
    if isinstance(exc, OSError) and type(exc.errno) is int:
        return os.strerror(exc.errno)  # the detail is in the log line
    return str(exc) or type(exc).__name__


async def _each(parts: Sequence[Participant], phase: str, txn: Txn
                ) -> tuple[dict[str, Any], list[tuple[Participant, BaseException]]]:
    """Run ``phase`` on every participant at once; results by name, and failures."""
    results: dict[str, Any] = {}
    failed: list[tuple[Participant, BaseException]] = []

    async def one(p: Participant) -> None:
        try:
            results[p.name] = await getattr(p, phase)(txn)
        except (TxnError, OSError, trio.TooSlowError) as exc:
            log.warning("txn=%s op=%s %s failed on %s: %s", txn.id, txn.op, phase, p.name,
                        exc)
            failed.append((p, exc))

    if len(parts) == 1:
        await one(parts[0])
    else:
        async with trio.open_nursery() as nursery:
            for p in parts:
                nursery.start_soon(one, p)
    return results, failed


def _phase_error(phase: str, failed: list[tuple[Participant, BaseException]],
                 key: str) -> TxnError:
    if any(isinstance(exc, TxnBusy) for _, exc in failed):
        return TxnBusy(key)
    lines = []
    code = errno.EIO
    for p, exc in failed:
        reason = _reason(exc)
        if not isinstance(exc, TxnError):
            code = errno.ENOTCONN
        elif code != errno.ENOTCONN:
            code = exc.code
        if p.is_local and isinstance(exc, TxnError):
            lines.append(reason)
        elif phase == "Staging" and isinstance(exc, TxnError):
            lines.append(f"Staging failed on {p.name}. Error: {reason}")
        else:
            lines.append(f"{phase} failed on {p.name}: {reason}")
    return TxnError("\n".join(lines), code)


async def lock_all(parts: Sequence[Participant], txn: Txn, *,
                   skip_unreachable: bool = False) -> list[Participant]:
    """Take ``txn.key`` for ``txn`` on every participant; the ones locked.

    All or nothing: on any failure the locks taken are released and TxnBusy or
    TxnError (naming the nodes) is raised. With ``skip_unreachable`` a node that
    cannot be reached is left out instead (for callers that judge reachability
    themselves); a refusal still fails.
    """
    locked, failed = await _each(parts, "lock", txn)
    locked_parts = [p for p in parts if p.name in locked]
    if skip_unreachable:
        failed = [(p, exc) for p, exc in failed if isinstance(exc, TxnError)]
    if failed:
        await unlock_all(locked_parts, txn)
        raise _phase_error("Locking", failed, txn.key)
    return locked_parts


async def unlock_all(parts: Sequence[Participant], txn: Txn) -> None:
    """Release ``txn``'s locks; never raises (failures are logged, the TTL frees them)."""
    # Shielded so a cancelled caller still frees the pool; each unlock has its own
    # deadline inside the participant.
    with trio.CancelScope(shield=True):
        await _each(parts, "unlock", txn)


async def run_transaction(parts: Sequence[Participant], txn: Txn) -> dict[str, Any]:
    """Run ``txn`` on every participant; the commit results by participant name.

    Raises TxnBusy when another transaction holds the key on any node, and
    TxnError naming every node that failed a phase. When locking or staging fails
    nothing was committed anywhere. A commit failure on a peer after the local
    commit is reported, not undone: the peer is told again on its next handshake
    (later slices), as glusterd does.
    """
    locals_ = [p for p in parts if p.is_local]
    remotes = [p for p in parts if not p.is_local]
    locked_parts = await lock_all(parts, txn)
    try:
        _, failed = await _each(parts, "stage", txn)
        if failed:
            raise _phase_error("Staging", failed, txn.key)
        results, failed = await _each(locals_, "commit", txn) if locals_ else ({}, [])
        if failed:
            raise _phase_error("Commit", failed, txn.key)
        if remotes:
            more, failed = await _each(remotes, "commit", txn)
            results.update(more)
            if failed:
                raise _phase_error("Commit", failed, txn.key)
        log.info("txn=%s op=%s committed on %d node(s)", txn.id, txn.op, len(parts))
        return results
    finally:
        await unlock_all(locked_parts, txn)
