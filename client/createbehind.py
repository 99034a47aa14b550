"""performance/create-behind: a create answered before the bricks have it, under a
directory lease, with every later operation that depends on it ordered after it.

A create's round trip to both bricks is most of what ``open(O_CREAT)`` costs an
application that makes many small files (tar, a build). This layer, directly
under write-behind, answers such a create at once with the attributes a new
empty file has and sends the real create in the background.

Why it stays exact (the lease contract, ``pyglfs.rpc.brickops.LEASE_DOMAIN``):
a create is answered early only while ``child.lease_held(pgfid)`` says this
client holds the parent directory's lease on every brick that is up. While it
does, a brick holds every other client's lookup, listing and entry change in
that directory, and tells the holder (the lease is recalled). Before the
lease goes back, ``lease_recalled(pgfid)`` returns only once every create
answered early in that directory reached the bricks (or failed). So no other
client can make the name meanwhile (an ``O_EXCL`` create answered here is the
only one that can win it), and no other client can look for the name or list
the directory before the bricks have it. The kernel asks for a create only
after its lookup of the name missed; that lookup was answered by the bricks
or by a name cache that the bricks' invalidations keep current (the graph
builds this layer only when they do). A lookup answered before the lease was
granted may be stale: when an invalidation names an entry of a directory,
its creates go to the bricks for ``STALE_WINDOW`` seconds.

Contracts:

- Answered early: a create open for writing, with no ``xattrop``, in a
  directory whose lease is held and whose attributes this layer knows (from
  a create's ``postparent`` or a ``mkdir``: the reply's ``postparent`` is
  those with the times of now), while fewer than ``max_pending`` early
  creates are outstanding (else it waits for room). Every other create goes
  through. Every create and mkdir asks for the lease (``want_lease``).
- An operation naming a pending file's gfid, or its (parent, name), waits for
  the create and fails with its error if it failed. A listing of a directory,
  a whole-directory entry lock on it, and its stat, setattr (tar sets a
  directory's times after filling it) and fsync wait for every create pending
  in it; an ``rmdir`` or ``rename`` (whose target may be a directory with
  pending creates) for those in every other directory too. Other operations
  pass without waiting.
- A failed early create is logged (a warning naming the file), the caches above
  are told to drop the name and the inode (a ``cache-invalidation`` event), and
  the file's later operations fail with the create's errno: write-behind
  reports it at the next write, close or fsync, as it reports a failed write.
  Its release is answered here (the bricks never opened it).
- The parent's attributes answered with an early create are those last known
  with the times of now; when the lease goes back, the caches above are told
  to drop them (an invalidation of the directory), so they take the bricks'.
- ``settle`` returns once every early create has its answer, then settles the
  child. Without ``serve`` running every create goes through.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from pyglfs.client.layer import (
    CompoundReply,
    DirEntry,
    EntryReply,
    Layer,
    Lookup,
    RenameReply,
    WriteItem,
)
from pyglfs.client.mdcache import EVENT, parse_event
from pyglfs.rpc.brickops import Iatt

log = logging.getLogger(__name__)

MAX_PENDING = 256
"""Early creates outstanding at most: what a brick that stopped answering can cost."""
STALE_WINDOW = 1.0
"""Seconds after an invalidation of an entry in a directory during which its
creates go to the bricks: the kernel's lookup before a create may predate it."""
PARENTS_MAX = 4096
FAILED_MAX = 1024


def _after_gfid(op: str, *, dir_too: bool = False) -> Any:
    """A ``Layer`` op whose first argument is a gfid, forwarded once the gfid's
    pending early create (``dir_too``: also every create pending in it as a
    directory) has landed; the create's error if it failed."""
    async def forward(self: CreateBehind, gfid: bytes, *args: Any, **kw: Any) -> Any:
        if gfid in self._pending:
            await self._after(gfid)
        elif dir_too and gfid in self._dirs:
            await self._after_dir(gfid)
        return await getattr(self.child, op)(gfid, *args, **kw)

    forward.__name__ = forward.__qualname__ = op
    return forward


class _Pending:
    """An early create on its way. ``error`` is set when it failed; a failed one
    stays known by gfid until its release (at most ``FAILED_MAX`` of them)."""

    __slots__ = ("pgfid", "name", "gfid", "done", "error")

    def __init__(self, pgfid: bytes, name: bytes, gfid: bytes) -> None:
        self.pgfid = pgfid
        self.name = name
        self.gfid = gfid
        self.done = trio.Event()
        self.error: OSError | None = None

    def failure(self) -> OSError:
        e = self.error
        assert e is not None
        return OSError(e.errno, f"create of {self.name!r} failed: {e.strerror}")


class CreateBehind(Layer):
    """Create-behind over ``child`` (see the module docstring)."""

    def __init__(self, name: str, child: Layer, *, max_pending: int = MAX_PENDING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, [child])
        self.max_pending = max(1, max_pending)
        self._clock = clock
        self._pending: dict[bytes, _Pending] = {}  # gfid -> outstanding or failed
        self._dirs: dict[bytes, dict[bytes, _Pending]] = {}  # outstanding by parent, name
        self._outstanding = 0
        self._room: trio.Event | None = None
        self._failed: deque[bytes] = deque()
        self._parents: dict[bytes, Iatt] = {}
        self._made_up: set[bytes] = set()  # directories whose times were answered here
        self._stale: dict[bytes, float] = {}
        self._all_stale_until = 0.0
        self._used = False  # names were looked up, listed or changed through here
        self._nursery: trio.Nursery | None = None

    def share_pending(self, other: CreateBehind) -> None:
        """Wait for ``other``'s early creates as for this layer's own (its graph is
        being replaced by this one's: a write here must not reach the bricks
        before the create the old graph answered). Call before serving."""
        self._pending = other._pending
        self._dirs = other._dirs

    def __repr__(self) -> str:
        return (f"<CreateBehind {self.name} outstanding={self._outstanding} "
                f"failed={len(self._failed)} parents={len(self._parents)}>")

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for child in self.children:
                await nursery.start(child.serve)
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def settle(self) -> None:
        while self._outstanding:
            p = next(p for p in self._pending.values() if not p.done.is_set())
            await p.done.wait()  # maybe another graph's: then the loop goes on
        await super().settle()

    async def lease_recalled(self, pgfid: bytes) -> None:
        while d := self._dirs.get(pgfid):
            await next(iter(d.values())).done.wait()
        if pgfid in self._made_up:
            # The caches above hold the directory's times as answered here: let
            # them take the bricks' now.
            self._made_up.discard(pgfid)
            self._parents.pop(pgfid, None)
            if self.parent is not None:
                self.parent.on_event(self, EVENT, {"gfids": [pgfid], "entries": []})
        await super().lease_recalled(pgfid)

    # -- creating ---------------------------------------------------------------
    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        child = self.child
        child.want_lease(pgfid)
        self._used = True
        if pgfid in self._dirs:
            await self._after_name(pgfid, name)
        while (self._nursery is not None and xattrop is None
               and flags & os.O_ACCMODE != os.O_RDONLY and pgfid in self._parents
               and child.lease_held(pgfid) and self._fresh(pgfid)):
            if self._outstanding < self.max_pending:
                return self._answer_early(pgfid, name, gfid, mode, uid, gid, flags)
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()
        reply = await child.create(pgfid, name, gfid, mode, uid, gid, flags, xattrop)
        self._learn(pgfid, reply.postparent)
        return reply

    def _fresh(self, pgfid: bytes) -> bool:
        """No invalidation of an entry in ``pgfid`` (or of everything) came lately."""
        if self._stale:
            until = self._stale.get(pgfid)
            if until is not None:
                if self._clock() < until:
                    return False
                del self._stale[pgfid]
        if self._all_stale_until:
            if self._clock() < self._all_stale_until:
                return False
            self._all_stale_until = 0.0
        return True

    def _answer_early(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                      gid: int, flags: int) -> EntryReply:
        now = time.time_ns()
        parent = self._parents[pgfid]._replace(mtime_ns=now, ctime_ns=now)
        self._parents[pgfid] = parent
        self._made_up.add(pgfid)
        p = _Pending(pgfid, name, gfid)
        self._pending[gfid] = p
        d = self._dirs.get(pgfid)
        if d is None:
            d = self._dirs[pgfid] = {}
        d[name] = p
        self._outstanding += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._land, p, mode, uid, gid, flags)
        return EntryReply(Iatt(gfid, 0, mode, 1, uid, gid, 0, 0, 0, now, now, now), parent)

    async def _land(self, p: _Pending, mode: int, uid: int, gid: int, flags: int) -> None:
        err: OSError | None = None
        landed = False
        try:
            reply = await self.child.create(p.pgfid, p.name, p.gfid, mode, uid, gid, flags)
            landed = True
            self._learn(p.pgfid, reply.postparent)
        except OSError as e:
            err = e
        except Exception:
            log.exception("create-behind: create of %r in gfid=%s failed unexpectedly",
                          p.name, p.pgfid.hex())
            err = OSError(errno.EIO, "create failed")
        finally:
            if not landed and err is None:
                err = OSError(errno.EIO, "create cancelled before it reached the bricks")
            self._landed(p, err)

    def _landed(self, p: _Pending, err: OSError | None) -> None:
        d = self._dirs[p.pgfid]
        del d[p.name]
        if not d:
            del self._dirs[p.pgfid]
        self._outstanding -= 1
        if err is None:
            del self._pending[p.gfid]
        else:
            log.warning("create-behind: create of %r in gfid=%s (gfid=%s), answered before "
                        "the bricks had it, failed: %s", p.name, p.pgfid.hex(), p.gfid.hex(),
                        err)
            p.error = err
            self._failed.append(p.gfid)
            if len(self._failed) > FAILED_MAX:
                old = self._pending.get(self._failed.popleft())
                if old is not None and old.error is not None:
                    del self._pending[old.gfid]
            self._parents.pop(p.pgfid, None)
            if self.parent is not None:
                self.parent.on_event(self, EVENT, {"gfids": [p.gfid, p.pgfid],
                                                   "entries": [[p.pgfid, p.name]]})
        p.done.set()
        if self._room is not None:
            self._room.set()
            self._room = None

    def _learn(self, gfid: bytes, iatt: Iatt | None) -> None:
        """Keep (or forget, when unknown) directory ``gfid``'s attributes."""
        if iatt is None:
            self._parents.pop(gfid, None)
            return
        if gfid not in self._parents and len(self._parents) >= PARENTS_MAX:
            del self._parents[next(iter(self._parents))]
        self._parents[gfid] = iatt

    # -- waiting for pending creates --------------------------------------------
    async def _after(self, gfid: bytes) -> None:
        p = self._pending.get(gfid)
        if p is not None:
            await p.done.wait()
            if p.error is not None:
                raise p.failure()

    async def _after_name(self, pgfid: bytes, name: bytes) -> None:
        d = self._dirs.get(pgfid)
        p = d.get(name) if d is not None else None
        if p is not None:
            await p.done.wait()
            if p.error is not None:
                raise p.failure()

    async def _after_dir(self, pgfid: bytes) -> None:
        while d := self._dirs.get(pgfid):
            await next(iter(d.values())).done.wait()

    async def _after_others(self, *pgfids: bytes) -> None:
        for pgfid in [g for g in self._dirs if g not in pgfids]:
            await self._after_dir(pgfid)

    # -- what another brick or layer tells ---------------------------------------
    def on_event(self, child: Layer, name: str, args: dict[str, Any]) -> None:
        if name == EVENT:
            if args.get("all") is True:
                self._forget_all()
            else:
                gfids, entries = parse_event(args)
                for g in gfids:
                    self._parents.pop(g, None)
                if entries:
                    until = self._clock() + STALE_WINDOW
                    if len(self._stale) > PARENTS_MAX:
                        now = until - STALE_WINDOW
                        self._stale = {g: t for g, t in self._stale.items() if t > now}
                    for pgfid, _ in entries:
                        self._parents.pop(pgfid, None)
                        self._stale[pgfid] = until
        super().on_event(child, name, args)

    def child_up(self, child: Layer) -> None:
        self._forget_all()
        super().child_up(child)

    def child_down(self, child: Layer, reason: str) -> None:
        self._forget_all()
        super().child_down(child, reason)

    def _forget_all(self) -> None:
        """Events may have been lost: trust no directory's attributes, nor for a while
        any name the kernel learnt through here (none before the first use)."""
        self._parents.clear()
        self._made_up.clear()  # the caches above drop everything too
        if self._used:
            self._all_stale_until = self._clock() + STALE_WINDOW

    @property
    def batches_writes(self) -> bool:
        return self.child.batches_writes

    # -- entry operations ---------------------------------------------------------
    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        self._used = True
        if pgfid in self._dirs:
            await self._after_name(pgfid, name)
        return await self.child.lookup(pgfid, name)

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        self.child.want_lease(pgfid)
        self._used = True
        if pgfid in self._dirs:
            await self._after_name(pgfid, name)
        reply = await self.child.mkdir(pgfid, name, gfid, mode, uid, gid, xattrop)
        self._learn(pgfid, reply.postparent)
        self._learn(gfid, reply.iatt)
        self.child.want_lease(gfid)
        return reply

    async def mknod(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, rdev: int,
                    uid: int, gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        if pgfid in self._dirs:
            await self._after_name(pgfid, name)
        reply = await self.child.mknod(pgfid, name, gfid, mode, rdev, uid, gid, xattrop)
        self._learn(pgfid, reply.postparent)
        return reply

    async def symlink(self, pgfid: bytes, name: bytes, gfid: bytes, target: bytes, uid: int,
                      gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        if pgfid in self._dirs:
            await self._after_name(pgfid, name)
        reply = await self.child.symlink(pgfid, name, gfid, target, uid, gid, xattrop)
        self._learn(pgfid, reply.postparent)
        return reply

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes,
                   xattrop: dict[str, bytes] | None = None) -> EntryReply:
        if gfid in self._pending:
            await self._after(gfid)
        if pgfid in self._dirs:
            await self._after_name(pgfid, name)
        reply = await self.child.link(gfid, pgfid, name, xattrop)
        self._learn(pgfid, reply.postparent)
        return reply

    async def unlink(self, pgfid: bytes, name: bytes,
                     xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        self._used = True
        if pgfid in self._dirs:
            await self._after_name(pgfid, name)
        postparent = await self.child.unlink(pgfid, name, xattrop)
        self._learn(pgfid, postparent)
        return postparent

    async def rmdir(self, pgfid: bytes, name: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        self._used = True
        if self._dirs:
            await self._after_name(pgfid, name)
            await self._after_others(pgfid)
        postparent = await self.child.rmdir(pgfid, name, xattrop)
        self._learn(pgfid, postparent)
        return postparent

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> RenameReply:
        self._used = True
        if self._dirs:
            await self._after_name(old_pgfid, old_name)
            await self._after_name(new_pgfid, new_name)
            await self._after_others(old_pgfid, new_pgfid)
        reply = await self.child.rename(old_pgfid, old_name, new_pgfid, new_name, flags,
                                        xattrop)
        self._learn(old_pgfid, reply.postoldparent)
        self._learn(new_pgfid, reply.postnewparent)
        return reply

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        self._used = True
        if gfid in self._dirs:
            await self._after_dir(gfid)
        return await self.child.readdir(gfid, cookie, count, plus)

    async def entrylk(self, pgfid: bytes, name: bytes | None, domain: str, type: str,
                      owner: bytes, block: bool = False) -> None:
        if pgfid in self._dirs:
            if name is None:
                await self._after_dir(pgfid)
            else:
                await self._after_name(pgfid, name)
        await self.child.entrylk(pgfid, name, domain, type, owner, block)

    # -- inode operations -----------------------------------------------------------
    # ops naming a gfid: after its pending create (stat, fsync: also a directory's)
    lookup_gfid = _after_gfid("lookup_gfid", dir_too=True)
    stat = _after_gfid("stat", dir_too=True)
    fsync = _after_gfid("fsync", dir_too=True)
    readlink = _after_gfid("readlink")
    open = _after_gfid("open")
    flush = _after_gfid("flush")
    read = _after_gfid("read")
    write = _after_gfid("write")
    writev = _after_gfid("writev")
    fallocate = _after_gfid("fallocate")
    getxattr = _after_gfid("getxattr")
    listxattr = _after_gfid("listxattr")
    setxattr = _after_gfid("setxattr")
    removexattr = _after_gfid("removexattr")
    xattrop = _after_gfid("xattrop")
    inodelk = _after_gfid("inodelk")
    checksum = _after_gfid("checksum")

    async def setattr(self, gfid: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool = False, mtime_now: bool = False,
                      xattrop: dict[str, bytes] | None = None) -> Iatt:
        if gfid in self._pending:
            await self._after(gfid)
        elif gfid in self._dirs:
            await self._after_dir(gfid)
        iatt = await self.child.setattr(
            gfid, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns,
            mtime_ns=mtime_ns, atime_now=atime_now, mtime_now=mtime_now, xattrop=xattrop)
        if gfid in self._parents:
            self._parents[gfid] = iatt
        return iatt

    async def release(self, gfid: bytes) -> None:
        p = self._pending.get(gfid)
        if p is not None:
            await p.done.wait()
            if p.error is not None:
                # The create counted as the open this closes; the bricks never had it.
                if self._pending.get(gfid) is p:
                    del self._pending[gfid]
                return
        await self.child.release(gfid)

    async def writev_many(self, items: list[WriteItem]) -> list[Iatt | OSError]:
        if not self._pending:
            return await self.child.writev_many(items)
        failed: dict[int, OSError] = {}
        for i, item in enumerate(items):
            try:
                await self._after(item[0])
            except OSError as e:
                failed[i] = e
        if not failed:
            return await self.child.writev_many(items)
        rest = [item for i, item in enumerate(items) if i not in failed]
        done = iter(await self.child.writev_many(rest) if rest else [])
        return [failed[i] if i in failed else next(done) for i in range(len(items))]

    async def compound(self, ops: list[tuple[str, dict[str, Any]]]) -> CompoundReply:
        if self._pending:
            for op, args in ops:
                g = args.get("gfid")
                if g in self._pending:
                    await self._after(g)
                elif op == "entrylk" and args.get("pgfid") in self._dirs:
                    await self._after_dir(args["pgfid"])
        return await self.child.compound(ops)
