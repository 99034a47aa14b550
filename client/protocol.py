"""protocol/client: the bottom layer, one per brick, speaking the wire protocol.

It turns each layer operation into one brick request and each reply back into
Python values (``Iatt``, ``Lookup``, ``DirEntry``). Connection state comes from
``ReconnectingClient``: a brick going away is reported with ``child_down`` and
its operations fail at once with ENOTCONN until it comes back. Events the brick
pushes go to the parent's ``on_event``; on every (re)connection the layers
above also get a ``cache-invalidation`` of everything, since what the brick
pushed while the connection was down never arrived.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Coroutine
from typing import Any

import trio

from pyglfs.client.layer import (
    CompoundReply,
    DirEntry,
    EntryReply,
    Layer,
    Lookup,
    RenameReply,
    run_each,
)
from pyglfs.client.localfds import LocalReader
from pyglfs.client.mdcache import EVENT as INVALIDATION_EVENT
from pyglfs.rpc.brickops import Iatt
from pyglfs.rpc.connection import open_rpc_connection
from pyglfs.rpc.errors import oserror_from_name
from pyglfs.rpc.localrpc import is_local as is_local_rpc
from pyglfs.rpc.localrpc import open_brick_connection
from pyglfs.rpc.reconnect import ReconnectingClient

log = logging.getLogger(__name__)


def _iatt_opt(v: Any) -> Iatt | None:
    return Iatt(*v) if v is not None else None


def _entry(r: dict[str, Any]) -> EntryReply:
    """An entry op's reply; a brick that sends no ``postparent`` gives None."""
    return EntryReply(Iatt(*r["iatt"]), _iatt_opt(r.get("postparent")))


class ProtocolClient(Layer):
    """Talks to one brick: ``host:port`` serving ``brick_path`` of ``volume``."""

    def __init__(self, name: str, *, host: str, port: int, volume: str, brick_path: str,
                 client_id: str, username: str | None = None, password: str | None = None,
                 ping_timeout: float = 10.0, call_timeout: float | None = None,
                 local_read: bool = True, local_rpc: bool = True) -> None:
        super().__init__(name)
        # Short-circuit reads of a brick on this host (client/localfds.py).
        self.local: LocalReader | None = LocalReader(name) if local_read else None
        self.host = host
        self.port = port
        self.brick_path = brick_path
        self.call_timeout = call_timeout
        auth = {"username": username, "password": password} if username else None
        self.rpc = ReconnectingClient(
            host, port, volume=volume, client_id=client_id, auth=auth,
            on_up=self._up, on_down=self._down, on_event=self._event,
            ping_timeout=ping_timeout,
            # A brick on this host is spoken to over its Unix stream (rpc/localrpc.py).
            opener=open_brick_connection if local_rpc else open_rpc_connection)

    def __repr__(self) -> str:
        return f"<ProtocolClient {self.name} {self.host}:{self.port}:{self.brick_path}>"

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.rpc.serve(task_status=task_status)
        finally:
            if self.local is not None:
                self.local.reset()

    @property
    def is_local(self) -> bool:
        """Whether reads of this brick are served here (its fd channel is up)."""
        return self.local is not None and self.local.active and self.rpc.is_up

    @property
    def is_up(self) -> bool:
        return self.rpc.is_up

    @property
    def is_local_rpc(self) -> bool:
        """Whether requests go over the brick's Unix stream now (not TCP)."""
        return is_local_rpc(self.rpc.connection)

    def _up(self) -> None:
        conn = self.rpc.connection
        log.info("connected to brick %s:%s brick=%s%s", self.host, self.port, self.brick_path,
                 " (local rpc)" if is_local_rpc(conn) else "")
        if self.local is not None and conn is not None:
            self.local.connect(conn.welcome.get("local_read"))
        if self.parent is not None:
            self.parent.child_up(self)
            # Invalidations this brick pushed while we were away are lost:
            # caches above start again from what the bricks say now.
            self.parent.on_event(self, INVALIDATION_EVENT, {"all": True})

    def _down(self, reason: str) -> None:
        log.warning("disconnected from brick %s:%s brick=%s: %s",
                    self.host, self.port, self.brick_path, reason)
        if self.local is not None:
            self.local.reset()
        if self.parent is not None:
            self.parent.child_down(self, reason)

    def _event(self, name: str, args: dict[str, Any]) -> None:
        local = self.local
        if local is not None and local.fds and name == INVALIDATION_EVENT:
            # The inode may have been replaced (heal): read from a fresh fd.
            if args.get("all"):
                local.drop_all()
            else:
                gfids = args.get("gfids")
                for g in gfids if type(gfids) is list else ():
                    if type(g) is bytes:
                        local.drop(g)
        if self.parent is not None:
            self.parent.on_event(self, name, args)

    # Plain functions handing back the connection's call: each brick request
    # passes through no coroutine of its own here.
    def _call(self, op: str, args: dict[str, Any]) -> Coroutine[Any, Any, Any]:
        return self.rpc.call(op, args, timeout=self.call_timeout)

    def _call_opt(self, op: str, **args: Any) -> Coroutine[Any, Any, Any]:
        """Send ``op`` leaving out arguments that are None (optional on the wire)."""
        return self.rpc.call(op, {k: v for k, v in args.items() if v is not None},
                             timeout=self.call_timeout)

    # -- entry operations -------------------------------------------------
    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        r = await self._call("lookup", {"pgfid": pgfid, "name": name})
        return Lookup(Iatt(*r["iatt"]), r["xattrs"])

    async def lookup_gfid(self, gfid: bytes) -> Lookup:
        r = await self._call("lookup_gfid", {"gfid": gfid})
        return Lookup(Iatt(*r["iatt"]), r["xattrs"])

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        r = await self._call_opt("create", pgfid=pgfid, name=name, gfid=gfid, mode=mode,
                                 uid=uid, gid=gid, flags=flags, xattrop=xattrop)
        if self.local is not None:
            self.local.opened(gfid)
        return _entry(r)

    async def create_locked(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int,
                            uid: int, gid: int, flags: int,
                            xattrop: dict[str, bytes] | None, domain: str,
                            owner: bytes) -> tuple[EntryReply, bool]:
        """``create`` that also asks the brick for the new file's whole-file write
        lock in ``domain`` for ``owner``; True when the brick granted it."""
        r = await self._call_opt("create", pgfid=pgfid, name=name, gfid=gfid, mode=mode,
                                 uid=uid, gid=gid, flags=flags, xattrop=xattrop,
                                 lock={"domain": domain, "owner": owner})
        if self.local is not None:
            self.local.opened(gfid)
        return _entry(r), r.get("locked") is True

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        r = await self._call_opt("mkdir", pgfid=pgfid, name=name, gfid=gfid, mode=mode,
                                 uid=uid, gid=gid, xattrop=xattrop)
        return _entry(r)

    async def mknod(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, rdev: int,
                    uid: int, gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        r = await self._call_opt("mknod", pgfid=pgfid, name=name, gfid=gfid, mode=mode,
                                 rdev=rdev, uid=uid, gid=gid, xattrop=xattrop)
        return _entry(r)

    async def symlink(self, pgfid: bytes, name: bytes, gfid: bytes, target: bytes, uid: int,
                      gid: int, xattrop: dict[str, bytes] | None = None) -> EntryReply:
        r = await self._call_opt("symlink", pgfid=pgfid, name=name, gfid=gfid, target=target,
                                 uid=uid, gid=gid, xattrop=xattrop)
        return _entry(r)

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes,
                   xattrop: dict[str, bytes] | None = None) -> EntryReply:
        r = await self._call_opt("link", gfid=gfid, pgfid=pgfid, name=name, xattrop=xattrop)
        return _entry(r)

    async def unlink(self, pgfid: bytes, name: bytes,
                     xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        r = await self._call_opt("unlink", pgfid=pgfid, name=name, xattrop=xattrop)
        return _iatt_opt(r.get("postparent"))

    async def rmdir(self, pgfid: bytes, name: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt | None:
        r = await self._call_opt("rmdir", pgfid=pgfid, name=name, xattrop=xattrop)
        return _iatt_opt(r.get("postparent"))

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> RenameReply:
        r = await self._call_opt("rename", old_pgfid=old_pgfid, old_name=old_name,
                                 new_pgfid=new_pgfid, new_name=new_name, flags=flags,
                                 xattrop=xattrop)
        return RenameReply(Iatt(*r["iatt"]), _iatt_opt(r.get("postoldparent")),
                           _iatt_opt(r.get("postnewparent")))

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        r = await self._call("readdir", {"gfid": gfid, "cookie": cookie, "count": count,
                                         "plus": plus})
        entries = [DirEntry(name, ck, dt, Iatt(*ia) if ia is not None else None)
                   for name, ck, dt, ia in r["entries"]]
        return entries, r["eof"]

    # -- inode operations -------------------------------------------------
    async def stat(self, gfid: bytes) -> Iatt:
        return Iatt(*(await self._call("stat", {"gfid": gfid}))["iatt"])

    async def setattr(self, gfid: bytes, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool = False, mtime_now: bool = False,
                      xattrop: dict[str, bytes] | None = None) -> Iatt:
        r = await self._call_opt("setattr", gfid=gfid, mode=mode, uid=uid, gid=gid, size=size,
                                 atime_ns=atime_ns, mtime_ns=mtime_ns,
                                 atime_now=atime_now or None, mtime_now=mtime_now or None,
                                 xattrop=xattrop)
        return Iatt(*r["iatt"])

    async def readlink(self, gfid: bytes) -> bytes:
        target: bytes = (await self._call("readlink", {"gfid": gfid}))["target"]
        return target

    async def open(self, gfid: bytes, flags: int) -> Iatt:
        r = await self._call("open", {"gfid": gfid, "flags": flags})
        if self.local is not None:
            self.local.opened(gfid)
        return Iatt(*r["iatt"])

    async def release(self, gfid: bytes) -> None:
        if self.local is not None:
            self.local.released(gfid)
        await self._call("release", {"gfid": gfid})

    async def flush(self, gfid: bytes) -> None:
        await self._call("flush", {"gfid": gfid})

    async def fsync(self, gfid: bytes, datasync: bool = False) -> None:
        await self._call("fsync", {"gfid": gfid, "datasync": datasync})

    async def read(self, gfid: bytes, offset: int, size: int) -> bytes:
        """From the local fd when there is one (``LocalReader``), else the brick.
        A brick that is down fails the read with ENOTCONN either way."""
        if self.is_local:
            assert self.local is not None
            got = await self.local.read(gfid, offset, size)
            if got is not None:
                return got
        data: bytes = (await self._call("read", {"gfid": gfid, "offset": offset,
                                                 "size": size}))["data"]
        return data

    async def write(self, gfid: bytes, offset: int, data: bytes,
                    xattrop: dict[str, bytes] | None = None) -> Iatt:
        r = await self._call_opt("write", gfid=gfid, offset=offset, data=data, xattrop=xattrop)
        return Iatt(*r["iatt"])

    async def writev(self, gfid: bytes, writes: list[tuple[int, bytes]],
                     xattrop: dict[str, bytes] | None = None,
                     attrs: dict[str, int] | None = None) -> Iatt:
        """Several writes (and a setattr) as one ``compound`` request (one
        ``write`` when alone); a failed sub-op's error is raised, the changes
        before it landed."""
        if len(writes) == 1 and attrs is None:
            return await self.write(gfid, writes[0][0], writes[0][1], xattrop)
        results, failed = await self.compound(writev_ops(gfid, writes, xattrop, attrs))
        if failed is not None:
            raise failed[1]
        return writev_iatt(results)

    async def fallocate(self, gfid: bytes, mode: int, offset: int, length: int,
                        xattrop: dict[str, bytes] | None = None) -> Iatt:
        r = await self._call_opt("fallocate", gfid=gfid, mode=mode, offset=offset,
                                 length=length, xattrop=xattrop)
        return Iatt(*r["iatt"])

    async def getxattr(self, gfid: bytes, name: str) -> bytes:
        value: bytes = (await self._call("getxattr", {"gfid": gfid, "name": name}))["value"]
        return value

    async def listxattr(self, gfid: bytes) -> list[str]:
        names: list[str] = (await self._call("listxattr", {"gfid": gfid}))["names"]
        return names

    async def setxattr(self, gfid: bytes, name: str, value: bytes, flags: int = 0,
                       xattrop: dict[str, bytes] | None = None) -> None:
        await self._call_opt("setxattr", gfid=gfid, name=name, value=value, flags=flags,
                             xattrop=xattrop)

    async def removexattr(self, gfid: bytes, name: str,
                          xattrop: dict[str, bytes] | None = None) -> None:
        await self._call_opt("removexattr", gfid=gfid, name=name, xattrop=xattrop)

    async def statfs(self) -> dict[str, int]:
        result: dict[str, int] = await self._call("statfs", {})
        return result

    # -- internal operations ----------------------------------------------
    async def xattrop(self, gfid: bytes, xattrop: dict[str, bytes]) -> dict[str, bytes]:
        r = await self._call("xattrop", {"gfid": gfid, "xattrop": xattrop})
        xattrs: dict[str, bytes] = r["xattrs"]
        return xattrs

    async def inodelk(self, gfid: bytes, domain: str, type: str, start: int, len: int,
                      owner: bytes, block: bool = False) -> None:
        await self._call("inodelk", {"gfid": gfid, "domain": domain, "type": type,
                                     "start": start, "len": len, "owner": owner,
                                     "block": block})

    async def entrylk(self, pgfid: bytes, name: bytes | None, domain: str, type: str,
                      owner: bytes, block: bool = False) -> None:
        await self._call_opt("entrylk", pgfid=pgfid, name=name, domain=domain, type=type,
                             owner=owner, block=block)

    async def checksum(self, gfid: bytes, offset: int, size: int, block: int) -> list[int]:
        sums: list[int] = (await self._call("checksum", {"gfid": gfid, "offset": offset,
                                                         "size": size, "block": block}))["sums"]
        return sums

    _compound_unsupported = False

    async def compound(self, ops: list[tuple[str, dict[str, Any]]]) -> CompoundReply:
        """``ops`` as one brick request (see ``Layer.compound``); a brick too old
        to know the op gets them as separate requests from then on."""
        if self._compound_unsupported:
            return await run_each(self, ops)
        local = self.local
        if local is not None and local.opens:
            for op, args in ops:
                if op == "release":
                    local.released(args["gfid"])
        try:
            r = await self._call("compound", {"ops": [[op, args] for op, args in ops]})
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            log.info("brick %s:%s brick=%s has no compound op: sending its parts one by one",
                     self.host, self.port, self.brick_path)
            self._compound_unsupported = True
            return await run_each(self, ops)
        results: list[Any] = r["results"]
        err = r.get("error")
        if err is None:
            return results, None
        return results, (err[0], oserror_from_name(err[1], err[2]))


def writev_ops(gfid: bytes, writes: list[tuple[int, bytes]], xattrop: dict[str, bytes] | None,
               attrs: dict[str, int] | None) -> list[tuple[str, dict[str, Any]]]:
    """A ``writev`` as ``compound`` sub-ops: the writes, the first carrying
    ``xattrop``, then the setattr."""
    ops: list[tuple[str, dict[str, Any]]] = [
        ("write", {"gfid": gfid, "offset": off, "data": data}) for off, data in writes]
    if xattrop is not None:
        ops[0][1]["xattrop"] = xattrop
    if attrs is not None:
        ops.append(("setattr", {"gfid": gfid, **attrs}))
    return ops


def writev_iatt(results: list[Any]) -> Iatt:
    """The file's attributes after the sub-ops of ``writev_ops`` ran."""
    return Iatt(*results[-1]["iatt"])
