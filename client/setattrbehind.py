"""Setattr-behind, the part of write-behind (writebehind.py) that queues attribute changes.

A setattr of a regular file open here that sets only
permission bits, owner or explicit times (no size, no "now" times, no
xattrop, no set-id bit before or after: a chown clears those) is queued
after the file's queued writes and answered at once with the attributes it
will give (ctime: now). Queued setattrs of an inode merge into one for the
layer below (tar's utimens, fchown and fchmod of a file become one), sent
at the next write, flush, fsync or release of the inode, by anything that
waits for its queued writes, at ``settle``, or ``SETATTR_DELAY`` after it
was queued. Writes made after it wait for it; its failure is reported as a
queued write's is. Lookups, readdirplus and ``stat`` show the queued
attributes (``stat`` answers them without asking below: the kernel asks
before every chown). The attributes come from the replies to create, open,
writes, stats and setattrs of the open inode, kept until its last release.

``SetattrBehind`` is a base class of ``WriteBehind``: it keeps the attributes of
the inodes open here (``opened``), queues setattrs among the inode's queued
writes and answers ``stat`` for them; the queue, its tasks and what waits for
them are write-behind's.
"""

from __future__ import annotations

import os
import stat
import time
from typing import TYPE_CHECKING, Any

import trio

from pyglfs.client.layer import EntryReply, Layer
from pyglfs.client.writequeue import (
    InodeQueue,
    OpenInode,
    QueuedSetattr,
    QueuedWrite,
    with_fields,
)
from pyglfs.rpc.brickops import Iatt

SETATTR_DELAY = 0.05
"""Longest a queued setattr of an inode waits for more to merge with (a flush or
release usually sends it sooner), so other mounts see it soon."""
_SETID = stat.S_ISUID | stat.S_ISGID


class SetattrBehind(Layer):
    """The attribute side of ``WriteBehind`` (which provides the queue: see
    the declarations below)."""

    inodes: dict[bytes, InodeQueue]
    opened: dict[bytes, OpenInode]
    group: list[Any] | None
    _nursery: trio.Nursery | None

    if TYPE_CHECKING:
        async def _land(self, gfid: bytes, ino: InodeQueue, ws: list[QueuedWrite],
                        send: Any, *args: Any) -> None: ...
        async def _drain(self, gfid: bytes, start: int = 0, end: int = ...) -> None: ...
        def _check_writable(self) -> None: ...
        def _cover(self, iatt: Iatt) -> Iatt: ...
        def _members(self) -> list[Any]: ...
        def _queued(self, gfid: bytes) -> list[QueuedWrite]: ...
        def _score(self, delta: int) -> None: ...

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        r = await self.child.create(pgfid, name, gfid, mode, uid, gid, flags, xattrop)
        self._opened(r.iatt, flags)
        o = self.opened[r.iatt.gfid]
        o.fresh = o.count == 1 and self._nursery is not None
        o.pgfid = pgfid
        return r

    def _opened(self, iatt: Iatt, flags: int) -> None:
        o = self.opened.get(iatt.gfid)
        if o is None:
            o = self.opened[iatt.gfid] = OpenInode(iatt)
        else:
            o.count += 1
            o.iatt = iatt
        if flags & os.O_APPEND:
            o.append = True

    def _queue(self, gfid: bytes) -> InodeQueue:
        """The write queue of ``gfid``, made if it has none (knowing where the file
        was created here, for ``lease_recalled``)."""
        ino = self.inodes.get(gfid)
        if ino is None:
            ino = self.inodes[gfid] = InodeQueue()
            o = self.opened.get(gfid)
            if o is not None:
                ino.pgfid = o.pgfid
        return ino

    def _closed(self, gfid: bytes) -> None:
        o = self.opened.get(gfid)
        if o is not None:
            o.count -= 1
            if o.count <= 0:
                del self.opened[gfid]

    def _learn(self, iatt: Iatt, grown: bool = False) -> None:
        """Keep ``iatt`` for an open gfid; ``grown``: from a write, which may be
        answered after a later one (writes never shrink a file)."""
        o = self.opened.get(iatt.gfid)
        if o is not None:
            o.iatt = iatt if not grown else iatt._replace(size=max(iatt.size, o.iatt.size))

    def _known(self, gfid: bytes) -> Iatt | None:
        """What a stat will answer once the queued writes and setattrs of ``gfid``
        are in, if it is open here."""
        o = self.opened.get(gfid)
        return self._cover(o.iatt) if o is not None else None

    def _queued_elsewhere(self, gfid: bytes) -> bool:
        return self.group is not None and len(self.group) > 1 and any(
            m._queued(gfid) for m in self.group if m is not self)

    def _kick(self, gfid: bytes) -> None:
        """Send the queued setattrs of ``gfid`` (here and in the group) without
        waiting for more to merge with."""
        for m in self._members():
            ino = m.inodes.get(gfid)
            if ino is not None and ino.setattrs:
                for w in ino.queued:
                    if isinstance(w, QueuedSetattr):
                        w.go.set()

    def _setattr_later(self, gfid: bytes, change: dict[str, int]) -> Iatt | None:
        """Queue ``change`` (mode, owner, explicit times) and answer the attributes it
        will give; None when it must go through now."""
        o = self.opened.get(gfid)
        if o is not None and o.missed:  # a new file's batch that could have waited
            o.missed = False
            self._score(1)
        if (o is None or self._nursery is None or not stat.S_ISREG(o.iatt.mode)
                or change.get("mode", 0) & _SETID or self._queued_elsewhere(gfid)):
            return None
        shown = self._cover(o.iatt)
        if shown.mode & _SETID:
            return None
        try:
            self._check_writable()
        except OSError:
            return None
        ino = self._queue(gfid)
        s = ino.queued[-1] if ino.queued else None
        if not isinstance(s, QueuedSetattr) or s.sent:
            s = QueuedSetattr()
            deps = [q.done for q in ino.queued]
            ino.queued.append(s)
            ino.setattrs += 1
            one: list[QueuedWrite] = [s]
            self._nursery.start_soon(self._land, gfid, ino, one, self._send_setattr, s, deps)
        s.fields.update(change)
        s.ctime_ns = time.time_ns()
        return with_fields(shown, change, s.ctime_ns)

    async def _send_setattr(self, gfid: bytes, s: QueuedSetattr, deps: list[trio.Event]) -> None:
        with trio.move_on_after(SETATTR_DELAY):
            await s.go.wait()
        for d in deps:
            await d.wait()
        if s.carried is not None:  # a batch of writes took it along
            await s.carried.wait()
            return
        s.sent = True
        f = s.fields
        self._learn(await self.child.setattr(
            gfid, mode=f.get("mode"), uid=f.get("uid"), gid=f.get("gid"),
            atime_ns=f.get("atime_ns"), mtime_ns=f.get("mtime_ns")))

    async def stat(self, gfid: bytes) -> Iatt:
        """The bricks' answer after the queued writes; while a setattr of an open
        inode is queued, what it will give, without asking below (the kernel's
        GETATTR that precedes every chown would otherwise send it at once), unless
        an open appends (the bricks' size is its next offset, other mounts'
        appends included)."""
        o = self.opened.get(gfid)
        ino = self.inodes.get(gfid)
        if (o is not None and not o.append and ino is not None
                and any(isinstance(w, QueuedSetattr) for w in ino.queued)):
            return self._cover(o.iatt)
        await self._drain(gfid)
        iatt = await self.child.stat(gfid)
        self._learn(iatt)
        return iatt

    async def setattr(self, gfid: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool = False, mtime_now: bool = False,
                      xattrop: dict[str, bytes] | None = None) -> Iatt:
        """Queued and answered at once when it can be (setattr-behind, see the
        module docstring); else sent after the inode's queued writes."""
        if size is None and xattrop is None and not (atime_now or mtime_now):
            change = {k: v for k, v in (("mode", mode), ("uid", uid), ("gid", gid),
                                        ("atime_ns", atime_ns), ("mtime_ns", mtime_ns))
                      if v is not None}
            queued = self._setattr_later(gfid, change) if change else None
            if queued is not None:
                return queued
        await self._drain(gfid)
        iatt = await self.child.setattr(
            gfid, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns,
            mtime_ns=mtime_ns, atime_now=atime_now, mtime_now=mtime_now, xattrop=xattrop)
        self._learn(iatt)
        return iatt

    async def open(self, gfid: bytes, flags: int) -> Iatt:
        if flags & os.O_TRUNC:
            await self._drain(gfid)
        iatt = await self.child.open(gfid, flags)
        self._opened(iatt, flags)
        return iatt
