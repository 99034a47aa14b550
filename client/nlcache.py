"""performance/nl-cache: lookups of names known to be absent, answered in the mount.

The kernel looks a name up before it creates, links or renames onto it, and
tar, compilers and interpreters probe many names that do not exist. Each such
lookup costs replicate a request to every brick and a round trip; this layer
answers it with ENOENT when it knows the name is absent.

What it knows, per directory gfid (a ``_Dir``):

- ``absent``: names a lookup found missing, and names this client removed;
- ``present``, only for a *complete* directory: a superset of the names the
  directory holds. A directory is complete when this client made it (mkdir) or
  listed it to the end, and nothing foreign changed it since; every other name
  in it is then absent without asking. Names this client creates, links or
  renames into it are added, so a fresh directory filled by this mount (tar,
  a build) never asks the bricks whether a name exists.

Coherence
- Knowledge of a directory is trusted for ``timeout`` seconds from when it was
  first recorded.
- The bricks push a ``cache-invalidation`` event to every other client after
  each change (``pyglfs.brickd.upcall``): a name that appears, goes or moves
  is named as (parent gfid, name) and the parent's gfid is named too. Either
  drops everything known of that directory; ``{"all": True}`` (and a brick
  connection going down or coming up, when events may have been lost) drops
  everything.
- Claims of absence (an ENOENT to record, a removed name, a new complete
  directory) are recorded only when nothing could have made them stale while
  the request was out. Each such request *watches* its directory (and name)
  while it is out; an invalidation of the directory, or the end of one of
  this client's own entry operations on the same name, marks the watch stale,
  and a stale answer is not recorded. A listing is spoilt the same way by
  any change in its directory. Watches are per directory, so the stream of
  invalidations that other clients' writes cause (they name files, not
  directories) costs nothing here.
  Claims of presence (a name made, found or listed) only ever widen
  ``present`` or narrow ``absent``, so they are safe at any time.
- An entry operation that fails with an error that leaves the name's state
  unknown drops its directory.
- The table answers "absent" only after the events already in the brick
  sockets were taken in (``take_in_all``: one poll(2) of all the sockets,
  a receive from each that has data): a brick pushes an invalidation before it answers the change,
  so a name another client made and was told is made is not denied here
  just because the reader task has not run yet.

GlusterFS ships nl-cache off by default because its bricks push no
invalidations unless ``features.cache-invalidation`` is set; pyglfs bricks
always push them and the volume option is on by default, so here the layer is
on by default with GlusterFS's ``group nl-cache`` timeout (600 s). Without
``cache-invalidation`` the timeout defaults to 1 s, as md-cache's does.

Memory: ``limit`` bytes, charged per name (its length plus an estimate of the
set's overhead) and per directory; past it the least recently used
directories are dropped, and a single directory bigger than the limit is just
not complete.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pyglfs.client.layer import DirEntry, EntryReply, Layer, Lookup, RenameReply
from pyglfs.client.mdcache import CoherentCache
from pyglfs.rpc.brickops import NAME_MAX, Iatt
from pyglfs.rpc.connection import take_in_all

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10 * 1024 * 1024
NAME_COST = 96
DIR_COST = 512
LISTINGS_MAX = 64
_RENAME_EXCHANGE = 2

T = TypeVar("T")


def ordinary(name: bytes) -> bool:
    """Whether ``name`` is one plain path component, whose absence a brick
    reports as ENOENT (others get EINVAL or ENAMETOOLONG and pass through)."""
    return (0 < len(name) <= NAME_MAX and name != b"." and name != b".."
            and b"/" not in name and b"\0" not in name)


class _Dir:
    __slots__ = ("absent", "present", "t")

    def __init__(self, t: float, present: set[bytes] | None = None) -> None:
        self.absent: set[bytes] = set()
        self.present = present
        self.t = t


class _Listing:
    __slots__ = ("names", "next", "stale")

    def __init__(self) -> None:
        self.names: set[bytes] = set()
        self.next = 0
        self.stale = False


class _Watch:
    """A request out on one name of a directory (``name`` None: any name)."""

    __slots__ = ("name", "stale")

    def __init__(self, name: bytes | None) -> None:
        self.name = name
        self.stale = False


class NlCache(CoherentCache):
    """Answers lookups of absent names from what it learnt (see the module doc);
    ``stats()`` counts hits and misses."""

    def __init__(self, name: str, child: Layer, *, timeout: float = 1.0,
                 invalidation: bool = False, limit: int = DEFAULT_LIMIT,
                 clock: Any = time.monotonic,
                 take_in: Callable[[], None] = take_in_all) -> None:
        super().__init__(name, [child])
        self._take_in = take_in
        self.timeout = timeout
        self.invalidation = invalidation
        self.limit = max(limit, DIR_COST + 16 * NAME_COST)
        self._clock = clock
        self._watches: dict[bytes, list[_Watch]] = {}
        self._dirs: OrderedDict[bytes, _Dir] = OrderedDict()
        self._listings: OrderedDict[bytes, _Listing] = OrderedDict()
        self._cost = 0
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return (f"<NlCache {self.name} timeout={self.timeout:g} "
                f"invalidation={self.invalidation} dirs={len(self._dirs)}>")

    def stats(self) -> dict[str, int]:
        """Table sizes and hit counts, for state dumps and tests."""
        complete = sum(1 for d in self._dirs.values() if d.present is not None)
        return {"dirs": len(self._dirs), "complete": complete, "bytes": self._cost,
                "hits": self.hits, "misses": self.misses}

    # -- the table ------------------------------------------------------------
    def _dir(self, pgfid: bytes) -> _Dir:
        d = self._dirs.get(pgfid)
        if d is None or self._clock() - d.t >= self.timeout:
            if d is not None:
                self._drop(pgfid)
            d = self._dirs[pgfid] = _Dir(self._clock())
            self._cost += DIR_COST
        return d

    def _drop(self, gfid: bytes) -> None:
        d = self._dirs.pop(gfid, None)
        if d is not None:
            self._cost -= DIR_COST + _names_cost(d.absent) + _names_cost(d.present or ())

    def clear(self) -> None:
        """Forget everything (a brick came or went, or an event said so)."""
        for watches in self._watches.values():
            for w in watches:
                w.stale = True
        self._dirs.clear()
        self._listings.clear()
        self._cost = 0

    def _watch(self, gfid: bytes, name: bytes | None) -> _Watch:
        w = _Watch(name)
        watches = self._watches.get(gfid)
        if watches is None:
            self._watches[gfid] = [w]
        else:
            watches.append(w)
        return w

    def _unwatch(self, gfid: bytes, w: _Watch) -> None:
        watches = self._watches[gfid]
        if len(watches) == 1:
            del self._watches[gfid]
        else:
            watches.remove(w)

    def _touch(self, gfid: bytes, name: bytes | None) -> None:
        """``name`` in directory ``gfid`` (None: any name) may have changed:
        answers out on it must not be recorded."""
        lst = self._listings.get(gfid)
        if lst is not None:
            lst.stale = True
        for w in self._watches.get(gfid, ()):
            if name is None or w.name is None or w.name == name:
                w.stale = True

    def _fit(self, keep: bytes) -> None:
        """Evict least recently used directories until under the limit."""
        dirs = self._dirs
        while self._cost > self.limit and len(dirs) > 1:
            gfid = next(iter(dirs))
            if gfid == keep:
                dirs.move_to_end(gfid)
                gfid = next(iter(dirs))
            self._drop(gfid)
        if self._cost > self.limit:
            d = dirs.get(keep)
            if d is not None:
                self._cost -= _names_cost(d.absent) + _names_cost(d.present or ())
                d.absent.clear()
                d.present = None

    def _found(self, pgfid: bytes, name: bytes) -> None:
        """``name`` exists in ``pgfid`` (always safe to note)."""
        d = self._dirs.get(pgfid)
        if d is None:
            return
        if name in d.absent:
            d.absent.discard(name)
            self._cost -= len(name) + NAME_COST
        if d.present is not None and name not in d.present:
            d.present.add(name)
            self._cost += len(name) + NAME_COST
            if self._cost > self.limit:
                self._fit(pgfid)

    def _gone(self, pgfid: bytes, name: bytes) -> None:
        """``name`` is absent from ``pgfid``; the caller checked that no
        invalidation raced with what told it so."""
        d = self._dir(pgfid)
        self._dirs.move_to_end(pgfid)
        if d.present is not None:
            if name in d.present:
                d.present.discard(name)
                self._cost -= len(name) + NAME_COST
        elif name not in d.absent:
            d.absent.add(name)
            self._cost += len(name) + NAME_COST
            if self._cost > self.limit:
                self._fit(pgfid)

    def _complete(self, gfid: bytes, names: set[bytes]) -> None:
        """``names`` are all the names in ``gfid``."""
        self._drop(gfid)
        self._dirs[gfid] = _Dir(self._clock(), names)
        self._cost += DIR_COST + _names_cost(names)
        if self._cost > self.limit:
            self._fit(gfid)

    # -- coherence --------------------------------------------------------------
    def invalidate(self, gfids: list[bytes], entries: list[tuple[bytes, bytes]]) -> None:
        """Drop the directories a change elsewhere touched."""
        for gfid in gfids:
            self._drop(gfid)
            self._touch(gfid, None)
        for pgfid, name in entries:
            self._drop(pgfid)
            self._touch(pgfid, name)

    # -- lookups ------------------------------------------------------------------
    def _knows_absent(self, pgfid: bytes, name: bytes) -> bool:
        d = self._dirs.get(pgfid)
        if d is None:
            return False
        if self._clock() - d.t >= self.timeout:
            self._drop(pgfid)
            return False
        return name in d.absent or (d.present is not None and name not in d.present
                                    and ordinary(name))

    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        if self._knows_absent(pgfid, name):
            if self.invalidation:
                # An event the bricks pushed before they answered the change
                # that made this name may still wait in a socket: take it in
                # (it drops the directory) before answering from the table.
                self._take_in()
            if self._knows_absent(pgfid, name):
                self.hits += 1
                self._dirs.move_to_end(pgfid)
                raise OSError(errno.ENOENT, "no such name (nl-cache)")
        self.misses += 1
        w = self._watch(pgfid, name)
        try:
            found = await self.child.lookup(pgfid, name)
        except OSError as e:
            if e.errno == errno.ENOENT and not w.stale and ordinary(name):
                self._gone(pgfid, name)
            raise
        finally:
            self._unwatch(pgfid, w)
        self._found(pgfid, name)
        return found

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        """The child's page; a listing followed from cookie 0 to the end with
        nothing changing meanwhile makes the directory complete."""
        listings = self._listings
        if cookie == 0:
            listings[gfid] = _Listing()
            listings.move_to_end(gfid)
            if len(listings) > LISTINGS_MAX:
                listings.popitem(last=False)
        entries, eof = await self.child.readdir(gfid, cookie, count, plus)
        lst = listings.get(gfid)
        if lst is None or lst.next != cookie:
            return entries, eof
        if lst.stale:
            del listings[gfid]
            return entries, eof
        lst.names.update(e.name for e in entries if e.name != b"." and e.name != b"..")
        if entries:
            lst.next = entries[-1].cookie
        if eof:
            del listings[gfid]
            self._complete(gfid, lst.names)
        elif len(lst.names) * NAME_COST > self.limit:
            del listings[gfid]
        return entries, eof

    # -- this client's entry changes ------------------------------------------------
    async def _made(self, pgfid: bytes, name: bytes, call: Awaitable[T]) -> T:
        """Run an operation that makes ``name`` in ``pgfid``. EEXIST says the name
        is there; after any other failure (replicate may have made it on some
        bricks) the directory is dropped."""
        try:
            result = await call
        except OSError as e:
            self._touch(pgfid, name)
            if e.errno == errno.EEXIST:
                self._found(pgfid, name)
            else:
                self._drop(pgfid)
            raise
        except BaseException:
            self._touch(pgfid, name)
            self._drop(pgfid)
            raise
        self._touch(pgfid, name)
        self._found(pgfid, name)
        return result

    async def _removed(self, pgfid: bytes, name: bytes, call: Awaitable[T]) -> T:
        """Run an operation that removes ``name`` from ``pgfid``; its absence is
        recorded unless the directory was invalidated meanwhile."""
        w = self._watch(pgfid, name)
        try:
            result = await call
        except OSError as e:
            self._unwatch(pgfid, w)
            self._touch(pgfid, name)
            if e.errno == errno.ENOENT and not w.stale:
                self._gone(pgfid, name)
            else:
                self._drop(pgfid)
            raise
        except BaseException:
            self._unwatch(pgfid, w)
            self._touch(pgfid, name)
            self._drop(pgfid)
            raise
        self._unwatch(pgfid, w)
        self._touch(pgfid, name)
        if not w.stale:
            self._gone(pgfid, name)
        return result

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._made(pgfid, name, self.child.create(
            pgfid, name, gfid, mode, uid, gid, flags, xattrop))

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        """A directory this client made is complete and empty, unless an
        invalidation of it arrived while it was being made."""
        w = self._watch(gfid, None)
        try:
            result = await self._made(pgfid, name, self.child.mkdir(
                pgfid, name, gfid, mode, uid, gid, xattrop))
        finally:
            self._unwatch(gfid, w)
        if not w.stale:
            self._complete(gfid, set())
        return result

    async def mknod(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, rdev: int,
                    uid: int, gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._made(pgfid, name, self.child.mknod(
            pgfid, name, gfid, mode, rdev, uid, gid, xattrop))

    async def symlink(self, pgfid: bytes, name: bytes, gfid: bytes, target: bytes, uid: int,
                      gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._made(pgfid, name, self.child.symlink(
            pgfid, name, gfid, target, uid, gid, xattrop))

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes,
                   xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._made(pgfid, name, self.child.link(gfid, pgfid, name, xattrop))

    async def unlink(self, pgfid: bytes, name: bytes,
                     xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        return await self._removed(pgfid, name, self.child.unlink(pgfid, name, xattrop))

    async def rmdir(self, pgfid: bytes, name: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        return await self._removed(pgfid, name, self.child.rmdir(pgfid, name, xattrop))

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> RenameReply:
        """The new name exists afterwards; the old one is gone unless the two
        were exchanged. A failed rename drops both directories."""
        w = self._watch(old_pgfid, old_name)
        done = False
        try:
            result = await self.child.rename(old_pgfid, old_name, new_pgfid, new_name,
                                             flags, xattrop)
            done = True
            return result
        finally:
            self._unwatch(old_pgfid, w)
            self._touch(old_pgfid, old_name)
            self._touch(new_pgfid, new_name)
            if not done:
                self._drop(old_pgfid)
                self._drop(new_pgfid)
            else:
                self._found(new_pgfid, new_name)
                if flags & _RENAME_EXCHANGE:
                    self._found(old_pgfid, old_name)
                elif not w.stale:
                    self._gone(old_pgfid, old_name)


def _names_cost(names: Any) -> int:
    return sum(len(n) for n in names) + NAME_COST * len(names)
