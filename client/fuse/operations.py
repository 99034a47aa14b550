"""The pyfuse3 ``Operations`` of a pyglfs mount, composed from the handler families.

Contract with the layer graph below: it is started and up before the bridge is
mounted, offers the operations of ``pyglfs.client.layer.Layer`` and raises
``OSError`` with an errno. Every handler turns errors into ``FUSEError`` through
``errors.fuse_handler``; nothing else may leave a handler.
"""

from __future__ import annotations

from pyglfs.client.fuse.base import BridgeConfig
from pyglfs.client.fuse.entries import EntryOps
from pyglfs.client.fuse.fileio import FileOps
from pyglfs.client.fuse.metadata import MetadataOps
from pyglfs.client.fuse.xattrs import XattrOps

__all__ = ["BridgeConfig", "FuseOperations"]


class FuseOperations(EntryOps, FileOps, MetadataOps, XattrOps):
    """Everything pyfuse3 calls on a pyglfs mount."""
