"""Iatt -> ``pyfuse3.EntryAttributes``, and the attribute handlers.

The kernel sees inode numbers derived from gfids (``inodes.ino_of``), never the
brick's own inode numbers, so both replicas of a file look the same.
"""

from __future__ import annotations

import pyfuse3

from pyglfs.rpc.brickops import Iatt

# Reported block size: stdio and cp size their buffers by it, and small
# buffers mean many small FUSE writes.
BLKSIZE = 128 * 1024


def entry_attributes(ino: int, iatt: Iatt, attr_timeout: float,
                     entry_timeout: float) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.generation = 0
    e.entry_timeout = entry_timeout
    e.attr_timeout = attr_timeout
    e.st_mode = iatt.mode
    e.st_nlink = iatt.nlink
    e.st_uid = iatt.uid
    e.st_gid = iatt.gid
    e.st_rdev = iatt.rdev
    e.st_size = iatt.size
    e.st_blksize = BLKSIZE
    e.st_blocks = iatt.blocks
    e.st_atime_ns = iatt.atime_ns
    e.st_mtime_ns = iatt.mtime_ns
    e.st_ctime_ns = iatt.ctime_ns
    return e
