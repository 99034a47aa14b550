"""Inode attribute ops: stat, setattr, statfs.

setattr changes the inode the gfid names and never what a symlink points to:
a symlink's owner and times change on the link itself; its mode cannot change
(EOPNOTSUPP, as Linux's fchmodat does) and it has no size (EINVAL).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from pyglfs.brickd import linux
from pyglfs.brickd.names import check_owner, handle_rel
from pyglfs.brickd.resolve import StoreCore

_OFF_MAX = (1 << 63) - 1
# Times os.utime takes without overflow (about 146 years either side of the epoch);
# others go through linux.utimens, which refuses what the kernel cannot store.
_NS_PLAIN = 1 << 62


class AttrOps(StoreCore):
    async def stat(self, gfid: bytes) -> dict[str, Any]:
        """The iatt of ``gfid`` (ESTALE if the brick has no such inode)."""
        st, is_dir = self._stat_gfid(gfid)
        return {"iatt": self._iatt(gfid, st, is_dir)}

    async def setattr(self, gfid: bytes, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool | None = None, mtime_now: bool | None = None,
                      xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Change owner, mode, size and times (in that order); returns the new iatt.

        ``*_now`` wins over ``*_ns``; a time given by neither is left alone.
        """
        check_owner(uid, gid)
        st, is_dir = self._stat_gfid(gfid)
        fmt = stat.S_IFMT(st.st_mode)
        if size is not None:
            if is_dir:
                raise OSError(errno.EISDIR, "is a directory")
            if fmt != stat.S_IFREG:
                raise OSError(errno.EINVAL, "size of a non-regular file")
            if size > _OFF_MAX:
                raise OSError(errno.EFBIG, "size out of range")
        if mode is not None and fmt == stat.S_IFLNK:
            raise OSError(errno.EOPNOTSUPP, "cannot change the mode of a symlink")
        self._xattrop_inode(gfid, xattrop)
        fd: int | None = None
        rel = b""
        if is_dir:
            fd = self._dir_fd(gfid)
        elif fmt == stat.S_IFREG:
            fd = self._file_fd(gfid)
        else:
            rel = handle_rel(gfid)
        hfd = self.handles_fd
        if uid is not None or gid is not None:
            u = -1 if uid is None else uid
            g = -1 if gid is None else gid
            if fd is not None:
                os.fchown(fd, u, g)
            else:
                os.chown(rel, u, g, dir_fd=hfd, follow_symlinks=False)
        if mode is not None:
            if fd is not None:
                os.fchmod(fd, mode & 0o7777)
            else:
                os.chmod(rel, mode & 0o7777, dir_fd=hfd, follow_symlinks=False)
        if size is not None and fd is not None:
            os.ftruncate(fd, size)
        if atime_now or mtime_now or atime_ns is not None or mtime_ns is not None:
            now = {"atime_now": bool(atime_now), "mtime_now": bool(mtime_now)}
            if (fd is not None and not atime_now and not mtime_now
                    and atime_ns is not None and -_NS_PLAIN < atime_ns < _NS_PLAIN
                    and mtime_ns is not None and -_NS_PLAIN < mtime_ns < _NS_PLAIN):
                # Both times given (what tar and cp -p set): os.utime's futimens
                # costs a third of the ctypes call that can also omit one.
                os.utime(fd, ns=(atime_ns, mtime_ns))
            elif fd is not None:
                linux.utimens(fd, None, atime_ns, mtime_ns, **now)
            else:
                linux.utimens(hfd, rel, atime_ns, mtime_ns, **now)
        if fd is not None:
            st = os.stat(fd)
        else:
            st = os.stat(rel, dir_fd=hfd, follow_symlinks=False)
        return {"iatt": self._iatt(gfid, st, is_dir)}

    async def statfs(self) -> dict[str, Any]:
        """Capacity of the brick's filesystem."""
        v = os.fstatvfs(self.root_fd)
        return {
            "bsize": v.f_bsize, "frsize": v.f_frsize, "blocks": v.f_blocks,
            "bfree": v.f_bfree, "bavail": v.f_bavail, "files": v.f_files,
            "ffree": v.f_ffree, "namemax": v.f_namemax,
        }
