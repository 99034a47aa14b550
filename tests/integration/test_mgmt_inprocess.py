"""Real pyglfsd services talking over loopback rpc, all in one trio process.

Three daemons (127.0.0.2-4, free ports, own state dirs) form a pool by probing;
each registers a test transaction that records a key. Stopping one daemon then
shows what an operator sees when a peer is down.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from pyglfs.mgmt.daemon import MgmtDaemon, load_state
from pyglfs.mgmt.errors import MgmtError
from pyglfs.mgmt.peerlink import RemoteParticipant
from pyglfs.mgmt.statestore import PeerRecord
from pyglfs.mgmt.transaction import Txn, TxnError, TxnOp
from pyglfs.rpc.connection import open_rpc_connection
from pyglfs.rpc.errors import HandshakeRefused

IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


class Running:
    def __init__(self, daemon: MgmtDaemon, scope: trio.CancelScope) -> None:
        self.daemon = daemon
        self.scope = scope
        self.data: dict[str, Any] = {}

        async def stage(args: dict[str, Any]) -> None:
            if args["k"] in self.data:
                raise TxnError(f"key {args['k']} already exists", errno.EEXIST)

        async def commit(args: dict[str, Any]) -> Any:
            self.data[args["k"]] = args["v"]
            return self.daemon.uuid

        daemon.engine.register("test-set", TxnOp(stage, commit))


async def start(nursery: trio.Nursery, state: Path, ip: str, port: int = 0) -> Running:
    loaded = load_state(str(state))
    store = loaded.store
    daemon = MgmtDaemon(loaded, ip, port, retry_interval=0.1, ping_timeout=2)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            with scope:
                await daemon.serve(task_status=task_status)
        finally:
            store.close()

    await nursery.start(run)
    return Running(daemon, scope)


@pytest.fixture
async def pool(tmp_path: Path, nursery: trio.Nursery) -> list[Running]:
    nodes = [await start(nursery, tmp_path / ip, ip) for ip in IPS]
    a = nodes[0].daemon
    for other in nodes[1:]:
        await a.peers.probe(other.daemon.host, other.daemon.peers.port)
    for n in nodes:
        assert len(n.daemon.peers.peers) == 2
    return nodes


async def test_transaction_commits_on_every_node(pool: list[Running]) -> None:
    res = await pool[0].daemon.service.transaction("test-set", {"k": "a", "v": 1})
    assert sorted(res.values()) == sorted(n.daemon.uuid for n in pool)
    assert [n.data for n in pool] == [{"a": 1}] * 3
    # The same transaction started from another node is refused at stage everywhere.
    with pytest.raises(MgmtError) as ei:
        await pool[1].daemon.service.transaction("test-set", {"k": "a", "v": 2})
    assert "key a already exists" in ei.value.message
    assert [n.data for n in pool] == [{"a": 1}] * 3
    assert all(n.daemon.engine.locks.holder("cluster") is None for n in pool)


async def test_peer_down_commits_nothing_and_names_it(pool: list[Running]) -> None:
    down = pool[2]
    name = f"{down.daemon.host}:{down.daemon.peers.port}"
    down.scope.cancel()
    with trio.fail_after(5):
        while pool[0].daemon.monitor.connected.get(down.daemon.uuid):
            await trio.sleep(0.02)
    with pytest.raises(MgmtError) as ei:
        await pool[0].daemon.service.transaction("test-set", {"k": "a", "v": 1})
    assert ei.value.errno == errno.ENOTCONN
    assert name in ei.value.message
    assert pool[1].daemon.host not in ei.value.message
    assert all(n.data == {} for n in pool)
    assert all(n.daemon.engine.locks.holder("cluster") is None for n in pool[:2])


async def test_txn_ops_refused_from_strangers(pool: list[Running], tmp_path: Path,
                                              nursery: trio.Nursery) -> None:
    stranger = await start(nursery, tmp_path / "stranger", "127.0.0.5")
    target = pool[0].daemon
    part = RemoteParticipant(PeerRecord(target.uuid, target.host, target.peers.port),
                             stranger.daemon.uuid)
    with pytest.raises(TxnError) as ei:
        await part.lock(Txn("test-set", {"k": "x", "v": 1}, originator=stranger.daemon.uuid))
    assert ei.value.code == errno.EPERM
    assert target.engine.locks.holder("cluster") is None


async def wait_until(cond: Any, what: str) -> None:
    with trio.fail_after(5):
        while not cond():
            await trio.sleep(0.02)


async def test_detach_refused_while_peer_hosts_bricks(pool: list[Running]) -> None:
    a, b = pool[0].daemon, pool[1].daemon
    a.peers.bricks_on_peer = lambda u: [f"{b.host}:/b1"] if u == b.uuid else []
    with pytest.raises(MgmtError) as ei:
        await a.peers.detach(b.host, None)
    assert ei.value.errno == errno.EBUSY
    assert f"Peer {b.host}:{b.peers.port} hosts one or more bricks" in ei.value.message
    assert b.uuid in a.peers.peers and a.uuid in b.peers.peers


async def test_force_detached_peer_sees_itself_rejected(tmp_path: Path,
                                                        nursery: trio.Nursery) -> None:
    a = await start(nursery, tmp_path / "a", IPS[0])
    b = await start(nursery, tmp_path / "b", IPS[1])
    da, db = a.daemon, b.daemon
    await da.peers.probe(db.host, db.peers.port)
    port = db.peers.port
    b.scope.cancel()
    await wait_until(lambda: not da.monitor.connected.get(db.uuid), "a sees b down")
    with pytest.raises(MgmtError) as ei:
        await da.peers.detach(db.host, None)
    assert ei.value.errno == errno.ENOTCONN and "is not connected" in ei.value.message
    c = (await start(nursery, tmp_path / "c", IPS[2])).daemon
    with pytest.raises(MgmtError) as ei:
        await da.peers.probe(c.host, c.peers.port)
    assert ei.value.message == (f"failed: {db.host}:{port} is not connected. "
                                "Check with 'peer status'.")
    assert c.peers.peers == {} and len(da.peers.peers) == 1
    await da.peers.detach(db.host, None, force=True)
    assert da.peers.peers == {}
    b2 = (await start(nursery, tmp_path / "b", IPS[1], port)).daemon
    assert b2.uuid == db.uuid and da.uuid in b2.peers.peers
    b2.monitor.reject_grace = 0.3
    await wait_until(lambda: b2.peers.status()[0]["state"] == "Peer Rejected",
                     "b sees a reject it")
    assert b2.peers.status()[0]["connected"] is True
    # Refused friend ops leave a's view alone.
    with pytest.raises(OSError) as e2:
        await b2.peers._call(PeerRecord(da.uuid, da.host, da.peers.port), "friend_update",
                             {"peers": []})
    assert e2.value.errno == errno.EPERM


BAD_REQUESTS = [
    ("peer_probe", {}), ("peer_probe", {"host": 5}), ("peer_probe", {"host": "h", "port": -1}),
    ("peer_probe", {"host": "h", "port": "24750"}), ("peer_probe", {"host": "a b"}),
    ("peer_detach", {"host": "h", "force": "yes"}), ("peer_detach", {"host": ""}),
    ("friend_join", {}), ("friend_join", {"hostname": 1, "port": 2, "as": "x", "peers": []}),
    ("friend_join", {"hostname": "", "port": 2, "as": "x", "peers": [{"uuid": "nope"}]}),
    ("friend_update", {"peers": []}), ("friend_forget", {"uuid": "x"}), ("friend_leave", {}),
    ("friend_hello", {}), ("txn_lock", {}), ("txn_stage", {"txn": [1]}),
    ("no_such_op", {}),
]


@pytest.mark.parametrize("op,args", BAD_REQUESTS)
async def test_bad_requests_get_clean_errors(tmp_path: Path, nursery: trio.Nursery, op: str,
                                             args: dict[str, Any]) -> None:
    node = (await start(nursery, tmp_path / "a", IPS[0])).daemon
    async with open_rpc_connection(node.host, node.peers.port, volume="", role="mgmt",
                                   client_id="stranger") as conn:
        with pytest.raises(OSError) as ei:
            await conn.call(op, args, timeout=5)
        assert ei.value.errno in (errno.EINVAL, errno.EPERM, errno.ENOSYS), ei.value
        assert await conn.call("peer_status", {}, timeout=5) == {"peers": []}
    assert node.peers.peers == {}


async def test_other_roles_are_refused(tmp_path: Path, nursery: trio.Nursery) -> None:
    node = (await start(nursery, tmp_path / "a", IPS[0])).daemon
    with pytest.raises(HandshakeRefused) as ei:
        async with open_rpc_connection(node.host, node.peers.port, volume="gvol0",
                                       client_id="c", role="heal"):
            pass
    assert "management daemon" in ei.value.reason
    # A mount (role client) is let in, for getspec only.
    async with open_rpc_connection(node.host, node.peers.port, volume="gvol0",
                                   client_id="c") as conn:
        with pytest.raises(OSError) as oe:
            await conn.call("node_info", {}, timeout=10)
        assert oe.value.errno == errno.EPERM


def options_files(nodes: list[Running]) -> list[Any]:
    out = []
    for n in nodes:
        path = n.daemon.store.dir / "options"
        out.append(json.loads(path.read_text()) if path.exists() else None)
    return out


async def call(node: MgmtDaemon, op: str, args: dict[str, Any]) -> Any:
    async with open_rpc_connection(node.host, node.peers.port, volume="", role="mgmt",
                                   client_id="cli:test") as conn:
        return await conn.call(op, args, timeout=10)


async def test_global_option_set_everywhere_and_adopted_by_joiner(
        pool: list[Running], tmp_path: Path, nursery: trio.Nursery) -> None:
    a = pool[0].daemon
    res = await call(pool[1].daemon, "volume_set", {"volume": "all",
                                                   "key": "cluster.brick-multiplex",
                                                   "value": "enable"})
    assert res == {"key": "cluster.brick-multiplex", "value": "on", "nodes": 3}
    assert options_files(pool) == [{"cluster.brick-multiplex": "on"}] * 3
    got = await call(pool[2].daemon, "volume_get", {"volume": "all",
                                                   "key": "cluster.brick-multiplex"})
    assert got == {"options": {"cluster.brick-multiplex": "on"}}
    with pytest.raises(OSError) as ei:
        await call(a, "volume_set", {"volume": "all", "key": "cluster.nope", "value": "1"})
    assert ei.value.strerror == (
        "failed: option : cluster.nope does not exist. Valid options: cluster.brick-multiplex, "
        "cluster.daemon-log-level, cluster.max-bricks-per-process, cluster.server-quorum-ratio")
    with pytest.raises(OSError) as ei:
        await call(a, "volume_get", {"volume": "all", "key": "cluster.nope"})
    assert str(ei.value.strerror).endswith(
        "Valid options: cluster.brick-multiplex, cluster.daemon-log-level, "
        "cluster.max-bricks-per-process, cluster.server-quorum-ratio")
    with pytest.raises(OSError) as ei:
        await call(a, "volume_set", {"volume": "all", "key": "cluster.brick-multiplex",
                                     "value": "maybe"})
    assert "(on/off, yes/no, true/false, enable/disable, 1/0)" in str(ei.value.strerror)
    with pytest.raises(OSError) as ei:
        await call(a, "volume_set", {"volume": "all", "key": "cluster.max-bricks-per-process",
                                     "value": "many"})
    assert "not a valid non-negative integer" in str(ei.value.strerror)
    with pytest.raises(OSError) as ei:
        await call(a, "volume_set", {"volume": "gvol0", "key": "k", "value": "v"})
    assert ei.value.strerror == "failed: Volume gvol0 does not exist"
    assert options_files(pool) == [{"cluster.brick-multiplex": "on"}] * 3

    d = await start(nursery, tmp_path / "d", "127.0.0.5")
    await a.peers.probe(d.daemon.host, d.daemon.peers.port)
    assert d.daemon.options.values == {"cluster.brick-multiplex": "on"}
    assert options_files([d]) == [{"cluster.brick-multiplex": "on"}]


async def test_global_option_with_peer_down_changes_nothing(pool: list[Running]) -> None:
    down = pool[1].daemon
    pool[1].scope.cancel()
    await wait_until(lambda: not pool[0].daemon.monitor.connected.get(down.uuid),
                     "peer seen down")
    with pytest.raises(OSError) as ei:
        await call(pool[2].daemon, "volume_set", {"volume": "all",
                                                 "key": "cluster.daemon-log-level",
                                                 "value": "debug"})
    assert ei.value.errno == errno.ENOTCONN
    assert ei.value.strerror == (f"failed: Locking failed on {down.host}:{down.peers.port}: "
                                 "Transport endpoint is not connected")
    assert options_files(pool) == [None] * 3
    assert pool[0].daemon.options.effective()["cluster.daemon-log-level"] == "INFO"


async def test_pool_change_waits_for_no_transaction(pool: list[Running], tmp_path: Path,
                                                    nursery: trio.Nursery) -> None:
    a = pool[0].daemon
    d = (await start(nursery, tmp_path / "d", "127.0.0.5")).daemon
    await a.engine.lock(Txn("test-set", {}, id="running"))
    with pytest.raises(OSError) as ei:
        await call(a, "peer_probe", {"host": d.host, "port": d.peers.port})
    assert ei.value.strerror == ("failed: Another transaction is in progress. "
                                 "Please try again after some time.")
    await a.engine.unlock(Txn("test-set", {}, id="running"))
    # A transaction running on another member blocks the probe too.
    b = pool[1].daemon
    await b.engine.lock(Txn("test-set", {}, id="elsewhere"))
    with pytest.raises(OSError) as ei:
        await call(a, "peer_probe", {"host": d.host, "port": d.peers.port})
    assert "Another transaction is in progress" in str(ei.value.strerror)
    assert d.peers.peers == {}
    assert a.engine.locks.holder("cluster") is None
    await b.engine.unlock(Txn("test-set", {}, id="elsewhere"))
    await call(a, "peer_probe", {"host": d.host, "port": d.peers.port})
    assert len(d.peers.peers) == 3
    assert a.engine.locks.holder("cluster") is None


async def test_detach_of_a_peer_that_forgot_us(pool: list[Running]) -> None:
    a, b = pool[0].daemon, pool[1].daemon
    await b.peers._delete(a.uuid)
    await call(a, "peer_detach", {"host": b.host})
    assert b.uuid not in a.peers.peers
    assert b.uuid not in pool[2].daemon.peers.peers


async def test_peer_restarted_on_another_port_is_followed(tmp_path: Path,
                                                          nursery: trio.Nursery) -> None:
    a = (await start(nursery, tmp_path / "a", IPS[0])).daemon
    b = await start(nursery, tmp_path / "b", IPS[1])
    await a.peers.probe(b.daemon.host, b.daemon.peers.port)
    old = b.daemon.peers.port
    b.scope.cancel()
    await wait_until(lambda: not a.monitor.connected.get(b.daemon.uuid), "a sees b down")
    b2 = (await start(nursery, tmp_path / "b", IPS[1])).daemon
    assert b2.peers.port != old
    await wait_until(lambda: a.peers.peers[b2.uuid].port == b2.peers.port
                     and a.monitor.connected.get(b2.uuid), "a follows b to its new port")
    assert json.loads((tmp_path / "a" / "peers" / b2.uuid).read_text())["port"] == b2.peers.port
