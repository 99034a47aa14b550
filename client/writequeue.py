"""What write-behind keeps queued per inode, and how small writes form batches.

The bookkeeping of ``writebehind``, free of tasks and layers: a queued write or
setattr (``QueuedWrite``, ``QueuedSetattr``) with the event its waiters wait
on, an inode's queue (``InodeQueue``), the batch the next request carries
(``take_batch``, ``coalesce``), and the attributes queued changes will give
(``with_setattrs``, ``covering``).
"""

from __future__ import annotations

import stat

import trio

from pyglfs.rpc.brickops import COMPOUND_MAX, Iatt

OFF_MAX = (1 << 63) - 1
BATCH_OPS = COMPOUND_MAX
BATCH_BYTES = 1 << 20
"""Bounds of one batch: writes (sub-ops of one brick request) and bytes."""


class QueuedWrite:
    """A queued change; ``data`` and ``deps`` (earlier queued changes it overlaps)
    are kept only while a small write waits for its batch."""

    __slots__ = ("start", "end", "nbytes", "done", "data", "deps")
    kind = "write"

    def __init__(self, start: int, end: int, nbytes: int) -> None:
        self.start = start
        self.end = end
        self.nbytes = nbytes
        self.done = trio.Event()
        self.data = b""
        self.deps: list[QueuedWrite] = []

    def describe(self) -> str:
        return f"write of {self.nbytes} bytes at {self.start}"


class InodeQueue:
    """Queued writes of one gfid, in the order they were made, and a failure to
    report. ``unsent``: the small writes among them not yet in a batch, in order;
    ``senders``: tasks sending batches of them; ``setattrs``: how many of them are
    ``QueuedSetattr``; ``releases``: closes of the inode whose release waits for
    the last queued change (release-behind); ``held``: the first batch of a new
    file waits for its close, nothing else of it was sent; ``closing``: its last
    open was closed with flush-behind meanwhile, so the batch joins other
    files' (writebatch.py); ``pgfid``: the directory it was created in here, if it
    was (a recall of that directory's lease sends its writes first)."""

    __slots__ = ("queued", "nbytes", "error", "last", "flush_wanted", "unsent",
                 "unsent_bytes", "senders", "urgent", "hurry", "setattrs", "carried",
                 "releases", "held", "closing", "pgfid")

    def __init__(self) -> None:
        self.queued: list[QueuedWrite] = []
        self.nbytes = 0
        self.error: OSError | None = None
        self.last: Iatt | None = None
        self.flush_wanted = False
        self.unsent: list[QueuedWrite] = []
        self.unsent_bytes = 0
        self.senders = 0
        self.urgent = False
        self.hurry: trio.Event | None = None
        self.setattrs = 0
        self.carried = False
        self.releases = 0
        self.held = False
        self.closing = False
        self.pgfid: bytes | None = None


class QueuedSetattr(QueuedWrite):
    """Queued setattrs of one gfid, merged into ``fields``; spans every offset, so
    writes made after it wait for it. ``go`` sends it before ``SETATTR_DELAY``;
    ``carried``: set once the batch of writes that took it along has landed."""

    __slots__ = ("fields", "go", "sent", "ctime_ns", "carried")
    kind = "setattr"

    def __init__(self) -> None:
        super().__init__(0, OFF_MAX, 0)
        self.fields: dict[str, int] = {}
        self.go = trio.Event()
        self.sent = False
        self.ctime_ns = 0
        self.carried: trio.Event | None = None

    def describe(self) -> str:
        return f"setattr {self.fields}"


class OpenInode:
    """A gfid open here: its opens, its attributes as the bricks last answered,
    whether an open appends (its writes' offsets come from the bricks' size), and
    whether it was created here and nothing was sent of it yet (``fresh``), and
    whether its first batch went without waiting for its attributes (``missed``),
    and the directory it was created in here (``pgfid``)."""

    __slots__ = ("count", "iatt", "append", "fresh", "missed", "pgfid")

    def __init__(self, iatt: Iatt) -> None:
        self.count = 1
        self.iatt = iatt
        self.append = False
        self.fresh = False
        self.missed = False
        self.pgfid: bytes | None = None


def take_batch(ino: InodeQueue) -> list[QueuedWrite]:
    """Take the next batch off ``ino.unsent``: in order and within the batch
    bounds, the writes that wait only for writes before them in it. A write
    left out stays in ``unsent``, and so does every later write overlapping
    it (those have it among their ``deps``)."""
    batch: list[QueuedWrite] = []
    left: list[QueuedWrite] = []
    nbytes = 0
    unsent = ino.unsent
    for k, w in enumerate(unsent):
        if len(batch) == BATCH_OPS or (batch and nbytes + w.nbytes > BATCH_BYTES):
            left += unsent[k:]
            break
        if w.deps and any(not d.done.is_set() and d not in batch for d in w.deps):
            left.append(w)
            continue
        batch.append(w)
        nbytes += w.nbytes
    if batch:
        ino.unsent = left
        ino.unsent_bytes -= nbytes
    return batch


def carried_setattr(ino: InodeQueue, batch: list[QueuedWrite]) -> QueuedSetattr | None:
    """The queued setattr that can ride with ``batch``: the inode's last queued
    change, not sent, when everything else queued is in the batch."""
    s = ino.queued[-1] if ino.queued else None
    if (isinstance(s, QueuedSetattr) and not s.sent and not ino.unsent
            and len(ino.queued) == len(batch) + 1):
        return s
    return None


def setattr_args(fields: dict[str, int]) -> dict[str, int]:
    """A queued setattr's fields as ``setattr`` arguments (the ones set)."""
    return {k: fields[k] for k in ("mode", "uid", "gid", "atime_ns", "mtime_ns") if k in fields}


def coalesce(batch: list[QueuedWrite]) -> list[tuple[int, bytes]]:
    """The batch's writes as ``(offset, data)``, each run of writes that follow
    one another end to start joined into one."""
    out: list[tuple[int, bytes]] = []
    run: list[bytes] = []
    start = end = -1
    for w in batch:
        if run and w.start == end:
            run.append(w.data)
        else:
            if run:
                out.append((start, run[0] if len(run) == 1 else b"".join(run)))
            run = [w.data]
            start = w.start
        end = w.start + len(w.data)
    out.append((start, run[0] if len(run) == 1 else b"".join(run)))
    return out


def describe(ws: list[QueuedWrite]) -> str:
    more = f" and {len(ws) - 1} more" if len(ws) > 1 else ""
    return ws[0].describe() + more


def with_setattrs(iatt: Iatt, queued: list[QueuedWrite]) -> Iatt:
    """``iatt`` as the queued setattrs among ``queued`` will leave it."""
    for s in queued:
        if isinstance(s, QueuedSetattr):
            iatt = with_fields(iatt, s.fields, s.ctime_ns)
    return iatt


def with_fields(iatt: Iatt, f: dict[str, int], ctime_ns: int) -> Iatt:
    mode = f.get("mode")
    return iatt._replace(
        mode=iatt.mode if mode is None else iatt.mode & ~0o7777 | mode & 0o7777,
        uid=f.get("uid", iatt.uid), gid=f.get("gid", iatt.gid),
        atime_ns=f.get("atime_ns", iatt.atime_ns), mtime_ns=f.get("mtime_ns", iatt.mtime_ns),
        ctime_ns=max(iatt.ctime_ns, ctime_ns))


def covering(gfid: bytes, last: Iatt | None, end: int) -> Iatt:
    if last is None:
        return Iatt(gfid, 0, stat.S_IFREG, 1, 0, 0, 0, end, 0, 0, 0, 0)
    return last._replace(size=max(last.size, end))
