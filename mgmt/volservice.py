"""The volume ops of pyglfsd's rpc service (mgmt/OPS.md has the table).

The originating node checks what it can alone (names, counts, which node hosts
each brick, replica sets spread over hosts) and then runs the change as one
cluster transaction; every node stages its own bricks. Messages are gluster's,
without the command prefix the CLI adds.
"""

from __future__ import annotations

import errno
import logging
import secrets
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

import trio

from pyglfs.mgmt.errors import MgmtError, bad_args
from pyglfs.mgmt.peerlink import call_node
from pyglfs.mgmt.peers import WILDCARD_HOSTS, SharedState, valid_hostname
from pyglfs.mgmt.transaction import TxnError
from pyglfs.mgmt.volstore import STARTED, BrickRef, VolumeRecord
from pyglfs.mgmt.volumes import VolumeManager, option_error
from pyglfs.volfiles.generator import VOLUME_NAME_RE
from pyglfs.volfiles.options import VOLUME_OPTIONS

if TYPE_CHECKING:
    from pyglfs.mgmt.service import MgmtService
    from pyglfs.rpc.server import ServerConnection

log = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 8
MULTI_BRICK_MSG = ("Multiple bricks of a replicate volume are present on the same server. This "
                   "setup is not optimal. Bricks should be on different nodes to have best fault "
                   "tolerant configuration. Use 'force' at the end of the command if you want to "
                   "override this behavior. ")


def _failed(exc: TxnError | MgmtError) -> MgmtError:
    if isinstance(exc, MgmtError):
        msg = exc.message
        return MgmtError(exc.errno or errno.EIO, msg if msg.startswith("failed") else
                         f"failed: {msg}")
    return MgmtError(exc.code, f"failed: {exc}")


def _name(args: dict[str, Any], key: str = "name") -> str:
    name = args.get(key)
    if type(name) is not str or not VOLUME_NAME_RE.fullmatch(name):
        raise MgmtError(errno.EINVAL, f"failed: invalid volume name {name!r}")
    return name


def _flag(args: dict[str, Any], key: str = "force") -> bool:
    v = args.get(key, False)
    if type(v) is not bool:
        raise bad_args(key)
    return v


def volume_info(rec: VolumeRecord) -> dict[str, Any]:
    return {"name": rec.name, "id": rec.id, "type": rec.type, "status": rec.status,
            "replica": rec.replica, "sets": len(rec.bricks) // rec.replica,
            "brick_count": len(rec.bricks), "options": dict(rec.options),
            "bricks": [{"host": b.host, "path": b.path, "port": b.port}
                       for b in rec.bricks]}


class VolumeService:
    """Volume ops for the CLI, and the daemon op that reports local bricks."""

    def __init__(self, service: MgmtService, manager: VolumeManager) -> None:
        self.service = service
        self.peers = service.peers
        self.vm = manager

    def register(self) -> None:
        svc = self.service
        for txn_name, txn_op in self.vm.ops().items():
            svc.engine.register(txn_name, txn_op)
        self._global_set = svc.handler("volume_set")
        self._global_get = svc.handler("volume_get")
        for op, fn in (("volume_create", self.create), ("volume_info", self.info),
                       ("volume_list", self.list), ("volume_delete", self.delete),
                       ("volume_set", self.set), ("volume_get", self.get),
                       ("volume_reset", self.reset), ("volume_start", self.start),
                       ("volume_stop", self.stop), ("volume_status", self.status),
                       ("getspec", self.getspec), ("volume_bricks_local", self.bricks_local)):
            svc.register(op, fn)
        self.peers.bricks_on_peer = self.vm.bricks_on
        self.peers.shared["volumes"] = SharedState(self._export, self._check, self._adopt)
        self.vm.supervisor.on_port_change = self._port_moved

    async def _publish_ports(self, name: str, ports: dict[str, int]) -> bool:
        """Tell every node where bricks listen now; False (logged) if that failed."""
        try:
            await self._txn("volume-ports", {"name": name, "ports": ports})
        except MgmtError as exc:
            log.warning("volume %s: brick ports %s not published: %s", name, ports,
                        exc.message)
            return False
        return True

    async def _port_moved(self, name: str, index: int, port: int) -> None:
        for attempt in range(PUBLISH_ATTEMPTS):
            if name not in self.vm.volumes or await self._publish_ports(name, {str(index): port}):
                return
            await trio.sleep(min(2.0 ** attempt, 30.0))

    # -- what a joining node adopts -------------------------------------------
    def _export(self) -> list[dict[str, Any]]:
        return [v.to_json() for _, v in sorted(self.vm.volumes.items())]

    def _check(self, value: Any) -> list[VolumeRecord]:
        """The pool's volumes for a joining node; refused if it has volumes of its own."""
        if value is None:
            value = []
        if type(value) is not list:
            raise MgmtError(errno.EINVAL, "invalid arguments: friend_join volumes")
        try:
            records = [VolumeRecord.from_json(d) for d in value]
        except ValueError as exc:
            raise MgmtError(errno.EINVAL, f"invalid arguments: friend_join volumes ({exc})"
                            ) from None
        theirs = {r.name: r.id for r in records}
        if any(theirs.get(n) != v.id for n, v in self.vm.volumes.items()):
            raise MgmtError(errno.EISCONN, "the probed node has volumes configured")
        return records

    async def _adopt(self, records: list[VolumeRecord]) -> None:
        for rec in records:
            await self.vm.save(rec)

    async def _txn(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Stage here first (a refusal then reads as this node's, once), then run
        the transaction on the whole pool."""
        try:
            await self.vm.ops()[op].stage(args)
        except TxnError as exc:
            raise _failed(exc) from None
        try:
            return await self.service.transaction(op, args)
        except MgmtError as exc:
            raise _failed(exc) from None

    # -- create -----------------------------------------------------------
    def _node_of(self, host: str) -> str:
        me = self.peers.listen_host
        if host == me or (me in WILDCARD_HOSTS and host in ("localhost", "127.0.0.1")):
            return self.peers.uuid
        for rec in self.peers.peers.values():
            if rec.hostname == host and self.peers.monitor.connected.get(rec.uuid):
                return rec.uuid
        raise MgmtError(errno.EHOSTUNREACH,
                        f"failed: Host {host} is not in 'Peer in Cluster' state")

    async def create(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        name = _name(args)
        force = _flag(args)
        replica = args.get("replica", 1)
        raw = args.get("bricks")
        if type(replica) is not int or replica < 1:
            raise MgmtError(errno.EINVAL, "failed: replica count should be greater than 0")
        if type(raw) is not list or not raw or not all(type(b) is str for b in raw):
            raise bad_args("bricks")
        if name in self.vm.volumes:
            raise MgmtError(errno.EEXIST, f"failed: Volume {name} already exists")
        if len(raw) % replica:
            raise MgmtError(errno.EINVAL, "failed: number of bricks is not a multiple of "
                                          "replica count")
        bricks: list[BrickRef] = []
        for text in raw:
            host, sep, path = text.rpartition(":")
            if not sep or not valid_hostname(host) or not path.startswith("/"):
                raise MgmtError(errno.EINVAL, f"failed: brick {text!r}: expected HOST:/PATH "
                                              "with an absolute path")
            path = "/" + "/".join(p for p in path.split("/") if p)
            if any(b.host == host and b.path == path for b in bricks):
                raise MgmtError(errno.EINVAL, f"failed: Found duplicate exports {host}:{path}")
            bricks.append(BrickRef(host, path, self._node_of(host)))
        if replica > 1 and not force:
            for k in range(0, len(bricks), replica):
                nodes = [b.node for b in bricks[k:k + replica]]
                if len(set(nodes)) < len(nodes):
                    raise MgmtError(errno.EINVAL, f"failed: {MULTI_BRICK_MSG}")
        rec = VolumeRecord(name, str(uuidlib.uuid4()), replica, bricks,
                           username=str(uuidlib.uuid4()), password=secrets.token_hex(16))
        await self._txn("volume-create", {"volume": rec.to_json(), "force": force})
        return volume_info(rec)

    # -- read-only --------------------------------------------------------
    async def info(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        name = args.get("name")
        if name in (None, "all"):
            return {"volumes": [volume_info(v) for _, v in sorted(self.vm.volumes.items())]}
        try:
            return {"volumes": [volume_info(self.vm.get(_name(args)))]}
        except TxnError as exc:
            raise _failed(exc) from None

    async def list(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return {"volumes": sorted(self.vm.volumes)}

    async def getspec(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        """The client volfile of ``volume``. A mount (role ``client``) gets it only
        while the volume is started: ENXIO otherwise, so the mount fails at once
        with the reason instead of waiting for bricks that are not there."""
        name = _name(args, "volume")
        try:
            rec = self.vm.get(name)
        except TxnError as exc:
            raise MgmtError(errno.ENOENT, str(exc)) from None
        if conn.role == "client" and rec.status != STARTED:
            raise MgmtError(errno.ENXIO, f"Volume {name} is not started")
        text = await trio.to_thread.run_sync(self.vm.store.client_volfile, name)
        return {"volume": name, "volfile": text}

    # -- changes ----------------------------------------------------------
    async def delete(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        name = _name(args)
        await self._txn("volume-delete", {"name": name})
        return {"volume": name}

    async def set(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        if args.get("volume") == "all":
            return await self._global_set(args, conn)
        name = _name(args, "volume")
        key, value = args.get("key"), args.get("value")
        if type(key) is not str or type(value) is not str:
            raise bad_args("key and value")
        if name not in self.vm.volumes:
            raise MgmtError(errno.ENOENT, f"failed: Volume {name} does not exist")
        why = option_error(key, value)
        if why:
            raise MgmtError(errno.EINVAL, f"failed: {why}")
        res = await self._txn("volume-set", {"name": name, "key": key, "value": value})
        return res.get("localhost", {"key": key, "value": value})

    async def get(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        if args.get("volume") == "all":
            return await self._global_get(args, conn)
        name = _name(args, "volume")
        try:
            rec = self.vm.get(name)
        except TxnError as exc:
            raise _failed(exc) from None
        values = {k: rec.options.get(k, o.default) for k, o in VOLUME_OPTIONS.items()}
        key = args.get("key", "all")
        if key == "all":
            return {"options": values}
        if type(key) is not str or key not in values:
            raise MgmtError(errno.EINVAL, f"failed: option : {key} does not exist. Valid "
                                          f"options: {', '.join(sorted(VOLUME_OPTIONS))}")
        return {"options": {key: values[key]}}

    async def reset(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        name = _name(args, "volume")
        key = args.get("key")
        if key in (None, "all"):
            key = None
        return (await self._txn("volume-reset", {"name": name, "key": key})).get("localhost")

    async def start(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        name = _name(args)
        results = await self._txn("volume-start", {"name": name, "force": _flag(args)})
        ports: dict[str, int] = {}
        for r in results.values():
            if isinstance(r, dict) and isinstance(r.get("ports"), dict):
                ports.update(r["ports"])
        if ports:
            await self._publish_ports(name, ports)
        return {"volume": name, "ports": ports}

    async def stop(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        name = _name(args)
        await self._txn("volume-stop", {"name": name, "force": _flag(args)})
        return {"volume": name}

    # -- status -----------------------------------------------------------
    async def bricks_local(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        self.peers.require_member(conn.client_id)
        try:
            return {"bricks": self.vm.status_local(_name(args))}
        except TxnError as exc:
            raise _failed(exc) from None

    async def status(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        name = args.get("name")
        if name in (None, "all"):
            names = sorted(n for n, v in self.vm.volumes.items() if v.status == "Started")
            if not names:
                raise MgmtError(errno.ENOENT, "No volumes present" if not self.vm.volumes
                                else "No volumes present in cluster")
        else:
            rec = self.vm.volumes.get(_name(args))
            if rec is None:
                raise MgmtError(errno.ENOENT, f"Volume {name} does not exist")
            if rec.status != "Started":
                raise MgmtError(errno.EINVAL, f"Volume {name} is not started")
            names = [rec.name]
        return {"volumes": [await self._status_one(n) for n in names]}

    async def _status_one(self, name: str) -> dict[str, Any]:
        rec = self.vm.volumes[name]
        found: dict[int, dict[str, Any]] = {b["index"]: b for b in self.vm.status_local(name)}

        async def ask(node: str) -> None:
            peer = self.peers.peers.get(node)
            if peer is None:
                return
            try:
                with trio.fail_after(5):
                    res = await call_node(peer.hostname, peer.port, "volume_bricks_local",
                                          {"name": name}, client_id=self.peers.uuid,
                                          timeout=5)
            except (OSError, trio.TooSlowError):
                return
            for b in res.get("bricks", []) if isinstance(res, dict) else []:
                if isinstance(b, dict) and type(b.get("index")) is int:
                    found[b["index"]] = b

        remote = {b.node for b in rec.bricks if b.node != self.peers.uuid}
        async with trio.open_nursery() as nursery:
            for node in remote:
                nursery.start_soon(ask, node)
        bricks = []
        for i, b in enumerate(rec.bricks):
            got = found.get(i, {})
            online = got.get("online") is True
            bricks.append({"host": b.host, "path": b.path, "online": online,
                           "port": got.get("port") if online else None,
                           "pid": got.get("pid") if online else None,
                           "node": b.node})
        return {"name": name, "bricks": bricks}


def register_volumes(service: MgmtService, manager: VolumeManager) -> VolumeService:
    vs = VolumeService(service, manager)
    vs.register()
    return vs
