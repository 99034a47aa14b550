"""BrickStore: POSIX storage under one brick root, addressed by gfid.

One async method per storage op of ``rpc/brickops.py``, with the same name and
keyword arguments, returning exactly the reply value documented there, so the
server runs ``await getattr(store, op)(**args)`` after ``brickops.validate``.
Every failure is an ``OSError`` carrying the errno the client should see.

The ops are grouped by family (entries, attrs, fileio, xattrs, readdir); this
module only opens and closes a brick. Ops run on the trio thread with plain
``os`` calls and no await, except big reads/writes, fsync, fallocate and
checksums, which go to worker threads: between two awaits nothing else touches
the store, so each op is atomic with respect to the others.

Only ``open`` and ``release`` (and the synchronous ``release_all``) take a
``conn_id`` keyword: the server's id of the client connection.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, overload

import trio

from pyglfs.brickd import changelog, layout
from pyglfs.brickd.attrs import AttrOps
from pyglfs.brickd.entries import EntryOps
from pyglfs.brickd.fileio import BIG_IO, FileOps
from pyglfs.brickd.layout import BrickRefused
from pyglfs.brickd.readdir import ReaddirOps
from pyglfs.brickd.resolve import FdCache
from pyglfs.brickd.xattrs import XattrOps

__all__ = ["BrickRefused", "BrickStore", "open_store"]

log = logging.getLogger(__name__)

_MIN_DIR_CACHE = 8


class _OpenAttr:
    """``BrickStore.open(root, volume_id)`` opens a brick (see :func:`open_store`);
    ``store.open(gfid=, flags=)`` on an instance is the storage op of that name."""

    @overload
    def __get__(self, obj: None, cls: type[BrickStore]) -> Callable[..., BrickStore]: ...

    @overload
    def __get__(self, obj: BrickStore, cls: type[BrickStore] | None = None,
                ) -> Callable[..., Awaitable[dict[str, Any]]]: ...

    def __get__(self, obj: BrickStore | None, cls: type[BrickStore] | None = None) -> Any:
        if obj is None:
            return open_store
        return FileOps.open.__get__(obj, type(obj))


class BrickStore(EntryOps, AttrOps, FileOps, XattrOps, ReaddirOps):
    """The storage of one brick. Create it with :func:`open_store` (also reachable as
    ``BrickStore.open``); close it with :meth:`close`."""

    # Ops that never await (no worker thread): the server may run them in the
    # connection's reader task instead of spawning a task per request.
    inline_ops = frozenset({
        "statfs", "lookup", "lookup_gfid", "stat", "setattr", "create", "mkdir", "mknod",
        "symlink", "link", "unlink", "rmdir", "rename", "readlink", "open", "release",
        "flush", "readdir", "getxattr", "listxattr", "setxattr", "removexattr", "xattrop",
    })

    open = _OpenAttr()  # type: ignore[assignment]

    @staticmethod
    def inline_when(op: str, args: dict[str, Any]) -> bool:
        """Reads and writes under ``BIG_IO`` bytes never await (``FileOps``): they
        may run in the reader task too. Bigger ones may go to a worker thread and
        would hold up the connection's other requests meanwhile. ``args`` are not
        validated yet: anything unexpected answers False."""
        if op == "read":
            size = args.get("size")
            return type(size) is int and size < BIG_IO
        if op == "write":
            data = args.get("data")
            return type(data) is bytes and len(data) < BIG_IO
        return False

    def _close_fds(self) -> None:
        self.dirs.clear()
        self.files.clear()
        for fd in (self.handles_fd, self.internal_fd, self.root_fd):
            if fd >= 0:
                os.close(fd)
        self.handles_fd = self.internal_fd = self.root_fd = -1

    def close(self) -> None:
        """Close every fd the store holds. Opens still counted are forgotten: a
        file unlinked while open loses its handle at the next start."""
        if self.root_fd < 0:
            return
        self.heal_index.close()
        self._close_fds()

    async def aclose(self) -> None:
        self.close()


def open_store(root: str | os.PathLike[str], volume_id: str, *, create: bool = True,
               dir_cache: int = 1024, file_cache: int = 256, io_threads: int = 4,
               ) -> BrickStore:
    """Prove ``root`` is this volume's brick and open it for serving.

    Refuses (BrickRefused) a missing or non-directory root, a filesystem without
    trusted.* xattrs, and a root bound to another volume id. With ``create`` an
    unbound root is bound to ``volume_id`` and the internal directory is made;
    without it the brick must already be initialised. Handles left by inodes
    that lost their last name in a crash are removed. The cache sizes bound
    the directory and file fds kept open.
    """
    path = os.fspath(root)
    root_fd = layout.open_root(path)
    try:
        layout.probe_xattrs(path, root_fd)
        layout.check_volume_id(path, root_fd, volume_id, create=create)
        internal_fd, handles_fd = layout.prepare_internal(path, root_fd, create=create)
    except BaseException:
        os.close(root_fd)
        raise
    store = BrickStore.__new__(BrickStore)
    store.root = path
    store.root_fd = root_fd
    store.internal_fd = internal_fd
    store.handles_fd = handles_fd
    store.dirs = FdCache(max(dir_cache, _MIN_DIR_CACHE))
    store.files = FdCache(file_cache)
    store.io_limiter = trio.CapacityLimiter(io_threads)
    store._opens = {}
    store._conn_opens = {}
    store._doomed = set()
    store._fanout1 = bytearray(256 // 8)
    store._fanout2 = bytearray(65536 // 8)
    store._afr_known = {}
    store._listings = OrderedDict()
    try:
        removed = layout.remove_orphans(handles_fd)
        if removed:
            log.info("brick=%s removed %d orphan handles", path, removed)
        store.heal_index = changelog.HealIndex(internal_fd)
    except BaseException:
        store._close_fds()
        raise
    log.info("brick=%s open for volume %s", path, volume_id)
    return store
