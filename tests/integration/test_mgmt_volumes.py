"""Volumes on real pyglfsd processes (127.0.0.2/3) driven by the `pyglfs` CLI.

Bricks live under tmp_path, which is on the root file system here, so creating
them needs ``force`` (GlusterFS's rule); one test shows the refusal without it.
Every daemon and every brick process is stopped by its PID when a test ends.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.net import free_port
from helpers.procs import pid_alive, stop_pids
from test_mgmt_pool import Node, wait_for

from pyglfs.rpc.connection import open_rpc_connection


class VolNode(Node):
    """A pyglfsd whose bricks get ports from a free range of their own."""

    def daemon_args(self, port: int) -> list[str]:
        return [*super().daemon_args(port), "--brick-port", str(free_port(self.ip))]

    def call(self, op: str, args: dict[str, Any]) -> Any:
        async def go() -> Any:
            async with open_rpc_connection(self.ip, self.port, volume="", role="mgmt",
                                           client_id="test") as conn:
                return await conn.call(op, args, timeout=20)

        return trio.run(go)

    def bricks(self, volume: str) -> list[dict[str, Any]]:
        return list(self.call("volume_status", {"name": volume})["volumes"][0]["bricks"])

    def vol_names(self) -> list[str]:
        d = self.state / "vols"
        return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) \
            if d.exists() else []

    def brick_pids(self) -> list[int]:
        pids = []
        for f in self.state.glob("vols/*/run/*.json"):
            try:
                pids.append(int(json.loads(f.read_text())["pid"]))
            except (OSError, ValueError, KeyError):
                pass
        return pids


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], VolNode]]:
    pids: list[int] = []
    made: list[VolNode] = []

    def make(ip: str) -> VolNode:
        n = VolNode(tmp_path, ip, pids)
        made.append(n)
        return n

    try:
        yield make
    finally:
        stop_pids(pids)
        stop_pids([p for n in made for p in n.brick_pids()])


@pytest.fixture
def pair(nodes: Callable[[str], VolNode]) -> tuple[VolNode, VolNode]:
    a, b = nodes("127.0.0.2"), nodes("127.0.0.3")
    a.start()
    b.start()
    assert a.cli("peer", "probe", b.addr).returncode == 0
    return a, b


def test_create_info_start_status_stop_delete_on_two_nodes(
        pair: tuple[VolNode, VolNode], tmp_path: Path) -> None:
    a, b = pair
    b1, b2 = tmp_path / "data" / "b1", tmp_path / "data" / "b2"
    r = a.cli("volume", "create", "gvol0", "replica", "2", f"{a.ip}:{b1}", f"{b.ip}:{b2}",
              "force")
    assert (r.returncode, r.stdout) == (
        0, "volume create: gvol0: success: please start the volume to access data\n"), r.stderr
    assert b1.is_dir() and b2.is_dir()
    assert a.vol_names() == b.vol_names() == ["gvol0"]
    info = b.cli("volume", "info", "gvol0").stdout.splitlines()
    vid = json.loads((a.state / "vols/gvol0/info").read_text())["id"]
    assert info == [" ", "Volume Name: gvol0", "Type: Replicate", f"Volume ID: {vid}",
                    "Status: Created", "Snapshot Count: 0", "Number of Bricks: 1 x 2 = 2",
                    "Transport-type: tcp", "Bricks:", f"Brick1: {a.ip}:{b1}",
                    f"Brick2: {b.ip}:{b2}"]
    assert b.cli("volume", "list").stdout == "gvol0\n"
    j = json.loads(a.cli("volume", "info", json_out=True).stdout)
    assert j["ok"] and j["volumes"][0]["type"] == "Replicate" and "password" not in j["volumes"][0]
    r = a.cli("volume", "status", "gvol0")
    assert (r.returncode, r.stderr) == (1, "Volume gvol0 is not started\n")

    r = b.cli("volume", "start", "gvol0")
    assert (r.returncode, r.stdout) == (0, "volume start: gvol0: success\n"), r.stderr
    st = json.loads(a.cli("volume", "status", "gvol0", json_out=True).stdout)
    bricks = st["volumes"][0]["bricks"]
    assert [(x["host"], x["path"], x["online"]) for x in bricks] == [
        (a.ip, str(b1), True), (b.ip, str(b2), True)]
    assert all(pid_alive(x["pid"]) and x["port"] > 0 for x in bricks)
    for x in bricks:  # the storage options the brick applies itself, at their defaults
        argv = Path(f"/proc/{x['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"--drop-behind" in argv and b"--no-direct-writes" in argv, argv
    text = a.cli("volume", "status").stdout.splitlines()
    assert text[:3] == ["Status of volume: gvol0",
                        "Gluster process                             TCP Port  RDMA Port  "
                        "Online  Pid", "-" * 78]
    # tmp paths are long: gluster puts such a brick's name on a line of its own.
    assert text[3] == f"Brick {a.ip}:{b1}"
    assert text[4].split() == [str(bricks[0]["port"]), "0", "Y", str(bricks[0]["pid"])]
    # Both nodes serve the client volfile with the published brick ports.
    for n in (a, b):
        vf = n.call("getspec", {"volume": "gvol0"})["volfile"]
        assert f"option remote-port {bricks[0]['port']}" in vf
        assert f"option remote-port {bricks[1]['port']}" in vf
        assert "type cluster/replicate" in vf
    r = a.cli("volume", "start", "gvol0")
    assert (r.returncode, r.stderr) == (
        1, "volume start: gvol0: failed: Volume gvol0 already started\n")
    r = a.cli("volume", "delete", "gvol0")
    assert r.returncode == 1 and "needs to be stopped" in r.stderr

    r = a.cli("volume", "stop", "gvol0")
    assert (r.returncode, r.stdout) == (0, "volume stop: gvol0: success\n"), r.stderr
    assert not any(pid_alive(x["pid"]) for x in bricks)
    assert "Status: Stopped" in b.cli("volume", "info", "gvol0").stdout
    r = b.cli("volume", "delete", "gvol0", spawn=True)
    assert (r.returncode, r.stdout) == (0, "volume delete: gvol0: success\n"), r.stderr
    assert a.vol_names() == b.vol_names() == []
    assert a.cli("volume", "info").stdout == "No volumes present\n"


def test_create_refusals_leave_nothing_anywhere(pair: tuple[VolNode, VolNode],
                                                tmp_path: Path) -> None:
    a, b = pair
    d = tmp_path / "bricks"

    def create(*words: str) -> tuple[int, str]:
        r = a.cli("volume", "create", "gv", *words)
        return r.returncode, r.stderr

    assert create("replica", "2", f"{a.ip}:{d}/1", f"{b.ip}:{d}/2", f"{a.ip}:{d}/3",
                  "force") == (1, "volume create: gv: failed: number of bricks is not a "
                                  "multiple of replica count\n")
    code, err = create("replica", "2", f"{a.ip}:{d}/1", f"{a.ip}:{d}/2")
    assert code == 1 and err.startswith(
        "volume create: gv: failed: Multiple bricks of a replicate volume are present on the "
        "same server.")
    assert create(f"{a.ip}:{d}/1", f"127.0.0.9:{d}/2", "force") == (
        1, "volume create: gv: failed: Host 127.0.0.9 is not in 'Peer in Cluster' state\n")
    # On the root file system without force: the node hosting the brick refuses it.
    assert create(f"{a.ip}:{d}/1") == (
        1, f"volume create: gv: failed: The brick {a.ip}:{d}/1 is being created in the root "
           "partition. It is recommended that you don't use the system's root partition for "
           "storage backend. Or use 'force' at the end of the command if you want to "
           "override this behavior.\n")
    code, err = create(f"{b.ip}:{d}/2")
    assert code == 1 and err.startswith(
        f"volume create: gv: failed: Staging failed on {b.addr}. Error: The brick "
        f"{b.ip}:{d}/2 is being created in the root partition.")
    assert a.vol_names() == b.vol_names() == [] and not d.exists()
    # With force it is accepted; the same brick cannot go into a second volume.
    assert create(f"{a.ip}:{d}/1", "force") == (0, "")
    r = a.cli("volume", "create", "gv2", f"{a.ip}:{d}/1", "force")
    assert (r.returncode, r.stderr) == (
        1, f"volume create: gv2: failed: {a.ip}:{d}/1 is already part of a volume\n")
    r = b.cli("volume", "create", "gv", f"{b.ip}:{d}/9", "force")
    assert (r.returncode, r.stderr) == (1, "volume create: gv: failed: Volume gv already "
                                           "exists\n")
    assert a.vol_names() == b.vol_names() == ["gv"]


def test_peer_down_commits_nothing_and_names_the_node(pair: tuple[VolNode, VolNode],
                                                      tmp_path: Path) -> None:
    a, b = pair
    b.stop(signal.SIGKILL)
    r = a.cli("volume", "create", "gv", f"{a.ip}:{tmp_path}/x", "force")
    assert r.returncode == 1
    assert r.stderr == (f"volume create: gv: failed: Locking failed on {b.addr}: Transport "
                        "endpoint is not connected\n")
    assert a.vol_names() == [] and not (tmp_path / "x").exists()


def test_volume_options_set_get_reset(pair: tuple[VolNode, VolNode], tmp_path: Path) -> None:
    a, b = pair
    assert a.cli("volume", "create", "gv", f"{a.ip}:{tmp_path}/x", "force").returncode == 0
    r = b.cli("volume", "set", "gv", "cluster.no-such", "on")
    assert r.returncode == 1
    assert r.stderr.startswith("volume set: failed: unknown volume option 'cluster.no-such'")
    assert "Valid options: " in r.stderr and "cluster.quorum-type" in r.stderr
    r = b.cli("volume", "set", "gv", "cluster.quorum-type", "sometimes")
    assert r.returncode == 1 and "expected one of none, auto, fixed" in r.stderr
    r = b.cli("volume", "set", "gv", "network.ping-timeout", "5")
    assert (r.returncode, r.stdout) == (0, "volume set: success\n"), r.stderr
    for n in (a, b):
        assert "Options Reconfigured:\nnetwork.ping-timeout: 5" in n.cli("volume", "info").stdout
        assert "option ping-timeout 5\n" in n.call("getspec", {"volume": "gv"})["volfile"]
    r = a.cli("volume", "get", "gv", "network.ping-timeout")
    assert r.stdout.splitlines()[2].split() == ["network.ping-timeout", "5"]
    assert json.loads(a.cli("volume", "get", "gv", json_out=True).stdout)["options"][
        "cluster.quorum-type"] == "auto"
    assert a.cli("volume", "reset", "gv").stdout == "volume reset: success\n"
    assert "Options Reconfigured" not in b.cli("volume", "info", "gv").stdout
    r = a.cli("volume", "set", "nosuch", "network.ping-timeout", "5")
    assert (r.returncode, r.stderr) == (1, "volume set: failed: Volume nosuch does not exist\n")
    # The cluster-wide options still answer to "all".
    assert a.cli("volume", "set", "all", "cluster.brick-multiplex", "on").returncode == 0


def test_crashed_brick_restarts_and_restarted_daemon_adopts(
        pair: tuple[VolNode, VolNode], tmp_path: Path) -> None:
    a, b = pair
    r = a.cli("volume", "create", "gv", "replica", "2", f"{a.ip}:{tmp_path}/1",
              f"{b.ip}:{tmp_path}/2", "force")
    assert r.returncode == 0, r.stderr
    assert a.cli("volume", "start", "gv").returncode == 0
    before = a.bricks("gv")
    old = before[1]["pid"]
    os.kill(old, signal.SIGKILL)

    def restarted() -> Any:
        x = a.bricks("gv")[1]
        return x["online"] and x["pid"] != old and x

    now = wait_for(restarted, timeout=15, what="brick on b restarted")
    assert pid_alive(now["pid"]) and now["port"] == before[1]["port"]
    assert "exited" in b.log.read_text()

    # pyglfsd on a goes away and comes back: its brick keeps running and is adopted.
    assert a.stop() == 0
    assert pid_alive(before[0]["pid"])
    a.start()
    assert [x["pid"] for x in a.bricks("gv")] == [before[0]["pid"], now["pid"]]
    assert "adopted" in a.log.read_text()


def test_joining_node_learns_volumes_and_brick_host_cannot_be_detached(
        nodes: Callable[[str], VolNode], tmp_path: Path) -> None:
    a, b, c = nodes("127.0.0.2"), nodes("127.0.0.3"), nodes("127.0.0.4")
    for n in (a, b, c):
        n.start()
    assert a.cli("peer", "probe", b.addr).returncode == 0
    r = a.cli("volume", "create", "gv", f"{a.ip}:{tmp_path}/1", f"{b.ip}:{tmp_path}/2", "force")
    assert r.returncode == 0, r.stderr
    r = b.cli("peer", "probe", c.addr)
    assert r.returncode == 0, r.stderr
    assert c.vol_names() == ["gv"]
    assert "Type: Distribute" in c.cli("volume", "info", "gv").stdout
    r = c.cli("peer", "detach", b.addr)
    assert r.returncode == 1
    assert r.stderr.startswith(f"peer detach: failed: Peer {b.addr} hosts one or more bricks.")
    # A node with volumes of its own cannot join another pool.
    d = nodes("127.0.0.5")
    d.start()
    r = d.cli("volume", "create", "other", f"{d.ip}:{tmp_path}/9", "force")
    assert r.returncode == 0, r.stderr
    r = a.cli("peer", "probe", d.addr)
    assert r.returncode == 1 and "has volumes configured" in r.stderr, r.stderr
    assert d.vol_names() == ["other"] and d.peer_files() == []


def test_storage_options_reach_the_bricks_at_start(
        pair: tuple[VolNode, VolNode], tmp_path: Path) -> None:
    """pyglfs-brickd reads no volfile: options it applies itself (storage.*) go on
    its command line, as they are when the volume starts."""
    a, b = pair
    b1, b2 = tmp_path / "data" / "b1", tmp_path / "data" / "b2"
    assert a.cli("volume", "create", "gvol1", "replica", "2", f"{a.ip}:{b1}", f"{b.ip}:{b2}",
                 "force").returncode == 0
    for key, value in (("storage.drop-behind", "off"), ("storage.direct-writes", "on")):
        r = b.cli("volume", "set", "gvol1", key, value)
        assert r.returncode == 0, r.stderr
    r = a.cli("volume", "start", "gvol1")
    assert r.returncode == 0, r.stderr
    try:
        pids = [x["pid"] for x in json.loads(
            a.cli("volume", "status", "gvol1", json_out=True).stdout)["volumes"][0]["bricks"]]
        assert len(pids) == 2
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--no-drop-behind" in argv and b"--direct-writes" in argv, argv
    finally:
        assert a.cli("volume", "stop", "gvol1").returncode == 0
