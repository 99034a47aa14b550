"""A minimal pyfuse3 passthrough: mirrors one local directory at a mount point.

Usage: ``python bench/passthroughfs.py SRC MNT [--debug]``. It runs in the
foreground until unmounted (``fusermount3 -u MNT``) or sent SIGTERM/SIGINT.

It is the benchmark's yardstick for "plain FUSE in Python": every figure of the
pyglfs client is compared with this filesystem measured in the same run, so it
must be correct (a wrong shortcut would flatter or hurt the ratio) and about as
lean as a careful pyfuse3 filesystem can be. Entry and attribute timeouts are 0,
as in pyfuse3's own example, so the kernel asks for every lookup and stat.

Inode model. A FUSE inode number is the source file's ``st_ino`` (with the
source root and inode 1 swapped, because FUSE's root is 1). The passthrough
knows an inode while the kernel holds a lookup count on it: lookup, create,
mkdir, mknod, symlink, link and every accepted readdirplus entry add one;
``forget`` subtracts and drops the node at zero. A node stores the (parent
inode, name) of the link it was reached by, not a path, so renaming a
directory never leaves stale paths below it; a path is rebuilt by walking up
to the root. Open handles are plain file descriptors; a node remembers its open
fds so that an unlinked but open file can still be stat'ed. SRC must be a single
filesystem (no mount points below it), or inode numbers could collide.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import functools
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

log = logging.getLogger(__name__)

ROOT = pyfuse3.ROOT_INODE
_MAX_DEPTH = 4096
_T = TypeVar("_T")
_P = ParamSpec("_P")

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def _renameat2(old: bytes, new: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE, which os.rename lacks."""
    if _libc.renameat2(_AT_FDCWD, old, _AT_FDCWD, new, ctypes.c_uint(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _fuse_op(
    fn: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Turn OSError into FUSEError and anything unexpected into a logged EIO.

    An exception other than FUSEError leaving a handler ends the whole FUSE
    session, so no handler may let one escape.
    """

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class _Node:
    """One inode the kernel holds a lookup count on."""

    __slots__ = ("lookups", "parent", "name", "extra", "fds")

    def __init__(self, parent: int, name: bytes) -> None:
        self.lookups = 0
        self.parent = parent
        self.name = name
        # further (parent, name) links of a hard-linked file, usually None
        self.extra: set[tuple[int, bytes]] | None = None
        self.fds: list[int] | None = None


class Passthrough(pyfuse3.Operations):
    """pyfuse3 operations that forward every request to a source directory."""

    enable_writeback_cache = False

    def __init__(self, source: str, io_limiter: trio.CapacityLimiter) -> None:
        super().__init__()
        self._root = os.fsencode(os.path.abspath(source))
        st = os.lstat(self._root)
        self._root_ino = st.st_ino
        self._nodes: dict[int, _Node] = {}
        self._fh_ino: dict[int, int] = {}
        self._dirs: dict[int, tuple[int, int, list[bytes]]] = {}
        self._next_dir_fh = 1
        self._limiter = io_limiter

    # -- inode bookkeeping -------------------------------------------------

    def _ino(self, st_ino: int) -> int:
        if st_ino == self._root_ino:
            return ROOT
        if st_ino == ROOT:
            return self._root_ino
        return st_ino

    def _path(self, ino: int) -> bytes:
        parts: list[bytes] = []
        for _ in range(_MAX_DEPTH):
            if ino == ROOT:
                break
            node = self._nodes.get(ino)
            if node is None or node.parent == 0:
                raise pyfuse3.FUSEError(errno.ESTALE)
            parts.append(node.name)
            ino = node.parent
        else:
            raise pyfuse3.FUSEError(errno.ELOOP)
        parts.append(self._root)
        parts.reverse()
        return b"/".join(parts)

    def _child(self, parent: int, name: bytes) -> bytes:
        return self._path(parent) + b"/" + name

    def _remember(self, ino: int, parent: int, name: bytes) -> None:
        """Add one lookup count to ``ino``, reached as ``name`` in ``parent``."""
        if ino == ROOT:
            return
        node = self._nodes.get(ino)
        if node is None:
            node = self._nodes[ino] = _Node(parent, name)
        elif node.parent != parent or node.name != name:
            if node.parent == 0:
                node.parent, node.name = parent, name
            else:
                if node.extra is None:
                    node.extra = set()
                node.extra.add((parent, name))
        node.lookups += 1

    def _drop_link(self, ino: int, parent: int, name: bytes) -> None:
        """Forget that ``name`` in ``parent`` leads to ``ino`` (unlinked or replaced)."""
        node = self._nodes.get(ino)
        if node is None:
            return
        if node.parent == parent and node.name == name:
            if node.extra:
                node.parent, node.name = node.extra.pop()
            else:
                node.parent, node.name = 0, b""
        elif node.extra:
            node.extra.discard((parent, name))

    def _move_link(self, ino: int, old: tuple[int, bytes], new: tuple[int, bytes]) -> None:
        node = self._nodes.get(ino)
        if node is None:
            return
        if (node.parent, node.name) == old:
            node.parent, node.name = new
        elif node.extra and old in node.extra:
            node.extra.discard(old)
            node.extra.add(new)

    def _attr(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._ino(st.st_ino)
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        a.st_mode = st.st_mode
        a.st_nlink = st.st_nlink
        a.st_uid = st.st_uid
        a.st_gid = st.st_gid
        a.st_rdev = st.st_rdev
        a.st_size = st.st_size
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        return a

    def _stat_ino(self, ino: int) -> os.stat_result:
        node = self._nodes.get(ino)
        if node is not None and node.fds:
            return os.fstat(node.fds[0])
        return os.lstat(self._path(ino))

    def _new_entry(self, parent: int, name: bytes, path: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        """Give a just-created entry the caller's ownership, remember it, return its attributes."""
        if ctx.uid != 0 or ctx.gid != 0:
            pst = os.lstat(self._path(parent))
            gid = -1 if pst.st_mode & stat.S_ISGID else ctx.gid
            os.lchown(path, ctx.uid, gid)
        st = os.lstat(path)
        attr = self._attr(st)
        self._remember(attr.st_ino, parent, name)
        return attr

    def _times(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any) -> tuple[int, int]:
        cur = self._stat_ino(inode)
        atime = attr.st_atime_ns if fields.update_atime else cur.st_atime_ns
        mtime = attr.st_mtime_ns if fields.update_mtime else cur.st_mtime_ns
        return atime, mtime

    def _setattr_fd(self, fd: int, attr: pyfuse3.EntryAttributes, fields: Any, inode: int) -> None:
        if fields.update_size:
            os.ftruncate(fd, attr.st_size)
        if fields.update_mode:
            os.fchmod(fd, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.fchown(fd, attr.st_uid if fields.update_uid else -1,
                      attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            os.utime(fd, ns=self._times(inode, attr, fields))

    def _setattr_path(
        self, path: bytes, attr: pyfuse3.EntryAttributes, fields: Any, inode: int
    ) -> None:
        if fields.update_size:
            os.truncate(path, attr.st_size)
        if fields.update_mode:
            # Linux cannot chmod a symlink itself; the kernel never asks for it
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.lchown(path, attr.st_uid if fields.update_uid else -1,
                      attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            os.utime(path, ns=self._times(inode, attr, fields), follow_symlinks=False)

    # -- entries -----------------------------------------------------------

    @_fuse_op
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if name == b"." or name == b"..":
            ino = parent_inode
            if name == b".." and ino != ROOT:
                ino = self._nodes[ino].parent or ROOT
            attr = self._attr(self._stat_ino(ino))
            if ino != ROOT:
                self._nodes[ino].lookups += 1
            return attr
        st = os.lstat(self._child(parent_inode, name))
        attr = self._attr(st)
        self._remember(attr.st_ino, parent_inode, name)
        return attr

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        nodes = self._nodes
        for ino, n in inode_list:
            node = nodes.get(ino)
            if node is None:
                continue
            node.lookups -= n
            if node.lookups <= 0:
                del nodes[ino]

    @_fuse_op
    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attr(self._stat_ino(inode))

    @_fuse_op
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        if fh is not None:
            self._setattr_fd(fh, attr, fields, inode)
        else:
            self._setattr_path(self._path(inode), attr, fields, inode)
        return self._attr(self._stat_ino(inode))

    @_fuse_op
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return os.readlink(self._path(inode))

    @_fuse_op
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        os.mknod(path, mode & ~ctx.umask, rdev)
        return self._new_entry(parent_inode, name, path, ctx)

    @_fuse_op
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        os.mkdir(path, mode & ~ctx.umask)
        return self._new_entry(parent_inode, name, path, ctx)

    @_fuse_op
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        os.symlink(target, path)
        return self._new_entry(parent_inode, name, path, ctx)

    @_fuse_op
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._child(new_parent_inode, new_name)
        os.link(self._path(inode), path, follow_symlinks=False)
        attr = self._attr(os.lstat(path))
        self._remember(attr.st_ino, new_parent_inode, new_name)
        return attr

    @_fuse_op
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        ino = self._ino(os.lstat(path).st_ino)
        os.unlink(path)
        self._drop_link(ino, parent_inode, name)

    @_fuse_op
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        ino = self._ino(os.lstat(path).st_ino)
        os.rmdir(path)
        self._drop_link(ino, parent_inode, name)

    @_fuse_op
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        moved = self._ino(os.lstat(old).st_ino)
        try:
            replaced: int | None = self._ino(os.lstat(new).st_ino)
        except FileNotFoundError:
            replaced = None
        if flags:
            _renameat2(old, new, flags)
        else:
            os.rename(old, new)
        old_link = (parent_inode_old, name_old)
        new_link = (parent_inode_new, name_new)
        if replaced is not None and replaced != moved:
            if flags & pyfuse3.RENAME_EXCHANGE:
                self._move_link(replaced, new_link, old_link)
            else:
                self._drop_link(replaced, *new_link)
        self._move_link(moved, old_link, new_link)

    # -- directories -------------------------------------------------------

    @_fuse_op
    async def opendir(self, inode: int, ctx: Any) -> int:
        path = self._path(inode)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = os.listdir(path)
        except BaseException:
            os.close(dfd)
            raise
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        # A snapshot taken at opendir makes the index a stable cookie: no entry
        # is skipped or repeated while the directory changes under the listing.
        self._dirs[fh] = (dfd, inode, names)
        return fh

    @_fuse_op
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        dfd, parent, names = self._dirs[fh]
        # cookies: 1 after ".", 2 after "..", i + 3 after names[i]
        if start_id == 0:
            if not pyfuse3.readdir_reply(token, b".", self._attr(os.fstat(dfd)), 1):
                return
            start_id = 1
        if start_id == 1:
            up = self._nodes[parent].parent or ROOT if parent != ROOT else ROOT
            if not pyfuse3.readdir_reply(token, b"..", self._attr(self._stat_ino(up)), 2):
                return
            start_id = 2
        for i in range(start_id - 2, len(names)):
            name = names[i]
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            attr = self._attr(st)
            if not pyfuse3.readdir_reply(token, name, attr, i + 3):
                break
            self._remember(attr.st_ino, parent, name)

    @_fuse_op
    async def releasedir(self, fh: int) -> None:
        dfd, _, _ = self._dirs.pop(fh)
        os.close(dfd)

    @_fuse_op
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        dfd = self._dirs[fh][0]
        await trio.to_thread.run_sync(os.fsync, dfd, limiter=self._limiter)

    # -- files -------------------------------------------------------------

    def _track_fd(self, ino: int, fd: int) -> None:
        self._fh_ino[fd] = ino
        node = self._nodes.get(ino)
        if node is not None:
            if node.fds is None:
                node.fds = [fd]
            else:
                node.fds.append(fd)

    @_fuse_op
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        self._track_fd(inode, fd)
        return pyfuse3.FileInfo(fh=fd)

    @_fuse_op
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT, mode & ~ctx.umask)
        try:
            attr = self._new_entry(parent_inode, name, path, ctx)
        except BaseException:
            os.close(fd)
            raise
        self._track_fd(attr.st_ino, fd)
        return pyfuse3.FileInfo(fh=fd), attr

    @_fuse_op
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @_fuse_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    @_fuse_op
    async def flush(self, fh: int) -> None:
        return None

    @_fuse_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        fn = os.fdatasync if datasync else os.fsync
        await trio.to_thread.run_sync(fn, fh, limiter=self._limiter)

    @_fuse_op
    async def release(self, fh: int) -> None:
        ino = self._fh_ino.pop(fh, None)
        node = self._nodes.get(ino) if ino is not None else None
        if node is not None and node.fds:
            node.fds.remove(fh)
            if not node.fds:
                node.fds = None
        os.close(fh)

    # -- filesystem and xattrs --------------------------------------------

    @_fuse_op
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self._root)
        out = pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax"):
            setattr(out, f, getattr(sv, f))
        return out

    @_fuse_op
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        try:
            return os.getxattr(self._path(inode), name, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @_fuse_op
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        os.setxattr(self._path(inode), name, value, follow_symlinks=False)

    @_fuse_op
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [os.fsencode(n) for n in os.listxattr(self._path(inode), follow_symlinks=False)]

    @_fuse_op
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        os.removexattr(self._path(inode), name, follow_symlinks=False)

    def close_all(self) -> None:
        """Close every descriptor still open when the session ends."""
        for fd in list(self._fh_ino):
            os.close(fd)
        self._fh_ino.clear()
        for dfd, _, _ in self._dirs.values():
            os.close(dfd)
        self._dirs.clear()
        self._nodes.clear()


async def _serve() -> bool:
    """Run the session; True when a signal stopped it (the mount is still there)."""
    stopped_by_signal = False
    async with trio.open_nursery() as nursery:
        async def stop_on_signal() -> None:
            nonlocal stopped_by_signal
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stopped_by_signal = True
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    return stopped_by_signal


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="directory to mirror")
    ap.add_argument("mountpoint")
    ap.add_argument("--debug", action="store_true", help="log every error at DEBUG level")
    ap.add_argument("--fsync-threads", type=int, default=4,
                    help="threads for fsync (blocking); default 4")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not os.path.isdir(args.source):
        print(f"passthroughfs: source {args.source!r} is not a directory", file=sys.stderr)
        return 2
    os.umask(0)
    ops = Passthrough(args.source, trio.CapacityLimiter(args.fsync_threads))
    options = set(pyfuse3.default_options)
    options.add("fsname=passthroughfs")
    options.add("subtype=passthroughfs")
    pyfuse3.init(ops, args.mountpoint, options)
    # Never stat the mount point here: this process is the one that would have
    # to answer, so the call would hang forever.
    unmount = False
    try:
        unmount = trio.run(_serve)
    finally:
        pyfuse3.close(unmount=unmount)
        ops.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
