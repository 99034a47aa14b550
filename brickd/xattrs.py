"""Extended attribute ops, and the changelog update op (xattrop).

Internal xattrs (``brickops.INTERNAL_XATTR_PREFIXES``: the gfid, the changelog,
the brick's own) are invisible and untouchable through get/set/list/remove:
setting or removing one is EPERM, reading one ENODATA, and listxattr leaves
them out. Changelog counters change only through ``xattrop``, which adds deltas
atomically and keeps the heal index in step.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from pyglfs.brickd.names import check_xattr_name, is_internal_xattr
from pyglfs.brickd.resolve import StoreCore, xattr_get, xattr_list

_SET_FLAGS = os.XATTR_CREATE | os.XATTR_REPLACE


class XattrOps(StoreCore):
    async def getxattr(self, gfid: bytes, name: str) -> dict[str, Any]:
        """The value of xattr ``name`` (ENODATA if absent or internal)."""
        check_xattr_name(name)
        if is_internal_xattr(name):
            raise OSError(errno.ENODATA, "no such attribute")
        return {"value": xattr_get(self._xattr_target(gfid), name)}

    async def listxattr(self, gfid: bytes) -> dict[str, Any]:
        """Names of the inode's xattrs, internal ones left out."""
        names = xattr_list(self._xattr_target(gfid))
        return {"names": [n for n in names if not is_internal_xattr(n)]}

    async def setxattr(self, gfid: bytes, name: str, value: bytes, flags: int | None = None,
                       xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Set xattr ``name``; ``flags`` XATTR_CREATE (1) or XATTR_REPLACE (2)."""
        check_xattr_name(name)
        if is_internal_xattr(name):
            raise OSError(errno.EPERM, "internal attribute")
        flags = flags or 0
        if flags & ~_SET_FLAGS:
            raise OSError(errno.EINVAL, "bad setxattr flags")
        target = self._xattr_target(gfid)
        self._xattrop_inode(gfid, xattrop)
        if isinstance(target, int):
            os.setxattr(target, name, value, flags)
        else:
            os.setxattr(target, name, value, flags, follow_symlinks=False)
        return {}

    async def removexattr(self, gfid: bytes, name: str,
                          xattrop: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Remove xattr ``name`` (ENODATA if absent, EPERM if internal)."""
        check_xattr_name(name)
        if is_internal_xattr(name):
            raise OSError(errno.EPERM, "internal attribute")
        target = self._xattr_target(gfid)
        self._xattrop_inode(gfid, xattrop)
        if isinstance(target, int):
            os.removexattr(target, name)
        else:
            os.removexattr(target, name, follow_symlinks=False)
        return {}

    async def xattrop(self, gfid: bytes, xattrop: dict[str, bytes]) -> dict[str, Any]:
        """Add changelog deltas to ``gfid``'s counters; returns the new values."""
        return {"xattrs": self._xattrop_inode(gfid, xattrop)}
