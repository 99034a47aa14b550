"""performance/md-cache: the client's metadata cache, above replicate.

It remembers what the layers below answered for names (parent gfid + name ->
gfid), inodes (gfid -> iatt, from lookups, stat, readdirplus and the replies
to our own changes) and extended attributes (values, absences, name lists), so
that a kernel that forgot its dentries and inodes (memory pressure,
``drop_caches``, the entry timeout) gets its lookups answered without a brick
round trip. ``stat`` (the kernel's GETATTR) asks below for anything but a
directory: a directory's attributes are answered from the cache, which every
entry change made through this client keeps current with the ``postparent``
attributes the change returns, so the GETATTR of the parent that the kernel
sends after each create, unlink or rename costs no brick request. Only what
replicate returns is kept, never the changelog: replicate keeps deciding which
brick serves reads, and an inode it no longer knows costs it one lookup of its
own.

Coherence
- Every entry is trusted for ``timeout`` seconds at most.
- With ``invalidation`` the bricks push a ``cache-invalidation`` event to
  every other client when they change an inode or a directory entry
  (``pyglfs.brickd.upcall``); the entries it names are dropped, so the cache
  may hold answers for a long timeout (GlusterFS's ``group metadata-cache``
  uses 600 s). Each event also goes to ``kernel_hook``, which the FUSE session
  sets to drop the kernel's copies (``pyglfs.client.fuse.kernelinval``), and
  is passed on upwards.
- This client's own changes go through this layer: a change drops what it
  makes stale and stores the attributes the change returned (for an entry
  change: the new inode's and its parent directory's after the change).
- A reply that raced with an invalidation is not stored: every invalidation
  (an event, or the start or end of one of our own changes) bumps an epoch,
  and an answer is kept only if the epoch did not move while it was fetched.
- A brick connection coming (back) up empties the cache (protocol/client
  passes up an invalidation of everything): what the brick pushed while the
  connection was down was lost. So does the whole replica set going down.

Memory: each table is a bounded LRU (``limit`` entries, ``TABLE_LIMIT`` by
default: see there why not more), independent of what the kernel holds, so
forgotten inodes are never pinned.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pyglfs.client.layer import DirEntry, EntryReply, Layer, Lookup, RenameReply
from pyglfs.rpc.brickops import Iatt
from pyglfs.rpc.tuning import TABLE_LIMIT

log = logging.getLogger(__name__)

EVENT = "cache-invalidation"
DEFAULT_LIMIT = TABLE_LIMIT
XATTR_VALUE_MAX = 4096
XATTRS_PER_INODE = 16
_S_IFMT, _S_IFDIR = 0o170000, 0o040000


class _Inode:
    """What is known of one gfid; each part carries the time it was fetched."""

    __slots__ = ("iatt", "t", "xattrs", "xnames", "xt")

    def __init__(self) -> None:
        self.iatt: Iatt | None = None
        self.t = 0.0
        self.xattrs: dict[str, bytes | None] | None = None
        self.xnames: list[str] | None = None
        self.xt = 0.0


class CoherentCache(Layer):
    """Base of the client caches that the bricks' invalidation events keep
    coherent: an event drops what it names; ``{"all": True}``, or a brick
    coming or going (what it pushed meanwhile is lost), drops everything."""

    def clear(self) -> None:
        raise NotImplementedError

    def invalidate(self, gfids: list[bytes], entries: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def on_event(self, child: Layer, name: str, args: dict[str, Any]) -> None:
        if name == EVENT:
            if args.get("all") is True:
                log.debug("%s: invalidation of everything", self.name)
                self.clear()
            else:
                self.invalidate(*parse_event(args))
        super().on_event(child, name, args)

    def child_up(self, child: Layer) -> None:
        self.clear()
        super().child_up(child)

    def child_down(self, child: Layer, reason: str) -> None:
        self.clear()
        super().child_down(child, reason)


class MdCache(CoherentCache):
    """Caches lookups, xattrs and readdirplus attributes of its one child (see
    the module doc); ``stats()`` counts hits and misses."""

    def __init__(self, name: str, child: Layer, *, timeout: float = 1.0,
                 invalidation: bool = False, limit: int = DEFAULT_LIMIT,
                 clock: Any = time.monotonic) -> None:
        super().__init__(name, [child])
        self.timeout = timeout
        self.invalidation = invalidation
        self.limit = max(16, limit)
        self._clock = clock
        self._epoch = 0
        self._inodes: OrderedDict[bytes, _Inode] = OrderedDict()
        self._names: OrderedDict[tuple[bytes, bytes], tuple[bytes, float]] = OrderedDict()
        # Files seen with more than one link: removing a name we do not know
        # may change their nlink.
        self._multilink: set[bytes] = set()
        self.hits = 0
        self.misses = 0
        # Called with an event's (gfids, entries) after they were dropped here:
        # the FUSE session passes them on to the kernel's caches.
        self.kernel_hook: Callable[[list[bytes], list[tuple[bytes, bytes]]], None] | None = None

    def __repr__(self) -> str:
        return (f"<MdCache {self.name} timeout={self.timeout:g} "
                f"invalidation={self.invalidation} inodes={len(self._inodes)}>")

    def stats(self) -> dict[str, int]:
        """Table sizes and hit counts, for state dumps and tests."""
        return {"inodes": len(self._inodes), "names": len(self._names),
                "hits": self.hits, "misses": self.misses}

    # -- tables -------------------------------------------------------------
    def _fresh(self, t: float) -> bool:
        return self._clock() - t < self.timeout

    def _inode(self, gfid: bytes) -> _Inode:
        ino = self._inodes.get(gfid)
        if ino is None:
            ino = self._inodes[gfid] = _Inode()
            if len(self._inodes) > self.limit:
                self._inodes.popitem(last=False)
        else:
            self._inodes.move_to_end(gfid)
        return ino

    def _put_iatt(self, iatt: Iatt, now: float) -> None:
        ino = self._inode(iatt.gfid)
        ino.iatt = iatt
        ino.t = now
        if iatt.nlink > 1 and iatt.mode & _S_IFMT != _S_IFDIR:
            self._multilink.add(iatt.gfid)
            if len(self._multilink) > self.limit:
                self._drop_multilink()

    def _put_name(self, pgfid: bytes, name: bytes, gfid: bytes, now: float) -> None:
        key = (pgfid, name)
        self._names[key] = (gfid, now)
        self._names.move_to_end(key)
        if len(self._names) > self.limit:
            self._names.popitem(last=False)

    def _cached_iatt(self, gfid: bytes) -> Iatt | None:
        ino = self._inodes.get(gfid)
        if ino is None or ino.iatt is None or not self._fresh(ino.t):
            return None
        self._inodes.move_to_end(gfid)
        return ino.iatt

    def _drop_inode(self, gfid: bytes) -> None:
        self._inodes.pop(gfid, None)

    def _drop_multilink(self) -> None:
        for gfid in self._multilink:
            self._drop_attrs(gfid)
        self._multilink.clear()

    def _drop_attrs(self, gfid: bytes) -> None:
        """The inode's attributes changed (not its xattrs)."""
        ino = self._inodes.get(gfid)
        if ino is not None:
            ino.iatt = None

    def _drop_xattrs(self, gfid: bytes) -> None:
        ino = self._inodes.get(gfid)
        if ino is not None:
            ino.iatt = None
            ino.xattrs = None
            ino.xnames = None

    def _drop_name(self, pgfid: bytes, name: bytes, removal: bool = True) -> None:
        """A name in ``pgfid`` changed: the name, its inode's nlink and the
        directory's times are stale. When the name was not known, any file
        with several links may have been the one that lost one."""
        old = self._names.pop((pgfid, name), None)
        if old is not None:
            self._drop_attrs(old[0])
        elif removal and self._multilink:
            self._drop_multilink()
        self._drop_attrs(pgfid)

    def clear(self) -> None:
        """Forget everything (a brick came or went: events may have been lost)."""
        self._epoch += 1
        self._inodes.clear()
        self._names.clear()
        self._multilink.clear()

    # -- coherence ------------------------------------------------------------
    def invalidate(self, gfids: list[bytes], entries: list[tuple[bytes, bytes]]) -> None:
        """Drop what a change elsewhere made stale: whole inodes and names."""
        self._epoch += 1
        for gfid in gfids:
            self._drop_inode(gfid)
        for pgfid, name in entries:
            self._drop_name(pgfid, name)
        if self.kernel_hook is not None:
            self.kernel_hook(gfids, entries)

    # -- lookups and attributes ----------------------------------------------
    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        hit = self._names.get((pgfid, name))
        if hit is not None and self._fresh(hit[1]):
            iatt = self._cached_iatt(hit[0])
            if iatt is not None:
                self.hits += 1
                return Lookup(iatt, {})
        self.misses += 1
        epoch = self._epoch
        found = await self.child.lookup(pgfid, name)
        if epoch == self._epoch:
            now = self._clock()
            self._put_iatt(found.iatt, now)
            self._put_name(pgfid, name, found.iatt.gfid, now)
        return found

    async def lookup_gfid(self, gfid: bytes) -> Lookup:
        iatt = self._cached_iatt(gfid)
        if iatt is not None:
            self.hits += 1
            return Lookup(iatt, {})
        self.misses += 1
        epoch = self._epoch
        found = await self.child.lookup_gfid(gfid)
        if epoch == self._epoch:
            self._put_iatt(found.iatt, self._clock())
        return found

    async def stat(self, gfid: bytes) -> Iatt:
        """A directory's fresh attributes from the cache; anything else asked below
        (and stored): the bridge's GETATTR of an open file and its O_APPEND
        offsets need the bricks' size, not one that an invalidation still on its
        way would correct. A directory changes through entry ops, which store its
        attributes after the change here, or elsewhere, which invalidates them."""
        ino = self._inodes.get(gfid)
        if ino is not None and ino.iatt is not None and self._fresh(ino.t):
            if ino.iatt.mode & _S_IFMT == _S_IFDIR:
                self.hits += 1
                self._inodes.move_to_end(gfid)
                return ino.iatt
        epoch = self._epoch
        iatt = await self.child.stat(gfid)
        if epoch == self._epoch:
            self._put_iatt(iatt, self._clock())
        return iatt

    # -- our own changes --------------------------------------------------------
    def _begin(self) -> int:
        self._epoch += 1
        return self._epoch

    def _end(self, epoch: int, *iatts: Iatt | None) -> None:
        """Store a change's resulting attributes unless something else moved meanwhile."""
        now = self._clock()
        for iatt in iatts:
            if iatt is not None:
                if epoch == self._epoch:
                    self._put_iatt(iatt, now)
                else:
                    self._drop_attrs(iatt.gfid)
        self._epoch += 1

    async def _new_entry(self, pgfid: bytes, name: bytes, call: Any) -> EntryReply:
        """Run an op that makes ``name``; keep its inode, its name and the parent's
        attributes after it (without them the parent's are dropped)."""
        self._drop_name(pgfid, name, removal=False)
        epoch = self._begin()
        reply: EntryReply | None = None
        try:
            reply = await call
            return reply
        finally:
            self._drop_name(pgfid, name, removal=False)
            if reply is None:
                self._end(epoch)
            else:
                if epoch == self._epoch:
                    self._put_name(pgfid, name, reply.iatt.gfid, self._clock())
                self._end(epoch, reply.iatt, _parent(reply.postparent, pgfid))

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._new_entry(pgfid, name, self.child.create(
            pgfid, name, gfid, mode, uid, gid, flags, xattrop))

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._new_entry(pgfid, name, self.child.mkdir(
            pgfid, name, gfid, mode, uid, gid, xattrop))

    async def mknod(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, rdev: int,
                    uid: int, gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._new_entry(pgfid, name, self.child.mknod(
            pgfid, name, gfid, mode, rdev, uid, gid, xattrop))

    async def symlink(self, pgfid: bytes, name: bytes, gfid: bytes, target: bytes, uid: int,
                      gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._new_entry(pgfid, name, self.child.symlink(
            pgfid, name, gfid, target, uid, gid, xattrop))

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes,
                   xattrop: dict[str, bytes] | None = None) -> EntryReply:
        self._drop_attrs(gfid)
        return await self._new_entry(pgfid, name, self.child.link(gfid, pgfid, name, xattrop))

    async def _remove(self, pgfid: bytes, name: bytes, call: Any) -> Iatt | None:
        self._drop_name(pgfid, name)
        epoch = self._begin()
        postparent: Iatt | None = None
        try:
            postparent = await call
            return postparent
        finally:
            self._drop_name(pgfid, name)
            self._end(epoch, _parent(postparent, pgfid))

    async def unlink(self, pgfid: bytes, name: bytes,
                     xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        return await self._remove(pgfid, name, self.child.unlink(pgfid, name, xattrop))

    async def rmdir(self, pgfid: bytes, name: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        old = self._names.get((pgfid, name))
        postparent = await self._remove(pgfid, name, self.child.rmdir(pgfid, name, xattrop))
        if old is not None:
            self._drop_inode(old[0])
        return postparent

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> RenameReply:
        def drop() -> None:
            self._drop_name(old_pgfid, old_name, removal=False)
            self._drop_name(new_pgfid, new_name)

        drop()
        epoch = self._begin()
        reply: RenameReply | None = None
        try:
            reply = await self.child.rename(old_pgfid, old_name, new_pgfid, new_name,
                                            flags, xattrop)
            return reply
        finally:
            drop()
            if reply is None:
                self._end(epoch)
            else:
                if epoch == self._epoch and not flags & _RENAME_EXCHANGE:
                    self._put_name(new_pgfid, new_name, reply.iatt.gfid, self._clock())
                self._end(epoch, reply.iatt, _parent(reply.postoldparent, old_pgfid),
                          _parent(reply.postnewparent, new_pgfid))

    async def _change(self, gfid: bytes, call: Any, xattrs: bool = False) -> Any:
        """Run a change of ``gfid``; store the attributes it returns, if any."""
        if xattrs:
            self._drop_xattrs(gfid)
        else:
            self._drop_attrs(gfid)
        epoch = self._begin()
        result: Any = None
        try:
            result = await call
            return result
        finally:
            if xattrs:
                self._drop_xattrs(gfid)
            self._end(epoch, result if isinstance(result, Iatt) else None)

    async def setattr(self, gfid: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool = False, mtime_now: bool = False,
                      xattrop: dict[str, bytes] | None = None) -> Iatt:
        result: Iatt = await self._change(gfid, self.child.setattr(
            gfid, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns,
            mtime_ns=mtime_ns, atime_now=atime_now, mtime_now=mtime_now, xattrop=xattrop))
        return result

    async def open(self, gfid: bytes, flags: int) -> Iatt:
        if flags & os.O_TRUNC:
            result: Iatt = await self._change(gfid, self.child.open(gfid, flags))
            return result
        return await self.child.open(gfid, flags)

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        result: Iatt = await self._change(gfid, self.child.write(gfid, offset, data, xattrop))
        return result

    async def fallocate(self, gfid: bytes, mode: int, offset: int, length: int,
                        xattrop: dict[str, bytes] | None = None) -> Iatt:
        result: Iatt = await self._change(gfid, self.child.fallocate(
            gfid, mode, offset, length, xattrop))
        return result

    async def setxattr(self, gfid: bytes, name: str, value: bytes, flags: int = 0,
                       xattrop: dict[str, bytes] | None = None) -> None:
        await self._change(gfid, self.child.setxattr(gfid, name, value, flags, xattrop),
                           xattrs=True)

    async def removexattr(self, gfid: bytes, name: str,
                          xattrop: dict[str, bytes] | None = None) -> None:
        await self._change(gfid, self.child.removexattr(gfid, name, xattrop), xattrs=True)

    async def xattrop(self, gfid: bytes, xattrop: dict[str, bytes]) -> dict[str, bytes]:
        result: dict[str, bytes] = await self._change(gfid, self.child.xattrop(gfid, xattrop),
                                                      xattrs=True)
        return result

    # -- extended attributes ------------------------------------------------------
    async def getxattr(self, gfid: bytes, name: str) -> bytes:
        ino = self._inodes.get(gfid)
        if ino is not None and ino.xattrs is not None and self._fresh(ino.xt):
            if name in ino.xattrs:
                self.hits += 1
                value = ino.xattrs[name]
                if value is None:
                    raise OSError(errno.ENODATA, "no such attribute (cached)")
                return value
        self.misses += 1
        epoch = self._epoch
        try:
            value = await self.child.getxattr(gfid, name)
        except OSError as e:
            if e.errno == errno.ENODATA and epoch == self._epoch:
                self._put_xattr(gfid, name, None)
            raise
        if epoch == self._epoch and len(value) <= XATTR_VALUE_MAX:
            self._put_xattr(gfid, name, value)
        return value

    def _put_xattr(self, gfid: bytes, name: str, value: bytes | None) -> None:
        ino = self._inode(gfid)
        if ino.xattrs is None or not self._fresh(ino.xt):
            ino.xattrs = {}
            ino.xt = self._clock()
        if len(ino.xattrs) < XATTRS_PER_INODE or name in ino.xattrs:
            ino.xattrs[name] = value

    async def listxattr(self, gfid: bytes) -> list[str]:
        ino = self._inodes.get(gfid)
        if ino is not None and ino.xnames is not None and self._fresh(ino.xt):
            self.hits += 1
            return list(ino.xnames)
        self.misses += 1
        epoch = self._epoch
        names = await self.child.listxattr(gfid)
        if epoch == self._epoch:
            ino = self._inode(gfid)
            if ino.xattrs is None or not self._fresh(ino.xt):
                ino.xattrs = {}
                ino.xt = self._clock()
            ino.xnames = list(names)
        return names

    # -- directories ----------------------------------------------------------------
    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        """Always the child's page; the attributes of a plus page feed the name
        and inode tables (``ls -l`` then ``stat`` of each entry costs one listing)."""
        epoch = self._epoch
        entries, eof = await self.child.readdir(gfid, cookie, count, plus)
        if plus and epoch == self._epoch:
            now = self._clock()
            for e in entries:
                if e.iatt is not None and e.name != b"." and e.name != b"..":
                    self._put_iatt(e.iatt, now)
                    self._put_name(gfid, e.name, e.iatt.gfid, now)
        return entries, eof


_RENAME_EXCHANGE = 2


def _parent(iatt: Iatt | None, pgfid: bytes) -> Iatt | None:
    """A postparent worth storing: the directory asked about (a layer below that
    answers with something else is not trusted)."""
    return iatt if iatt is not None and iatt.gfid == pgfid else None


def parse_event(args: dict[str, Any]) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """The gfids and (parent gfid, name) pairs of a ``cache-invalidation`` event;
    malformed items are skipped."""
    gfids = [g for g in args.get("gfids") or () if type(g) is bytes]
    entries = [(e[0], e[1]) for e in args.get("entries") or ()
               if isinstance(e, list | tuple) and len(e) == 2
               and type(e[0]) is bytes and type(e[1]) is bytes]
    return gfids, entries
