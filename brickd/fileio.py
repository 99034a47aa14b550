"""File I/O ops: open, release, flush, fsync, read, write, fallocate, checksum.

Regular files are reached through their handle and kept open in a bounded LRU,
so a stream of writes does not reopen the file each time. fsync, fallocate,
checksums and I/O that may wait on the disk run in worker threads on a private
dup of the fd, so an eviction meanwhile cannot close it under them.

Writes up to ``INLINE_IO_MAX`` run inline on the event loop: a buffered write
is a copy into the page cache (about 0.3 ms per MiB here), cheaper than the hop
to a worker thread and back. When one inline write takes longer than
``SLOW_WRITE`` (the kernel throttling dirty pages, a full disk queue), writes go
through threads for ``SLOW_BACKOFF`` seconds, so a stalling disk does not stall
every other request of the brick. Reads up to ``INLINE_IO_MAX`` are tried
inline with ``RWF_NOWAIT`` (served only from the page cache, never waiting on
the disk) and go to a thread when the data is not cached.

Sequential writes of ``BIG_IO`` or more are tracked for drop-behind
(``dropbehind.py``, the ``storage.drop-behind`` volume option, on by default):
every 8 MiB of a stream the brick starts writeback and drops the clean pages
16 MiB behind, so a big file's data recycles a few MiB of page cache instead
of faulting in fresh memory for all of it. The data is then not cached in the
brick after the write; fsync semantics do not change.

With ``direct_writes`` (the ``storage.direct-writes`` volume option, off by
default), big writes aligned to ``DIRECT_ALIGN`` in offset and length (a
sequential writer's 1 MiB blocks) bypass the brick's page cache instead. A
1 MiB write costs the brick ~0.4 ms of CPU that way (thread hop, a copy into an
aligned buffer, the direct I/O itself, which the request waits for) and leaves
nothing for writeback or ``fsync`` to do later. Each direct write opens its own
O_DIRECT description of the file (through ``/proc/self/fd``; a dup would share
the cached fd's flags) in a worker thread and closes it afterwards, so no extra
fd outlives a write. Linux keeps direct and buffered I/O of one file coherent
(a direct write first writes back and then drops the cached pages of its
range), so later buffered reads and writes see the data; ``fsync`` still syncs
the file, which persists the size and allocation that O_DIRECT alone does not.
Unaligned and small writes stay buffered (under ``DIRECT_MIN`` the fixed costs
of a direct write do not pay); a filesystem that refuses O_DIRECT turns it off
for good.

``open`` and ``release`` are counted per connection (``conn_id``): a file whose
last name is unlinked while a connection holds it open keeps its handle, and so
its data, until the last release (or ``release_all`` when that connection goes).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import trio

from pyglfs.brickd import linux
from pyglfs.brickd.checksum import block_checksums
from pyglfs.brickd.dropbehind import DropBehind, advise
from pyglfs.brickd.names import handle_rel
from pyglfs.brickd.resolve import StoreCore
from pyglfs.rpc.brickops import MAX_IO

BIG_IO = 64 * 1024  # I/O under this never awaits: BrickStore.inline_when relies on it
INLINE_IO_MAX = 1024 * 1024
SLOW_WRITE = 0.02
SLOW_BACKOFF = 2.0
DIRECT_MIN = 256 * 1024
DIRECT_ALIGN = 4096
_DIRECT_MASK = DIRECT_ALIGN - 1
# Why an O_DIRECT reopen can fail for every file of this brick: the filesystem
# has no O_DIRECT, there is no /proc, a security module forbids the reopen.
_OPEN_REFUSED = frozenset({errno.EINVAL, errno.ENOENT, errno.EACCES, errno.EOPNOTSUPP})
_OFF_MAX = (1 << 63) - 1
T = TypeVar("T")

log = logging.getLogger(__name__)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    n = os.pwrite(fd, data, offset)
    if n == len(data):
        return
    view = memoryview(data)
    done = n if n > 0 else 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write")
        done += n


class _AlignedBuffers:
    """Page-aligned buffers (anonymous mmaps) for O_DIRECT writes, reused: a fresh
    mmap per write would fault in its pages every time. Up to ``keep`` buffers of
    at most ``keep_size`` bytes are kept; safe to use from worker threads."""

    def __init__(self, keep: int = 8, keep_size: int = 4 * 1024 * 1024) -> None:
        self._free: list[mmap.mmap] = []
        self._keep = keep
        self._keep_size = keep_size
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return mmap.mmap(-1, (size + mmap.PAGESIZE - 1) & -mmap.PAGESIZE)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(buf) <= self._keep_size and len(self._free) < self._keep:
                self._free.append(buf)
                return
        buf.close()


_buffers = _AlignedBuffers()


def _pwrite_direct(fd: int, data: bytes, offset: int) -> bool:
    """Write ``data`` at ``offset`` through a new O_DIRECT description of ``fd``'s
    file; the caller checked the alignment. False, with nothing written, when
    O_DIRECT writes cannot work here: the filesystem refuses them (EINVAL), or
    the file cannot be reopened through /proc (not mounted, not permitted).
    Any other failure to reopen (no fds left, an immutable file) sends this one
    write the buffered way, which reports its own error if it has one."""
    try:
        dfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in _OPEN_REFUSED:
            return False
        _pwrite_all(fd, data, offset)
        return True
    size = len(data)
    buf = _buffers.take(size)
    try:
        buf[:size] = data
        with memoryview(buf) as whole, whole[:size] as view:
            done = 0
            while done < size:
                try:
                    n = os.pwrite(dfd, view[done:], offset + done)
                except OSError as e:
                    if e.errno != errno.EINVAL or done:
                        raise
                    return False
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                done += n
                if done < size and done & _DIRECT_MASK:
                    # A short write that ends off alignment: the rest goes buffered.
                    _pwrite_all(fd, data[done:], offset + done)
                    break
    finally:
        os.close(dfd)
        _buffers.give(buf)
    return True


def _pread_nowait(fd: int, size: int, offset: int) -> bytes | None:
    """``size`` bytes at ``offset`` if the page cache has all of them, else None.

    Raises OSError(EOPNOTSUPP) where the filesystem has no RWF_NOWAIT reads.
    """
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    # A short read may be the end of the file or an uncached page: only a
    # blocking read tells them apart.
    return bytes(buf) if n == size else None


class FileOps(StoreCore):
    io_limiter: trio.CapacityLimiter
    _inline_writes_after = 0.0
    _nowait_reads = True
    # Switches set per brick from the volume options (brickd/main.py); see the
    # module doc.
    direct_writes = False
    drop_behind = True
    streams: DropBehind | None = None

    async def _in_thread(self, fd: int, fn: Callable[[int], T]) -> T:
        """Run ``fn(dup of fd)`` in a worker thread."""
        dup = os.dup(fd)
        try:
            return await trio.to_thread.run_sync(fn, dup, limiter=self.io_limiter)
        finally:
            os.close(dup)

    async def open(self, gfid: bytes, flags: int, conn_id: int = 0) -> dict[str, Any]:
        """Count an open of regular file ``gfid`` by connection ``conn_id``.

        Only O_TRUNC among ``flags`` acts here; access modes were checked by the
        client's kernel. Directories are EISDIR, symlinks ELOOP, others EINVAL.
        Every open must be paired with a ``release`` (or ``release_all``).
        """
        fd = self._file_fd(gfid)
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
        self._count_open(gfid, conn_id)
        return {"iatt": self._iatt(gfid, os.stat(fd), False)}

    async def release(self, gfid: bytes, conn_id: int = 0) -> dict[str, Any]:
        """Undo one ``open`` of ``conn_id``; a release without an open is ignored."""
        per_conn = self._conn_opens.get(conn_id)
        if per_conn and per_conn.get(gfid):
            self._drop_opens(conn_id, gfid, 1)
        return {}

    def release_all(self, conn_id: int) -> None:
        """Release every open of a connection that went away (synchronous, never raises
        for files already gone)."""
        per_conn = self._conn_opens.get(conn_id)
        if not per_conn:
            self._conn_opens.pop(conn_id, None)
            return
        for gfid, n in list(per_conn.items()):
            self._drop_opens(conn_id, gfid, n)

    def _drop_opens(self, conn_id: int, gfid: bytes, n: int) -> None:
        per_conn = self._conn_opens[conn_id]
        left = per_conn[gfid] - n
        if left > 0:
            per_conn[gfid] = left
        else:
            del per_conn[gfid]
            if not per_conn:
                del self._conn_opens[conn_id]
        total = self._opens.get(gfid, 0) - n
        if total > 0:
            self._opens[gfid] = total
            return
        self._opens.pop(gfid, None)
        if gfid not in self._doomed:
            return
        self._doomed.discard(gfid)
        try:
            st = os.stat(handle_rel(gfid), dir_fd=self.handles_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if st.st_nlink <= 1:
            self._unlink_handle(gfid)
            self.files.drop(gfid)
            self.heal_index.note(gfid, {})

    async def flush(self, gfid: bytes) -> dict[str, Any]:
        """Nothing is buffered in the brick; only checks that ``gfid`` exists."""
        if self.files.get(gfid) is None:
            self._stat_gfid(gfid)
        return {}

    async def fsync(self, gfid: bytes, datasync: bool | None = None) -> dict[str, Any]:
        """fsync (or fdatasync) a file or directory, in a worker thread."""
        try:
            fd = self._file_fd(gfid)
        except IsADirectoryError:
            fd = self._dir_fd(gfid)
        await self._in_thread(fd, os.fdatasync if datasync else os.fsync)
        return {}

    async def read(self, gfid: bytes, offset: int, size: int) -> dict[str, Any]:
        """Up to ``size`` bytes at ``offset`` (short at end of file)."""
        if size > MAX_IO or offset > _OFF_MAX:
            raise OSError(errno.EINVAL, "read out of range")
        fd = self._file_fd(gfid)
        if size < BIG_IO:
            return {"data": os.pread(fd, size, offset)}
        if size <= INLINE_IO_MAX and self._nowait_reads:
            try:
                data = _pread_nowait(fd, size, offset)
            except OSError as e:
                if e.errno != errno.EOPNOTSUPP:
                    raise
                self._nowait_reads = False
            else:
                if data is not None:
                    return {"data": data}
        return {"data": await self._in_thread(fd, lambda f: os.pread(f, size, offset))}

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Write all of ``data`` at ``offset``; returns the post-write iatt."""
        if offset > _OFF_MAX:
            raise OSError(errno.EINVAL, "offset out of range")
        fd = self._file_fd(gfid)
        if xattrop:
            self._xattrop_fd(gfid, fd, xattrop)
        size = len(data)
        if size < BIG_IO:
            _pwrite_all(fd, data, offset)
            st = os.stat(fd)
        elif size >= DIRECT_MIN and not (offset | size) & _DIRECT_MASK and self.direct_writes:
            def direct(f: int) -> tuple[bool, os.stat_result]:
                if _pwrite_direct(f, data, offset):
                    return True, os.stat(f)
                _pwrite_all(f, data, offset)
                return False, os.stat(f)
            done, st = await self._in_thread(fd, direct)
            if done:
                return {"iatt": self._iatt(gfid, st, False)}
            if self.direct_writes:
                self.direct_writes = False
                log.info("brick=%s: O_DIRECT writes refused here; big writes stay buffered",
                         self.root)
        elif size <= INLINE_IO_MAX and time.monotonic() >= self._inline_writes_after:
            t0 = time.monotonic()
            _pwrite_all(fd, data, offset)
            st = os.stat(fd)
            t1 = time.monotonic()
            if t1 - t0 > SLOW_WRITE:
                self._inline_writes_after = t1 + SLOW_BACKOFF
        else:
            def work(f: int) -> os.stat_result:
                _pwrite_all(f, data, offset)
                return os.stat(f)
            st = await self._in_thread(fd, work)
        if self.drop_behind and size >= BIG_IO:
            if self.streams is None:
                self.streams = DropBehind()
            advice = self.streams.note(gfid, offset, size)
            if advice is not None:
                await self._in_thread(fd, partial(advise, advice=advice))
        return {"iatt": self._iatt(gfid, st, False)}

    async def fallocate(self, gfid: bytes, mode: int, offset: int, length: int,
                        xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """fallocate(2) with the client's mode bits (KEEP_SIZE, PUNCH_HOLE, ...)."""
        fd = self._file_fd(gfid)
        if xattrop:
            self._xattrop_fd(gfid, fd, xattrop)

        def work(f: int) -> os.stat_result:
            linux.fallocate(f, mode, offset, length)
            return os.stat(f)
        st = await self._in_thread(fd, work)
        return {"iatt": self._iatt(gfid, st, False)}

    async def checksum(self, gfid: bytes, offset: int, size: int, block: int,
                       ) -> dict[str, Any]:
        """xxh3_64 of each ``block`` bytes of the range, for diff heal."""
        if offset > _OFF_MAX or size > _OFF_MAX:
            raise OSError(errno.EINVAL, "checksum range out of range")
        fd = self._file_fd(gfid)
        sums = await self._in_thread(fd, lambda f: block_checksums(f, offset, size, block))
        return {"sums": sums}
