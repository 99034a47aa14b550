"""The mount's watch on its volfile: one connection to a pyglfsd, refetch on change.

``VolfileWatcher.serve`` keeps a connection (hello role ``client``) to the first
of the volfile servers that answers, tried in order on every attempt, and
reconnects with backoff (``ReconnectingClient``) when it drops. On every
connection it calls ``getspec`` with ``"watch": true``, which subscribes that
connection to ``volfile-changed`` events (mgmt/volwatch.py); on each such event,
and after every reconnect (an event may have been missed while down), it fetches
the volfile again and hands the text to ``on_volfile``, which decides whether the
graph changed. Texts equal to the last one handed over are not passed again.

Nothing here can disturb the mount: a server that is down, refuses, or sends
garbage is logged and retried; ``on_volfile`` failures are logged. A volume
that is stopped (getspec refused with ENXIO) is logged once; the graph keeps
trying its bricks, and the event at start fetches the volfile again (the
bricks' ports may have moved).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from pyglfs.client.volfetch import server_name
from pyglfs.rpc.connection import RpcConnection, open_rpc_connection
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.reconnect import ReconnectingClient

log = logging.getLogger(__name__)

EVENT = "volfile-changed"
CALL_TIMEOUT = 10.0
RETRY_DELAY = 2.0
RETRY_LATER = 30.0

OnVolfile = Callable[[str, str], Awaitable[bool]]


class VolfileWatcher:
    """Watches ``volume``'s client volfile on ``servers`` for a mount.

    ``on_volfile(text, source)`` gets each new text (``source`` names the server)
    and returns True when done with it (applied, or not worth retrying: same graph,
    invalid volfile), False to have it fetched and offered again after
    ``RETRY_LATER`` seconds (the new graph did not come up). It runs in the
    watcher's task, so a slow switch delays only the next fetch.
    """

    def __init__(self, servers: list[tuple[str, int]], volume: str, client_id: str,
                 on_volfile: OnVolfile, *, last_text: str | None = None,
                 connect_timeout: float = 5.0, ping_timeout: float = 10.0,
                 backoff_min: float = 0.2, backoff_max: float = 5.0) -> None:
        if not servers:
            raise ValueError("no volfile server")
        self.servers = list(servers)
        self.volume = volume
        self.on_volfile = on_volfile
        self.last_text = last_text
        self.server: tuple[str, int] | None = None
        self.fetches = 0
        self.stopped = False
        self._wake = trio.Event()
        self.rpc = ReconnectingClient(
            *self.servers[0], volume=volume, client_id=client_id, role="client",
            on_up=self._poke, on_event=self._event, ping_timeout=ping_timeout,
            connect_timeout=connect_timeout, call_timeout=CALL_TIMEOUT,
            backoff_min=backoff_min, backoff_max=backoff_max, opener=self._open_first)

    def _event(self, name: str, args: dict[str, Any]) -> None:
        if name == EVENT and args.get("volume") == self.volume:
            log.info("volfile of %s changed on %s", self.volume,
                     server_name(self.server) if self.server else "?")
            self._wake.set()

    @asynccontextmanager
    async def _open_first(self, host: str, port: int, **kwargs: Any
                          ) -> AsyncIterator[RpcConnection]:
        """``open_rpc_connection`` to the first server that takes us (the
        ``host``/``port`` the reconnecting client keeps are not used)."""
        why: list[str] = []
        for server in self.servers:
            stack = AsyncExitStack()
            try:
                conn = await stack.enter_async_context(open_rpc_connection(*server, **kwargs))
            except (OSError, HandshakeRefused) as exc:
                await stack.aclose()
                why.append(f"{server_name(server)}: {exc}")
                continue
            async with stack:
                self.server = server
                self.rpc.host, self.rpc.port = server  # for its log lines
                log.info("watching the volfile of %s on %s", self.volume, server_name(server))
                yield conn
            return
        raise OSError(errno.ENOTCONN, "no volfile server reachable (" + "; ".join(why) + ")")

    def _poke(self) -> None:
        self._wake.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Watch until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.rpc.serve)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                retry = await self._fetch() if self.rpc.is_up else None
                if retry is not None:
                    with trio.move_on_after(retry):
                        await self._wake.wait()
                    self._wake.set()

    async def _fetch(self) -> float | None:
        """One getspec (which also subscribes this connection); the delay after which
        to try again, or None when done (or when a reconnect will wake us)."""
        source = server_name(self.server) if self.server else "?"
        try:
            reply = await self.rpc.call("getspec", {"volume": self.volume, "watch": True},
                                        timeout=CALL_TIMEOUT)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return None
            if exc.errno == errno.ENXIO:
                # Stopped: the bricks are going or gone; the graph reconnects
                # to them when the volume starts (an event tells us).
                if not self.stopped:
                    log.warning("volume %s is stopped (%s): files are out of reach until "
                                "it is started", self.volume, source)
                self.stopped = True
                return None
            log.warning("volfile of %s not fetched from %s: %s; the mount goes on with "
                        "its current graph", self.volume, source, exc.strerror or exc)
            return RETRY_DELAY if exc.errno == errno.ETIMEDOUT else None
        self.fetches += 1
        if self.stopped:
            self.stopped = False
            log.info("volume %s is started again (%s)", self.volume, source)
        text = reply.get("volfile") if isinstance(reply, dict) else None
        if not isinstance(text, str):
            log.error("getspec of %s from %s: reply without a volfile", self.volume, source)
            return None
        if text == self.last_text:
            log.debug("volfile of %s from %s: unchanged", self.volume, source)
            return None
        try:
            done = await self.on_volfile(text, f"getspec {self.volume} from {source}")
        except Exception:
            log.exception("volfile of %s from %s: switching failed", self.volume, source)
            done = True
        if done:
            self.last_text = text
            return None
        return RETRY_LATER
