"""How one pyglfsd reaches another: single calls, transaction participants, and the
monitor that keeps a connection to every peer to know whether it is up.

Daemon-to-daemon calls use the ordinary rpc protocol with role ``mgmt`` and the
caller's node UUID as ``client_id``; the receiving daemon accepts the ``friend_*``
and ``txn_*`` ops only from UUIDs in its peer list.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import trio

from pyglfs.mgmt.statestore import PeerRecord
from pyglfs.mgmt.transaction import Txn, TxnBusy, TxnError
from pyglfs.rpc.connection import open_rpc_connection
from pyglfs.rpc.errors import HandshakeRefused

log = logging.getLogger(__name__)

DEFAULT_PORT = 24750
PEER_CALL_TIMEOUT = 10.0
# A commit starts or stops brick processes (a start may take bricksup's READY_TIMEOUT,
# a stop its STOP_TIMEOUT and a kill): it gets this long, while a peer that stops
# answering pings is still given up after the ordinary timeout.
COMMIT_TIMEOUT = 60.0
# Errnos that mean "the node could not be reached", as opposed to a refusal.
TRANSPORT_ERRNOS = frozenset({errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNREFUSED,
                              errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH})


def display_name(hostname: str, port: int) -> str:
    """How the operator names a node: the bare hostname on the default port."""
    return hostname if port == DEFAULT_PORT else f"{hostname}:{port}"


def is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, HandshakeRefused):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSPORT_ERRNOS


async def call_node(host: str, port: int, op: str, args: dict[str, Any], *, client_id: str,
                    timeout: float = PEER_CALL_TIMEOUT, call_timeout: float | None = None
                    ) -> Any:
    """One request to the pyglfsd at host:port on a fresh connection.

    ``timeout`` bounds connecting and the node's silence (pings); the answer may
    take ``call_timeout`` (default ``timeout``) from a node that keeps answering pings.
    Raises OSError: a transport errno (see ``is_transport_error``) when the node
    cannot be reached, otherwise the errno and message the node replied with.
    """
    deadline = max(timeout, call_timeout or 0.0)
    async with open_rpc_connection(host, port, volume="", client_id=client_id, role="mgmt",
                                   connect_timeout=timeout, ping_timeout=timeout,
                                   call_timeout=deadline) as conn:
        return await conn.call(op, args, timeout=deadline)


class RemoteParticipant:
    """A peer taking part in a cluster transaction, over the wire."""

    is_local = False

    def __init__(self, peer: PeerRecord, client_id: str,
                 timeout: float = PEER_CALL_TIMEOUT) -> None:
        self.peer = peer
        self.name = display_name(peer.hostname, peer.port)
        self.client_id = client_id
        self.timeout = timeout

    async def _call(self, op: str, txn: Txn, call_timeout: float | None = None) -> Any:
        try:
            return await call_node(self.peer.hostname, self.peer.port, op,
                                   {"txn": txn.to_wire()}, client_id=self.client_id,
                                   timeout=self.timeout, call_timeout=call_timeout)
        except OSError as exc:
            if is_transport_error(exc):
                raise
            if exc.errno == errno.EBUSY:
                raise TxnBusy(txn.key) from None
            raise TxnError(str(exc.strerror or exc), exc.errno or errno.EIO) from None

    async def lock(self, txn: Txn) -> None:
        await self._call("txn_lock", txn)

    async def stage(self, txn: Txn) -> None:
        await self._call("txn_stage", txn)

    async def commit(self, txn: Txn) -> Any:
        return await self._call("txn_commit", txn, COMMIT_TIMEOUT)

    async def unlock(self, txn: Txn) -> None:
        await self._call("txn_unlock", txn)


CONNECTED = "Connected"
DISCONNECTED = "Disconnected"


class PeerMonitor:
    """Keeps one connection to each peer and records whether it is up.

    The rpc connection's watchdog pings an idle peer, so a host that vanishes is
    noticed within ``ping_timeout``; a peer that is down is retried every
    ``retry_interval`` seconds. A peer that answers but does not count us as a
    member is marked ``rejected`` once that lasts ``reject_grace`` seconds (while a
    node joins, the others learn of it a moment after it learns of them); the
    usual cause is that it was detached while we were away.
    """

    reject_grace = 5.0

    def __init__(self, node_uuid: str, *, retry_interval: float = 3.0,
                 ping_timeout: float = 10.0,
                 on_change: Callable[[str, bool], None] | None = None) -> None:
        self.node_uuid = node_uuid
        self.retry_interval = retry_interval
        self.ping_timeout = ping_timeout
        self.on_change = on_change
        self.connected: dict[str, bool] = {}
        self.rejected: dict[str, bool] = {}
        self._since: dict[str, float] = {}
        # What we tell a peer when we check in: the port we listen on (set once bound).
        self.hello_args: dict[str, Any] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def state(self, peer_uuid: str) -> str:
        return CONNECTED if self.connected.get(peer_uuid) else DISCONNECTED

    def watch(self, peer: PeerRecord, *, connected: bool = False) -> None:
        """Start (or restart, after an address change) watching ``peer``."""
        self.unwatch(peer.uuid)
        self.connected[peer.uuid] = connected
        self.rejected[peer.uuid] = False
        if self._nursery is None:
            return
        scope = trio.CancelScope()
        self._scopes[peer.uuid] = scope
        self._since[peer.uuid] = trio.current_time()
        self._nursery.start_soon(self._watch, peer, scope)

    def unwatch(self, peer_uuid: str) -> None:
        scope = self._scopes.pop(peer_uuid, None)
        if scope is not None:
            scope.cancel()
        self.connected.pop(peer_uuid, None)
        self.rejected.pop(peer_uuid, None)
        self._since.pop(peer_uuid, None)

    def _set(self, peer: PeerRecord, up: bool, why: str = "") -> None:
        if self.connected.get(peer.uuid) != up:
            if up:
                log.info("peer %s (%s) is connected", peer.hostname, peer.uuid)
            else:
                log.warning("peer %s (%s) is disconnected: %s", peer.hostname, peer.uuid, why)
            if self.on_change is not None:
                self.on_change(peer.uuid, up)
        self.connected[peer.uuid] = up

    async def _watch(self, peer: PeerRecord, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                why = await self._session(peer)
                if why is not None:
                    self._set(peer, False, why)
                    await trio.sleep(self.retry_interval)
                elif not self.rejected.get(peer.uuid):
                    await trio.sleep(min(self.retry_interval, 0.2))
                else:
                    await trio.sleep(self.retry_interval)

    async def _session(self, peer: PeerRecord) -> str | None:
        """One connection's life: why it ended, or None if the peer answered but does
        not count us as a member (it is asked again after ``retry_interval``)."""
        try:
            async with open_rpc_connection(
                peer.hostname, peer.port, volume="", client_id=self.node_uuid, role="mgmt",
                connect_timeout=self.ping_timeout, ping_timeout=self.ping_timeout,
                call_timeout=self.ping_timeout,
            ) as conn:
                try:
                    reply = await conn.call("friend_hello", self.hello_args)
                except OSError as exc:
                    if exc.errno != errno.EPERM:
                        raise
                    self._set(peer, True)
                    since = self._since.get(peer.uuid, trio.current_time())
                    if (not self.rejected.get(peer.uuid)
                            and trio.current_time() - since > self.reject_grace):
                        log.warning("peer %s (%s) does not count us as a member of its pool",
                                    peer.hostname, peer.uuid)
                        self.rejected[peer.uuid] = True
                    return None
                if type(reply) is not dict or reply.get("uuid") != peer.uuid:
                    return f"answered with another identity ({reply!r})"
                self.rejected[peer.uuid] = False
                self._set(peer, True)
                return await conn.wait_closed()
        except OSError as exc:
            return str(exc.strerror or exc)
