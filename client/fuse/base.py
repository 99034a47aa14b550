"""State shared by the handler families, and the helpers they all use.

The bridge is one ``pyfuse3.Operations`` class composed from mixins (entries,
file I/O, attributes, xattrs), each in its own module; they all build on
``BridgeBase``: the top layer of the client graph, the inode table, the open
file and directory handles and the mount's cache timeouts.
"""

from __future__ import annotations

import errno
import itertools
import stat
from dataclasses import dataclass

import pyfuse3

from pyglfs.client.fuse.attrs import entry_attributes
from pyglfs.client.fuse.inodes import InodeTable
from pyglfs.client.layer import DirEntry, Layer
from pyglfs.rpc.brickops import NAME_MAX, ROOT_GFID, Iatt


@dataclass(frozen=True)
class BridgeConfig:
    """How the bridge answers the kernel; timeouts in seconds.

    ``negative_timeout`` 0 means a missing name is not cached, so a name made
    through another mount is seen at once. ``root_gfid`` is the directory the
    mount shows as its root (a subdirectory mount's SUBDIR).

    ``writeback_cache``: the kernel's FUSE writeback cache (write-behind): a
    write(2) returns once its data is in the page cache, and the kernel sends
    the dirty pages as large, parallel WRITEs later; close(2) and fsync(2)
    return once both bricks have them, and report a failed write. The kernel
    then trusts its own file sizes: a size another mount changes is not seen
    while this mount holds the inode, so it is off by default (as GlusterFS's
    ``kernel-writeback-cache``).

    Write-behind is not the bridge's: it is the graph's ``performance/write-behind``
    layer (``pyglfs.client.graph``); the bridge only asks it to write through for
    O_DIRECT, O_SYNC and O_APPEND opens.
    """

    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    negative_timeout: float = 0.0
    read_only: bool = False
    root_gfid: bytes = ROOT_GFID
    writeback_cache: bool = False


class FileHandle:
    """One open(2) of a file: its own flags and access mode."""

    __slots__ = ("gfid", "ino", "flags")

    def __init__(self, gfid: bytes, ino: int, flags: int) -> None:
        self.gfid = gfid
        self.ino = ino
        self.flags = flags


class DirHandle:
    """One opendir(3): the directory and the last page read from the brick.

    ``page`` holds the brick's entries of the last readdir call, so that the
    kernel's small readdir requests (a page of the caller's buffer each) are
    served from one brick round trip of many entries.
    """

    __slots__ = ("gfid", "ino", "page", "page_eof", "page_time", "positions")

    def __init__(self, gfid: bytes, ino: int) -> None:
        self.gfid = gfid
        self.ino = ino
        self.page: list[DirEntry] = []
        self.page_eof = False
        self.page_time = 0.0
        self.positions: dict[int, int] = {}


class BridgeBase(pyfuse3.Operations):
    """The state and helpers every handler family uses."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, layer: Layer, config: BridgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or BridgeConfig()
        self.layer = layer
        # pyfuse3 reads this from the instance when it answers FUSE_INIT.
        self.enable_writeback_cache = self.config.writeback_cache
        self.inodes = InodeTable(self.config.root_gfid)
        self.files: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._fh_counter = itertools.count(1)

    def next_fh(self) -> int:
        return next(self._fh_counter)

    # -- replies ------------------------------------------------------------
    def attrs(self, ino: int, iatt: Iatt) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that adds no kernel reference (getattr, setattr)."""
        self.inodes.note_attrs(ino, iatt.mode, iatt.gid)
        c = self.config
        return entry_attributes(ino, iatt, c.attr_timeout, c.entry_timeout)

    def entry(self, iatt: Iatt) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that hands the kernel a reference: counts it."""
        ino = self.inodes.ino(iatt.gfid)
        self.inodes.add(ino, iatt.gfid)
        return self.attrs(ino, iatt)

    # -- checks -------------------------------------------------------------
    def check_writable(self) -> None:
        if self.config.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    @staticmethod
    def check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    async def new_owner(self, parent_ino: int, pgfid: bytes, mode: int,
                        ctx: pyfuse3.RequestContext) -> tuple[int, int, int]:
        """(mode, uid, gid) of a new inode made by the caller of ``ctx`` in ``parent_ino``.

        The owner is the caller; the group is the caller's, or the parent's when
        the parent has setgid, and a new directory then inherits setgid. The
        umask is applied here; the kernel may already have applied it (without
        FUSE_DONT_MASK it does), and masking twice changes nothing.
        """
        mode = mode & ~(ctx.umask & 0o777)
        gid = ctx.gid
        parent = self.inodes.dir_attrs(parent_ino)
        if parent is None:
            iatt = await self.layer.stat(pgfid)
            self.inodes.note_attrs(parent_ino, iatt.mode, iatt.gid)
            parent = (iatt.mode, iatt.gid)
        pmode, pgid = parent
        if pmode & stat.S_ISGID:
            gid = pgid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return mode, ctx.uid, gid
