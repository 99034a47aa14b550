"""Write-behind's batches of small writes (see writebehind.py, whose base class this is).

Queued writes of up to ``BATCH_WRITE_MAX`` (writebehind.py) go to the layer
below through ``writev``, one request per brick for up to ``BATCH_OPS`` writes
and ``BATCH_BYTES`` (writequeue.py). A lone write goes at once; the writes made
while its batch is in flight form the next one; after a batch lands, a few
waiting writes linger for more. A file created here holds its first batch until
its close while recent new files had attributes set before their close (tar),
so that its queued setattr rides in the same request (``carried_setattr``).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

import trio

from pyglfs.client.layer import Layer
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
from pyglfs.rpc.brickops import Iatt

BATCH_SENDERS = 2
"""Batches of one inode in flight at most; a second starts only when a full
batch waits, so a writer faster than the bricks' round trip fills batches."""
LINGER = 0.002
LINGER_WRITES = 16
"""After a batch lands, fewer than ``LINGER_WRITES`` writes waiting wait up to
``LINGER`` seconds for more: a writer that never waits for the bricks (write-behind
answers at once) then pays a fraction of a request per write. Anything that waits
for queued writes (fsync, flush, close, read, stat, a full window) ends it."""


class BatchSender(Layer):
    """The batch senders of ``WriteBehind`` (which provides the queue: see the
    declarations below)."""

    inodes: dict[bytes, InodeQueue]
    opened: dict[bytes, OpenInode]
    _nursery: trio.Nursery | None
    _carry_score: int

    if TYPE_CHECKING:
        async def _land(self, gfid: bytes, ino: InodeQueue, ws: list[QueuedWrite],
                        send: Any, *args: Any) -> None: ...
        def _retire(self, gfid: bytes, ino: InodeQueue, w: QueuedWrite) -> None: ...
        def _members(self) -> list[Any]: ...
        def _learn(self, iatt: Iatt, grown: bool = False) -> None: ...

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
                if (landed and not ino.urgent and ino.hurry is None
                        and len(ino.unsent) < LINGER_WRITES and ino.unsent_bytes < BATCH_BYTES):
                    landed = False
                    ino.hurry = trio.Event()
                    try:
                        with trio.move_on_after(LINGER):
                            await ino.hurry.wait()
                    finally:
                        ino.hurry = None
                    continue  # the other sender may have taken them meanwhile
                landed = False
                batch = take_batch(ino)
                if not batch:
                    first = ino.unsent[0]
                    await next(d for d in first.deps if not d.done.is_set()).done.wait()
                    continue
                if not ino.unsent:
                    ino.urgent = False
                await self._land(gfid, ino, batch, self._send_batch, ino, batch)
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
        here, while files created recently had attributes set before their close
        (tar does; a plain create-write-close does not, and holding its write
        until the close would only delay it)."""
        o = self.opened.get(gfid)
        if o is None or not o.fresh:
            return False
        o.fresh = False
        if o.count != 1:
            return False
        if self._carry_score >= 0:
            return True
        o.missed = True
        return False

    def _score(self, delta: int) -> None:
        self._carry_score = max(-8, min(8, self._carry_score + delta))

    async def _send_batch(self, gfid: bytes, ino: InodeQueue, batch: list[QueuedWrite]) -> None:
        """Send ``batch``, and the queued setattr after it when nothing else is
        queued (one request per brick for a file's data and attributes)."""
        s = carried_setattr(ino, batch)
        ino.carried = s is not None
        if s is None:
            ino.last = await self.child.writev(gfid, coalesce(batch))
        else:
            s.sent = True
            s.carried = trio.Event()
            s.go.set()
            try:
                ino.last = await self.child.writev(gfid, coalesce(batch), None,
                                                   setattr_args(s.fields))
            finally:
                s.carried.set()
        self._learn(ino.last, grown=True)
