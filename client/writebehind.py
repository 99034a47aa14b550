"""performance/write-behind: a write returns once it is queued; bricks get it in the background.

GlusterFS's write-behind, for a FUSE mount without the kernel's writeback
cache: every write(2) is one FUSE request, and waiting for both bricks before
answering it makes a sequential writer pay a full replicated round trip per
block. Here a write is answered as soon as it is queued, and the next one
arrives while the bricks still work on it.

Contracts:

- ``fsync`` returns once every queued write of the inode is on every up
  brick. ``flush`` (close) does too with ``flush_behind=False``; with
  ``flush_behind`` (GlusterFS's ``performance.flush-behind``, on by default in
  volfiles) it returns at once and the layer below gets its ``flush`` after
  the inode's queued writes, in the task of the last one; but for a file
  created here only while its directory's lease is held (``_flush_later``:
  another client finds such a file by a lookup, which must see the data
  written before the close). The layer below
  gets ``release`` after the queued writes and that flush, so replicate's
  post-op and unlock come after the data: with ``flush_behind`` a release
  returns at once (the kernel never waits for one; release-behind) and the
  task of the last queued change sends it, else it waits for them.
- A queued write that fails is reported once, by the next ``write``,
  ``flush`` or ``fsync`` of the same inode (per inode, not per open, unlike
  GlusterFS's per-fd bookkeeping); a failure nobody collects before the last
  release (a write that failed after a flush-behind close) is logged as an
  error.
- Writes that overlap a queued write are sent after it, or after it in the
  same batch, so every brick applies overlapping writes in the order the
  application made them. Writes over ``BATCH_WRITE_MAX`` go to the bricks at
  once, in parallel when disjoint. Smaller ones go in batches (``writev``:
  one request per brick for up to ``BATCH_OPS`` writes): a lone write goes at
  once, and the writes made while its batch is in flight form the next one,
  so random small writes cost a fraction of a brick request each (the
  senders: writebatch.py). A file created here holds its first batch until
  something waits for it (its close) or a short delay, and a queued setattr that follows a batch with nothing else
  queued rides in the same request: an extracted file's data and attributes
  cost one request per brick. With ``flush_behind``, what a file's last close
  leaves unsent joins other closed files' writes: one request per brick for a
  batch of files (``writev_many``).
- Anything that reads or changes what a queued write touches waits for it:
  ``read`` (overlapping writes), ``stat``, ``setattr`` (truncate, times,
  owner), ``fallocate``, an ``open`` with O_TRUNC. Lookups and readdirplus do
  not wait; the sizes they return are raised to cover queued writes, so the
  kernel never shrinks a file it has just written.
- Setattr-behind (setattrbehind.py): a setattr of a regular file open here
  that only sets mode, owner or explicit times is queued behind its writes.
- Errors a brick's disk gives (ENOSPC, EIO) show at close or fsync, as with
  GlusterFS; writes past ``SYNC_BEYOND`` are not queued, so a file size limit
  (EFBIG) fails the write itself.
- Queued bytes are bounded per inode (``window``) and in total (``total``); a
  write past either waits for queued ones to finish. A write whose change the
  layer below would refuse now (no quorum: EROFS, no brick: ENOTCONN) is
  refused synchronously.
- Without ``serve`` running (unit tests), or built with ``queue=False`` (the
  mount option ``write-behind=no``), writes go through synchronously. So does a
  write that carries an ``xattrop``: an empty one is how the FUSE bridge asks
  for write-through (O_DIRECT, O_SYNC, O_APPEND opens).
- ``group``: a list shared by the write-behind layers of one mount's graphs.
  Whatever waits for queued writes here waits for those of the group's other
  layers too, and their failures are reported here: after a graph switch, a
  close, fsync or read on the new graph never overtakes a write still queued
  in the old one. A layer leaves the group when it stops serving (after the
  old graph was settled, which drains it).
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pyglfs.client.layer import DirEntry, Layer, Lookup
from pyglfs.client.setattrbehind import SetattrBehind
from pyglfs.client.writebatch import BatchSender, Join
from pyglfs.client.writequeue import (
    OFF_MAX,
    InodeQueue,
    OpenInode,
    QueuedSetattr,
    QueuedWrite,
    covering,
    describe,
    with_setattrs,
)
from pyglfs.rpc.brickops import Iatt

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 4 << 20
"""Per inode: four of the kernel's 1 MiB WRITEs in flight (GlusterFS's 1 MB window
was sized for 128 KiB FUSE writes)."""
DEFAULT_TOTAL = 64 << 20
SYNC_BEYOND = 1 << 40
"""Writes ending past this go through at once, so that a brick filesystem's file
size limit (ext4: 16 TiB) fails the write that hits it, not a later close."""
BATCH_WRITE_MAX = 64 << 10
"""Queued writes up to this size go to the layer below in batches (``writev``):
several small writes of an inode waiting at once cost one request per brick.
Bigger ones are sent alone, at once, so large writes keep their parallelism."""

class WriteBehind(BatchSender, SetattrBehind, Layer):
    """Write-behind over ``child`` (see the module docstring)."""

    def __init__(self, name: str, child: Layer, *, window: int = DEFAULT_WINDOW,
                 total: int = DEFAULT_TOTAL, queue: bool = True,
                 group: list[WriteBehind] | None = None,
                 flush_behind: bool = False) -> None:
        super().__init__(name, [child])
        self.flush_behind = flush_behind
        self.window = max(window, 1)
        self.total = max(total, self.window)
        self.queue = queue
        self.group = group
        if group is not None:
            group.append(self)
        self.inodes: dict[bytes, InodeQueue] = {}
        self.opened: dict[bytes, OpenInode] = {}
        self.nbytes = 0
        self._freed = trio.Event()
        # > = 0: new files hold their first batch for their attributes (see _take_fresh)
        self._carry_score = 0
        self._nursery: trio.Nursery | None = None
        self._join: Join | None = None
        self._joined_at = -math.inf  # when a closed file last joined a batch

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for child in self.children:
                await nursery.start(child.serve)
            await nursery.start(self.serve_writes)
            task_status.started()
            await trio.sleep_forever()

    async def serve_writes(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run queued writes until cancelled, without serving the children."""
        try:
            async with trio.open_nursery() as nursery:
                if self.queue:
                    self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if self.group is not None and self in self.group:
                self.group.remove(self)
                self._bequeath_errors()

    def _bequeath_errors(self) -> None:
        """Failures not yet reported go to the group's newest layer, which reports
        them on the next write, flush or fsync of the inode."""
        heir = self.group[-1] if self.group else None
        for gfid, ino in self.inodes.items():
            if ino.error is None:
                continue
            if heir is None:
                log.error("write-behind: a failed write to gfid=%s was never reported "
                          "(the graph stopped): %s", gfid.hex(), ino.error)
                continue
            h = heir.inodes.setdefault(gfid, InodeQueue())
            if h.error is None:
                h.error = ino.error
        self.inodes.clear()

    async def lease_recalled(self, pgfid: bytes) -> None:
        """Another client waits to look into ``pgfid``: the queued writes of the
        files created in it here go to the bricks first, so that once it finds
        such a file it also reads what was written before its close (as a
        lookup after the close would on one mount)."""
        for gfid in [g for g, ino in self.inodes.items() if ino.pgfid == pgfid]:
            await self._drain(gfid)
        await super().lease_recalled(pgfid)

    async def settle(self) -> None:
        for gfid in list(self.inodes):
            self._kick(gfid)
            self._hurry(gfid)
        for ino in list(self.inodes.values()):
            for w in list(ino.queued):
                await w.done.wait()
        await super().settle()

    # -- writing ------------------------------------------------------------
    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        """Queue the write and return at once; the returned attributes are the last
        known ones with the size raised to cover it (``stat`` gives exact ones)."""
        n = len(data)
        if offset < 0 or offset + n > OFF_MAX:
            raise OSError(errno.EINVAL, "write out of range")
        self._take_error(gfid)
        if self._nursery is None or xattrop is not None or offset + n > SYNC_BEYOND:
            await self._drain(gfid)
            return await self.child.write(gfid, offset, data, xattrop)
        self._check_writable()
        self._kick(gfid)
        ino = self._queue(gfid)
        while ino.queued and (ino.nbytes + n > self.window or self.nbytes + n > self.total):
            if ino.nbytes + n > self.window:
                self._hurry(gfid)
            else:
                self._hurry_all()
            await self._freed.wait()
            if self.inodes.get(gfid) is not ino:  # drained and forgotten meanwhile
                ino = self._queue(gfid)
        w = QueuedWrite(offset, offset + max(n, 1), n)
        deps = [q for m in self._members() for q in m._queued(gfid)
                if q.start < w.end and w.start < q.end]
        ino.queued.append(w)
        ino.nbytes += n
        self.nbytes += n
        if n <= BATCH_WRITE_MAX:
            w.data = data
            w.deps = deps
            self._queue_small(gfid, ino, w)
        else:
            o = self.opened.get(gfid)
            if o is not None:
                o.fresh = False  # not a small new file: its first batch goes alone
            ino.held = False
            self._nursery.start_soon(self._land, gfid, ino, [w], self._send, ino, offset,
                                     data, [q.done for q in deps])
        return covering(gfid, self._known(gfid) or ino.last, w.end)

    async def write_through(self, gfid: bytes, offset: int, data: bytes) -> Iatt:
        """Write now, after the queued writes it overlaps (O_DIRECT, O_SYNC opens)."""
        self._take_error(gfid)
        await self._drain(gfid, offset, offset + max(len(data), 1))
        return await self.child.write(gfid, offset, data)

    def _check_writable(self) -> None:
        if not self.child.is_up:
            raise OSError(errno.ENOTCONN, "no brick is connected")
        check = _writable_check(self.child)
        if check is not None:
            check()

    async def _land(self, gfid: bytes, ino: InodeQueue, ws: list[QueuedWrite],
                    send: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``send(gfid, *args)`` for the queued changes ``ws``. A failure, or a
        cancel before the bricks had it (a retired graph whose settle timed out),
        is kept for the next write, flush or fsync of the inode."""
        sent = False
        try:
            await send(gfid, *args)
            sent = True
        except OSError as e:
            log.warning("write-behind: %s to gfid=%s failed: %s", describe(ws), gfid.hex(), e)
            if ino.error is None:
                ino.error = e
        except Exception:
            log.exception("write-behind: %s to gfid=%s failed unexpectedly",
                          describe(ws), gfid.hex())
            if ino.error is None:
                ino.error = OSError(errno.EIO, f"{ws[0].kind} failed")
        finally:
            if not sent and ino.error is None:
                log.error("write-behind: %s to gfid=%s cancelled before it reached "
                          "the bricks", describe(ws), gfid.hex())
                ino.error = OSError(errno.EIO, f"{ws[0].kind} cancelled")
            await self._finish(gfid, ino, ws)

    async def _send(self, gfid: bytes, ino: InodeQueue, offset: int, data: bytes,
                    deps: list[trio.Event]) -> None:
        for d in deps:
            await d.wait()
        ino.last = await self.child.write(gfid, offset, data)
        self._learn(ino.last, grown=True)

    async def _finish(self, gfid: bytes, ino: InodeQueue, ws: list[QueuedWrite]) -> None:
        try:
            # The flush a flush-behind close left for the last queued writes, and
            # the releases that came after it: they stay queued meanwhile, so
            # settle waits for them too.
            while ino.flush_wanted and len(ino.queued) == len(ws):
                ino.flush_wanted = False
                await self._flush_behind(gfid)
            while ino.releases and len(ino.queued) == len(ws):
                ino.releases -= 1
                await self._release_behind(gfid, ino)
        finally:
            for w in ws:
                self._retire(gfid, ino, w)

    def _retire(self, gfid: bytes, ino: InodeQueue, w: QueuedWrite) -> None:
        ino.queued.remove(w)
        if isinstance(w, QueuedSetattr):
            ino.setattrs -= 1
        ino.nbytes -= w.nbytes
        self.nbytes -= w.nbytes
        w.data = b""
        w.deps = []
        w.done.set()
        self._forget_if_idle(gfid, ino)
        self._freed.set()
        self._freed = trio.Event()

    async def _flush_behind(self, gfid: bytes) -> None:
        try:
            await self.child.flush(gfid)
        except OSError as e:
            log.error("write-behind: flush of gfid=%s after close failed: %s", gfid.hex(), e)
        except Exception:
            log.exception("write-behind: flush of gfid=%s after close failed", gfid.hex())

    def _forget_if_idle(self, gfid: bytes, ino: InodeQueue) -> None:
        if not ino.queued and ino.error is None and self.inodes.get(gfid) is ino:
            del self.inodes[gfid]

    def _queued(self, gfid: bytes) -> list[QueuedWrite]:
        ino = self.inodes.get(gfid)
        return ino.queued if ino is not None else []

    def _members(self) -> list[WriteBehind]:
        if self.group is None or len(self.group) < 2:
            return [self]
        return [self, *(m for m in self.group if m is not self)]

    async def _drain(self, gfid: bytes, start: int = 0, end: int = OFF_MAX) -> None:
        """Wait for the writes to ``gfid`` queued now (here or in the group) that
        overlap [start, end), and its queued setattrs."""
        self._kick(gfid)
        self._hurry(gfid)
        for m in self._members():
            for w in [q for q in m._queued(gfid) if q.start < end and start < q.end]:
                await w.done.wait()

    def _take_error(self, gfid: bytes) -> None:
        for m in self._members():
            ino = m.inodes.get(gfid)
            if ino is not None and ino.error is not None:
                err, ino.error = ino.error, None
                m._forget_if_idle(gfid, ino)
                raise err

    async def flush(self, gfid: bytes) -> None:
        self._kick(gfid)
        if not self._close_held(gfid):
            self._hurry(gfid)
        if self.flush_behind and self._flush_later(gfid):
            return
        await self._drain(gfid)
        self._take_error(gfid)
        await self.child.flush(gfid)

    def _flush_later(self, gfid: bytes) -> bool:
        """Flush-behind: report a failure already seen, else leave the flush to the
        last queued write of ``gfid`` and say so. False (flush the usual way) when
        nothing is queued here, another layer of the group holds writes of the
        inode, no brick is up (the child's flush reports that now), or the file
        was created here in a directory whose lease is not held: no other client
        can have it cached, so its lookup must find what was written before the
        close (under the lease the brick holds that lookup until a recall sends
        the writes)."""
        self._take_error(gfid)
        ino = self.inodes.get(gfid)
        if ino is None or not ino.queued or self._nursery is None or not self.child.is_up:
            return False
        if self._queued_elsewhere(gfid):
            return False
        if ino.pgfid is not None and not self.lease_held(ino.pgfid):
            return False
        ino.flush_wanted = True
        return True

    async def fsync(self, gfid: bytes, datasync: bool = False) -> None:
        await self._drain(gfid)
        self._take_error(gfid)
        await self.child.fsync(gfid, datasync)

    async def release(self, gfid: bytes) -> None:
        """After the queued writes and flush of ``gfid``; with ``flush_behind``,
        when changes are queued here (and nowhere else in the group), returns
        at once and leaves the release to the task of the last one (the kernel
        never waits for a release)."""
        self._kick(gfid)
        if not self._close_held(gfid):
            self._hurry(gfid)
        ino = self.inodes.get(gfid)
        self._closed(gfid)
        if (self.flush_behind and ino is not None and ino.queued and self._nursery is not None
                and not self._queued_elsewhere(gfid)):
            ino.releases += 1
            return
        await self._drain(gfid)
        self._report_lost(gfid)
        await self.child.release(gfid)

    async def _release_behind(self, gfid: bytes, ino: InodeQueue) -> None:
        if ino.error is not None:
            _log_lost(gfid, ino.error)
            ino.error = None
        try:
            await self.child.release(gfid)
        except OSError as e:
            log.warning("write-behind: release of gfid=%s after its writes failed: %s",
                        gfid.hex(), e)
        except Exception:
            log.exception("write-behind: release of gfid=%s after its writes failed",
                          gfid.hex())

    def _report_lost(self, gfid: bytes) -> None:
        for m in self._members():
            ino = m.inodes.get(gfid)
            if ino is not None and ino.error is not None and not ino.queued:
                _log_lost(gfid, ino.error)
                ino.error = None
                m._forget_if_idle(gfid, ino)

    # -- what waits for queued writes -------------------------------------------
    async def read(self, gfid: bytes, offset: int, size: int) -> bytes:
        await self._drain(gfid, offset, offset + max(size, 1))
        return await self.child.read(gfid, offset, size)

    async def fallocate(self, gfid: bytes, mode: int, offset: int, length: int,
                        xattrop: dict[str, bytes] | None = None) -> Iatt:
        await self._drain(gfid)
        return await self.child.fallocate(gfid, mode, offset, length, xattrop)

    # -- answers that carry sizes -------------------------------------------------
    def _any_queued(self) -> bool:
        return any(m.inodes for m in self._members())

    def _cover(self, iatt: Iatt) -> Iatt:
        end = 0
        for m in self._members():
            ino = m.inodes.get(iatt.gfid)
            if ino is None or not ino.queued:
                continue
            if ino.setattrs:
                iatt = with_setattrs(iatt, ino.queued)
                e = max((w.end for w in ino.queued if not isinstance(w, QueuedSetattr)),
                        default=0)
            else:
                e = max(w.end for w in ino.queued)
            end = max(end, e)
        return iatt._replace(size=end) if end > iatt.size else iatt

    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        r = await self.child.lookup(pgfid, name)
        return Lookup(self._cover(r.iatt), r.xattrs) if self._any_queued() else r

    async def lookup_gfid(self, gfid: bytes) -> Lookup:
        r = await self.child.lookup_gfid(gfid)
        return Lookup(self._cover(r.iatt), r.xattrs) if self._any_queued() else r

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        entries, eof = await self.child.readdir(gfid, cookie, count, plus)
        if plus and self._any_queued():
            entries = [e._replace(iatt=self._cover(e.iatt)) if e.iatt is not None else e
                       for e in entries]
        return entries, eof


def _log_lost(gfid: bytes, err: OSError) -> None:
    log.error("write-behind: a failed write to gfid=%s was never reported "
              "(it failed after a flush-behind close, or no flush came): %s", gfid.hex(), err)


def _writable_check(layer: Layer) -> Callable[[], Any] | None:
    """The quorum check of the first replicate layer below (``Writer.check_quorum``:
    ENOTCONN, EROFS), following single children and a graph switch's graph in
    service; or a layer's own ``check_writable``."""
    for _ in range(16):
        check = getattr(layer, "check_writable", None)
        if check is None:
            check = getattr(getattr(layer, "writer", None), "check_quorum", None)
        if check is not None:
            return check
        top = getattr(getattr(layer, "current", None), "top", None)
        if isinstance(top, Layer):
            layer = top
        elif len(layer.children) == 1:
            layer = layer.children[0]
        else:
            return None
    return None
