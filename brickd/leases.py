"""Directory leases, the brick's side: the gate in front of entry requests.

A client holds the lease of a directory D while it holds a whole-range "wr"
inode lock on D's gfid in ``LEASE_DOMAIN`` (rpc/brickops.py). It may then
answer creates in D before the bricks have them, so the brick must not let
anyone else see or change D's entries meanwhile: a request of another
connection that reads or changes D's entries (``DIR_ARGS``: a lookup in D, a
readdir of D, an entry op with D as a parent, the same inside a compound; an
rmdir of D or a rename over it, ``REPLACES``) is held until the lease is
given back.

Holding is locking: the request queues a blocking whole-range "rd" lock on
(D, ``LEASE_DOMAIN``) under an owner of its own (a *gate lock*), so the
holder hears "lock-contention" as for any lock it holds, and the request runs
once granted, keeping the gate lock until it is done (so the holder cannot
take the lease back under it). A request naming several directories takes
them in gfid order. The holder's own connection is never held, waiters or
not: the early creates it must send before it can let go go through.

A holder that does not give the lease back within the recall timeout (counted
from when the request started waiting; one limit per request, however many
directories it names) loses it: the brick drops its lock, logs a warning and
the waiting requests go on. The holder is not told; its later unlock is a
no-op. A disconnect drops all of a connection's locks at once.

A grant of a lease lock is answered only after the cache-invalidation events
the brick owes that connection (:class:`LeaseUpcall`), so a client that holds
a lease knows every change made to D before it.

The gate costs the request path one test of an empty dict while no
``LEASE_DOMAIN`` lock exists on the brick (``LockManager.lease_table``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import trio

from pyglfs.brickd.locks import LockManager
from pyglfs.brickd.upcall import EVENT, Upcall
from pyglfs.rpc.brickops import COMPOUND_OPS, ArgError, validate_compound
from pyglfs.rpc.server import ServerConnection

log = logging.getLogger(__name__)

LEASE_RECALL_TIMEOUT = 10.0
"""Seconds a request waits for a lease to be given back before the brick takes it away."""

DIR_ARGS: dict[str, tuple[str, ...]] = {
    "lookup": ("pgfid",),
    "readdir": ("gfid",),
    "create": ("pgfid",),
    "mkdir": ("pgfid",),
    "mknod": ("pgfid",),
    "symlink": ("pgfid",),
    "link": ("pgfid",),
    "unlink": ("pgfid",),
    "rmdir": ("pgfid",),
    "rename": ("old_pgfid", "new_pgfid"),
}
"""op -> its arguments naming directories whose entries it reads or changes."""

REPLACES: dict[str, tuple[str, str]] = {"rmdir": ("pgfid", "name"),
                                        "rename": ("new_pgfid", "new_name")}
"""op -> the (parent, name) of an entry it may remove: when that is a leased
directory, the op waits for its lease too (it could remove the directory whose
early creates the bricks do not have yet)."""

# A compound is gated only if it may carry an entry op (today it may not: its
# schema check would then run twice per compound while any lease exists).
GATED_OPS = frozenset(DIR_ARGS) | (
    {"compound"} if COMPOUND_OPS & DIR_ARGS.keys() else frozenset())

Handler = Callable[[dict[str, Any], ServerConnection], Awaitable[Any]]


class LeaseGate:
    """Holds other connections' entry requests while a directory is leased."""

    def __init__(self, locks: LockManager, recall_timeout: float = LEASE_RECALL_TIMEOUT,
                 child: Callable[[bytes, bytes], Awaitable[bytes | None]] | None = None,
                 ) -> None:
        """``child(pgfid, name)``: the gfid ``name`` in ``pgfid`` has now, or None."""
        self.locks = locks
        self.child = child
        self.table = locks.lease_table
        self.recall_timeout = recall_timeout
        self._serial = itertools.count(1)
        self.gate_owners: set[bytes] = set()
        """Owners of gate locks now held or awaited: contention on them is not
        told (their requests let go by themselves)."""
        self.taken_away = 0
        """Leases dropped because they were not given back in time."""

    def may_run_inline(self, op: str, args: dict[str, Any]) -> bool:
        """Whether ``op`` (not validated yet, never a compound) names no directory
        with a lease lock: only then can it not wait at the gate."""
        table = self.table
        if not table:
            return True
        if op in REPLACES:
            return False
        for a in DIR_ARGS[op]:
            v = args.get(a)
            if type(v) is bytes and v in table:
                return False
        return True

    async def run(self, op: str, args: dict[str, Any], conn: ServerConnection,
                  handler: Handler) -> Any:
        """Run ``handler`` once no other connection's lease covers a directory
        ``op`` (validated) names; gate locks are dropped when it is done."""
        dirs = self._leased_dirs(op, args)
        if op in REPLACES and self.child is not None:
            parent, name = REPLACES[op]
            d = await self.child(args[parent], args[name])
            if d is not None and d in self.table and d not in dirs:
                dirs = sorted([*dirs, d])
        if not dirs:
            return await handler(args, conn)
        locks = self.locks
        held: list[tuple[bytes, bytes]] = []
        try:
            deadline = trio.current_time() + self.recall_timeout
            for d in dirs:
                owner = await self._enter(d, conn, deadline)
                if owner is not None:
                    held.append((d, owner))
            return await handler(args, conn)
        finally:
            for d, owner in held:
                locks.lease_ungate(d, conn, owner)
                self.gate_owners.discard(owner)

    def _leased_dirs(self, op: str, args: dict[str, Any]) -> list[bytes]:
        table = self.table
        names = DIR_ARGS.get(op)
        if names is not None and len(names) == 1:
            d = args[names[0]]
            return [d] if d in table else []
        if op == "compound":
            try:
                subs = validate_compound(args)
            except ArgError:
                return []  # the compound's own handler answers EINVAL
        else:
            subs = [(op, args)]
        found = {d for sub, a in subs for name in DIR_ARGS.get(sub, ())
                 if (d := a[name]) in table}
        return sorted(found)

    async def _enter(self, d: bytes, conn: ServerConnection, deadline: float) -> bytes | None:
        """The owner of the gate lock taken on ``d`` for ``conn``, or None when
        none is needed (no other connection holds a lock there) or none could
        be had after the leases in the way were taken away."""
        locks = self.locks
        if not locks.lease_elsewhere(d, conn):
            return None
        owner = b"\x00pyglfs-gate:%d" % next(self._serial)
        self.gate_owners.add(owner)
        ok = False
        try:
            ok = await self._wait(d, conn, owner, deadline)
        finally:
            if not ok:
                self.gate_owners.discard(owner)
        return owner if ok else None

    async def _wait(self, d: bytes, conn: ServerConnection, owner: bytes,
                    deadline: float) -> bool:
        locks = self.locks
        if trio.current_time() < deadline:
            log.debug("%r: waits for the lease of gfid=%s", conn, d.hex())
            with trio.move_on_at(deadline):
                await locks.lease_gate(d, conn, owner)
                return True
        for holder in locks.drop_leases(d, conn):
            self.taken_away += 1
            log.warning("lease of directory gfid=%s held by %r (owner %s) not given back "
                        "within %.1fs: taken away", d.hex(), holder[0], holder[1].hex(),
                        self.recall_timeout)
        # After its deadline a request never waits again: if a lease request queued
        # before it was granted by the drop, it goes on without a gate lock (entry
        # ops run without a checkpoint, so nobody sees them half done).
        return locks.try_lease_gate(d, conn, owner)

    def is_gate_owner(self, owner: Hashable) -> bool:
        return owner in self.gate_owners


class LeaseUpcall(Upcall):
    """Upcall that can hand a connection its owed events before a lease grant."""

    async def send_owed(self, conn: ServerConnection) -> None:
        """Queue on ``conn`` every cache-invalidation event it is owed, ahead of
        whatever is sent to it next (the grant's reply)."""
        cid = conn.conn_id
        self.ready.pop(cid, None)
        pending = self._pending.pop(cid, None)
        if pending is None or conn.closed:
            return
        # The event is queued on the connection synchronously; only its flush may
        # wait, and cutting that half-way would end the connection.
        with trio.CancelScope(shield=True):
            await conn.send_event(EVENT, pending.event())
        self.sent += 1
