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

``open`` and ``release`` are counted per connection (``conn_id``): a file whose
last name is unlinked while a connection holds it open keeps its handle, and so
its data, until the last release (or ``release_all`` when that connection goes).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from pyglfs.brickd import linux
from pyglfs.brickd.checksum import block_checksums
from pyglfs.brickd.names import handle_rel
from pyglfs.brickd.resolve import StoreCore
from pyglfs.rpc.brickops import MAX_IO

BIG_IO = 64 * 1024  # I/O under this never awaits: BrickStore.inline_when relies on it
INLINE_IO_MAX = 1024 * 1024
SLOW_WRITE = 0.02
SLOW_BACKOFF = 2.0
_OFF_MAX = (1 << 63) - 1
T = TypeVar("T")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write")
        done += n


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
