"""pyglfsd's rpc service: the op table for the CLI and for other daemons.

Ops from the CLI (any mgmt client): ``node_info``, ``peer_probe``, ``peer_detach``,
``peer_status``, ``pool_list``, plus those other modules ``register`` (cluster
options in ``globalopts``; the ``volume_*`` ops and ``getspec`` in ``volservice``). Ops from other daemons: ``friend_identify``
and ``friend_join`` from anyone (a probe comes from a node not yet in our pool);
``friend_hello``, ``friend_update``, ``friend_forget``, ``friend_leave`` and the
``txn_*`` phases only from a member, known by the connection's ``client_id`` (its
node UUID). mgmt/OPS.md has the arguments and results.

FUSE clients connect with role ``client`` and may call only ``CLIENT_OPS`` (they
fetch their volfile); every other op is refused to them with EPERM.

Every refusal is a ``MgmtError`` (an errno reply whose message is for the operator).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pyglfs import __version__
from pyglfs.mgmt.errors import MgmtError, bad_args
from pyglfs.mgmt.peerlink import DEFAULT_PORT, RemoteParticipant
from pyglfs.mgmt.peers import PeerManager, valid_hostname
from pyglfs.mgmt.transaction import (
    CLUSTER_LOCK,
    LocalParticipant,
    Participant,
    Txn,
    TxnEngine,
    TxnError,
    lock_all,
    run_transaction,
    unlock_all,
)
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.server import ServerConnection

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], ServerConnection], Awaitable[Any]]

# What a mount (hello role "client") may ask: its volfile, nothing that reads or
# changes the pool.
CLIENT_OPS = frozenset({"getspec"})
ROLES = ("mgmt", "client")


def _opt_port(args: dict[str, Any]) -> int | None:
    port = args.get("port")
    if port is not None and (type(port) is not int or not 0 < port < 65536):
        raise bad_args("port")
    return port


def _host_arg(args: dict[str, Any]) -> str:
    host = args.get("host")
    if not valid_hostname(host):
        raise bad_args("host")
    return str(host)


def _caller_ip(conn: ServerConnection) -> str:
    peer = conn.peer
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    return host.strip("[]")


class MgmtService:
    """Dispatches mgmt ops to the pool (``PeerManager``) and the transaction engine."""

    server_name = "pyglfsd"

    def __init__(self, peers: PeerManager, engine: TxnEngine) -> None:
        self.peers = peers
        self.engine = engine
        self._ops: dict[str, Handler] = {
            "node_info": self._node_info,
            "peer_probe": self._peer_probe,
            "peer_detach": self._peer_detach,
            "peer_status": self._peer_status,
            "pool_list": self._pool_list,
            "friend_identify": self._friend_identify,
            "friend_join": self._friend_join,
            "friend_hello": self._friend_hello,
            "friend_update": self._friend_update,
            "friend_forget": self._friend_forget,
            "friend_leave": self._friend_leave,
            "txn_lock": self._txn("lock"),
            "txn_stage": self._txn("stage"),
            "txn_commit": self._txn("commit"),
            "txn_unlock": self._txn("unlock"),
        }
        self._on_disconnect: list[Callable[[ServerConnection], None]] = []

    def register(self, op: str, handler: Handler) -> None:
        """Add an op, or replace one (the volume slice adds its own)."""
        self._ops[op] = handler

    def on_disconnect(self, fn: Callable[[ServerConnection], None]) -> None:
        """Have ``fn(conn)`` called when a connection ends, whoever ended it."""
        self._on_disconnect.append(fn)

    def handler(self, op: str) -> Handler:
        """The current handler of ``op`` (to wrap it); KeyError if there is none."""
        return self._ops[op]

    # -- Service protocol -------------------------------------------------
    def authenticate(self, hello: dict[str, Any]) -> None:
        if hello["role"] not in ROLES:
            raise HandshakeRefused("this is pyglfsd, the management daemon: "
                                   f"role {hello['role']!r} is not served here")

    async def handle(self, op: str, args: dict[str, Any], conn: ServerConnection) -> Any:
        fn = self._ops.get(op)
        if fn is None:
            raise MgmtError(errno.ENOSYS, f"unknown operation {op!r}")
        if conn.role == "client" and op not in CLIENT_OPS:
            raise MgmtError(errno.EPERM, f"operation {op!r} is not served to clients "
                                         f"(role 'client' may call: {', '.join(sorted(CLIENT_OPS))})")
        return await fn(args, conn)

    def disconnected(self, conn: ServerConnection) -> None:
        for fn in self._on_disconnect:
            try:
                fn(conn)
            except Exception:
                log.exception("%r: a disconnect hook failed", conn)

    # -- transactions -----------------------------------------------------
    def participants(self) -> list[Participant]:
        parts: list[Participant] = [LocalParticipant(self.engine)]
        parts += [RemoteParticipant(rec, self.peers.uuid, self.peers.call_timeout)
                  for rec in self.peers.peers.values()]
        return parts

    async def transaction(self, op: str, args: dict[str, Any], key: str = CLUSTER_LOCK) -> Any:
        """Run ``op`` on the whole pool; MgmtError carrying the transaction's message."""
        try:
            return await run_transaction(self.participants(),
                                         Txn(op, args, key=key, originator=self.peers.uuid))
        except TxnError as exc:
            raise MgmtError(exc.code, str(exc)) from None

    def _txn(self, phase: str) -> Handler:
        async def handler(args: dict[str, Any], conn: ServerConnection) -> Any:
            self.peers.require_member(conn.client_id)
            try:
                txn = Txn.from_wire(args.get("txn"))
                if txn.originator != conn.client_id:
                    raise TxnError("transaction originator is not the caller", errno.EPERM)
                return await getattr(self.engine, phase)(txn)
            except TxnError as exc:
                raise MgmtError(exc.code, str(exc)) from None

        return handler

    # -- CLI ops ----------------------------------------------------------
    async def _node_info(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return {"uuid": self.peers.uuid, "port": self.peers.port, "version": __version__,
                "listen": self.peers.listen_host}

    @asynccontextmanager
    async def _pool_change(self, skip: str = "") -> AsyncIterator[None]:
        """Hold the cluster lock on every reachable member while the pool changes, so
        that neither a cluster transaction nor another probe or detach runs with the
        membership in flux. ``skip`` (a detach's target) is not locked. Reachability
        is judged by the pool operation itself, which words it for the operator."""
        txn = Txn("pool-change", {}, originator=self.peers.uuid)
        parts = [p for p in self.participants()
                 if not (isinstance(p, RemoteParticipant) and p.peer.uuid == skip)]
        try:
            locked = await lock_all(parts, txn, skip_unreachable=True)
        except TxnError as exc:
            raise MgmtError(exc.code, f"failed: {exc}") from None
        try:
            yield
        finally:
            await unlock_all(locked, txn)

    async def _peer_probe(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        host = _host_arg(args)
        port = _opt_port(args) or DEFAULT_PORT
        async with self._pool_change():
            return await self.peers.probe(host, port)

    async def _peer_detach(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        force = args.get("force", False)
        if type(force) is not bool:
            raise bad_args("force")
        host, port = _host_arg(args), _opt_port(args)
        target = self.peers.find(host, port)
        async with self._pool_change(skip=target.uuid if target else ""):
            return await self.peers.detach(host, port, force=force)

    async def _peer_status(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return {"peers": self.peers.status()}

    async def _pool_list(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return {"pool": self.peers.pool()}

    # -- daemon ops -------------------------------------------------------
    async def _friend_identify(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return self.peers.on_identify()

    async def _friend_hello(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return await self.peers.on_hello(conn.client_id, args)

    async def _friend_join(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return await self.peers.on_join(conn.client_id, _caller_ip(conn), args)

    async def _friend_update(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return await self.peers.on_update(conn.client_id, args)

    async def _friend_forget(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return await self.peers.on_forget(conn.client_id, args)

    async def _friend_leave(self, args: dict[str, Any], conn: ServerConnection) -> Any:
        return await self.peers.on_leave(conn.client_id)
