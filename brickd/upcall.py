"""Cache invalidation pushed to clients (GlusterFS's upcall, ``features.cache-invalidation``).

When a request changes an inode or a directory entry, every *other* client
connected to this brick (role ``client``, another ``client_id``: a mount's
connections to all bricks share one id, so it never hears of its own changes)
gets a ``cache-invalidation`` event naming what changed:

    {"gfids": [gfid, ...], "entries": [[pgfid, name], ...]}

``gfids`` are inodes whose attributes or xattrs changed (parents of changed
entries included); ``entries`` are names that appeared, went or moved. A
client drops what it cached of them (``pyglfs.client.mdcache``). When more
than ``PENDING_MAX`` items wait for one connection, the event carries
``"all": true`` instead and the client drops everything.

The event leaves before the reply to the change: the service calls
:meth:`Upcall.deliver` after the change and before it answers, and every other
client whose socket has room gets its event written then, with no task and no
wait. So by the time the changer hears "done" (and can tell anyone, a process
that reads through another mount included), the event is already in the other
clients' sockets: a client that then reads its events before it answers from
its cache cannot serve what the change made stale. A client that does not keep
up with its socket gets its events from a sender task instead (one per
connection, in the service's nursery), never holding up the changer: what
piles up behind a slow reader is merged into one event, and past
``PENDING_MAX`` items becomes ``"all"``. Nothing of this runs when no other
client is connected.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from pyglfs.rpc.server import ServerConnection

log = logging.getLogger(__name__)

EVENT = "cache-invalidation"
PENDING_MAX = 4096
CLIENT_ROLE = "client"

# op -> (inode args, entry args as (pgfid arg, name arg) pairs)
_CHANGES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "setattr": (("gfid",), ()),
    "write": (("gfid",), ()),
    "fallocate": (("gfid",), ()),
    "setxattr": (("gfid",), ()),
    "removexattr": (("gfid",), ()),
    "xattrop": (("gfid",), ()),
    "create": (("pgfid",), (("pgfid", "name"),)),
    "mkdir": (("pgfid",), (("pgfid", "name"),)),
    "mknod": (("pgfid",), (("pgfid", "name"),)),
    "symlink": (("pgfid",), (("pgfid", "name"),)),
    "link": (("gfid", "pgfid"), (("pgfid", "name"),)),
    "unlink": (("pgfid",), (("pgfid", "name"),)),
    "rmdir": (("pgfid",), (("pgfid", "name"),)),
    "rename": (("old_pgfid", "new_pgfid"),
               (("old_pgfid", "old_name"), ("new_pgfid", "new_name"))),
}
CHANGING_OPS = frozenset(_CHANGES)


class _Pending:
    __slots__ = ("gfids", "entries", "overflow")

    def __init__(self) -> None:
        self.gfids: set[bytes] = set()
        self.entries: set[tuple[bytes, bytes]] = set()
        self.overflow = False

    def add(self, gfids: list[bytes], entries: list[tuple[bytes, bytes]]) -> None:
        if self.overflow:
            return
        self.gfids.update(gfids)
        self.entries.update(entries)
        if len(self.gfids) + len(self.entries) > PENDING_MAX:
            self.overflow = True
            self.gfids.clear()
            self.entries.clear()

    def event(self) -> dict[str, Any]:
        if self.overflow:
            return {"all": True}
        return {"gfids": list(self.gfids), "entries": [list(e) for e in self.entries]}


class Upcall:
    """Who to tell about changes, and the telling (see the module doc)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._clients: dict[int, ServerConnection] = {}
        self._pending: dict[int, _Pending] = {}
        self._senders: set[int] = set()
        # Connections with pending items that no sender has claimed yet.
        self.ready: dict[int, ServerConnection] = {}
        self.sent = 0

    def seen(self, conn: ServerConnection) -> None:
        """Note a connection that made a request (cheap: called for every one)."""
        if conn.conn_id not in self._clients and conn.role == CLIENT_ROLE:
            self._clients[conn.conn_id] = conn

    def gone(self, conn: ServerConnection) -> None:
        self._clients.pop(conn.conn_id, None)
        self._pending.pop(conn.conn_id, None)
        self.ready.pop(conn.conn_id, None)

    def changed(self, op: str, args: dict[str, Any], result: Any,
                by: ServerConnection) -> None:
        """``op`` with ``args`` succeeded for ``by``: queue events for the others,
        to go out at the next :meth:`deliver` (before the reply to ``by``)."""
        if len(self._clients) <= 1 and by.conn_id in self._clients:
            return
        gfids, entries = what_changed(op, args, result)
        if not gfids and not entries:
            return
        me = by.client_id
        for conn in list(self._clients.values()):
            if conn.client_id == me:
                continue
            if conn.closed:
                self.gone(conn)
                continue
            cid = conn.conn_id
            pending = self._pending.get(cid)
            if pending is None:
                pending = self._pending[cid] = _Pending()
            pending.add(gfids, entries)
            if cid not in self._senders:
                self.ready[cid] = conn

    async def deliver(self) -> None:
        """Send the queued events: at once, in the calling task, to every client
        whose socket has room; through a sender task to the others. Awaits
        nothing when the sends complete at once (the common case)."""
        ready = self.ready
        self.ready = {}
        senders = self._senders
        for cid, conn in ready.items():
            if cid in senders or cid not in self._pending:
                continue
            senders.add(cid)
            if conn.can_send_now():
                # A send that had to wait after all must not be cut half-way by
                # the changer's cancellation: that would end the other client's
                # connection.
                with trio.CancelScope(shield=True):
                    await self._send(conn, merge=False)
            else:
                self._nursery.start_soon(self._send, conn)

    async def _send(self, conn: ServerConnection, merge: bool = True) -> None:
        """Send what is pending for ``conn`` until nothing is; what piles up
        while a send waits on a slow reader goes out merged in the next event.
        ``merge`` (a sender task) first lets the changes of this moment gather;
        without it (the changer's own task) one event is sent and anything
        queued meanwhile is left to a sender task."""
        cid = conn.conn_id
        handed_on = False
        try:
            if merge:
                await trio.lowlevel.checkpoint()
            while not conn.closed:
                pending = self._pending.pop(cid, None)
                if pending is None:
                    return
                await conn.send_event(EVENT, pending.event())
                self.sent += 1
                if not merge and cid in self._pending:
                    self._nursery.start_soon(self._send, conn)
                    handed_on = True
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("%r: cache-invalidation event not delivered: %r", conn, e)
        finally:
            if not handed_on:
                self._senders.discard(cid)
                if cid in self._pending and not conn.closed:
                    # Queued after the last send but before this sender let go.
                    self.ready[cid] = conn


def what_changed(op: str, args: dict[str, Any],
                 result: Any) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """The inodes and names that a successful ``op`` changed."""
    spec = _CHANGES.get(op)
    if spec is None:
        return [], []
    inode_args, entry_args = spec
    gfids = [args[a] for a in inode_args]
    entries = [(args[p], args[n]) for p, n in entry_args]
    if op == "rename" and isinstance(result, dict):
        iatt = result.get("iatt")
        if isinstance(iatt, list | tuple) and iatt and isinstance(iatt[0], bytes):
            gfids.append(iatt[0])
    return gfids, entries
