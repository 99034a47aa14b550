"""A client connection that keeps itself connected and reports up/down to its owner.

This is the protocol client's view of one brick (or management daemon): the layer
above (replicate) needs to know at every moment whether the child is up, and must
never wait on a child that is down. So a call while down fails with ENOTCONN at
once, and the owner hears ``on_up()`` / ``on_down(reason)`` on every transition
(child-up / child-down). The first event is ``on_down`` if the first attempt fails:
the state starts unknown, and the owner must not wait for a brick that is not there.

Reconnecting: immediately after a connection that lived a while drops, then with
exponential backoff (``backoff_min`` doubling to ``backoff_max``, each delay jittered
by +/-25%) while attempts keep failing or connections keep dropping at once.
``set_address`` redirects the next attempt (a restarted brick may listen on a new
port) and cuts a pending backoff short.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from pyglfs.rpc.connection import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_PING_TIMEOUT,
    EventCallback,
    RpcConnection,
    open_rpc_connection,
)
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.framing import DEFAULT_MAX_FRAME

log = logging.getLogger(__name__)


class ReconnectingClient:
    """Keeps one RpcConnection to host:port alive while ``serve`` runs."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        volume: str,
        client_id: str,
        role: str = "client",
        auth: dict[str, Any] | None = None,
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[str], None] | None = None,
        on_event: EventCallback | None = None,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
        ping_interval: float | None = None,
        connect_timeout: float = 5.0,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        max_frame: int = DEFAULT_MAX_FRAME,
        backoff_min: float = 0.1,
        backoff_max: float = 2.0,
        opener: Callable[..., AbstractAsyncContextManager[RpcConnection]] = open_rpc_connection,
    ) -> None:
        """``opener`` replaces ``open_rpc_connection`` (same signature), for tests."""
        self.host = host
        self.port = port
        self.volume = volume
        self.client_id = client_id
        self.role = role
        self.auth = auth
        self.on_up = on_up
        self.on_down = on_down
        self.on_event = on_event
        self.ping_timeout = ping_timeout
        self.ping_interval = ping_interval
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.max_frame = max_frame
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._opener = opener
        self._conn: RpcConnection | None = None
        self._state: bool | None = None
        self._up_event = trio.Event()
        self._sleep_scope: trio.CancelScope | None = None
        self.down_reason = "not connected yet"

    def __repr__(self) -> str:
        return f"<ReconnectingClient {self.host}:{self.port} volume={self.volume}>"

    @property
    def is_up(self) -> bool:
        conn = self._conn  # asked several times per replicated change: no property chain
        return conn is not None and conn.close_reason is None

    @property
    def connection(self) -> RpcConnection | None:
        return self._conn if self.is_up else None

    def set_address(self, host: str, port: int) -> None:
        """Use host:port from the next attempt on; a pending backoff ends at once."""
        self.host = host
        self.port = port
        if self._sleep_scope is not None:
            self._sleep_scope.cancel()

    def call(self, op: str, args: dict[str, Any], *,
             timeout: float | None = None) -> Coroutine[Any, Any, Any]:
        """Like ``RpcConnection.call``; OSError(ENOTCONN) at once while down.

        Returns the connection's own call, not a coroutine around it: one frame
        less on every brick request. Errors still come from awaiting it."""
        conn = self._conn
        if conn is None:
            return self._not_connected()
        return conn.call(op, args, timeout=timeout)

    async def _not_connected(self) -> Any:
        raise OSError(
            errno.ENOTCONN,
            f"{os.strerror(errno.ENOTCONN)}: {self.host}:{self.port}: {self.down_reason}",
        )

    async def wait_up(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the connection to be up; True if it is."""
        with trio.move_on_after(timeout):
            while not self.is_up:
                await self._up_event.wait()
        return self.is_up

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, and reconnect whenever the connection drops, until cancelled.

        Reports started at once: being down is a state the owner hears about, not an
        error of this task.
        """
        task_status.started()
        backoff = self.backoff_min
        last_failure = ""
        try:
            while True:
                started = trio.current_time()
                reason = await self._connect_once()
                if reason is None:
                    if trio.current_time() - started > self.backoff_max:
                        backoff = self.backoff_min
                        continue
                else:
                    if reason != last_failure:
                        log.info("%r: cannot connect: %s", self, reason)
                        last_failure = reason
                    self._went_down(reason)
                delay = min(backoff, self.backoff_max) * random.uniform(0.75, 1.25)
                with trio.CancelScope() as self._sleep_scope:
                    await trio.sleep(delay)
                self._sleep_scope = None
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            self._conn = None
            self._up_event = trio.Event()

    async def _connect_once(self) -> str | None:
        """One connection's life: None if it came up (and has since gone down), else
        why it could not."""
        try:
            async with self._opener(
                self.host, self.port, volume=self.volume, client_id=self.client_id,
                role=self.role, auth=self.auth, on_event=self.on_event,
                max_frame=self.max_frame, ping_timeout=self.ping_timeout,
                ping_interval=self.ping_interval, connect_timeout=self.connect_timeout,
                call_timeout=self.call_timeout,
            ) as conn:
                self._went_up(conn)
                try:
                    reason = await conn.wait_closed()
                finally:
                    self._conn = None
                    self._up_event = trio.Event()
        except HandshakeRefused as exc:
            log.error("%r: %s", self, exc)
            return str(exc)
        except OSError as exc:
            return exc.strerror or str(exc)
        self._went_down(reason)
        return None

    def _went_up(self, conn: RpcConnection) -> None:
        self._conn = conn
        self._state = True
        self._up_event.set()
        log.info("%r: up (server %s)", self, conn.server_name)
        if self.on_up is not None:
            try:
                self.on_up()
            except Exception:
                log.exception("%r: on_up callback failed", self)

    def _went_down(self, reason: str) -> None:
        self.down_reason = reason
        if self._state is False:
            return
        if self._state is True:
            log.warning("%r: down: %s", self, reason)
        self._state = False
        if self.on_down is not None:
            try:
                self.on_down(reason)
            except Exception:
                log.exception("%r: on_down callback failed", self)
