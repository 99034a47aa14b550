"""Subdirectory mounts (``HOST:/VOLUME/SUBDIR``): which directory becomes the root.

The mount resolves SUBDIR once, by lookups from the volume's root, after the
graph is up and before the kernel sees the mount. The bridge then answers for
that directory's gfid as inode 1, so every name looked up in the mount's root
is looked up in SUBDIR, and nothing above it can be named: the kernel itself
handles ``..`` of a mount's root.
"""

from __future__ import annotations

import errno
import stat

from pyglfs.client.layer import Layer
from pyglfs.rpc.brickops import ROOT_GFID


class SubdirError(Exception):
    """SUBDIR cannot be the mount's root; the message says why."""


async def resolve_subdir(layer: Layer, subdir: str | None, volume: str = "") -> bytes:
    """The gfid of ``subdir`` (``/a/b``), or ROOT_GFID for None.

    Raises SubdirError when a component is missing, is not a directory, or the
    lookup fails otherwise.
    """
    gfid = ROOT_GFID
    if not subdir:
        return gfid
    where = f" of volume {volume}" if volume else ""
    path = ""
    for name in subdir.strip("/").split("/"):
        path += "/" + name
        try:
            found = await layer.lookup(gfid, name.encode("utf-8", "surrogateescape"))
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise SubdirError(f"subdirectory {path}{where} does not exist") from None
            raise SubdirError(f"cannot look up subdirectory {path}{where}: "
                              f"{e.strerror or e}") from None
        if not stat.S_ISDIR(found.iatt.mode):
            raise SubdirError(f"{path}{where} is not a directory")
        gfid = found.iatt.gfid
    return gfid
