"""Volumes on one node: the transaction halves of every volume operation.

Each operation is staged on every node (checks only, nothing changes), then
committed everywhere (``mgmt/transaction.py``). Every node checks the bricks it
hosts itself: only it can see its file systems. Commit writes the record and the
volfiles, and starts or stops the node's own bricks.

Brick rules (GlusterFS's): an absolute path, not part of another volume (nor
inside or above one), the parent a directory this node can create it in, and not
on the root file system unless ``force`` (a brick there fills the system disk).
"""

from __future__ import annotations

import errno
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

import trio

from pyglfs.mgmt.bricksup import BrickStartError, BrickSupervisor
from pyglfs.mgmt.transaction import TxnError, TxnOp
from pyglfs.mgmt.volstore import (
    STARTED,
    STOPPED,
    BrickRef,
    VolumeRecord,
    VolumeStore,
)
from pyglfs.rpc.brickops import VOLUME_ID_XATTR
from pyglfs.volfiles.model import VolfileError
from pyglfs.volfiles.options import VOLUME_OPTIONS, validate_option

log = logging.getLogger(__name__)

ROOT_FS_MSG = ("The brick {brick} is being created in the root partition. It is recommended "
               "that you don't use the system's root partition for storage backend. Or use "
               "'force' at the end of the command if you want to override this behavior.")


def fail(msg: str, code: int = errno.EINVAL) -> TxnError:
    return TxnError(msg, code)


def option_error(key: str, value: str) -> str | None:
    """Why ``key = value`` cannot be set, listing the valid keys for an unknown one."""
    try:
        validate_option(key, value)
    except VolfileError as exc:
        if key not in VOLUME_OPTIONS:
            return f"{exc}. Valid options: {', '.join(sorted(VOLUME_OPTIONS))}"
        return str(exc)
    return None


def _nearest_existing(path: Path) -> Path:
    p = path
    for _ in range(256):
        if p.exists() or p == p.parent:
            return p
        p = p.parent
    return p


def _within(a: str, b: str) -> bool:
    """Whether one of the paths is the other or lies under it."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def check_local_brick(brick: BrickRef, volume_id: str, force: bool,
                      others: list[tuple[str, BrickRef]]) -> None:
    """Refuse a brick this node cannot host; TxnError with gluster's wording."""
    name = brick.name
    if not brick.path.startswith("/") or "\0" in brick.path:
        raise fail(f"brick path {brick.path} is not absolute")
    for vol, other in others:
        if other.node == brick.node and _within(other.path, brick.path):
            raise fail(f"{name} is already part of a volume" if other.path == brick.path
                       else f"{name} overlaps brick {other.name} of volume {vol}")
    path = Path(brick.path)
    if path.exists():
        if not path.is_dir():
            raise fail(f"{name}: not a directory")
        try:
            have = os.getxattr(path, VOLUME_ID_XATTR)
        except OSError:
            have = b""
        if have and have.hex() != volume_id.replace("-", ""):
            raise fail(f"{name} is already part of a volume")
    base = _nearest_existing(path)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise fail(f"{name}: cannot create the brick directory under {base}", errno.EACCES)
    if not force and os.stat(base).st_dev == os.stat("/").st_dev:
        raise fail(ROOT_FS_MSG.format(brick=name))


class VolumeManager:
    """This node's volumes: the in-memory table, its store and its bricks."""

    def __init__(self, store: VolumeStore, node_uuid: str, supervisor: BrickSupervisor,
                 volumes: dict[str, VolumeRecord] | None = None) -> None:
        self.store = store
        self.uuid = node_uuid
        self.supervisor = supervisor
        self.volumes: dict[str, VolumeRecord] = dict(volumes or {})
        self._limiter = trio.CapacityLimiter(1)

    def ops(self) -> dict[str, TxnOp]:
        return {
            "volume-create": TxnOp(self._stage_create, self._commit_create),
            "volume-delete": TxnOp(self._stage_delete, self._commit_delete),
            "volume-set": TxnOp(self._stage_set, self._commit_set),
            "volume-reset": TxnOp(self._stage_reset, self._commit_reset),
            "volume-start": TxnOp(self._stage_start, self._commit_start),
            "volume-stop": TxnOp(self._stage_stop, self._commit_stop),
            "volume-ports": TxnOp(self._stage_ports, self._commit_ports),
        }

    def get(self, name: Any) -> VolumeRecord:
        if type(name) is not str or name not in self.volumes:
            raise fail(f"Volume {name} does not exist", errno.ENOENT)
        return self.volumes[name]

    async def save(self, rec: VolumeRecord) -> None:
        await trio.to_thread.run_sync(self.store.save, rec, limiter=self._limiter)
        self.volumes[rec.name] = rec

    def bricks_on(self, node: str) -> list[str]:
        return [b.name for v in self.volumes.values() for b in v.bricks if b.node == node]

    # -- create / delete ------------------------------------------------------
    async def _stage_create(self, args: dict[str, Any]) -> None:
        try:
            rec = VolumeRecord.from_json(args.get("volume"))
        except ValueError as exc:
            raise fail(f"invalid volume: {exc}") from None
        if rec.name in self.volumes:
            raise fail(f"Volume {rec.name} already exists", errno.EEXIST)
        others = [(v.name, b) for v in self.volumes.values() for b in v.bricks]
        force = args.get("force") is True
        mine = rec.local(self.uuid)
        for _, b in mine:
            others_now = others + [(rec.name, o) for _, o in mine if o is not b]
            await trio.to_thread.run_sync(check_local_brick, b, rec.id, force, others_now)

    async def _commit_create(self, args: dict[str, Any]) -> Any:
        rec = VolumeRecord.from_json(args["volume"])
        for _, b in rec.local(self.uuid):
            try:
                await trio.to_thread.run_sync(partial(os.makedirs, b.path, exist_ok=True))
            except OSError as exc:
                raise fail(f"{b.name}: cannot create: {exc.strerror}",
                           exc.errno or errno.EIO) from None
        await self.save(rec)
        log.info("volume %s created (%s, %d bricks)", rec.name, rec.type, len(rec.bricks))
        return {"volume": rec.name}

    async def _stage_delete(self, args: dict[str, Any]) -> None:
        rec = self.get(args.get("name"))
        if rec.status == STARTED:
            raise fail(f"Volume {rec.name} has been started.Volume needs to be stopped "
                       "before deletion.", errno.EBUSY)

    async def _commit_delete(self, args: dict[str, Any]) -> Any:
        rec = self.get(args["name"])
        await trio.to_thread.run_sync(self.store.delete, rec.name, limiter=self._limiter)
        del self.volumes[rec.name]
        log.info("volume %s deleted", rec.name)
        return {"volume": rec.name}

    # -- options ----------------------------------------------------------
    async def _stage_set(self, args: dict[str, Any]) -> None:
        self.get(args.get("name"))
        key, value = args.get("key"), args.get("value")
        if type(key) is not str or type(value) is not str:
            raise fail("invalid arguments: key and value must be strings")
        why = option_error(key, value)
        if why:
            raise fail(why)

    async def _commit_set(self, args: dict[str, Any]) -> Any:
        rec = self.get(args["name"])
        value = validate_option(args["key"], args["value"])
        new = VolumeRecord.from_json(rec.to_json())
        new.options[args["key"]] = value
        new.version += 1
        await self.save(new)
        return {"key": args["key"], "value": value}

    async def _stage_reset(self, args: dict[str, Any]) -> None:
        self.get(args.get("name"))
        key = args.get("key")
        if key is not None and (type(key) is not str or key not in VOLUME_OPTIONS):
            raise fail(f"option : {key} does not exist. "
                       f"Valid options: {', '.join(sorted(VOLUME_OPTIONS))}")

    async def _commit_reset(self, args: dict[str, Any]) -> Any:
        rec = self.get(args["name"])
        new = VolumeRecord.from_json(rec.to_json())
        key = args.get("key")
        if key is None:
            new.options = {}
        else:
            new.options.pop(key, None)
        new.version += 1
        await self.save(new)
        return {"reset": key or "all"}

    # -- start / stop -----------------------------------------------------
    async def _stage_start(self, args: dict[str, Any]) -> None:
        rec = self.get(args.get("name"))
        if rec.status == STARTED and args.get("force") is not True:
            raise fail(f"Volume {rec.name} already started", errno.EALREADY)
        for _, b in rec.local(self.uuid):
            if not await trio.to_thread.run_sync(os.path.isdir, b.path):
                raise fail(f"brick {b.name} does not exist", errno.ENOENT)

    async def _commit_start(self, args: dict[str, Any]) -> Any:
        rec = self.get(args["name"])
        if rec.status != STARTED:
            new = VolumeRecord.from_json(rec.to_json())
            new.status = STARTED
            await self.save(new)
            rec = new
        return await self.start_local(rec)

    async def start_local(self, rec: VolumeRecord, *, adopt: bool = False) -> dict[str, Any]:
        """Start (or adopt) every local brick of ``rec``; their ports by brick index."""
        ports: dict[str, int] = {}
        errors: list[str] = []

        async def one(i: int) -> None:
            try:
                bp = await self.supervisor.start(rec, i, adopt=adopt)
                ports[str(i)] = bp.port
            except BrickStartError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            for i, _ in rec.local(self.uuid):
                nursery.start_soon(one, i)
        if errors:
            raise fail("\n".join(sorted(errors)), errno.EIO)
        return {"ports": ports}

    async def _stage_stop(self, args: dict[str, Any]) -> None:
        rec = self.get(args.get("name"))
        if rec.status != STARTED and args.get("force") is not True:
            raise fail(f"Volume {rec.name} is not in the started state", errno.EALREADY)

    async def _commit_stop(self, args: dict[str, Any]) -> Any:
        rec = self.get(args["name"])
        async with trio.open_nursery() as nursery:
            for i, _ in rec.local(self.uuid):
                nursery.start_soon(self.supervisor.stop, rec.name, i)
        if rec.status == STARTED:
            new = VolumeRecord.from_json(rec.to_json())
            new.status = STOPPED
            await self.save(new)
        return {"volume": rec.name}

    # -- publishing brick ports -----------------------------------------------
    async def _stage_ports(self, args: dict[str, Any]) -> None:
        rec = self.get(args.get("name"))
        ports = args.get("ports")
        if type(ports) is not dict or not all(
                type(k) is str and k.isdigit() and int(k) < len(rec.bricks)
                and type(v) is int and 0 < v < 65536 for k, v in ports.items()):
            raise fail("invalid arguments: ports")

    async def _commit_ports(self, args: dict[str, Any]) -> Any:
        rec = self.get(args["name"])
        ports = {int(k): v for k, v in args["ports"].items()}
        if all(rec.bricks[i].port == p for i, p in ports.items()):
            return {}
        new = VolumeRecord.from_json(rec.to_json())
        for i, p in ports.items():
            new.bricks[i].port = p
        await self.save(new)
        return {}

    # -- after a restart --------------------------------------------------
    async def resume(self) -> None:
        """Adopt or restart the local bricks of every started volume (at daemon start)."""
        for rec in list(self.volumes.values()):
            if rec.status == STARTED and rec.local(self.uuid):
                try:
                    await self.start_local(rec, adopt=True)
                except TxnError as exc:
                    log.error("volume %s: bricks not resumed: %s", rec.name, exc)

    def status_local(self, name: str) -> list[dict[str, Any]]:
        """This node's bricks of ``name`` as ``volume status`` shows them."""
        rec = self.get(name)
        out = []
        for i, b in rec.local(self.uuid):
            bp = self.supervisor.get(name, i)
            online = bool(bp and bp.online)
            out.append({"index": i, "host": b.host, "path": b.path,
                        "port": bp.port if bp and online else None,
                        "pid": bp.pid if bp and online else None, "online": online})
        return out

