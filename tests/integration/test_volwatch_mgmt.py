"""pyglfsd pushes ``volfile-changed`` to connections that getspec'd with watch=true.

One in-process daemon on 127.0.0.2 with a created (not started) one-brick volume;
watchers are plain rpc connections that record the events they get.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from test_mgmt_inprocess import Running, call, start

from pyglfs.mgmt.daemon import MgmtDaemon
from pyglfs.mgmt.volwatch import EVENT
from pyglfs.rpc.connection import RpcConnection, open_rpc_connection


class Watcher:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, args: dict[str, Any]) -> None:
        self.events.append((name, args))

    async def wait_for(self, n: int) -> None:
        with trio.fail_after(5):
            while len(self.events) < n:
                await trio.sleep(0.01)


@pytest.fixture
async def node(tmp_path: Path, nursery: trio.Nursery) -> Running:
    n = await start(nursery, tmp_path / "a", "127.0.0.2")
    await call(n.daemon, "volume_create", {
        "name": "gvol0", "bricks": [f"127.0.0.2:{tmp_path / 'b1'}"], "force": True})
    return n


async def _watch(d: MgmtDaemon, w: Watcher, volume: str = "gvol0", *,
                 watch: bool = True) -> tuple[Any, RpcConnection, Any]:
    cm = open_rpc_connection(d.host, d.peers.port, volume=volume, role="mgmt",
                             client_id="mount:test", on_event=w)
    conn = await cm.__aenter__()
    res = await conn.call("getspec", {"volume": volume, "watch": watch}, timeout=10)
    return cm, conn, res


async def test_volume_set_of_a_client_option_notifies_watchers(node: Running) -> None:
    d = node.daemon
    w, other = Watcher(), Watcher()
    cm, conn, res = await _watch(d, w)
    cm2, _, _ = await _watch(d, other, watch=False)
    try:
        assert "network.ping-timeout" not in res["volfile"]
        await call(d, "volume_set", {"volume": "gvol0", "key": "network.ping-timeout",
                                     "value": "5"})
        await w.wait_for(1)
        assert w.events == [(EVENT, {"volume": "gvol0"})]
        got = await conn.call("getspec", {"volume": "gvol0", "watch": True}, timeout=10)
        assert "ping-timeout 5" in got["volfile"]
        # The same value again writes the same volfile: nobody is told.
        await call(d, "volume_set", {"volume": "gvol0", "key": "network.ping-timeout",
                                     "value": "5"})
        await call(d, "volume_reset", {"volume": "gvol0", "key": "network.ping-timeout"})
        await w.wait_for(2)
        # Deleting the volume is a change too.
        await call(d, "volume_delete", {"name": "gvol0"})
        await w.wait_for(3)
        assert w.events == [(EVENT, {"volume": "gvol0"})] * 3
        assert other.events == []
    finally:
        await cm2.__aexit__(None, None, None)
        await cm.__aexit__(None, None, None)


async def test_closed_watchers_drop_out_and_bad_watch_is_refused(node: Running) -> None:
    d = node.daemon
    w = Watcher()
    cm, conn, _ = await _watch(d, w)
    with pytest.raises(OSError) as ei:
        await conn.call("getspec", {"volume": "gvol0", "watch": "yes"}, timeout=10)
    assert ei.value.strerror == "invalid arguments: watch"
    assert d.volwatch.held("gvol0") == 1
    await cm.__aexit__(None, None, None)
    # The subscription goes with the connection, not at the next event.
    with trio.fail_after(5):
        while d.volwatch.held("gvol0"):
            await trio.sleep(0.01)
    # A change with only a dead watcher left is no error for the daemon.
    await call(d, "volume_set", {"volume": "gvol0", "key": "network.ping-timeout",
                                 "value": "7"})
    w2 = Watcher()
    cm, conn, res = await _watch(d, w2)
    try:
        assert "ping-timeout 7" in res["volfile"]
        assert len(d.volwatch.watchers("gvol0")) == 1
    finally:
        await cm.__aexit__(None, None, None)


async def test_volume_stop_and_start_notify_watchers(node: Running) -> None:
    """Stop and start leave the volfile's text alone but change what a mount's
    getspec gets (refused while stopped); watchers hear of both."""
    d = node.daemon
    w = Watcher()
    cm, conn, _ = await _watch(d, w)
    mount_cm = open_rpc_connection(d.host, d.peers.port, volume="gvol0", role="client",
                                   client_id="mount:test")
    mount = await mount_cm.__aenter__()
    try:
        await call(d, "volume_start", {"name": "gvol0"})
        await w.wait_for(1)
        volfile = (await mount.call("getspec", {"volume": "gvol0"}, timeout=10))["volfile"]
        for op in ("volume_stop", "volume_start"):
            heard = len(w.events)
            await call(d, op, {"name": "gvol0"})
            await w.wait_for(heard + 1)
            assert w.events == [(EVENT, {"volume": "gvol0"})] * len(w.events)
            if op == "volume_stop":
                with pytest.raises(OSError) as ei:
                    await mount.call("getspec", {"volume": "gvol0"}, timeout=10)
                assert ei.value.strerror == "Volume gvol0 is not started"
        got = await mount.call("getspec", {"volume": "gvol0"}, timeout=10)
        assert got["volfile"] == volfile  # the brick kept its port
    finally:
        await mount_cm.__aexit__(None, None, None)
        await cm.__aexit__(None, None, None)
        if d.volumes.volumes["gvol0"].status == "Started":
            await call(d, "volume_stop", {"name": "gvol0"})
