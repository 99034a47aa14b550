"""gfid -> inode resolution, and the state every family of brick ops shares.

A non-directory's handle is a hard link to it, so the inode is one ``*at()``
call away. A directory's handle is a symlink naming its parent's handle and its
own name; the brick never lets the kernel follow it. It reads the chain of
handles up to the root (or to a directory it already holds open), then opens
each name downwards with O_NOFOLLOW and checks that every directory it opened
carries the gfid it expected. Trees deeper than PATH_MAX work because no path
ever holds more than one user component.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any

from pyglfs.brickd import changelog
from pyglfs.brickd.names import (
    check_name,
    dir_handle_target,
    gfid_str,
    handle_dirs,
    handle_rel,
    parse_dir_handle,
    proc_path,
)
from pyglfs.rpc.brickops import AFR_PREFIX, GFID_XATTR, ROOT_GFID

log = logging.getLogger(__name__)

DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 1 << 20
_KEEP_ANCESTORS = 64
# New inodes whose changelog the brick knows without reading it (see _afr_known).
_KNOWN_MAX = 4096

# What resolve_xattr_target() returns: an open fd, or a path to use without
# following symlinks (for symlinks, fifos and devices, which are never opened).
XattrTarget = int | bytes


def estale(gfid: bytes) -> OSError:
    return OSError(errno.ESTALE, f"stale gfid {gfid_str(gfid)}")


class FdCache:
    """A bounded LRU of open fds keyed by gfid; it closes what it evicts.

    An fd from ``get`` stays valid until the next ``put``/``drop``: callers use it
    inline and ``os.dup`` it before handing it to a worker thread.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(1, maxsize)
        self._fds: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._fds)

    def get(self, key: bytes) -> int | None:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
        return fd

    def put(self, key: bytes, fd: int) -> None:
        old = self._fds.pop(key, None)
        if old is not None and old != fd:
            os.close(old)
        self._fds[key] = fd
        while len(self._fds) > self.maxsize:
            os.close(self._fds.popitem(last=False)[1])

    def drop(self, key: bytes) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def clear(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


def is_dir_handle(st: os.stat_result) -> bool:
    """A directory's handle: a symlink with one link (a user's symlink has >= 2)."""
    return stat.S_ISLNK(st.st_mode) and st.st_nlink == 1


class StoreCore:
    """State and helpers shared by the op families that make up BrickStore."""

    root: str
    root_fd: int
    internal_fd: int
    handles_fd: int
    heal_index: changelog.HealIndex
    dirs: FdCache
    files: FdCache
    _opens: dict[bytes, int]
    _conn_opens: dict[int, dict[bytes, int]]
    _doomed: set[bytes]
    _listings: OrderedDict[bytes, Any]
    # One bit per handle fan-out directory known to exist: 256 first-level
    # ("ab"), 65536 second-level ("ab/cd"), by the gfid's first one or two bytes.
    _fanout1: bytearray
    _fanout2: bytearray
    # The complete trusted.afr.* xattrs of inodes this brick made and has changed
    # since only through xattrop, until their counters are all zero again (a new
    # file's first write cycle): their pre-op and post-op need not read the
    # changelog back, nor list the inode's xattrs to keep the heal index exact.
    # Only xattrop writes these xattrs (clients get EPERM), so this is what the
    # disk holds; an entry that is evicted or dropped just means reading again.
    _afr_known: dict[bytes, dict[str, bytes]]

    # -- handles ---------------------------------------------------------------

    def _hstat(self, gfid: bytes) -> os.stat_result:
        """lstat of a gfid's handle; ESTALE when the gfid names nothing here."""
        try:
            return os.stat(handle_rel(gfid), dir_fd=self.handles_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise estale(gfid) from None

    def _ensure_fanout(self, gfid: bytes, missing: bool = False) -> None:
        """Make the gfid's fan-out directories, skipping those known to exist;
        ``missing``: a call just found them missing (whatever was known)."""
        i1 = gfid[0]
        i2 = (i1 << 8) | gfid[1]
        f1, f2 = self._fanout1, self._fanout2
        if missing:
            f2[i2 >> 3] &= ~(1 << (i2 & 7))
        elif f2[i2 >> 3] & (1 << (i2 & 7)):
            return
        top, sub = handle_dirs(gfid)
        for _ in range(2):
            if not f1[i1 >> 3] & (1 << (i1 & 7)):
                try:
                    os.mkdir(top, 0o700, dir_fd=self.handles_fd)
                except FileExistsError:
                    pass
                f1[i1 >> 3] |= 1 << (i1 & 7)
            try:
                os.mkdir(sub, 0o700, dir_fd=self.handles_fd)
            except FileExistsError:
                pass
            except FileNotFoundError:
                f1[i1 >> 3] &= ~(1 << (i1 & 7))  # removed behind the brick's back
                continue
            f2[i2 >> 3] |= 1 << (i2 & 7)
            return

    def _link_handle(self, pfd: int, name: bytes, gfid: bytes) -> None:
        """Hard-link the new non-directory ``name`` as the handle of ``gfid``.

        FileExistsError when ``gfid`` already names an inode here."""
        rel = handle_rel(gfid)
        self._ensure_fanout(gfid)
        for _ in range(2):
            try:
                os.link(name, rel, src_dir_fd=pfd, dst_dir_fd=self.handles_fd,
                        follow_symlinks=False)
                return
            except FileNotFoundError:
                self._ensure_fanout(gfid, missing=True)
        raise OSError(errno.EIO, f"cannot create handle for {gfid_str(gfid)}")

    def _symlink_dir_handle(self, gfid: bytes, pgfid: bytes, name: bytes) -> None:
        """The handle of new directory ``gfid`` (FileExistsError: gfid in use)."""
        rel = handle_rel(gfid)
        target = dir_handle_target(pgfid, name)
        self._ensure_fanout(gfid)
        for _ in range(2):
            try:
                os.symlink(target, rel, dir_fd=self.handles_fd)
                return
            except FileNotFoundError:
                self._ensure_fanout(gfid, missing=True)
        raise OSError(errno.EIO, f"cannot create handle for {gfid_str(gfid)}")

    def _move_dir_handle(self, gfid: bytes, pgfid: bytes, name: bytes) -> None:
        """Point a directory's handle at its new parent and name (atomically)."""
        rel = handle_rel(gfid)
        tmp = rel + b".new"
        try:
            os.unlink(tmp, dir_fd=self.handles_fd)
        except FileNotFoundError:
            pass
        self._ensure_fanout(gfid)
        os.symlink(dir_handle_target(pgfid, name), tmp, dir_fd=self.handles_fd)
        os.rename(tmp, rel, src_dir_fd=self.handles_fd, dst_dir_fd=self.handles_fd)

    def _unlink_handle(self, gfid: bytes) -> None:
        try:
            os.unlink(handle_rel(gfid), dir_fd=self.handles_fd)
        except FileNotFoundError:
            pass

    def _forget_dir(self, gfid: bytes) -> None:
        """A directory is gone: drop its handle, cached fd, listing and index entry."""
        self._unlink_handle(gfid)
        self._afr_known.pop(gfid, None)
        self.dirs.drop(gfid)
        self._listings.pop(gfid, None)
        self.heal_index.discard(gfid)

    def _count_open(self, gfid: bytes, conn_id: int) -> None:
        """Record one open of ``gfid`` by ``conn_id``: its data outlives its names."""
        per_conn = self._conn_opens.setdefault(conn_id, {})
        per_conn[gfid] = per_conn.get(gfid, 0) + 1
        self._opens[gfid] = self._opens.get(gfid, 0) + 1

    def _name_dropped(self, gfid: bytes, nlink_before: int) -> None:
        """A non-directory lost one name; remove its handle once no name is left.

        A file still open keeps its handle (and so its data) until the last release.
        """
        if nlink_before > 2:
            return
        if self._opens.get(gfid):
            self._doomed.add(gfid)
            return
        self._unlink_handle(gfid)
        self.files.drop(gfid)
        self._afr_known.pop(gfid, None)
        self.heal_index.discard(gfid)

    # -- resolution ------------------------------------------------------------

    def _parent(self, pgfid: bytes, name: bytes, hidden_errno: int = errno.EPERM) -> int:
        """Check an entry op's name and return its parent directory's fd."""
        check_name(name, at_root=pgfid == ROOT_GFID, hidden_errno=hidden_errno)
        return self._dir_fd(pgfid)

    def _dir_changed(self, gfid: bytes) -> None:
        """Entries of directory ``gfid`` changed: its cached listing is no longer current."""
        listing = self._listings.get(gfid)
        if listing is not None:
            listing.current = False

    def _dir_fd(self, gfid: bytes) -> int:
        """An open fd of directory ``gfid`` (ENOTDIR if it is no directory)."""
        if gfid == ROOT_GFID:
            return self.root_fd
        fd = self.dirs.get(gfid)
        if fd is not None:
            return fd
        if not is_dir_handle(self._hstat(gfid)):
            raise OSError(errno.ENOTDIR, f"gfid {gfid_str(gfid)} is not a directory")
        return self._walk(gfid)

    def _walk(self, gfid: bytes) -> int:
        chain: list[tuple[bytes, bytes]] = []
        g = gfid
        base = -1
        for _ in range(_MAX_DEPTH):
            if g == ROOT_GFID:
                base = self.root_fd
                break
            cached = self.dirs.get(g)
            if cached is not None:
                base = cached
                break
            try:
                target = os.readlink(handle_rel(g), dir_fd=self.handles_fd)
            except OSError:
                raise estale(gfid) from None
            parsed = parse_dir_handle(target)
            if parsed is None:
                raise estale(gfid)
            chain.append((g, parsed[1]))
            g = parsed[0]
        else:
            raise OSError(errno.ELOOP, f"handle chain of {gfid_str(gfid)} does not end")
        opened: list[tuple[bytes, int]] = []
        try:
            for g, name in reversed(chain):
                try:
                    fd = os.open(name, DIR_OPEN, dir_fd=base)
                except OSError:
                    raise estale(gfid) from None
                opened.append((g, fd))
                try:
                    ok = os.getxattr(fd, GFID_XATTR) == g
                except OSError:
                    ok = False
                if not ok:
                    raise estale(gfid)
                base = fd
        except BaseException:
            for _, fd in opened:
                os.close(fd)
            raise
        # Keep the target and its nearest ancestors; a walk never evicts more than
        # that, so an fd another caller fetched just before stays open.
        keep = min(_KEEP_ANCESTORS, self.dirs.maxsize // 4 + 1)
        for _g, fd in opened[:-keep]:
            os.close(fd)
        for g, fd in opened[-keep:]:
            self.dirs.put(g, fd)
        return base

    def _file_fd(self, gfid: bytes) -> int:
        """A read-write fd of regular file ``gfid`` (EISDIR, ELOOP or EINVAL otherwise)."""
        fd = self.files.get(gfid)
        if fd is not None:
            return fd
        if gfid == ROOT_GFID or self.dirs.get(gfid) is not None:
            raise OSError(errno.EISDIR, "is a directory")
        st = self._hstat(gfid)
        if not stat.S_ISREG(st.st_mode):
            if is_dir_handle(st):
                raise OSError(errno.EISDIR, "is a directory")
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, "is a symbolic link")
            raise OSError(errno.EINVAL, "not a regular file")
        fd = os.open(handle_rel(gfid), FILE_OPEN, dir_fd=self.handles_fd)
        self.files.put(gfid, fd)
        return fd

    def _stat_gfid(self, gfid: bytes) -> tuple[os.stat_result, bool]:
        """(attributes, is directory) of ``gfid``, in one syscall when possible."""
        if gfid == ROOT_GFID:
            return os.stat(self.root_fd), True
        fd = self.dirs.get(gfid)
        if fd is not None:
            return os.stat(fd), True
        fd = self.files.get(gfid)
        if fd is not None:
            return os.stat(fd), False
        st = self._hstat(gfid)
        if is_dir_handle(st):
            return os.stat(self._walk(gfid)), True
        return st, False

    def _xattr_target(self, gfid: bytes) -> XattrTarget:
        """Where xattr calls on ``gfid`` go: an fd, or a handle path (not followed)."""
        if gfid == ROOT_GFID:
            return self.root_fd
        fd = self.dirs.get(gfid)
        if fd is None:
            fd = self.files.get(gfid)
        if fd is not None:
            return fd
        st = self._hstat(gfid)
        if is_dir_handle(st):
            return self._walk(gfid)
        return proc_path(self.handles_fd, handle_rel(gfid))

    def _iatt(self, gfid: bytes, st: os.stat_result, is_dir: bool) -> list[Any]:
        """The wire iatt. A non-directory's handle link is not counted, nor is the
        root's ``.pyglfs``: clients see the nlink POSIX would show."""
        nlink = st.st_nlink
        if not is_dir or gfid == ROOT_GFID:
            nlink = max(nlink - 1, 0)
        return [gfid, st.st_ino, st.st_mode, nlink, st.st_uid, st.st_gid, st.st_rdev,
                st.st_size, st.st_blocks, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns]

    def _entry_gfid(self, pfd: int, name: bytes) -> bytes | None:
        try:
            return os.getxattr(proc_path(pfd, name), GFID_XATTR, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP):
                return None
            raise

    # -- changelog -------------------------------------------------------------

    def _entry_change(self, parents: list[tuple[bytes, int]],
                      deltas: dict[str, bytes] | None) -> AbstractContextManager[None]:
        """Mark the parent directories (gfid, fd) before the entry change in the block.

        If the change fails, the marks are taken back: the client counts a dirty
        mark only where the change succeeded, so a mark left behind by a failed
        change (EEXIST, ENOTEMPTY) would never be cleared.
        """
        if not deltas:
            return _NO_MARKS
        return _EntryMarks(self, parents, deltas)

    def _xattrop_inode(self, gfid: bytes, deltas: dict[str, bytes] | None) -> dict[str, bytes]:
        """Apply a data or metadata op's changelog deltas to the inode itself."""
        if not deltas:
            return {}
        target = self._xattr_target(gfid)
        if isinstance(target, int):
            return self._xattrop_fd(gfid, target, deltas)
        # Symlinks and special files cannot be opened for xattr calls; their O_PATH
        # fd, reached through /proc, is the inode itself and never followed further.
        opath = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            via: Any = f"/proc/self/fd/{opath}"
            return self._xattrop_fd(gfid, via, deltas, target)
        finally:
            os.close(opath)

    def _made(self, gfid: bytes) -> None:
        """``gfid`` is a new inode of this brick: it has no changelog xattrs yet."""
        known = self._afr_known
        if len(known) >= _KNOWN_MAX:
            del known[next(iter(known))]
        known[gfid] = {}

    def _xattrop_fd(self, gfid: bytes, fd: int, deltas: dict[str, bytes],
                    afr_target: XattrTarget | None = None) -> dict[str, bytes]:
        known = self._afr_known.get(gfid)
        try:
            new = changelog.apply_xattrop(fd, deltas, known)
        except BaseException:
            # A write may have failed part-way: what the disk holds is unknown.
            self._afr_known.pop(gfid, None)
            raise
        if known is not None:
            known.update(new)
            if changelog.any_nonzero(known.values()):
                self.heal_index.add(gfid)
            else:
                self.heal_index.discard(gfid)
                del self._afr_known[gfid]
        elif changelog.any_nonzero(new.values()):
            self.heal_index.add(gfid)
        else:
            self.heal_index.note(gfid, read_afr(fd if afr_target is None else afr_target))
        return new


class _EntryMarks:
    """``StoreCore._entry_change`` with marks to set (a class, not a generator:
    entered once per entry op)."""

    __slots__ = ("store", "parents", "deltas", "done")

    def __init__(self, store: StoreCore, parents: list[tuple[bytes, int]],
                 deltas: dict[str, bytes]) -> None:
        self.store = store
        self.parents = parents
        self.deltas = deltas
        self.done: list[tuple[bytes, int]] = []

    def __enter__(self) -> None:
        try:
            for gfid, fd in self.parents:
                self.store._xattrop_fd(gfid, fd, self.deltas)
                self.done.append((gfid, fd))
        except BaseException:
            self._take_back()
            raise

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if typ is not None:
            self._take_back()

    def _take_back(self) -> None:
        for gfid, fd in self.done:
            try:
                self.store._xattrop_fd(gfid, fd, changelog.negate(self.deltas))
            except OSError as e:
                log.error("gfid=%s: cannot take back the changelog mark of a failed "
                          "entry change: %s", gfid_str(gfid), e)


_NO_MARKS = nullcontext()


def read_afr(target: XattrTarget) -> dict[str, bytes]:
    """Every ``trusted.afr.*`` xattr of an inode (fd, or path not followed)."""
    out: dict[str, bytes] = {}
    for name in xattr_list(target):
        if name.startswith(AFR_PREFIX):
            try:
                out[name] = xattr_get(target, name)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
    return out


def xattr_get(target: XattrTarget, name: str) -> bytes:
    if isinstance(target, int):
        return os.getxattr(target, name)
    return os.getxattr(target, name, follow_symlinks=False)


def xattr_list(target: XattrTarget) -> list[str]:
    if isinstance(target, int):
        return os.listxattr(target)
    return os.listxattr(target, follow_symlinks=False)
