"""Extended attribute handlers.

pyfuse3 does the size negotiation (ERANGE) and the XATTR_CREATE/XATTR_REPLACE
checks (through ``getxattr``), so these only move names and values. A missing
attribute is ENODATA (``pyfuse3.ENOATTR``), as the brick reports it.

Names cross the wire as UTF-8 text. A name that is not UTF-8 cannot exist on a
brick: getting or removing it is ENODATA, setting it EINVAL.

``security.capability``, ``security.selinux`` and the POSIX ACLs
(``system.posix_acl_access``/``_default``) are answered locally, never by a
brick, and setting them is refused with EOPNOTSUPP so that the answers stay
true. This mount stores no SELinux labels (GlusterFS without its ``selinux``
option) and no ACLs (GlusterFS without ``acl``: with ``default_permissions``
the kernel checks mode bits only, so a stored ACL would grant and deny nothing).

- ``security.capability``: ENODATA (no capabilities). The kernel asks for it
  before every write to a file; a brick round trip each would halve small-write
  rates.
- ACLs: EOPNOTSUPP, as GlusterFS answers them; ``security.selinux``: EOPNOTSUPP
  too, where GlusterFS says ENODATA. ``ls -l`` asks for both on every entry,
  and each question is a FUSE round trip even when answered here (75-200 us on
  these machines, more than the rest of a cold listing); on "not supported"
  ``ls`` stops asking for the rest of the filesystem, on ENODATA it does not.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pyfuse3

from pyglfs.client.fuse.base import BridgeBase
from pyglfs.client.fuse.errors import fuse_handler

# name -> errno of a get
_LOCAL_ONLY = {b"security.capability": pyfuse3.ENOATTR,
               b"security.selinux": errno.EOPNOTSUPP,
               b"system.posix_acl_access": errno.EOPNOTSUPP,
               b"system.posix_acl_default": errno.EOPNOTSUPP}


def _name(name: bytes, missing: int) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(missing) from None


class XattrOps(BridgeBase):
    """getxattr, setxattr, listxattr, removexattr."""

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # Not wrapped itself: the kernel asks for security.capability before
        # every write, and the local answer can only be a FUSEError.
        local = _LOCAL_ONLY.get(name)
        if local is not None:
            raise pyfuse3.FUSEError(local)
        return await self._getxattr(inode, name)

    @fuse_handler
    async def _getxattr(self, inode: int, name: bytes) -> bytes:
        return await self.layer.getxattr(self.inodes.gfid(inode),
                                         _name(name, pyfuse3.ENOATTR))

    @fuse_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        if name in _LOCAL_ONLY:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self.layer.setxattr(self.inodes.gfid(inode), _name(name, errno.EINVAL), value)

    @fuse_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        names = await self.layer.listxattr(self.inodes.gfid(inode))
        return [n.encode("utf-8") for n in names]

    @fuse_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.check_writable()
        await self.layer.removexattr(self.inodes.gfid(inode), _name(name, pyfuse3.ENOATTR))
