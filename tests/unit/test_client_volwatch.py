"""VolfileWatcher against a small fake pyglfsd on loopback: server order, events,
refetch after a reconnect, and a server that goes away."""

from __future__ import annotations

import errno
from typing import Any

import trio
from helpers.net import free_port

from pyglfs.client.volwatch import VolfileWatcher
from pyglfs.rpc.server import ServerConnection, serve_rpc


class FakeMgmt:
    """getspec of ``gvol0`` with the current ``text``; remembers watching connections."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.watchers: list[ServerConnection] = []
        self.roles: list[str] = []
        self.stopped = False

    def authenticate(self, hello: dict[str, Any]) -> None:
        self.roles.append(hello["role"])

    async def handle(self, op: str, args: dict[str, Any], conn: ServerConnection) -> Any:
        if op != "getspec" or args.get("volume") != "gvol0":
            raise OSError(errno.ENOENT, "Volume does not exist")
        if args.get("watch") is True and conn not in self.watchers:
            self.watchers.append(conn)
        if self.stopped:
            raise OSError(errno.ENXIO, "Volume gvol0 is not started")
        return {"volume": "gvol0", "volfile": self.text}

    def disconnected(self, conn: ServerConnection) -> None:
        if conn in self.watchers:
            self.watchers.remove(conn)

    async def changed(self, text: str) -> None:
        self.text = text
        for c in list(self.watchers):
            await c.send_event("volfile-changed", {"volume": "gvol0"})


async def wait_for(cond: Any) -> None:
    with trio.fail_after(10):
        while not cond():
            await trio.sleep(0.01)


async def test_watch_follows_events_and_refetches_after_a_reconnect(
        nursery: trio.Nursery) -> None:
    svc = FakeMgmt("v1")
    port = free_port("127.0.0.3")
    scope = trio.CancelScope()

    async def serve_fake(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        with scope:
            await serve_rpc(svc, "127.0.0.3", port, task_status=task_status)

    await nursery.start(serve_fake)
    got: list[tuple[str, str]] = []

    async def on_volfile(text: str, source: str) -> bool:
        got.append((text, source))
        return True

    # The first server has no daemon: the watcher goes on to the backup.
    dead = ("127.0.0.2", free_port("127.0.0.2"))
    w = VolfileWatcher([dead, ("127.0.0.3", port)], "gvol0", "mount:test", on_volfile,
                       last_text="v1", backoff_min=0.05, backoff_max=0.2, ping_timeout=2)
    await nursery.start(w.serve)
    await wait_for(lambda: w.fetches == 1 and svc.watchers)
    assert got == [] and svc.roles == ["client"]
    await svc.changed("v2")
    await wait_for(lambda: got)
    assert got == [("v2", f"getspec gvol0 from 127.0.0.3:{port}")]
    # An event without a change: fetched, not handed over again.
    await svc.changed("v2")
    await wait_for(lambda: w.fetches == 3)
    assert len(got) == 1

    # The server goes away; what changed meanwhile is fetched once it is back.
    scope.cancel()
    await wait_for(lambda: not w.rpc.is_up)
    svc.text = "v3"
    scope = trio.CancelScope()
    await nursery.start(serve_fake)
    await wait_for(lambda: len(got) == 2)
    assert got[1][0] == "v3"


async def test_a_graph_not_up_is_offered_again(nursery: trio.Nursery) -> None:
    svc = FakeMgmt("v1")
    port = await nursery.start(serve_rpc, svc, "127.0.0.3", 0)
    answers = [False, True]
    got: list[str] = []

    async def on_volfile(text: str, source: str) -> bool:
        got.append(text)
        return answers.pop(0)

    w = VolfileWatcher([("127.0.0.3", port)], "gvol0", "mount:test", on_volfile)
    w_scope = trio.CancelScope()

    async def run() -> None:
        with w_scope:
            await w.serve()

    nursery.start_soon(run)
    await wait_for(lambda: got == ["v1"])
    assert w.last_text is None
    # The retry waits RETRY_LATER; an event brings it forward.
    await svc.changed("v1")
    await wait_for(lambda: got == ["v1", "v1"])
    assert w.last_text == "v1"
    w_scope.cancel()


async def test_a_stopped_volume_is_waited_for(nursery: trio.Nursery) -> None:
    """Stopped: the graph is left alone; started again: the volfile is fetched,
    and a new one (a brick moved) is handed over."""
    svc = FakeMgmt("v1")
    port = await nursery.start(serve_rpc, svc, "127.0.0.3", 0)
    got: list[str] = []

    async def on_volfile(text: str, source: str) -> bool:
        got.append(text)
        return True

    w = VolfileWatcher([("127.0.0.3", port)], "gvol0", "mount:test", on_volfile,
                       last_text="v1")
    w_scope = trio.CancelScope()

    async def run() -> None:
        with w_scope:
            await w.serve()

    nursery.start_soon(run)
    await wait_for(lambda: w.fetches == 1)
    svc.stopped = True
    await svc.changed("v1")
    await wait_for(lambda: w.stopped)
    svc.stopped = False
    await svc.changed("v1")  # started, the bricks on their ports
    await wait_for(lambda: not w.stopped)
    assert w.fetches == 2 and got == []
    svc.stopped = True
    await svc.changed("v1")
    await wait_for(lambda: w.stopped)
    svc.stopped = False
    await svc.changed("v2")  # started, a brick on a new port
    await wait_for(lambda: got == ["v2"])
    assert not w.stopped and w.last_text == "v2"
    w_scope.cancel()
