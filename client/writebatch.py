"""Write-behind's batches of small writes (see writebehind.py, whose base class this is).

Queued writes of up to ``BATCH_WRITE_MAX`` (writebehind.py) go to the layer
below through ``writev``, one request per brick for up to ``BATCH_OPS`` writes
and ``BATCH_BYTES`` (writequeue.py). A lone write goes at once; the writes made
while its batch is in flight form the next one; after a batch lands, a few
waiting writes linger for more. A file created here holds its first batch until
its close (or ``FRESH_HOLD``) when closes are flush-behind, or while recent new
files had attributes set before their close (tar), so that its queued setattr
rides in the same request (``carried_setattr``).

With flush-behind, the writes still unsent when a file's last open closes
(``_close_held``: a new file's whole content, usually) join the batch of other
files closed within ``JOIN_DELAY`` (up to ``JOIN_FILES`` files and
``JOIN_BYTES``), which the layer below sends together (``writev_many``:
replicate makes it one request per brick). Anything that waits for one of its
files (fsync, read, stat, a full window, settle) sends the batch at once.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

import trio

from pyglfs.client.layer import Layer, WriteItem
from pyglfs.client.writequeue import (
    BATCH_BYTES,
    BATCH_OPS,
    InodeQueue,
    OpenInode,
    QueuedWrite,
    carried_setattr,
    coalesce,
    setattr_args,
    take_batch,
)
from pyglfs.rpc.brickops import COMPOUND_MAX, Iatt

log = logging.getLogger(__name__)

BATCH_SENDERS = 2
"""Batches of one inode in flight at most; a second starts only when a full
batch waits, so a writer faster than the bricks' round trip fills batches."""
LINGER = 0.002
LINGER_WRITES = 16
"""After a batch lands, fewer than ``LINGER_WRITES`` writes waiting wait up to
``LINGER`` seconds for more: a writer that never waits for the bricks (write-behind
answers at once) then pays a fraction of a request per write. Anything that waits
for queued writes (fsync, flush, close, read, stat, a full window) ends it."""
FRESH_HOLD = 0.02
"""Longest a new file's first batch waits for its close (with flush-behind),
to join other closed files' batch; its close usually comes within a
millisecond (write, then close)."""
JOIN_STREAM = 0.003
JOIN_DELAY = 0.003
JOIN_FILES = COMPOUND_MAX
JOIN_BYTES = BATCH_BYTES
"""A new file closed within ``JOIN_STREAM`` seconds of the last one that joined
waits up to ``JOIN_DELAY`` for more to share its requests (``writev_many``):
at most ``JOIN_FILES`` files and ``JOIN_BYTES`` bytes in one batch. One closed
after a pause goes at once, so a lone close adds no delay (a brick failure
right after it finds the data there, as before batching). Sending as soon as
no batch was on its way (self-clocked) gave batches of one file: the bricks
answer faster than a create-write-close loop closes files (~2 ms each);
20 ms gave ~10 (a brick's sendmsg per file 1.77 -> 1.11, strace over 2,000
files; 5 ms: 1.27), but a close's data then reaches the bricks up to 20 ms
late, and another mount that opens the file meanwhile (close-to-open, with no
lock between them on a single brick, or once the eager lock is given up on
contention) sees the old data or has its own change overwritten. 3 ms keeps
that window near what one request takes under load."""


class Join:
    """A batch of closed files' writes on its way (``BatchSender._joined_writev``):
    its items, and their results once ``done``."""

    __slots__ = ("items", "gfids", "nbytes", "go", "done", "results", "sending")

    def __init__(self) -> None:
        self.items: list[WriteItem] = []
        self.gfids: set[bytes] = set()
        self.nbytes = 0
        self.go = trio.Event()
        self.done = trio.Event()
        self.results: list[Iatt | OSError] = []
        self.sending = False


class BatchSender(Layer):
    """The batch senders of ``WriteBehind`` (which provides the queue: see the
    declarations below)."""

    inodes: dict[bytes, InodeQueue]
    opened: dict[bytes, OpenInode]
    _nursery: trio.Nursery | None
    _carry_score: int
    _join: Join | None
    _joined_at: float
    flush_behind: bool

    if TYPE_CHECKING:
        async def _land(self, gfid: bytes, ino: InodeQueue, ws: list[QueuedWrite],
                        send: Any, *args: Any) -> None: ...
        def _retire(self, gfid: bytes, ino: InodeQueue, w: QueuedWrite) -> None: ...
        def _members(self) -> list[Any]: ...
        def _learn(self, iatt: Iatt, grown: bool = False) -> None: ...
        def _queued_elsewhere(self, gfid: bytes) -> bool: ...

    def _queue_small(self, gfid: bytes, ino: InodeQueue, w: QueuedWrite) -> None:
        """Leave ``w`` to a batch: a sender starts when none runs (so a lone write
        goes at once), or when a full batch waits."""
        ino.unsent.append(w)
        ino.unsent_bytes += w.nbytes
        if ino.hurry is not None:
            if len(ino.unsent) >= LINGER_WRITES or ino.unsent_bytes >= BATCH_BYTES:
                ino.hurry.set()
        elif not ino.senders or (ino.senders < BATCH_SENDERS and (
                len(ino.unsent) >= BATCH_OPS or ino.unsent_bytes >= BATCH_BYTES)):
            ino.senders += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._send_batches, gfid, ino)

    def _hurry(self, gfid: bytes) -> None:
        """Someone waits for the queued writes of ``gfid``: send them without lingering."""
        for m in self._members():
            ino = m.inodes.get(gfid)
            if ino is not None and ino.unsent:
                ino.urgent = True
                if ino.hurry is not None:
                    ino.hurry.set()
            j = m._join
            if j is not None and gfid in j.gfids:
                j.go.set()

    def _close_held(self, gfid: bytes) -> bool:
        """The last open of ``gfid`` here closes (flush or release) with
        flush-behind while the first batch of the new file waits for that
        (nothing else of it was sent): the batch goes with the next batch of
        closed files instead of alone. True when so; False when the caller
        hurries the inode's writes."""
        ino = self.inodes.get(gfid)
        if (not self.flush_behind or ino is None or ino.urgent or self._nursery is None
                or not self.child.batches_writes):
            return False
        o = self.opened.get(gfid)
        if o is not None and o.count != 1 or self._queued_elsewhere(gfid):
            return False
        j = self._join
        if j is not None and gfid in j.gfids and not j.sending:
            return True  # joined at its flush; this is its release
        if not ino.unsent or not (ino.held or o is not None and o.fresh):
            return False
        ino.closing = True
        if ino.hurry is not None:
            ino.hurry.set()
        return True

    def _hurry_all(self) -> None:
        for gfid in list(self.inodes):
            self._hurry(gfid)

    async def _send_batches(self, gfid: bytes, ino: InodeQueue) -> None:
        """Send the inode's unsent small writes, a batch at a time, until none is
        left (``take_batch``; overlapping writes within a batch keep their
        order: the layer below applies a batch in order)."""
        # A file created here waits for its close (or a linger) before its first
        # batch, so the attributes tar sets before closing ride with its data.
        held = landed = self._take_fresh(gfid)
        try:
            while ino.unsent:
                if (landed and not ino.urgent and not ino.closing and ino.hurry is None
                        and len(ino.unsent) < LINGER_WRITES and ino.unsent_bytes < BATCH_BYTES):
                    landed = False
                    ino.hurry = trio.Event()
                    ino.held = held
                    try:
                        with trio.move_on_after(FRESH_HOLD if held and self.flush_behind else LINGER):
                            await ino.hurry.wait()
                    finally:
                        ino.hurry = None
                        ino.held = False
                    continue  # the other sender may have taken them meanwhile
                landed = False
                batch = take_batch(ino)
                if not batch:
                    first = ino.unsent[0]
                    await next(d for d in first.deps if not d.done.is_set()).done.wait()
                    continue
                join = ino.closing and not ino.urgent and not ino.unsent
                ino.closing = False
                if not ino.unsent:
                    ino.urgent = False
                await self._land(gfid, ino, batch, self._send_batch, ino, batch, join)
                landed = True
                if held:
                    held = False
                    self._score(1 if ino.carried else -1)
        finally:
            ino.senders -= 1
            if ino.unsent and not ino.senders:  # cancelled: nobody sends them now
                if ino.error is None:
                    ino.error = OSError(errno.EIO, "write cancelled")
                left, ino.unsent = ino.unsent, []
                ino.unsent_bytes = 0
                for w in left:
                    self._retire(gfid, ino, w)

    def _take_fresh(self, gfid: bytes) -> bool:
        """Whether the first batch of ``gfid`` waits for its close: a file created
        here, with flush-behind over a layer that batches writes (its close joins
        it to other closed files' batch) or while files created recently had
        attributes set before their close (tar does; otherwise a plain
        create-write-close does not, and holding its write until the close would
        only delay it)."""
        o = self.opened.get(gfid)
        if o is None or not o.fresh:
            return False
        o.fresh = False
        if o.count != 1:
            return False
        if self._carry_score >= 0 or self.flush_behind and self.child.batches_writes:
            return True
        o.missed = True
        return False

    def _score(self, delta: int) -> None:
        self._carry_score = max(-8, min(8, self._carry_score + delta))

    async def _send_batch(self, gfid: bytes, ino: InodeQueue, batch: list[QueuedWrite],
                          join: bool = False) -> None:
        """Send ``batch``, and the queued setattr after it when nothing else is
        queued (one request per brick for a file's data and attributes); with
        ``join``, in the next batch of closed files."""
        s = carried_setattr(ino, batch)
        ino.carried = s is not None
        send = self._joined_writev if join else self.child.writev
        if s is None:
            ino.last = await send(gfid, coalesce(batch))
        else:
            s.sent = True
            s.carried = trio.Event()
            s.go.set()
            try:
                ino.last = await send(gfid, coalesce(batch), None, setattr_args(s.fields))
            finally:
                s.carried.set()
        self._learn(ino.last, grown=True)

    async def _joined_writev(self, gfid: bytes, writes: list[tuple[int, bytes]],
                             xattrop: None = None, attrs: dict[str, int] | None = None) -> Iatt:
        """``writev`` of a closed file, in the next batch of closed files."""
        j = self._join
        now = trio.current_time()
        if j is None or j.sending:
            assert self._nursery is not None
            j = self._join = Join()
            if now - self._joined_at > JOIN_STREAM:
                j.go.set()
            self._nursery.start_soon(self._send_join, j)
        self._joined_at = now
        k = len(j.items)
        j.items.append((gfid, writes, attrs))
        j.gfids.add(gfid)
        j.nbytes += sum(len(d) for _, d in writes)
        if len(j.items) >= JOIN_FILES or j.nbytes >= JOIN_BYTES:
            j.go.set()
        await j.done.wait()
        if k >= len(j.results):
            raise OSError(errno.EIO, "batch of closed files not sent")
        r = j.results[k]
        if isinstance(r, OSError):
            raise r
        return r

    async def _send_join(self, j: Join) -> None:
        try:
            with trio.move_on_after(JOIN_DELAY):
                await j.go.wait()
            j.sending = True
            if self._join is j:
                self._join = None
            try:
                j.results = await self.child.writev_many(j.items)
            except OSError as e:
                j.results = [e] * len(j.items)
            except Exception:
                log.exception("write-behind: batch of %d closed files failed unexpectedly",
                              len(j.items))
                j.results = [OSError(errno.EIO, "batch failed")] * len(j.items)
        finally:
            j.sending = True
            if self._join is j:
                self._join = None
            j.done.set()
