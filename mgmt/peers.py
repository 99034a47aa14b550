"""The trusted pool as one node keeps it: probe, detach, and what peers tell us.

Invariants
- Every node of a pool records every other node (UUID, hostname, port) in
  ``<state>/peers/<uuid>``. A probe records both ends and tells the rest of the
  pool about the newcomer; a detach makes the detached node forget the whole pool
  and the rest forget it.
- A peer's file is written before the in-memory table changes, so what the
  daemon reports is always on disk.
- Only a node already in the pool may change our view of it (``friend_update``,
  ``friend_forget``, ``friend_leave``); anyone may ask to join an empty pool.
"""

from __future__ import annotations

import errno
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import trio

from pyglfs.mgmt.errors import MgmtError
from pyglfs.mgmt.peerlink import (
    DEFAULT_PORT,
    PeerMonitor,
    call_node,
    display_name,
    is_transport_error,
)
from pyglfs.mgmt.statestore import PeerRecord, StateStore

log = logging.getLogger(__name__)

STATE_IN_CLUSTER = "Peer in Cluster"
STATE_REJECTED = "Peer Rejected"
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT``; MgmtError(EINVAL) if malformed."""
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise MgmtError(errno.EINVAL, f"invalid address {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise MgmtError(errno.EINVAL, f"invalid address {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    if not valid_hostname(host):
        raise MgmtError(errno.EINVAL, f"invalid address {text!r}")
    return host, port


def valid_hostname(host: Any) -> bool:
    """A hostname, IPv4 or IPv6 address as an operator may write it (no port)."""
    return (type(host) is str and 0 < len(host) <= 255
            and not any(c.isspace() or c in "/\0[]" for c in host))


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise MgmtError(errno.EINVAL, f"invalid port in {whole!r}")
    return int(text)


def is_uuid(text: Any) -> TypeGuard[str]:
    if type(text) is not str:
        return False
    try:
        return str(uuidlib.UUID(text)) == text
    except ValueError:
        return False


@dataclass
class SharedState:
    """A piece of cluster-wide state (options now, volumes next) that a node joining
    the pool adopts from the prober: ``export`` it on the prober, ``check`` it on the
    joiner (MgmtError if malformed; returns the clean value), then ``adopt`` it."""

    export: Callable[[], Any]
    check: Callable[[Any], Any]
    adopt: Callable[[Any], Awaitable[None]]


class PeerManager:
    """This node's view of the pool, and the operations that change it."""

    def __init__(self, store: StateStore, node_uuid: str, peers: dict[str, PeerRecord],
                 monitor: PeerMonitor, *, listen_host: str, port: int,
                 limiter: trio.CapacityLimiter | None = None,
                 call_timeout: float = 10.0) -> None:
        self.store = store
        self.uuid = node_uuid
        self.peers = peers
        self.monitor = monitor
        self.listen_host = listen_host
        self.port = port
        self.call_timeout = call_timeout
        self._limiter = limiter or trio.CapacityLimiter(1)
        self._lock = trio.Lock()
        # Filled in by the volume slice: the bricks a peer hosts, which make a
        # detach refuse. Returns brick names ("host:/path").
        self.bricks_on_peer: Callable[[str], list[str]] = lambda peer_uuid: []
        self.shared: dict[str, SharedState] = {}

    @property
    def advertise(self) -> str:
        """The hostname we ask peers to record for us; "" lets them use our source IP."""
        return "" if self.listen_host in WILDCARD_HOSTS else self.listen_host

    def start_monitoring(self) -> None:
        for rec in self.peers.values():
            self.monitor.watch(rec)

    # -- persistence ------------------------------------------------------
    async def _save(self, rec: PeerRecord) -> None:
        await trio.to_thread.run_sync(self.store.save_peer, rec, limiter=self._limiter)
        self.peers[rec.uuid] = rec

    async def _delete(self, peer_uuid: str) -> None:
        await trio.to_thread.run_sync(self.store.delete_peer, peer_uuid, limiter=self._limiter)
        self.peers.pop(peer_uuid, None)
        self.monitor.unwatch(peer_uuid)

    async def _add(self, rec: PeerRecord, *, connected: bool = False) -> None:
        old = self.peers.get(rec.uuid)
        if old == rec:
            return
        await self._save(rec)
        self.monitor.watch(rec, connected=connected)
        log.info("peer %s (%s) recorded", display_name(rec.hostname, rec.port), rec.uuid)

    def _call(self, rec_or_host: PeerRecord | tuple[str, int], op: str,
              args: dict[str, Any]) -> Any:
        host, port = ((rec_or_host.hostname, rec_or_host.port)
                      if isinstance(rec_or_host, PeerRecord) else rec_or_host)
        return call_node(host, port, op, args, client_id=self.uuid, timeout=self.call_timeout)

    async def _tell_others(self, op: str, args: dict[str, Any], skip: set[str]) -> None:
        """Best effort: a peer that misses this is logged (it resyncs in a later slice)."""
        async def one(rec: PeerRecord) -> None:
            try:
                await self._call(rec, op, args)
            except OSError as exc:
                log.warning("could not tell peer %s about %s: %s", rec.hostname, op,
                            exc.strerror or exc)

        async with trio.open_nursery() as nursery:
            for rec in list(self.peers.values()):
                if rec.uuid not in skip:
                    nursery.start_soon(one, rec)

    # -- lookups ----------------------------------------------------------
    def find(self, host: str, port: int | None = None) -> PeerRecord | None:
        if is_uuid(host) and host in self.peers:
            return self.peers[host]
        for rec in self.peers.values():
            if rec.hostname == host and (port is None or rec.port == port):
                return rec
        return None

    async def down_peers(self, skip: str = "") -> list[str]:
        """Names of the peers that are down (``skip`` left out).

        A peer the monitor has not (yet) seen up is asked once directly, so an
        operation right after a restart does not fail on a monitor still connecting.
        """
        down: list[str] = []

        async def check(rec: PeerRecord) -> None:
            try:
                await call_node(rec.hostname, rec.port, "friend_hello", {}, client_id=self.uuid,
                                timeout=min(self.call_timeout, 5.0))
            except OSError:
                down.append(display_name(rec.hostname, rec.port))

        async with trio.open_nursery() as nursery:
            for rec in self.peers.values():
                if rec.uuid != skip and not self.monitor.connected.get(rec.uuid):
                    nursery.start_soon(check, rec)
        return sorted(down)

    def is_self(self, host: str, port: int) -> bool:
        if host == self.uuid:
            return True
        if port != self.port:
            return False
        return host == self.listen_host or (host == "localhost"
                                            and self.listen_host in WILDCARD_HOSTS)

    def peer_info(self, rec: PeerRecord) -> dict[str, Any]:
        rejected = self.monitor.rejected.get(rec.uuid, False)
        return {"uuid": rec.uuid, "hostname": rec.hostname, "port": rec.port,
                "name": display_name(rec.hostname, rec.port),
                "state": STATE_REJECTED if rejected else STATE_IN_CLUSTER,
                "connected": self.monitor.connected.get(rec.uuid, False)}

    def status(self) -> list[dict[str, Any]]:
        return [self.peer_info(r) for r in sorted(self.peers.values(),
                                                   key=lambda r: (r.hostname, r.port))]

    def pool(self) -> list[dict[str, Any]]:
        me = {"uuid": self.uuid, "hostname": "localhost", "port": self.port,
              "name": "localhost", "state": STATE_IN_CLUSTER, "connected": True}
        return [*self.status(), me]

    # -- operator operations ----------------------------------------------
    async def probe(self, host: str, port: int) -> dict[str, Any]:
        """Add host:port to the pool, recording it here and us there."""
        if self.is_self(host, port):
            raise MgmtError(errno.EINVAL, "Probe on localhost not needed")
        async with self._lock:
            if self.find(host, port) is not None:
                raise MgmtError(errno.EEXIST, f"Host {host} port {port} already in peer list")
            down = await self.down_peers()
            if down:
                # Every member must record the newcomer; one that is down would miss it.
                raise MgmtError(errno.ENOTCONN, f"failed: {', '.join(down)} "
                                f"{'is' if len(down) == 1 else 'are'} not connected. "
                                "Check with 'peer status'.")
            try:
                ident = await self._call((host, port), "friend_identify", {})
                remote = ident.get("uuid") if type(ident) is dict else None
                if not is_uuid(remote):
                    raise MgmtError(errno.EPROTO, f"failed: {host} answered without a UUID")
                if remote == self.uuid:
                    raise MgmtError(errno.EINVAL, "Probe on localhost not needed")
                if remote in self.peers:
                    raise MgmtError(errno.EEXIST,
                                    f"Host {host} port {port} already in peer list")
                others = [r.to_json() for r in self.peers.values()]
                await self._call((host, port), "friend_join", {
                    "hostname": self.advertise, "port": self.port, "as": host,
                    "peers": others,
                    "shared": {name: s.export() for name, s in self.shared.items()}})
            except MgmtError:
                raise
            except OSError as exc:
                if is_transport_error(exc):
                    log.warning("probe of %s:%d failed: %s", host, port, exc)
                    raise MgmtError(errno.ENOTCONN, "failed: Probe returned with "
                                    "Transport endpoint is not connected") from None
                raise MgmtError(exc.errno or errno.EIO,
                                f"failed: {exc.strerror or exc}") from None
            rec = PeerRecord(uuid=remote, hostname=host, port=port)
            await self._tell_others("friend_update", {"peers": [rec.to_json()]}, skip=set())
            await self._add(rec, connected=True)
            return self.peer_info(rec)

    async def detach(self, target: str, port: int | None, *, force: bool = False
                     ) -> dict[str, Any]:
        """Remove a peer from the pool: it forgets the pool and the pool forgets it.

        With ``force`` a peer that cannot be reached is dropped anyway (it will still
        believe itself a member until it is told otherwise).
        """
        if self.is_self(target, port or self.port):
            raise MgmtError(errno.EINVAL, f"failed: {target} is localhost")
        async with self._lock:
            rec = self.find(target, port)
            if rec is None:
                raise MgmtError(errno.ENOENT, f"failed: {target} is not part of cluster")
            name = display_name(rec.hostname, rec.port)
            bricks = self.bricks_on_peer(rec.uuid)
            if bricks:
                raise MgmtError(errno.EBUSY, (
                    f"failed: Peer {name} hosts one or more bricks. If the peer is in not "
                    "recoverable state then use either replace-brick or remove-brick command "
                    "with force to remove all bricks from the peer and attempt the peer "
                    "detach again."))
            down = await self.down_peers(skip=rec.uuid)
            if down and not force:
                log.warning("detach of %s refused: peers down: %s", name, ", ".join(down))
                raise MgmtError(errno.ENOTCONN, "failed: One of the peers is probably down. "
                                "Check with 'peer status'.")
            try:
                await self._call(rec, "friend_leave", {})
            except OSError as exc:
                if exc.errno == errno.EPERM:
                    log.info("peer %s had already forgotten us", name)
                elif not is_transport_error(exc):
                    raise MgmtError(exc.errno or errno.EIO,
                                    f"failed: {exc.strerror or exc}") from None
                elif not force:
                    raise MgmtError(errno.ENOTCONN, f"failed: {name} is not connected. Use "
                                    "'peer detach HOST force' to remove it anyway") from None
                else:
                    log.warning("detaching unreachable peer %s (force): %s", name, exc)
            await self._delete(rec.uuid)
            await self._tell_others("friend_forget", {"uuid": rec.uuid}, skip=set())
            log.info("peer %s (%s) detached", name, rec.uuid)
            return {"uuid": rec.uuid, "hostname": rec.hostname, "port": rec.port}

    # -- what other daemons ask -------------------------------------------
    def require_member(self, caller: str) -> PeerRecord:
        rec = self.peers.get(caller)
        if rec is None:
            raise MgmtError(errno.EPERM, "not a member of this node's pool")
        return rec

    def on_identify(self) -> dict[str, Any]:
        return {"uuid": self.uuid}

    async def on_hello(self, caller: str, args: dict[str, Any]) -> dict[str, Any]:
        """A member's monitor checks in, telling the port it listens on now: a daemon
        restarted on another port is followed (the hostname stays the operator's)."""
        rec = self.require_member(caller)
        port = args.get("port")
        if type(port) is int and 0 < port < 65536 and port != rec.port:
            moved = PeerRecord(rec.uuid, rec.hostname, port)
            log.info("peer %s (%s) now listens on port %d (was %d)", rec.hostname, rec.uuid,
                     port, rec.port)
            await self._save(moved)
            self.monitor.watch(moved)
        return {"uuid": self.uuid}

    async def on_join(self, caller: str, caller_ip: str, args: dict[str, Any]
                      ) -> dict[str, Any]:
        """A node probed us. Join its pool unless we already belong to another."""
        if caller == self.uuid:
            raise MgmtError(errno.EINVAL, "Probe on localhost not needed")
        if not is_uuid(caller):
            raise MgmtError(errno.EINVAL, "probe from a node without a UUID")
        hostname, port, as_, listed = (args.get("hostname"), args.get("port"),
                                       args.get("as"), args.get("peers"))
        if (type(hostname) is not str or type(port) is not int or type(as_) is not str
                or type(listed) is not list):
            raise MgmtError(errno.EINVAL, "invalid arguments: friend_join")
        records = []
        for d in listed:
            try:
                records.append(PeerRecord.from_json(d))
            except ValueError:
                raise MgmtError(errno.EINVAL, "invalid arguments: friend_join peers") from None
        if caller not in self.peers and self.peers:
            raise MgmtError(errno.EISCONN, f"{as_} is either already part of another "
                            "cluster or having volumes configured")
        shared = args.get("shared", {})
        if type(shared) is not dict:
            raise MgmtError(errno.EINVAL, "invalid arguments: friend_join shared")
        adopted = {name: s.check(shared.get(name)) for name, s in self.shared.items()}
        for name, value in adopted.items():
            await self.shared[name].adopt(value)
        await self._add(PeerRecord(caller, hostname or caller_ip, port), connected=True)
        for rec in records:
            if rec.uuid != self.uuid and rec.uuid not in self.peers:
                await self._add(rec)
        return {"uuid": self.uuid}

    async def on_update(self, caller: str, args: dict[str, Any]) -> dict[str, Any]:
        self.require_member(caller)
        listed = args.get("peers")
        if type(listed) is not list:
            raise MgmtError(errno.EINVAL, "invalid arguments: friend_update")
        try:
            records = [PeerRecord.from_json(d) for d in listed]
        except ValueError:
            raise MgmtError(errno.EINVAL, "invalid arguments: friend_update peers") from None
        for rec in records:
            if rec.uuid != self.uuid and rec.uuid not in self.peers:
                await self._add(rec)
        return {}

    async def on_forget(self, caller: str, args: dict[str, Any]) -> dict[str, Any]:
        self.require_member(caller)
        gone = args.get("uuid")
        if not is_uuid(gone):
            raise MgmtError(errno.EINVAL, "invalid arguments: friend_forget")
        if gone in self.peers:
            await self._delete(gone)
            log.info("peer %s forgotten at the request of %s", gone, caller)
        return {}

    async def on_leave(self, caller: str) -> dict[str, Any]:
        """We were detached: leave the pool, forgetting every peer."""
        rec = self.require_member(caller)
        log.info("detached from the pool by %s (%s)", rec.hostname, caller)
        for peer_uuid in list(self.peers):
            await self._delete(peer_uuid)
        return {}

