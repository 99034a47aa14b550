"""cluster/replicate: every change to all bricks of a replica set, reads from a good one.

Contracts (see DESIGN.md, Replication):

- A change is acknowledged when every brick that is up and holds our lock has
  it. A brick that is down, not locked, or failed while another succeeded is
  blamed in the changelog of the good bricks (which index the gfid for heal)
  and never serves reads of that inode until heal clears the blame.
- Writes need quorum (EROFS without it, ENOTCONN with no brick at all); reads
  go on while a good brick is up, failing over on ENOTCONN/ETIMEDOUT.
- Lookups ask every up brick: the gfids must agree (else EIO, logged as an
  error), attributes come from the read source, and a name one brick lacks is
  answered from the brick that has it (a pending entry heal, recorded); see
  ``reads``.
- gfids of new inodes come from above (the FUSE bridge) and go unchanged to
  every brick.
- Opens go to every up brick. A brick's open only keeps an unlinked-while-open
  file alive (reads and writes address inodes by gfid), so a brick that comes
  back gets this client's opens replayed in the background, best effort: a
  file it lacks is skipped, and a release it gets for an open it never saw
  is ignored by the brick.
- Directory leases (``lease``): ``want_lease``/``lease_held`` for a layer above
  that answers creates before the bricks have them; a brick's recall
  (``lock-contention`` in ``LEASE_DOMAIN``) asks the parent's ``lease_recalled``
  before the lease goes back.
- Background work (post-ops, unlocks, leases) runs under ``serve``; ``settle()``
  finishes it now (unmount, tests).
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Callable
from operator import attrgetter
from typing import Any, cast

import trio

from pyglfs.client.layer import EntryReply, Layer, RenameReply, WriteItem
from pyglfs.client.protocol import ProtocolClient
from pyglfs.client.replicate import batch, changelog
from pyglfs.client.replicate.changelog import DATA, ENTRY, METADATA
from pyglfs.client.replicate.eagerlock import (
    META_SPAN,
    OFFSET_END,
    EagerLocks,
    LockState,
    Span,
)
from pyglfs.client.replicate.fanout import bits, fanout, is_transport, pick_error
from pyglfs.client.replicate.fanout import mask as _mask
from pyglfs.client.replicate.lease import Leases
from pyglfs.client.replicate.quorum import Quorum
from pyglfs.client.replicate.reads import ReadOps
from pyglfs.client.replicate.readsel import InodeTable
from pyglfs.client.replicate.transaction import Outcome, Writer
from pyglfs.rpc.brickops import AFR_PREFIX, LEASE_DOMAIN, Iatt
from pyglfs.rpc.tuning import TABLE_LIMIT

log = logging.getLogger(__name__)

_D, _M, _E = 1 << DATA, 1 << METADATA, 1 << ENTRY
_OPEN_DROP = os.O_CREAT | os.O_EXCL | os.O_TRUNC
_postparent = attrgetter("postparent")
_postoldparent = attrgetter("postoldparent")
_postnewparent = attrgetter("postnewparent")


def _same(iatt: Iatt | None) -> Iatt | None:
    return iatt


class Replicate(ReadOps):
    """AFR-style replication over ``children`` (one protocol client per brick).

    ``pending_xattrs[i]`` names the changelog counter that blames brick i
    (``afr-pending-xattr`` in the volfile, as GlusterFS); by default the
    children's names, which the volfile generator makes ``<vol>-client-<i>``.
    The lock domain is this layer's name; the lock owner is random per
    instance, so two mounts of one volume are two writers.
    """

    def __init__(self, name: str, children: list[Layer], *,
                 pending_xattrs: list[str] | None = None, quorum_type: str = "auto",
                 quorum_count: int = 1, post_op_delay: float = 1.0, eager_lock: bool = True,
                 read_child: int = -1, inode_table_size: int = TABLE_LIMIT,
                 leases: bool = True) -> None:
        super().__init__(name, children)
        n = len(self.children)
        if n < 1:
            raise ValueError(f"replicate {name}: needs at least one subvolume")
        if pending_xattrs is None:
            pending_xattrs = [c.name for c in self.children]
        if len(pending_xattrs) != n:
            raise ValueError(f"replicate {name}: {len(pending_xattrs)} pending xattrs "
                             f"for {n} subvolumes")
        self.n = n
        self.names = [x if x.startswith(AFR_PREFIX) else AFR_PREFIX + x for x in pending_xattrs]
        self.quorum = Quorum(n, quorum_type, quorum_count)
        self.owner = uuid.uuid4().bytes
        self.locks = EagerLocks(self.children, name, self.owner, delay=post_op_delay,
                                eager=eager_lock)
        self.inodes = InodeTable(n, inode_table_size, read_child)
        self.writer = Writer(self.children, self.names, self.quorum, self.locks, self.inodes)
        self.opens: dict[bytes, int] = {}
        self.leases = Leases(self, self.children, self.locks, self.quorum) if leases else None
        self._was_up = False
        # Bricks take a new file's lock in its create request; another layer
        # between replicate and the bricks gets the lock by a request of its own.
        self._lock_on_create = all(isinstance(c, ProtocolClient) for c in self.children)

    def __repr__(self) -> str:
        return f"<Replicate {self.name} of {[c.name for c in self.children]} {self.quorum!r}>"

    # -- life cycle and status ----------------------------------------------
    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.locks.serve)
            if self.leases is not None:
                await nursery.start(self.leases.serve)
            for child in self.children:
                await nursery.start(child.serve)
            self._was_up = self.is_up
            task_status.started()
            await trio.sleep_forever()

    async def settle(self) -> None:
        """Give back every directory lease, do every delayed post-op and give back
        every eager lock, now."""
        if self.leases is not None:
            await self.leases.settle()
        await self.locks.settle()
        await super().settle()

    @property
    def is_up(self) -> bool:
        return any(c.is_up for c in self.children)

    def _index(self, child: Layer) -> int:
        for i, c in enumerate(self.children):
            if c is child:
                return i
        raise ValueError(f"{child!r} is not a child of {self!r}")

    def child_up(self, child: Layer) -> None:
        i = self._index(child)
        log.info("replicate %s: brick %s (%s) is up", self.name, i, child.name)
        # The next holder of each lock must include the brick that came back.
        if self.locks._nursery is not None:
            if self.leases is not None:
                self.leases.child_up()
            self.locks.release_all()
            if self.opens:
                self.locks._nursery.start_soon(self._replay_opens, i)
        if not self._was_up:
            self._was_up = True
            if self.parent is not None:
                self.parent.child_up(self)

    async def _replay_opens(self, i: int) -> None:
        child = self.children[i]
        replayed = 0
        for gfid, count in list(self.opens.items()):
            for _ in range(count):
                try:
                    await child.open(gfid, os.O_RDONLY)
                    replayed += 1
                except OSError as e:
                    log.debug("replay of open %s on brick %s: %s", gfid.hex(), i, e)
                    if is_transport(e):
                        return
                    break
        log.info("replicate %s: replayed %d opens on brick %s", self.name, replayed, i)

    def child_down(self, child: Layer, reason: str) -> None:
        i = self._index(child)
        log.warning("replicate %s: brick %s (%s) is down, replica degraded: %s",
                    self.name, i, child.name, reason)
        self.locks.child_down(i)
        if self.leases is not None:
            self.leases.child_down(i)
        if self._was_up and not self.is_up:
            self._was_up = False
            if self.parent is not None:
                self.parent.child_down(self, "no brick of the replica set is up")

    def on_event(self, child: Layer, name: str, args: dict[str, Any]) -> None:
        if (name == "lock-contention" and args.get("domain") == LEASE_DOMAIN
                and args.get("owner") == self.owner):
            gfid = args.get("gfid")
            if isinstance(gfid, bytes) and self.leases is not None:
                self.leases.recall(gfid)
            return
        if (name == "lock-contention" and args.get("domain") == self.name
                and args.get("owner") == self.owner):
            gfid = args.get("gfid")
            if isinstance(gfid, bytes):
                log.debug("replicate %s: lock on %s wanted elsewhere", self.name, gfid.hex())
                if self.leases is None or not self.leases.entry_contended(gfid):
                    self.locks.contended(gfid)
            return
        super().on_event(child, name, args)

    # -- directory leases (lease.py) -----------------------------------------
    def lease_held(self, pgfid: bytes) -> bool:
        leases = self.leases
        return leases is not None and leases.held(pgfid)

    def want_lease(self, pgfid: bytes) -> None:
        if self.leases is not None:
            self.leases.want(pgfid)

    # -- inode changes ------------------------------------------------------
    def _result(self, gfid: bytes, out: Outcome) -> Any:
        info = self.inodes.get(gfid)
        return out.first(info.read_child if info is not None else -1)

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        span = [(offset, offset + max(len(data), 1))]
        out = await self.writer.inode_op(
            gfid, _D, span, lambda c, x: c.write(gfid, offset, data, x), xattrop)
        iatt: Iatt = self._result(gfid, out)
        return iatt

    async def writev(self, gfid: bytes, writes: list[tuple[int, bytes]],
                     xattrop: dict[str, bytes] | None = None,
                     attrs: dict[str, int] | None = None) -> Iatt:
        """Several writes of ``gfid`` (and a setattr after them) as one replicated
        change: one transaction under the inode lock covering every span, one
        request per brick (the dirty mark rides on the first write). A brick
        that fails at any part is blamed for the whole change (data, and
        metadata with ``attrs``), as for a single write."""
        if len(writes) == 1 and attrs is None:
            return await self.write(gfid, writes[0][0], writes[0][1], xattrop)
        kinds, spans = batch.kinds_spans((gfid, writes, attrs))
        out = await self.writer.inode_op(
            gfid, kinds, spans, lambda c, x: c.writev(gfid, writes, x, attrs), xattrop)
        iatt: Iatt = self._result(gfid, out)
        return iatt

    async def writev_many(self, items: list[WriteItem]) -> list[Iatt | OSError]:
        """Each file's ``writev`` as its own replicated change, the files' sub-ops
        in one ``compound`` per brick (``batch``)."""
        return await batch.writev_many(self.writer, items, self._writev_item, self._result)

    async def _writev_item(self, item: WriteItem) -> Iatt:
        return await self.writev(item[0], item[1], None, item[2])

    async def fallocate(self, gfid: bytes, mode: int, offset: int, length: int,
                        xattrop: dict[str, bytes] | None = None) -> Iatt:
        span = [(offset, offset + max(length, 1))]
        out = await self.writer.inode_op(
            gfid, _D, span, lambda c, x: c.fallocate(gfid, mode, offset, length, x), xattrop)
        iatt: Iatt = self._result(gfid, out)
        return iatt

    async def setattr(self, gfid: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool = False, mtime_now: bool = False,
                      xattrop: dict[str, bytes] | None = None) -> Iatt:
        kinds = 0
        spans: list[Span] = []
        if size is not None:
            kinds |= _D
            spans.append((size, OFFSET_END))
        if (mode is not None or uid is not None or gid is not None or atime_ns is not None
                or mtime_ns is not None or atime_now or mtime_now or not kinds):
            kinds |= _M
            spans.append(META_SPAN)

        def call(c: Layer, x: dict[str, bytes] | None) -> Any:
            return c.setattr(gfid, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns,
                             mtime_ns=mtime_ns, atime_now=atime_now, mtime_now=mtime_now,
                             xattrop=x)

        out = await self.writer.inode_op(gfid, kinds, spans, call, xattrop)
        iatt: Iatt = self._result(gfid, out)
        return iatt

    async def setxattr(self, gfid: bytes, name: str, value: bytes, flags: int = 0,
                       xattrop: dict[str, bytes] | None = None) -> None:
        await self.writer.inode_op(
            gfid, _M, [META_SPAN], lambda c, x: c.setxattr(gfid, name, value, flags, x), xattrop)

    async def removexattr(self, gfid: bytes, name: str,
                          xattrop: dict[str, bytes] | None = None) -> None:
        await self.writer.inode_op(
            gfid, _M, [META_SPAN], lambda c, x: c.removexattr(gfid, name, x), xattrop)

    # -- entry changes ------------------------------------------------------
    def _parent_result(self, pgfid: bytes, out: Outcome, pick: Callable[[Any], Iatt | None],
                       ) -> Iatt | None:
        """A directory's attributes after an entry change, as reported by the brick
        a stat of it would read (so a cache above holds what stat would answer);
        None when that brick did not take the change or the directory is unknown."""
        info = self.inodes.get(pgfid)
        if info is None:
            return None
        i = info.read_child
        if i < 0 or i not in out.ok:
            order = self.inodes.order(pgfid, info, DATA, self._up(), also=METADATA)
            i = order[0] if order else -1
            if i not in out.ok:
                return None
        return pick(out.results[i])

    def _entry_reply(self, pgfid: bytes, gfid: bytes, out: Outcome) -> EntryReply:
        r: EntryReply = self._result(gfid, out)
        return EntryReply(r.iatt, self._parent_result(pgfid, out, _postparent))

    async def _new_inode(self, pgfid: bytes, gfid: bytes, new_kinds: Any, call: Any,
                         xattrop: dict[str, bytes] | None) -> EntryReply:
        out = await self.writer.entry_op([pgfid], call, gfid, new_kinds, xattrop)
        return self._entry_reply(pgfid, gfid, out)

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        """Create (and count as open) a file with the caller's gfid.

        Opened for writing, the new inode's lock is taken in the same round trip
        as the create (nobody else can know the gfid yet, so it is never
        contended), and the first write needs no lock request of its own.
        """
        def call(c: Layer, x: dict[str, bytes] | None) -> Any:
            return c.create(pgfid, name, gfid, mode, uid, gid, flags, x)

        if self.locks.delay > 0 and flags & os.O_ACCMODE != os.O_RDONLY:
            st = self.locks.hold_new(gfid) if self._lock_on_create else None
            if st is not None:
                reply = await self._create_locked(st, pgfid, name, gfid, mode, uid, gid,
                                                  flags, xattrop)
            else:
                # In the background: the create does not wait for the lock's reply,
                # and a first write waits for it only if it is still on its way.
                self.locks.prefetch_soon(gfid)
                try:
                    reply = await self._new_inode(pgfid, gfid, _D | _M, call, xattrop)
                except BaseException:
                    self.locks.want_release(gfid)
                    raise
        else:
            reply = await self._new_inode(pgfid, gfid, _D | _M, call, xattrop)
        self.opens[gfid] = self.opens.get(gfid, 0) + 1
        return reply

    async def _create_locked(self, st: LockState, pgfid: bytes, name: bytes, gfid: bytes,
                             mode: int, uid: int, gid: int, flags: int,
                             xattrop: dict[str, bytes] | None) -> EntryReply:
        got = 0
        domain, owner = self.locks.domain, self.owner

        async def call(c: Layer, x: dict[str, bytes] | None) -> EntryReply:
            nonlocal got
            reply, locked = await cast(ProtocolClient, c).create_locked(
                pgfid, name, gfid, mode, uid, gid, flags, x, domain, owner)
            if locked:
                got |= 1 << self._index(c)
            return reply

        try:
            out = await self.writer.entry_op([pgfid], call, gfid, _D | _M, xattrop)
        except BaseException:
            # A brick may have granted it with a reply we never saw.
            self.locks.not_granted(st, self.locks.up_mask())
            raise
        self.locks.granted(st, got, _mask(out.ok))
        return self._entry_reply(pgfid, gfid, out)

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._new_inode(
            pgfid, gfid, _M | _E,
            lambda c, x: c.mkdir(pgfid, name, gfid, mode, uid, gid, x), xattrop)

    async def mknod(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, rdev: int,
                    uid: int, gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._new_inode(
            pgfid, gfid, _D | _M,
            lambda c, x: c.mknod(pgfid, name, gfid, mode, rdev, uid, gid, x), xattrop)

    async def symlink(self, pgfid: bytes, name: bytes, gfid: bytes, target: bytes, uid: int,
                      gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self._new_inode(
            pgfid, gfid, _D | _M,
            lambda c, x: c.symlink(pgfid, name, gfid, target, uid, gid, x), xattrop)

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes,
                   xattrop: dict[str, bytes] | None = None) -> EntryReply:
        out = await self.writer.entry_op(
            [pgfid], lambda c, x: c.link(gfid, pgfid, name, x), extra=xattrop)
        self.inodes.blame(gfid, _M, out.bad)
        return self._entry_reply(pgfid, gfid, out)

    async def unlink(self, pgfid: bytes, name: bytes,
                     xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        out = await self.writer.entry_op(
            [pgfid], lambda c, x: c.unlink(pgfid, name, x), extra=xattrop)
        return self._parent_result(pgfid, out, _same)

    async def rmdir(self, pgfid: bytes, name: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        out = await self.writer.entry_op(
            [pgfid], lambda c, x: c.rmdir(pgfid, name, x), extra=xattrop)
        return self._parent_result(pgfid, out, _same)

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> RenameReply:
        out = await self.writer.entry_op(
            [old_pgfid, new_pgfid],
            lambda c, x: c.rename(old_pgfid, old_name, new_pgfid, new_name, flags, x),
            extra=xattrop)
        r: RenameReply = out.first()
        return RenameReply(r.iatt, self._parent_result(old_pgfid, out, _postoldparent),
                           self._parent_result(new_pgfid, out, _postnewparent))

    # -- open files ---------------------------------------------------------
    async def open(self, gfid: bytes, flags: int) -> Iatt:
        """Open on every up brick; O_TRUNC becomes a replicated truncate.

        Only the lock-free part of an open goes to the bricks: truncation at
        open would change data outside a transaction.
        """
        up = bits(self._up())
        if not up:
            raise OSError(errno.ENOTCONN, "no brick is connected")
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            self.writer.check_quorum()
        bflags = flags & ~_OPEN_DROP
        children = self.children
        res = await fanout(self.n, up, lambda i: children[i].open(gfid, bflags),
                           self.writer.split)
        errors = {i: r for i in up if isinstance(r := res[i], OSError)}
        ok = [i for i in up if i not in errors]
        if not ok:
            raise pick_error(errors)
        self.opens[gfid] = self.opens.get(gfid, 0) + 1
        if flags & os.O_TRUNC:
            try:
                return await self.setattr(gfid, size=0)
            except BaseException:
                await self.release(gfid)
                raise
        info = self.inodes.get(gfid)
        iatt = res[info.read_child if info is not None and info.read_child in ok else ok[0]]
        assert isinstance(iatt, Iatt)
        return iatt

    async def release(self, gfid: bytes) -> None:
        """Drop one open. The last one gives the inode lock back soon, its
        post-op, unlock and the bricks' release in one request per brick that
        other closed files' share (``EagerLocks.close_soon``)."""
        left = self.opens.get(gfid, 0) - 1
        if left > 0:
            self.opens[gfid] = left
        else:
            self.opens.pop(gfid, None)
            if self.locks.close_soon(gfid, self._up()):
                return
            self.locks.want_release(gfid)
        up = bits(self._up())
        children = self.children
        res = await fanout(self.n, up, lambda i: children[i].release(gfid),
                           self.writer.split)
        for i in up:
            if isinstance(res[i], OSError):
                log.debug("release of %s on brick %s: %s", gfid.hex(), i, res[i])

    async def flush(self, gfid: bytes) -> None:
        """No brick round trip; the lock of the last open waits for its release.

        Every write was acknowledged by the bricks before its reply (a failed one
        reported then), bricks buffer nothing, and application locks stay in the
        kernel (see DESIGN.md), so a brick's flush would only cost a round trip.
        The release that follows the last open's flush gives the inode lock
        back, its post-op and unlock travelling with the bricks' release
        (``release``); a release that does not come soon leaves it to the
        post-op delay, and another client that wants the lock gets it at once.
        A brick that misses a post-op is left with a dirty mark, which makes
        heal look at the file, never a wrong blame.
        """
        if gfid not in self.opens:
            self.locks.want_release(gfid)
        if not self._up():
            raise OSError(errno.ENOTCONN, "no brick is connected")

    async def fsync(self, gfid: bytes, datasync: bool = False) -> None:
        """Both bricks' copies on disk, then the dirty marks cleared (lock kept)."""
        up = bits(self._up())
        if not up:
            raise OSError(errno.ENOTCONN, "no brick is connected")
        children = self.children
        res = await fanout(self.n, up, lambda i: children[i].fsync(gfid, datasync),
                           self.writer.split)
        errors = {i: r for i in up if isinstance(r := res[i], OSError)}
        if len(errors) == len(up):
            raise pick_error(errors)
        failed = [i for i, e in errors.items() if not is_transport(e)]
        if failed:
            log.warning("replicate %s: fsync of %s failed on bricks %s, blaming them",
                        self.name, gfid.hex(), failed)
            ok = [i for i in up if i not in errors]
            xop = {self.names[j]: changelog.delta(_D) for j in failed}
            await fanout(self.n, ok, lambda i: children[i].xattrop(gfid, xop),
                         self.writer.split)
            self.inodes.blame(gfid, _D, _mask(failed))
        await self.locks.post_op_now(gfid)

    # -- internal operations ------------------------------------------------
    async def _all(self, op: str, *args: Any) -> Any:
        up = bits(self._up())
        if not up:
            raise OSError(errno.ENOTCONN, "no brick is connected")
        children = self.children
        res = await fanout(self.n, up, lambda i: getattr(children[i], op)(*args),
                           self.writer.split)
        errors = {i: r for i in up if isinstance(r := res[i], OSError)}
        ok = [i for i in up if i not in errors]
        if not ok:
            raise pick_error(errors)
        return res[ok[0]]

    async def xattrop(self, gfid: bytes, xattrop: dict[str, bytes]) -> dict[str, bytes]:
        r: dict[str, bytes] = await self._all("xattrop", gfid, xattrop)
        return r

    async def inodelk(self, gfid: bytes, domain: str, type: str, start: int, len: int,
                      owner: bytes, block: bool = False) -> None:
        await self._all("inodelk", gfid, domain, type, start, len, owner, block)

    async def entrylk(self, pgfid: bytes, name: bytes | None, domain: str, type: str,
                      owner: bytes, block: bool = False) -> None:
        await self._all("entrylk", pgfid, name, domain, type, owner, block)

