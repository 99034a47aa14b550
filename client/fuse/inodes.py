"""The inode table: kernel inode numbers <-> gfids, with the kernel's lookup counts.

An inode number is the gfid's last 8 bytes read as a big-endian unsigned int,
as GlusterFS's FUSE bridge does; the root gfid (``...0001``) comes out as 1,
which is ``pyfuse3.ROOT_INODE``. So the number needs no table to compute, and
the table only has to remember the gfid for each number the kernel still holds.

Lookup counts follow pyfuse3's contract: every reply that hands the kernel a new
reference (lookup, create, mkdir, mknod, symlink, link, every readdirplus entry
that ``readdir_reply`` accepted) adds one; ``forget`` subtracts what the kernel
says it dropped. An entry goes when its count reaches 0, so this table is as big
as what the kernel caches, not as what was ever seen. The root is never counted
and never goes. Nearly every count is 1 (the kernel keeps the inode it got), so
only counts above 1 take a second entry: what the kernel holds varies with its
memory pressure, and the client's memory follows it (~90 bytes per inode plus
the gfid).

A subdirectory mount gives the table that directory's gfid as ``root_gfid``: it
is inode 1, whatever its own number would be. The volume's real root is then
outside the mount and would collide with it on 1 (EIO), but nothing inside the
subdirectory can name it.

For directories the table also keeps the last seen mode and gid: a create needs
the parent's setgid bit and group, and asking the brick each time would cost a
round trip per create.
"""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3

from pyglfs.rpc.brickops import ROOT_GFID

log = logging.getLogger(__name__)

ROOT_INODE: int = pyfuse3.ROOT_INODE


def ino_of(gfid: bytes) -> int:
    """The inode number the kernel sees for ``gfid``."""
    return int.from_bytes(gfid[8:16], "big")


class InodeTable:
    """ino -> gfid for the inodes the kernel holds references to."""

    __slots__ = ("_gfids", "_counts", "_dirs", "root_gfid")

    def __init__(self, root_gfid: bytes = ROOT_GFID) -> None:
        self.root_gfid = root_gfid
        self._gfids: dict[int, bytes] = {ROOT_INODE: root_gfid}
        # counts above 1 only: an inode in _gfids and not here has count 1
        self._counts: dict[int, int] = {}
        self._dirs: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        """Inodes the kernel currently holds, the root included."""
        return len(self._gfids)

    def gfid(self, ino: int) -> bytes:
        """The gfid of an inode the kernel holds; ESTALE for one it does not."""
        try:
            return self._gfids[ino]
        except KeyError:
            raise OSError(errno.ESTALE, f"unknown inode {ino}") from None

    def ino(self, gfid: bytes) -> int:
        """The inode number for ``gfid``, checked against the table for collisions."""
        if gfid == self.root_gfid:
            return ROOT_INODE
        ino = ino_of(gfid)
        known = self._gfids.get(ino)
        if known is not None and known != gfid:
            log.error("inode number %d collides: gfid=%s and gfid=%s",
                      ino, known.hex(), gfid.hex())
            raise OSError(errno.EIO, "inode number collision")
        if ino == 0:
            raise OSError(errno.EIO, "gfid maps to inode 0")
        return ino

    def add(self, ino: int, gfid: bytes) -> None:
        """Count one more kernel reference to ``ino`` (already checked by ``ino``)."""
        if ino == ROOT_INODE:
            return
        if ino not in self._gfids:
            self._gfids[ino] = gfid
        else:
            self._counts[ino] = self._counts.get(ino, 1) + 1

    def forget(self, ino: int, nlookup: int) -> None:
        """Drop ``nlookup`` kernel references; never raises."""
        if ino == ROOT_INODE or ino not in self._gfids:
            if ino != ROOT_INODE:
                log.debug("forget of unknown inode %d", ino)
            return
        count = self._counts.pop(ino, 1) - nlookup
        if count > 1:
            self._counts[ino] = count
            return
        if count == 1:
            return
        if count < 0:
            log.warning("forget of inode %d below zero (%d)", ino, count)
        del self._gfids[ino]
        self._dirs.pop(ino, None)

    def lookup_count(self, ino: int) -> int:
        if ino == ROOT_INODE or ino not in self._gfids:
            return 0
        return self._counts.get(ino, 1)

    # -- what a create needs to know of its parent --------------------------
    def note_attrs(self, ino: int, mode: int, gid: int) -> None:
        """Remember a directory's mode and gid (setgid inheritance); others are ignored."""
        if mode & 0o170000 == 0o040000 and ino in self._gfids:
            self._dirs[ino] = (mode, gid)

    def dir_attrs(self, ino: int) -> tuple[int, int] | None:
        """The last seen (mode, gid) of directory ``ino``, if known."""
        return self._dirs.get(ino)


_GFID_RUN = 256
_gfid_prefix = b""
_gfid_left = 0
_gfid_random = b""


def new_gfid() -> bytes:
    """A fresh gfid: a version-4 UUID whose first two bytes stay the same for a
    run of 256 calls, then are drawn again.

    The brick keeps a hard link per gfid under ``handles/<b0>/<b1>/``; on a fresh
    brick fully random gfids need a new directory there for nearly every create
    (an extra inode on each brick). A shared prefix for a run of creates keeps
    that layout and makes the directory once per run. 106 random bits remain, so
    gfids picked by different clients still do not collide in practice. The
    inode number is the last 8 bytes, which stay random. The random bytes of a
    run are drawn at its start, in one system call.
    """
    global _gfid_prefix, _gfid_left, _gfid_random
    if _gfid_left <= 0:
        _gfid_random = os.urandom(2 + 14 * _GFID_RUN)
        _gfid_prefix = _gfid_random[:2]
        _gfid_left = _GFID_RUN
    _gfid_left -= 1
    at = 2 + 14 * _gfid_left
    b = bytearray(_gfid_prefix + _gfid_random[at:at + 14])
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return bytes(b)
