"""Brick locks, kept in memory: internal inode and entry locks, POSIX locks.

Three lock families, all owned by ``(conn_id, owner bytes)`` so that a
client's disconnect can drop exactly its locks (:meth:`LockManager.release_all`):

* inode locks (``inodelk``) order replicate's writers per ``(gfid, domain)``
  over byte ranges. A blocked request tells the conflicting holders, via the
  contention callback, so a client holding a lock eagerly gives it up.
* entry locks (``entrylk``) per ``(pgfid, domain)`` on one name, or on the
  whole directory when the name is None; contention is told as for inode
  locks, with the directory's gfid as ``gfid``.
* POSIX locks (``lk``) for applications, with fcntl semantics.

Inode locks in ``LEASE_DOMAIN`` (directory leases, ``brickd/leases.py``) are
kept in a table of their own, keyed by gfid, so that "no lease anywhere" is
one test of an empty dict on the brick's request path (``lease_table``); there
locks conflict only between connections, not between one connection's owners.

Internal locks are granted first come, first served: a request that conflicts
with a waiter queued before it waits too, so a stream of readers cannot starve
a writer. Locks of one owner never conflict with each other. An internal
unlock removes every lock of that owner overlapping the range (no splitting;
replicate locks and unlocks whole ranges) and withdraws that owner's blocked
requests there with ECANCELED, so a request whose client gave up waiting
cannot be granted later and leak. POSIX locks instead behave like
fcntl: an owner holds a set of disjoint ranges, a new lock replaces the
owner's locks in its range (converting rd/wr), unlocking splits, and adjacent
ranges of one type merge; blocked requests retry whenever the file's locks
change, and a wait that would close a cycle fails with EDEADLK.

Nothing here awaits except a blocked request, so each grant or release is
atomic within the brick's event loop. Blocked requests are cancellable.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, cast

import trio

from pyglfs.rpc.brickops import LEASE_DOMAIN

log = logging.getLogger(__name__)

Owner = tuple[Hashable, bytes]
# (holder's conn_id, gfid, domain, holder's owner bytes)
ContentionCallback = Callable[[Hashable, bytes, str, bytes], None]

CONTENTION_DELAY = 5.0
"""Seconds before the holder of one granted inode lock is told of contention again."""

OFFSET_MAX = 1 << 63
"""Exclusive end of a lock that runs to end of file (``len`` 0)."""


def _span(start: int, length: int) -> tuple[int, int]:
    end = OFFSET_MAX if length == 0 else start + length
    if start >= OFFSET_MAX or end > OFFSET_MAX:
        raise OSError(errno.EINVAL, "lock range beyond the largest file offset")
    return start, end


def _ranges_overlap(a: Any, b: Any) -> bool:
    return bool(a[0] < b[1] and b[0] < a[1])


def _names_overlap(a: Any, b: Any) -> bool:
    return a is None or b is None or a == b


def _check_kind(kind: str) -> None:
    if kind not in ("rd", "wr", "un"):
        raise OSError(errno.EINVAL, f"bad lock type {kind!r}")


@dataclass(eq=False)
class _Req:
    owner: Owner
    kind: str
    span: Any
    event: trio.Event | None = None
    granted: bool = False
    error: OSError | None = None
    notified_at: float | None = None
    # False from a queued request's grant until its task resumes: contention
    # is told only then, so the holder sees the grant's reply before the event.
    resumed: bool = True


@dataclass(eq=False)
class _Queue:
    granted: list[_Req] = field(default_factory=list)
    waiting: list[_Req] = field(default_factory=list)


class _FairLocks:
    """Granted locks and a FIFO of waiters per resource key."""

    def __init__(
        self,
        overlap: Callable[[Any, Any], bool],
        on_contention: Callable[[Hashable, Owner], None] | None = None,
        contention_delay: float = 0.0,
    ) -> None:
        self._overlap = overlap
        self._on_contention = on_contention
        self._contention_delay = contention_delay
        self._res: dict[Hashable, _Queue] = {}

    def __len__(self) -> int:
        return len(self._res)

    def _conflict(self, a: _Req, b: _Req) -> bool:
        return (
            a.owner != b.owner
            and (a.kind == "wr" or b.kind == "wr")
            and self._overlap(a.span, b.span)
        )

    def try_lock(self, key: Hashable, req: _Req) -> bool:
        """Grant ``req`` now if nothing granted or queued conflicts with it."""
        q = self._res.get(key)
        if q is None:
            q = self._res[key] = _Queue()
        if (not q.granted and not q.waiting) or (
            not any(self._conflict(req, g) for g in q.granted)
            and not any(self._conflict(req, w) for w in q.waiting)
        ):
            req.granted = True
            q.granted.append(req)
            return True
        self._tidy(key, q)
        return False

    async def lock(self, key: Hashable, req: _Req, block: bool) -> None:
        if self.try_lock(key, req):
            return
        if not block:
            raise OSError(errno.EAGAIN, "lock held by another owner")
        q = self._res[key]  # a conflict: the queue is not empty, so not tidied away
        req.event = trio.Event()
        q.waiting.append(req)
        self._notify(key, q, req)
        try:
            await req.event.wait()
        except BaseException:
            if req.granted:
                _remove(q.granted, req)
            else:
                _remove(q.waiting, req)
            self._regrant(key, q)
            raise
        if req.error is not None:
            raise req.error
        req.resumed = True
        if self._on_contention is not None and any(self._conflict(w, req) for w in q.waiting):
            self._tell(key, req, trio.current_time())

    def unlock(self, key: Hashable, owner: Owner, span: Any) -> None:
        q = self._res.get(key)
        if q is None:
            return
        q.granted = [
            g for g in q.granted if not (g.owner == owner and self._overlap(g.span, span))
        ]
        # A request the owner stopped waiting for (its call timed out) must not be
        # granted later and leak: the owner's unlock withdraws it too.
        still: list[_Req] = []
        for w in q.waiting:
            if w.owner == owner and self._overlap(w.span, span) and w.event is not None:
                w.error = OSError(errno.ECANCELED, "lock request withdrawn by its owner's unlock")
                w.event.set()
            else:
                still.append(w)
        q.waiting = still
        self._regrant(key, q)

    def granted_elsewhere(self, key: Hashable, conn_id: Hashable) -> bool:
        q = self._res.get(key)
        return q is not None and any(g.owner[0] != conn_id for g in q.granted)

    def drop_writers(self, key: Hashable, conn_id: Hashable) -> list[Owner]:
        """Remove the granted "wr" locks of other connections on ``key`` (their
        owners are returned) and grant whoever may go on now."""
        q = self._res.get(key)
        if q is None:
            return []
        dropped = [g.owner for g in q.granted if g.kind == "wr" and g.owner[0] != conn_id]
        if dropped:
            q.granted = [g for g in q.granted if g.kind != "wr" or g.owner[0] == conn_id]
            self._regrant(key, q)
        return dropped

    def release_conn(self, conn_id: Hashable) -> None:
        for key, q in list(self._res.items()):
            q.granted = [g for g in q.granted if g.owner[0] != conn_id]
            for w in q.waiting:
                if w.owner[0] == conn_id and w.event is not None:
                    w.error = OSError(errno.ENOTCONN, "connection closed")
                    w.event.set()
            q.waiting = [w for w in q.waiting if w.owner[0] != conn_id]
            self._regrant(key, q)

    def _regrant(self, key: Hashable, q: _Queue) -> None:
        still: list[_Req] = []
        for w in q.waiting:
            if any(self._conflict(w, g) for g in q.granted) or any(
                self._conflict(w, s) for s in still
            ):
                still.append(w)
                continue
            w.granted = True
            w.resumed = False
            q.granted.append(w)
            assert w.event is not None
            w.event.set()
        q.waiting = still
        for w in still:
            self._notify(key, q, w)
        self._tidy(key, q)

    def _notify(self, key: Hashable, q: _Queue, waiter: _Req) -> None:
        if self._on_contention is None:
            return
        now = trio.current_time()
        for g in q.granted:
            if g.resumed and self._conflict(waiter, g):
                self._tell(key, g, now)

    def _tell(self, key: Hashable, holder: _Req, now: float) -> None:
        if holder.notified_at is not None and now - holder.notified_at < self._contention_delay:
            return
        holder.notified_at = now
        assert self._on_contention is not None
        try:
            self._on_contention(key, holder.owner)
        except Exception:
            log.exception("lock contention callback failed for key=%r", key)

    def _tidy(self, key: Hashable, q: _Queue) -> None:
        if not q.granted and not q.waiting and self._res.get(key) is q:
            del self._res[key]


class _ConnLocks(_FairLocks):
    """Locks that conflict only between connections: a connection's owners never
    exclude each other (directory leases: its requests' gate locks pass its
    own lease, granted or awaited)."""

    def _conflict(self, a: _Req, b: _Req) -> bool:
        return (
            a.owner[0] != b.owner[0]
            and (a.kind == "wr" or b.kind == "wr")
            and self._overlap(a.span, b.span)
        )


def _remove(seq: list[Any], item: Any) -> None:
    for i, x in enumerate(seq):
        if x is item:
            del seq[i]
            return


@dataclass(eq=False)
class _PLock:
    owner: Owner
    kind: str
    start: int
    end: int
    pid: int

    def to_wire(self) -> dict[str, Any]:
        length = 0 if self.end == OFFSET_MAX else self.end - self.start
        return {"type": self.kind, "start": self.start, "len": length, "pid": self.pid,
                "owner": self.owner[1]}


@dataclass(eq=False)
class _PWaiter:
    owner: Owner
    blocked_by: set[Owner]
    event: trio.Event = field(default_factory=trio.Event)
    error: OSError | None = None


@dataclass(eq=False)
class _PFile:
    locks: list[_PLock] = field(default_factory=list)
    waiters: list[_PWaiter] = field(default_factory=list)


class _PosixLocks:
    """fcntl-style record locks per gfid."""

    def __init__(self) -> None:
        self._files: dict[bytes, _PFile] = {}

    def __len__(self) -> int:
        return len(self._files)

    @staticmethod
    def _conflicts(f: _PFile, owner: Owner, kind: str, s: int, e: int) -> list[_PLock]:
        return [
            lk for lk in f.locks
            if lk.owner != owner and (kind == "wr" or lk.kind == "wr")
            and lk.start < e and s < lk.end
        ]

    def getlk(self, gfid: bytes, owner: Owner, kind: str, s: int, e: int) -> dict[str, Any]:
        if kind == "un":
            raise OSError(errno.EINVAL, "getlk needs a rd or wr type")
        f = self._files.get(gfid)
        found = self._conflicts(f, owner, kind, s, e) if f is not None else []
        return found[0].to_wire() if found else {"type": "un"}

    async def setlk(
        self, gfid: bytes, owner: Owner, kind: str, s: int, e: int, pid: int, wait: bool
    ) -> None:
        while True:
            f = self._files.get(gfid)
            if f is None:
                if kind == "un":
                    return
                f = self._files[gfid] = _PFile()
            blockers = [] if kind == "un" else self._conflicts(f, owner, kind, s, e)
            if not blockers:
                _apply(f, owner, kind, s, e, pid)
                self._changed(gfid, f)
                return
            if not wait:
                self._tidy(gfid, f)
                raise OSError(errno.EAGAIN, "range locked by another owner")
            blocked_by = {b.owner for b in blockers}
            if self._would_deadlock(owner, blocked_by):
                self._tidy(gfid, f)
                raise OSError(errno.EDEADLK, "lock wait would deadlock")
            w = _PWaiter(owner, blocked_by)
            f.waiters.append(w)
            try:
                await w.event.wait()
            finally:
                _remove(f.waiters, w)
                self._tidy(gfid, f)
            if w.error is not None:
                raise w.error

    def _would_deadlock(self, owner: Owner, blocked_by: set[Owner]) -> bool:
        waits_for: dict[Owner, set[Owner]] = {}
        for f in self._files.values():
            for w in f.waiters:
                waits_for.setdefault(w.owner, set()).update(w.blocked_by)
        seen: set[Owner] = set()
        stack = list(blocked_by)
        while stack:
            o = stack.pop()
            if o == owner:
                return True
            if o not in seen:
                seen.add(o)
                stack.extend(waits_for.get(o, ()))
        return False

    def release_conn(self, conn_id: Hashable) -> None:
        for gfid, f in list(self._files.items()):
            before = len(f.locks)
            f.locks = [lk for lk in f.locks if lk.owner[0] != conn_id]
            for w in f.waiters:
                if w.owner[0] == conn_id:
                    w.error = OSError(errno.ENOTCONN, "connection closed")
                    w.event.set()
            if len(f.locks) != before:
                self._changed(gfid, f)
            else:
                self._tidy(gfid, f)

    def _changed(self, gfid: bytes, f: _PFile) -> None:
        # Every waiter re-checks; fcntl makes no fairness promise either.
        for w in f.waiters:
            w.event.set()
        self._tidy(gfid, f)

    def _tidy(self, gfid: bytes, f: _PFile) -> None:
        if not f.locks and not f.waiters and self._files.get(gfid) is f:
            del self._files[gfid]


def _apply(f: _PFile, owner: Owner, kind: str, s: int, e: int, pid: int) -> None:
    """Make ``owner``'s locks over ``[s, e)`` be ``kind`` ("un" = none), merging."""
    kept: list[_PLock] = []
    for lk in f.locks:
        if lk.owner != owner or lk.end <= s or lk.start >= e:
            kept.append(lk)
            continue
        if lk.start < s:
            kept.append(_PLock(owner, lk.kind, lk.start, s, lk.pid))
        if lk.end > e:
            kept.append(_PLock(owner, lk.kind, e, lk.end, lk.pid))
    if kind != "un":
        # The owner's same-type ranges were disjoint and not adjacent, so only
        # the neighbours touching [s, e) can merge with it.
        merged: list[_PLock] = []
        for lk in kept:
            if lk.owner == owner and lk.kind == kind and lk.start <= e and lk.end >= s:
                s, e = min(s, lk.start), max(e, lk.end)
            else:
                merged.append(lk)
        merged.append(_PLock(owner, kind, s, e, pid))
        kept = merged
    f.locks = kept


class LockManager:
    """All of one brick's locks. Methods take the rpc arguments by name.

    ``on_contention(conn_id, gfid, domain, owner)`` is called synchronously
    with the holder's connection and owner when a blocked inode- or entry-lock
    request conflicts with a granted lock (for an entry lock ``gfid`` is the
    directory's); it must not block (the server spawns the
    event send). As in GlusterFS, one granted lock is told at most once per
    ``contention_delay`` seconds however many requests queue behind it, so a
    crowd of waiters does not flood its holder; a lock granted later is told
    afresh about whoever still waits. Results are the ops' reply values.
    """

    def __init__(self, on_contention: ContentionCallback | None = None, *,
                 contention_delay: float = CONTENTION_DELAY) -> None:
        self._on_contention = on_contention
        self._inode = _FairLocks(_ranges_overlap, self._inode_contention, contention_delay)
        self._entry = _FairLocks(_names_overlap, self._inode_contention, contention_delay)
        self._leases = _ConnLocks(_ranges_overlap, self._lease_contention, contention_delay)
        self._posix = _PosixLocks()
        self.lease_table: dict[Hashable, Any] = self._leases._res
        """gfid -> lock state of its ``LEASE_DOMAIN`` inode locks, for directories
        that have any (held or awaited): empty when no lease exists on the brick."""

    def _inode_contention(self, key: Hashable, holder: Owner) -> None:
        if self._on_contention is not None:
            gfid, domain = cast(tuple[bytes, str], key)
            self._on_contention(holder[0], gfid, domain, holder[1])

    def _lease_contention(self, key: Hashable, holder: Owner) -> None:
        if self._on_contention is not None:
            self._on_contention(holder[0], cast(bytes, key), LEASE_DOMAIN, holder[1])

    def _table(self, gfid: bytes, domain: str) -> tuple[_FairLocks, Hashable]:
        if domain == LEASE_DOMAIN:
            return self._leases, gfid
        return self._inode, (gfid, domain)

    def is_idle(self) -> bool:
        """True when no lock is held or awaited (memory follows use)."""
        return not (len(self._inode) or len(self._entry) or len(self._leases)
                    or len(self._posix))

    # ---- directory leases (brickd/leases.py) ----

    def lease_elsewhere(self, gfid: bytes, conn_id: Hashable) -> bool:
        """Whether a ``LEASE_DOMAIN`` lock on ``gfid`` is granted to another
        connection than ``conn_id`` (a lease, or another request's gate lock)."""
        return self._leases.granted_elsewhere(gfid, conn_id)

    def try_lease_gate(self, gfid: bytes, conn_id: Hashable, owner: bytes) -> bool:
        """A whole-range "rd" ``LEASE_DOMAIN`` lock on ``gfid`` if it is free now."""
        return self._leases.try_lock(gfid, _Req((conn_id, owner), "rd", (0, OFFSET_MAX)))

    async def lease_gate(self, gfid: bytes, conn_id: Hashable, owner: bytes) -> None:
        """Wait for a whole-range "rd" ``LEASE_DOMAIN`` lock on ``gfid``: queued
        behind the lease, whose holder is told of the contention."""
        await self._leases.lock(gfid, _Req((conn_id, owner), "rd", (0, OFFSET_MAX)), True)

    def lease_ungate(self, gfid: bytes, conn_id: Hashable, owner: bytes) -> None:
        """Drop what ``lease_gate`` took (no-op when it holds nothing)."""
        self._leases.unlock(gfid, (conn_id, owner), (0, OFFSET_MAX))

    def drop_leases(self, gfid: bytes, conn_id: Hashable) -> list[Owner]:
        """Take the leases ("wr" ``LEASE_DOMAIN`` locks) on ``gfid`` away from every
        connection but ``conn_id``; returns the owners that lost one."""
        return self._leases.drop_writers(gfid, conn_id)

    async def inodelk(
        self, *, conn_id: Hashable, gfid: bytes, domain: str, type: str, start: int,
        len: int, owner: bytes, block: bool | None = None,
    ) -> dict[str, Any]:
        """Take (rd/wr) or drop (un) an inode lock; EAGAIN if held and not ``block``."""
        _check_kind(type)
        span = _span(start, len)
        table, key = self._table(gfid, domain)
        o: Owner = (conn_id, owner)
        if type == "un":
            table.unlock(key, o, span)
        else:
            await table.lock(key, _Req(o, type, span), bool(block))
        return {}

    def try_whole_inodelk(self, conn_id: Hashable, gfid: bytes, domain: str,
                          owner: bytes) -> bool:
        """A whole-file "wr" inode lock for ``(conn_id, owner)`` if it is free now
        (what a non-blocking ``inodelk`` of all of ``gfid`` does, without its
        await); False if another owner holds or waits for a part of it."""
        table, key = self._table(gfid, domain)
        return table.try_lock(key, _Req((conn_id, owner), "wr", (0, OFFSET_MAX)))

    async def entrylk(
        self, *, conn_id: Hashable, pgfid: bytes, domain: str, type: str, owner: bytes,
        name: bytes | None = None, block: bool | None = None,
    ) -> dict[str, Any]:
        """Lock one name in a directory, or all of it (``name`` None)."""
        _check_kind(type)
        key = (pgfid, domain)
        o: Owner = (conn_id, owner)
        if type == "un":
            self._entry.unlock(key, o, name)
        else:
            await self._entry.lock(key, _Req(o, type, name), bool(block))
        return {}

    async def lk(
        self, *, conn_id: Hashable, gfid: bytes, cmd: str, type: str, start: int, len: int,
        pid: int, owner: bytes,
    ) -> dict[str, Any]:
        """fcntl F_GETLK / F_SETLK / F_SETLKW on ``gfid`` for ``(conn_id, owner)``."""
        _check_kind(type)
        s, e = _span(start, len)
        o: Owner = (conn_id, owner)
        if cmd == "getlk":
            return self._posix.getlk(gfid, o, type, s, e)
        if cmd not in ("setlk", "setlkw"):
            raise OSError(errno.EINVAL, f"bad lock command {cmd!r}")
        await self._posix.setlk(gfid, o, type, s, e, pid, wait=cmd == "setlkw")
        return {}

    def release_all(self, conn_id: Hashable) -> None:
        """Drop every lock ``conn_id`` holds; its blocked requests fail with ENOTCONN."""
        self._inode.release_conn(conn_id)
        self._entry.release_conn(conn_id)
        self._leases.release_conn(conn_id)
        self._posix.release_conn(conn_id)
