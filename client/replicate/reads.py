"""The read side of replicate: lookups on every brick, reads from one good copy.

A lookup asks every up brick and merges the answers (gfids must agree; a
name only some bricks have is answered from them, unless only bricks blamed
for the directory's entries have it); what it learns of the changelog goes to
the inode table, which every later read consults to pick a brick that is a
good source for the kind of read (data, metadata, entries). Reads fail over to
the next good brick on ENOTCONN/ETIMEDOUT; with no good brick up they fail
with ENOTCONN, and with every brick blamed (split-brain) with EIO.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from pyglfs.client.layer import DirEntry, Layer, Lookup
from pyglfs.client.replicate import changelog
from pyglfs.client.replicate.changelog import DATA, ENTRY, METADATA
from pyglfs.client.replicate.eagerlock import EagerLocks
from pyglfs.client.replicate.fanout import bits, fanout, is_transport, pick_error
from pyglfs.client.replicate.fanout import mask as _mask
from pyglfs.client.replicate.readsel import InodeInfo, InodeTable
from pyglfs.client.replicate.transaction import Writer
from pyglfs.rpc.brickops import Iatt

log = logging.getLogger(__name__)

_S_IFMT, _S_IFREG = 0o170000, 0o100000


class ReadOps(Layer):
    """Reads and lookups of ``Replicate`` (which sets up what is declared here)."""

    n: int
    names: list[str]
    locks: EagerLocks
    inodes: InodeTable
    writer: Writer

    # -- reading ------------------------------------------------------------
    def _up(self) -> int:
        return self.locks.up_mask()

    def _local(self) -> int:
        """Bricks whose reads this client serves itself (same host)."""
        mask = 0
        for i, c in enumerate(self.children):
            if getattr(c, "is_local", False):
                mask |= 1 << i
        return mask

    async def _info(self, gfid: bytes) -> InodeInfo:
        info = self.inodes.get(gfid)
        if info is None:
            await self.lookup_gfid(gfid)
            info = self.inodes.get(gfid)
            if info is None:  # evicted at once by a tiny table: trust what we just saw
                info = InodeInfo(changelog.no_masks(), False)
        return info

    async def _read(self, gfid: bytes, kind: int, op: str, *args: Any,
                    failover: bool = True, also: int = -1) -> Any:
        """Call ``op`` on a good brick for ``kind`` of ``gfid``; fail over if unreachable."""
        info = await self._info(gfid)
        order = self.inodes.order(gfid, info, kind, self._up(), also, self._local)
        if not order:
            raise self._no_source(gfid, info, kind)
        last: OSError | None = None
        for i in order:
            try:
                return await getattr(self.children[i], op)(*args)
            except OSError as e:
                if not is_transport(e) or not failover:
                    raise
                log.warning("replicate %s: %s of %s failed on brick %s, failing over: %s",
                            self.name, op, gfid.hex(), i, e)
                last = e
        assert last is not None
        raise last

    def _no_source(self, gfid: bytes, info: InodeInfo, kind: int) -> OSError:
        up = self._up()
        if not up:
            return OSError(errno.ENOTCONN, "no brick is connected")
        if info.bad[kind] == (1 << self.n) - 1:
            log.error("replicate %s: %s of %s is in split-brain (each brick blamed)",
                      self.name, changelog.KIND_NAMES[kind], gfid.hex())
            return OSError(errno.EIO, f"split-brain on {gfid.hex()}")
        log.warning("replicate %s: no good copy of %s reachable (bad %s, up %s)",
                    self.name, gfid.hex(), bits(info.bad[kind]), bits(up))
        return OSError(errno.ENOTCONN, "the bricks with a good copy are down")

    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        up = bits(self._up())
        if not up:
            raise OSError(errno.ENOTCONN, "no brick is connected")
        children = self.children
        res = await fanout(self.n, up, lambda i: children[i].lookup(pgfid, name),
                           self.writer.split)
        parent = self.inodes.get(pgfid)
        if parent is not None and parent.bad[ENTRY]:
            self._drop_stale_entry(res, up, parent.bad[ENTRY], pgfid, name)
        return self._merge_lookup(res, up, f"{pgfid.hex()}/{name!r}")

    def _drop_stale_entry(self, res: list[Any], up: list[int], blamed: int, pgfid: bytes,
                          name: bytes) -> None:
        """Trust the absence of a name on a good copy of the directory.

        When only bricks blamed for the directory's entries have the name, the
        good copy's ENOENT is the truth (the name was removed while they were
        away): answering from them would bring a deleted file back.
        """
        have = [i for i in up if not isinstance(res[i], OSError)]
        absent_good = [i for i in up if isinstance(r := res[i], OSError)
                       and r.errno == errno.ENOENT and not blamed >> i & 1]
        if have and absent_good and all(blamed >> i & 1 for i in have):
            log.info("replicate %s: %s/%r exists only on bricks %s, which missed entry "
                     "changes of the directory: treated as absent", self.name, pgfid.hex(),
                     name, have)
            for i in have:
                res[i] = OSError(errno.ENOENT, "stale entry on a brick pending heal")

    async def lookup_gfid(self, gfid: bytes) -> Lookup:
        up = bits(self._up())
        if not up:
            raise OSError(errno.ENOTCONN, "no brick is connected")
        children = self.children
        res = await fanout(self.n, up, lambda i: children[i].lookup_gfid(gfid),
                           self.writer.split)
        return self._merge_lookup(res, up, gfid.hex())

    def _merge_lookup(self, res: list[Any], asked: list[int], what: str) -> Lookup:
        found: dict[int, Lookup] = {}
        errors: dict[int, OSError] = {}
        for i in asked:
            r = res[i]
            if isinstance(r, OSError):
                errors[i] = r
            else:
                found[i] = r
        if not found:
            raise pick_error(errors)
        gfids = {lk.iatt.gfid for lk in found.values()}
        if len(gfids) > 1:
            log.error("replicate %s: gfid mismatch for %s: %s", self.name, what,
                      {i: lk.iatt.gfid.hex() for i, lk in found.items()})
            raise OSError(errno.EIO, f"gfid mismatch between bricks for {what}")
        gfid = next(iter(gfids))
        bad = changelog.accused({i: lk.xattrs for i, lk in found.items()}, self.names)
        absent = 0
        for i, e in errors.items():
            if e.errno == errno.ENOENT:
                absent |= 1 << i
        if absent:
            for k in changelog.KINDS:
                bad[k] |= absent
        pending = bool(absent) or any(changelog.has_pending(lk.xattrs) for lk in found.values())
        for held in (self.locks.inode.get(gfid), self.locks.entry.get(gfid)):
            if held is not None:
                for k in changelog.KINDS:
                    bad[k] |= held.blamed[k]
        if any(bad):
            log.info("replicate %s: %s (gfid %s) has pending changes: %s", self.name, what,
                     gfid.hex(), changelog.describe(bad))
        info = self.inodes.learn(gfid, bad, pending)
        first = next(iter(found.values()))
        kind = DATA if first.iatt.mode & _S_IFMT == _S_IFREG else METADATA
        order = self.inodes.order(gfid, info, kind, _mask(found), local=self._local)
        src = order[0] if order else min(found)
        return Lookup(found[src].iatt, {})

    def needs_heal(self, gfid: bytes) -> bool:
        """Whether a lookup or a failed change left ``gfid`` with pending marks."""
        info = self.inodes.get(gfid)
        return info is not None and info.pending

    async def stat(self, gfid: bytes) -> Iatt:
        iatt: Iatt = await self._read(gfid, DATA, "stat", gfid, also=METADATA)
        return iatt

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        # A cookie is a hash of the entry's name on every brick, so a listing
        # may go on from another brick (a good copy of the directory has the
        # same names).
        r: tuple[list[DirEntry], bool] = await self._read(
            gfid, ENTRY, "readdir", gfid, cookie, count, plus)
        return r

    async def readlink(self, gfid: bytes) -> bytes:
        target: bytes = await self._read(gfid, DATA, "readlink", gfid)
        return target

    async def read(self, gfid: bytes, offset: int, size: int) -> bytes:
        data: bytes = await self._read(gfid, DATA, "read", gfid, offset, size)
        return data

    async def getxattr(self, gfid: bytes, name: str) -> bytes:
        value: bytes = await self._read(gfid, METADATA, "getxattr", gfid, name)
        return value

    async def listxattr(self, gfid: bytes) -> list[str]:
        names: list[str] = await self._read(gfid, METADATA, "listxattr", gfid)
        return names

    async def checksum(self, gfid: bytes, offset: int, size: int, block: int) -> list[int]:
        sums: list[int] = await self._read(gfid, DATA, "checksum", gfid, offset, size, block)
        return sums

    async def statfs(self) -> dict[str, int]:
        last: OSError = OSError(errno.ENOTCONN, "no brick is connected")
        for i in bits(self._up()):
            try:
                r: dict[str, int] = await self.children[i].statfs()
                return r
            except OSError as e:
                if not is_transport(e):
                    raise
                last = e
        raise last
