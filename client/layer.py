"""The operations every client layer offers, and the pass-through default.

The client is a graph of layers built from the volfile, as GlusterFS builds
translators: FUSE bridge -> replicate -> protocol clients (one per brick). Each
layer offers the same async operations with the same arguments as the brick ops
in ``pyglfs.rpc.brickops``; a layer overrides what it changes and inherits
forwarding to its single child for the rest, so a new layer (distribute, a
cache) is added without touching the others.

Errors: every operation raises ``OSError`` with an errno; transport failures are
mapped once, in ``pyglfs.rpc.errors.transport_errno``. Only the FUSE bridge turns
them into ``FUSEError``.

Status: a layer is *up* when it can serve operations. Children report changes
with ``child_up``/``child_down`` to their parent, which decides its own status
(replicate: quorum) and reports further up.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import trio

from pyglfs.rpc.brickops import Iatt


class Lookup(NamedTuple):
    """A lookup's answer: the inode's attributes and its changelog xattrs.

    ``xattrs`` carries the ``trusted.afr.*`` counters a brick holds on the inode;
    replicate consumes them and hands ``{}`` upwards.
    """

    iatt: Iatt
    xattrs: dict[str, bytes]


class EntryReply(NamedTuple):
    """What an op that makes a name answers: the named inode's attributes and its
    parent directory's after the change (GlusterFS's ``postparent``).

    ``postparent`` is None when a layer below could not say (a brick too old to
    send it): a cache then drops the directory's attributes instead.
    """

    iatt: Iatt
    postparent: Iatt | None


class RenameReply(NamedTuple):
    """A rename's answer: the moved inode and both parents after the change (the
    same attributes twice when they are one directory); None when unknown."""

    iatt: Iatt
    postoldparent: Iatt | None
    postnewparent: Iatt | None


class DirEntry(NamedTuple):
    """One readdir entry; ``cookie`` resumes the listing after it."""

    name: bytes
    cookie: int
    d_type: int
    iatt: Iatt | None


class Layer:
    """Base of every client layer: forwards each operation to ``children[0]``."""

    def __init__(self, name: str, children: list[Layer] | None = None) -> None:
        self.name = name
        self.children: list[Layer] = list(children or [])
        self.parent: Layer | None = None
        for child in self.children:
            child.parent = self

    @property
    def child(self) -> Layer:
        return self.children[0]

    # -- life cycle -------------------------------------------------------
    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run this layer and its children until cancelled.

        ``task_status.started()`` is called once every child has started, which
        for protocol clients means a first connection attempt was made (not that
        it succeeded: a brick that is down is reported with ``child_down``).
        """
        async with trio.open_nursery() as nursery:
            for child in self.children:
                await nursery.start(child.serve)
            task_status.started()
            await trio.sleep_forever()

    async def settle(self) -> None:
        """Finish deferred work now (delayed post-ops, eager locks): called at unmount.

        The default settles the children in turn; a layer that defers work
        finishes its own first, then calls this.
        """
        for child in self.children:
            await child.settle()

    @property
    def is_up(self) -> bool:
        return all(c.is_up for c in self.children) if self.children else True

    def child_up(self, child: Layer) -> None:
        if self.parent is not None:
            self.parent.child_up(self)

    def child_down(self, child: Layer, reason: str) -> None:
        if self.parent is not None:
            self.parent.child_down(self, reason)

    def on_event(self, child: Layer, name: str, args: dict[str, Any]) -> None:
        """A server-pushed event from below (lock contention, invalidation)."""
        if self.parent is not None:
            self.parent.on_event(self, name, args)

    # -- directory leases (see createbehind.py and replicate/lease.py) --------
    def lease_held(self, pgfid: bytes) -> bool:
        """Whether this client holds the directory lease of ``pgfid`` on every brick
        that is up: no other client can then read or change the directory's entries
        (a brick holds their requests and recalls the lease) until it is given back.
        Layers that cannot hold one say False."""
        return len(self.children) == 1 and self.child.lease_held(pgfid)

    def want_lease(self, pgfid: bytes) -> None:
        """Entries of ``pgfid`` are being made here: take (or keep) its lease in the
        background. Never waits."""
        if len(self.children) == 1:
            self.child.want_lease(pgfid)

    async def lease_recalled(self, pgfid: bytes) -> None:
        """Called upward before the lease of ``pgfid`` is given back (recalled by a
        brick, or idle): a layer that answered entry changes in ``pgfid`` before the
        bricks had them returns once they have (or have failed)."""
        if self.parent is not None:
            await self.parent.lease_recalled(pgfid)

    # -- entry operations -------------------------------------------------
    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        return await self.child.lookup(pgfid, name)

    async def lookup_gfid(self, gfid: bytes) -> Lookup:
        return await self.child.lookup_gfid(gfid)

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self.child.create(pgfid, name, gfid, mode, uid, gid, flags, xattrop)

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self.child.mkdir(pgfid, name, gfid, mode, uid, gid, xattrop)

    async def mknod(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, rdev: int,
                    uid: int, gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self.child.mknod(pgfid, name, gfid, mode, rdev, uid, gid, xattrop)

    async def symlink(self, pgfid: bytes, name: bytes, gfid: bytes, target: bytes, uid: int,
                      gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self.child.symlink(pgfid, name, gfid, target, uid, gid, xattrop)

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes,
                   xattrop: dict[str, bytes] | None = None) -> EntryReply:
        return await self.child.link(gfid, pgfid, name, xattrop)

    async def unlink(self, pgfid: bytes, name: bytes,
                     xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        """Remove a name; answers the parent's attributes after it (None: unknown)."""
        return await self.child.unlink(pgfid, name, xattrop)

    async def rmdir(self, pgfid: bytes, name: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        return await self.child.rmdir(pgfid, name, xattrop)

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> RenameReply:
        return await self.child.rename(old_pgfid, old_name, new_pgfid, new_name, flags, xattrop)

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        return await self.child.readdir(gfid, cookie, count, plus)

    # -- inode operations -------------------------------------------------
    async def stat(self, gfid: bytes) -> Iatt:
        return await self.child.stat(gfid)

    async def setattr(self, gfid: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool = False, mtime_now: bool = False,
                      xattrop: dict[str, bytes] | None = None) -> Iatt:
        return await self.child.setattr(
            gfid, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns,
            mtime_ns=mtime_ns, atime_now=atime_now, mtime_now=mtime_now, xattrop=xattrop)

    async def readlink(self, gfid: bytes) -> bytes:
        return await self.child.readlink(gfid)

    async def open(self, gfid: bytes, flags: int) -> Iatt:
        return await self.child.open(gfid, flags)

    async def release(self, gfid: bytes) -> None:
        await self.child.release(gfid)

    async def flush(self, gfid: bytes) -> None:
        await self.child.flush(gfid)

    async def fsync(self, gfid: bytes, datasync: bool = False) -> None:
        await self.child.fsync(gfid, datasync)

    async def read(self, gfid: bytes, offset: int, size: int) -> bytes:
        return await self.child.read(gfid, offset, size)

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        return await self.child.write(gfid, offset, data, xattrop)

    async def writev(self, gfid: bytes, writes: list[tuple[int, bytes]],
                     xattrop: dict[str, bytes] | None = None,
                     attrs: dict[str, int] | None = None) -> Iatt:
        """The ``(offset, data)`` writes of ``writes`` (at least one), applied in
        order, ``xattrop`` with the first, then (``attrs``) a setattr of mode,
        uid, gid, atime_ns, mtime_ns; answers the attributes after the last.

        On failure the changes before the failed one may have landed. A layer
        that leaves ``write`` (and ``setattr``) alone forwards the batch whole;
        one that changes them gets the changes one by one through them unless
        it overrides this.
        """
        if type(self).write is Layer.write and (
                attrs is None or type(self).setattr is Layer.setattr):
            return await self.child.writev(gfid, writes, xattrop, attrs)
        iatt: Iatt | None = None
        for offset, data in writes:
            iatt = await self.write(gfid, offset, data, xattrop)
            xattrop = None
        if attrs is not None:
            iatt = await self.setattr(
                gfid, mode=attrs.get("mode"), uid=attrs.get("uid"), gid=attrs.get("gid"),
                atime_ns=attrs.get("atime_ns"), mtime_ns=attrs.get("mtime_ns"))
        assert iatt is not None, "writev of no writes"
        return iatt

    @property
    def batches_writes(self) -> bool:
        """Whether ``writev_many`` sends distinct files' writes together (replicate:
        one request per brick); where it does not, holding closed files' writes
        for a batch would only delay them."""
        if type(self).writev_many is not Layer.writev_many:
            return True
        return self._leaves_writes() and bool(self.children) and self.child.batches_writes

    @classmethod
    def _leaves_writes(cls) -> bool:
        return (cls.writev is Layer.writev and cls.write is Layer.write
                and cls.setattr is Layer.setattr)

    async def writev_many(self, items: list[WriteItem]) -> list[Iatt | OSError]:
        """Each ``(gfid, writes, attrs)`` item as ``writev(gfid, writes, None, attrs)``
        of its own file: per item the attributes after it or the error it gave.
        Items are distinct files' changes; a layer may send them together
        (replicate: one request per brick). One that leaves ``write``,
        ``writev`` and ``setattr`` alone forwards the items whole; one that
        changes them gets them one by one through its ``writev``."""
        if self._leaves_writes():
            return await self.child.writev_many(items)
        out: list[Iatt | OSError] = []
        for gfid, writes, attrs in items:
            try:
                out.append(await self.writev(gfid, writes, None, attrs))
            except OSError as e:
                out.append(e)
        return out

    async def fallocate(self, gfid: bytes, mode: int, offset: int, length: int,
                        xattrop: dict[str, bytes] | None = None) -> Iatt:
        return await self.child.fallocate(gfid, mode, offset, length, xattrop)

    async def getxattr(self, gfid: bytes, name: str) -> bytes:
        return await self.child.getxattr(gfid, name)

    async def listxattr(self, gfid: bytes) -> list[str]:
        return await self.child.listxattr(gfid)

    async def setxattr(self, gfid: bytes, name: str, value: bytes, flags: int = 0,
                       xattrop: dict[str, bytes] | None = None) -> None:
        await self.child.setxattr(gfid, name, value, flags, xattrop)

    async def removexattr(self, gfid: bytes, name: str,
                          xattrop: dict[str, bytes] | None = None) -> None:
        await self.child.removexattr(gfid, name, xattrop)

    async def statfs(self) -> dict[str, int]:
        return await self.child.statfs()

    # -- internal operations (replication, heal) --------------------------
    async def xattrop(self, gfid: bytes, xattrop: dict[str, bytes]) -> dict[str, bytes]:
        return await self.child.xattrop(gfid, xattrop)

    async def inodelk(self, gfid: bytes, domain: str, type: str, start: int, len: int,
                      owner: bytes, block: bool = False) -> None:
        await self.child.inodelk(gfid, domain, type, start, len, owner, block)

    async def entrylk(self, pgfid: bytes, name: bytes | None, domain: str, type: str,
                      owner: bytes, block: bool = False) -> None:
        await self.child.entrylk(pgfid, name, domain, type, owner, block)

    async def checksum(self, gfid: bytes, offset: int, size: int, block: int) -> list[int]:
        return await self.child.checksum(gfid, offset, size, block)

    async def compound(self, ops: list[tuple[str, dict[str, Any]]]) -> CompoundReply:
        """Run ``ops`` (brick op name and its wire arguments, ``rpc.brickops``
        ``COMPOUND_OPS``) in order, stopping at the first that fails.

        Returns the wire results of the ops that ran and, when one failed, its
        index and error; an OSError raised instead means nothing is known of
        what ran (the brick was not reached). The protocol client sends them
        as one brick request; this default runs them one by one through this
        layer's own operations, so any layer gets the same meaning.
        """
        return await run_each(self, ops)


CompoundReply = tuple[list[Any], tuple[int, OSError] | None]
WriteItem = tuple[bytes, list[tuple[int, bytes]], dict[str, int] | None]
"""A file's writes for ``writev_many``: gfid, ``(offset, data)`` writes, setattr fields."""


async def run_each(layer: Layer, ops: list[tuple[str, dict[str, Any]]]) -> CompoundReply:
    """``Layer.compound`` done as separate operations of ``layer``."""
    results: list[Any] = []
    for i, (op, args) in enumerate(ops):
        try:
            if op == "entrylk":
                args = {"name": None, **args}
            r = await getattr(layer, op)(**args)
        except OSError as e:
            return results, (i, e)
        if isinstance(r, Iatt):
            r = {"iatt": r.to_wire()}
        elif op == "xattrop":
            r = {"xattrs": r}
        elif op == "getxattr":
            r = {"value": r}
        results.append(r if r is not None else {})
    return results, None
