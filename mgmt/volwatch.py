"""Telling mounted clients that their volfile changed (the ``volfile-changed`` event).

A mount keeps one connection to a pyglfsd and calls ``getspec`` on it with
``"watch": true``; from then on, whenever this node writes a client volfile
whose text differs from what was there (``volume set``/``reset`` of a client
option, brick ports published after a (re)start, ``volume create`` over a name)
or deletes the volume, every watching connection of that volume is sent
``{"event": "volfile-changed", "args": {"volume": NAME}}``. The client then
fetches the volfile again and decides for itself whether its graph changed;
the event carries no volfile, so a missed or repeated event costs one fetch and
never leaves a client on a stale graph once it reconnects and refetches.

Subscriptions live as long as their connection: they are dropped when it ends
(the service's disconnect hook), and a connection that does not take an event
within ``SEND_TIMEOUT`` is closed (so its client reconnects and fetches).

The volume store calls ``changed`` from the worker thread that writes the file;
it only schedules the push on the daemon's trio loop.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

import trio

from pyglfs.mgmt.errors import bad_args

if TYPE_CHECKING:
    from pyglfs.mgmt.service import Handler, MgmtService
    from pyglfs.mgmt.volstore import VolumeStore
    from pyglfs.rpc.server import ServerConnection

log = logging.getLogger(__name__)

EVENT = "volfile-changed"
SEND_TIMEOUT = 5.0


class VolfileWatch:
    """The connections watching each volume's client volfile on this node."""

    def __init__(self) -> None:
        self._subs: dict[str, set[ServerConnection]] = {}
        self._pending: set[str] = set()
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    def subscribe(self, volume: str, conn: ServerConnection) -> None:
        if conn.closed:
            return
        subs = self._subs.setdefault(volume, set())
        if conn not in subs:
            log.debug("%r watches the volfile of %s", conn, volume)
        subs.add(conn)

    def unsubscribe(self, volume: str, conn: ServerConnection) -> None:
        subs = self._subs.get(volume)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self._subs[volume]

    def disconnected(self, conn: ServerConnection) -> None:
        """``conn`` ended: it watches nothing any more."""
        for volume in [v for v, subs in self._subs.items() if conn in subs]:
            log.debug("%r left; no longer watches the volfile of %s", conn, volume)
            self.unsubscribe(volume, conn)

    def watchers(self, volume: str) -> list[ServerConnection]:
        """The open connections watching ``volume``."""
        return [c for c in self._subs.get(volume, ()) if not c.closed]

    def held(self, volume: str) -> int:
        """How many subscriptions to ``volume`` this daemon holds (closed ones included)."""
        return len(self._subs.get(volume, ()))

    def changed(self, volume: str) -> None:
        """The client volfile of ``volume`` changed or went away. Thread-safe; a
        no-op before ``serve`` runs (nobody can be watching yet)."""
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._note, volume)
        except trio.RunFinishedError:
            pass

    def _note(self, volume: str) -> None:
        self._pending.add(volume)
        self._wake.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Push the events until cancelled; changes close together make one event."""
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                pending, self._pending = self._pending, set()
                async with trio.open_nursery() as nursery:
                    for volume in sorted(pending):
                        for conn in self.watchers(volume):
                            nursery.start_soon(self._push, volume, conn)
        finally:
            self._token = None

    async def _push(self, volume: str, conn: ServerConnection) -> None:
        with trio.move_on_after(SEND_TIMEOUT) as scope:
            await conn.send_event(EVENT, {"volume": volume})
        if scope.cancelled_caught:
            log.warning("%r took no %s event for %s within %gs; closing it", conn, EVENT,
                        volume, SEND_TIMEOUT)
            self.unsubscribe(volume, conn)
            conn.close()
        else:
            log.debug("%r told: volfile of %s changed", conn, volume)


def install_volfile_watch(service: MgmtService, store: VolumeStore) -> VolfileWatch:
    """Make ``getspec`` accept ``"watch": true`` and the store report its volfile
    changes; the caller runs the returned watch's ``serve``.

    The subscription is made before the volfile is read, so a change that lands
    between the two is not lost. A getspec refused for its arguments takes it
    back; one refused because the volume is stopped or missing keeps it, so the
    client hears when that changes.
    """
    watch = VolfileWatch()
    inner: Handler = service.handler("getspec")

    async def getspec(args: dict[str, Any], conn: ServerConnection) -> Any:
        wanted = args.get("watch", False)
        if type(wanted) is not bool:
            raise bad_args("watch")
        volume = args.get("volume")
        if not wanted or type(volume) is not str:
            return await inner(args, conn)
        watch.subscribe(volume, conn)
        try:
            return await inner(args, conn)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EPERM):
                watch.unsubscribe(volume, conn)
            raise

    service.register("getspec", getspec)
    service.on_disconnect(watch.disconnected)
    store.on_client_volfile = watch.changed
    return watch
