"""Real pyglfsd processes on 127.0.0.2-4 driven by the real `pyglfs` CLI.

Every daemon gets its own tmp state dir and a free port, and is stopped by its
PID when the test ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from helpers.net import free_port
from helpers.procs import pid_alive, stop_pids

from pyglfs.mgmt.cli import cli as cli_group
from pyglfs.rpc.connection import open_rpc_connection

BIN = Path(sys.executable).parent
PYGLFSD = str(BIN / "pyglfsd")
PYGLFS = str(BIN / "pyglfs")


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Node:
    """One pyglfsd on ``ip`` with its own state dir."""

    def __init__(self, root: Path, ip: str, pids: list[int]) -> None:
        self.ip = ip
        self.state = root / ip
        self.log = root / f"{ip}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []
        self._pids = pids

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    def daemon_args(self, port: int) -> list[str]:
        return [PYGLFSD, "--state-dir", str(self.state), "--listen", f"{self.ip}:{port}",
                "--log-file", str(self.log), "--retry-interval", "0.2", "--ping-timeout", "3",
                *self.extra_args]

    def listen_record(self) -> dict[str, Any] | None:
        try:
            d: dict[str, Any] = json.loads((self.state / "listen").read_text())
            return d
        except (OSError, ValueError):
            return None

    def start(self, port: int | None = None) -> None:
        port = self.port if port is None else port
        self.proc = subprocess.Popen([*self.daemon_args(port), "--foreground"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._pids.append(self.proc.pid)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"pyglfsd exited: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            rec = self.listen_record()
            return rec is not None and rec["pid"] == proc.pid

        wait_for(up, what=f"pyglfsd on {self.ip}")
        rec = self.listen_record()
        assert rec is not None
        self.port = rec["port"]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(10)
        self.proc = None
        return code

    def cli(self, *args: str, json_out: bool = False, spawn: bool = False) -> Result:
        """Run `pyglfs` against this node: in-process by default (the same code, without
        a Python start-up per call), as a real process with ``spawn``."""
        argv = ["--state-dir", str(self.state), "--mode=script", *args]
        if json_out:
            argv.append("--json")
        if spawn:
            p = subprocess.run([PYGLFS, *argv], capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL)
            return Result(p.returncode, p.stdout, p.stderr)
        r = CliRunner().invoke(cli_group, argv, catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    def info(self, command: str = "pool") -> Any:
        """pool_list / peer_status straight over rpc: polling through the CLI would
        spend a Python start-up per poll."""
        async def go() -> Any:
            async with open_rpc_connection(self.ip, self.port, volume="", role="mgmt",
                                           client_id="test") as conn:
                return await conn.call("pool_list" if command == "pool" else "peer_status",
                                       {}, timeout=10)

        return trio.run(go)

    @property
    def uuid(self) -> str:
        return str(json.loads((self.state / "pyglfsd.info").read_text())["uuid"])

    def peer_files(self) -> list[str]:
        return sorted(p.name for p in (self.state / "peers").iterdir()
                      if not p.name.startswith("."))

    def peers_connected(self) -> dict[str, bool]:
        return {p["uuid"]: p["connected"] for p in self.info("peer")["peers"]}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[[str], Node]]:
    pids: list[int] = []

    def make(ip: str) -> Node:
        return Node(tmp_path, ip, pids)

    try:
        yield make
    finally:
        stop_pids(pids)


@pytest.fixture
def two(cluster: Callable[[str], Node]) -> tuple[Node, Node]:
    a, b = cluster("127.0.0.2"), cluster("127.0.0.3")
    a.start()
    b.start()
    return a, b


def test_probe_records_both_sides_and_detach_from_the_other(two: tuple[Node, Node]) -> None:
    a, b = two
    r = a.cli("peer", "probe", b.addr, spawn=True)
    assert (r.returncode, r.stdout) == (0, "peer probe: success\n"), r.stderr
    ua, ub = a.uuid, b.uuid
    assert a.peer_files() == [ub] and b.peer_files() == [ua]
    wait_for(lambda: a.peers_connected() == {ub: True} and b.peers_connected() == {ua: True},
             what="both sides connected")
    st = a.cli("peer", "status")
    assert st.stdout.splitlines() == [
        "Number of Peers: 1", "", f"Hostname: {b.ip}", f"Port: {b.port}", f"Uuid: {ub}",
        "State: Peer in Cluster (Connected)"]
    pool = b.cli("pool", "list").stdout.splitlines()
    assert pool[0] == "UUID\t\t\t\t\tHostname \tState"
    assert pool[1:] == [f"{ua}\t{a.ip}\tConnected ", f"{ub}\tlocalhost\tConnected "]

    r = b.cli("peer", "detach", a.addr)
    assert (r.returncode, r.stdout) == (0, "peer detach: success\n"), r.stderr
    assert a.peer_files() == [] and b.peer_files() == []
    assert a.cli("peer", "status").stdout == "Number of Peers: 0\n"
    r = b.cli("peer", "detach", a.addr)
    assert r.returncode == 1
    assert r.stderr == f"peer detach: failed: {a.ip} is not part of cluster\n"


def test_probe_refusals_messages_and_exit_codes(two: tuple[Node, Node]) -> None:
    a, b = two
    assert a.cli("peer", "probe", b.addr).returncode == 0
    r = a.cli("peer", "probe", b.addr)
    assert r.returncode == 1
    assert r.stderr == f"peer probe: Host {b.ip} port {b.port} already in peer list\n"
    r = a.cli("peer", "probe", a.addr, spawn=True)
    assert (r.returncode, r.stderr) == (1, "peer probe: Probe on localhost not needed\n")
    nobody = f"127.0.0.4:{free_port('127.0.0.4')}"
    r = a.cli("peer", "probe", nobody, spawn=True)
    assert r.returncode == 1
    assert r.stderr == ("peer probe: failed: Probe returned with Transport endpoint is not "
                        "connected\n")
    assert "Traceback" not in r.stderr
    r = a.cli("peer", "probe", nobody, json_out=True)
    assert r.returncode == 1
    assert json.loads(r.stdout) == {
        "ok": False, "errno": "ENOTCONN",
        "error": "peer probe: failed: Probe returned with Transport endpoint is not connected"}
    assert a.peer_files() == [b.uuid]


def test_three_nodes_learn_of_each_other_and_detach_propagates(
        cluster: Callable[[str], Node]) -> None:
    a, b, c = (cluster(ip) for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"))
    for n in (a, b, c):
        n.start()
    assert a.cli("peer", "probe", b.addr).returncode == 0
    assert a.cli("peer", "probe", c.addr).returncode == 0
    ua, ub, uc = a.uuid, b.uuid, c.uuid
    assert b.peer_files() == sorted([ua, uc]) and c.peer_files() == sorted([ua, ub])
    wait_for(lambda: all(c.peers_connected().values()) and len(c.peers_connected()) == 2,
             what="c connected to a and b")
    # c is already in a pool: probing it from a stranger pool is refused.
    d = cluster("127.0.0.5")
    d.start()
    r = d.cli("peer", "probe", c.addr)
    assert r.returncode == 1
    assert r.stderr == (f"peer probe: failed: {c.ip} is either already part of another "
                        "cluster or having volumes configured\n")
    assert d.peer_files() == [] and len(c.peer_files()) == 2

    r = a.cli("peer", "detach", c.addr)
    assert r.returncode == 0, r.stderr
    assert a.peer_files() == [ub] and b.peer_files() == [ua] and c.peer_files() == []
    # c joins again, through b this time, then goes down.
    assert b.cli("peer", "probe", c.addr).returncode == 0
    assert a.peer_files() == sorted([ub, uc]) and c.peer_files() == sorted([ua, ub])
    c.stop(signal.SIGKILL)
    wait_for(lambda: a.peers_connected()[uc] is False, what="a sees c down")
    r = a.cli("peer", "detach", b.ip)
    assert r.returncode == 1
    assert r.stderr == ("peer detach: failed: One of the peers is probably down. "
                        "Check with 'peer status'.\n")
    r = a.cli("peer", "detach", c.ip, "force")
    assert r.returncode == 0, r.stderr
    assert a.peer_files() == [ub] and b.peer_files() == [ua]


def test_cluster_option_transaction_from_the_cli(cluster: Callable[[str], Node]) -> None:
    a, b, c = (cluster(ip) for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"))
    for n in (a, b, c):
        n.start()
    assert a.cli("peer", "probe", b.addr).returncode == 0
    assert a.cli("peer", "probe", c.addr).returncode == 0
    r = b.cli("volume", "set", "all", "cluster.max-bricks-per-process", "16")
    assert (r.returncode, r.stdout) == (0, "volume set: success\n"), r.stderr
    for n in (a, b, c):
        assert json.loads((n.state / "options").read_text()) == {
            "cluster.max-bricks-per-process": "16"}
    r = c.cli("volume", "get", "all", "cluster.max-bricks-per-process")
    assert r.stdout.splitlines()[2].split() == ["cluster.max-bricks-per-process", "16"]
    r = c.cli("volume", "get", "all", json_out=True)
    assert json.loads(r.stdout)["options"]["cluster.brick-multiplex"] == "off"

    c.stop(signal.SIGKILL)
    r = a.cli("volume", "set", "all", "cluster.max-bricks-per-process", "32", spawn=True)
    assert r.returncode == 1
    assert r.stderr == (f"volume set: failed: Locking failed on {c.addr}: Transport endpoint "
                        "is not connected\n")
    for n in (a, b, c):
        assert json.loads((n.state / "options").read_text()) == {
            "cluster.max-bricks-per-process": "16"}


def test_disconnected_peer_and_restart_keeps_uuid_and_peers(two: tuple[Node, Node]) -> None:
    a, b = two
    assert b.cli("peer", "probe", a.addr).returncode == 0
    ua, ub = a.uuid, b.uuid
    wait_for(lambda: a.peers_connected() == {ub: True}, what="a sees b")
    assert b.stop(signal.SIGKILL) != 0
    wait_for(lambda: a.peers_connected() == {ub: False}, what="a sees b disconnected")
    assert "State: Peer in Cluster (Disconnected)" in a.cli("peer", "status").stdout
    assert a.cli("pool", "list").stdout.splitlines()[1] == f"{ub}\t{b.ip}\tDisconnected "

    assert a.stop() == 0
    assert a.listen_record() is None
    a.start()
    b.start()
    assert (a.uuid, b.uuid) == (ua, ub)
    me = [p for p in a.info()["pool"] if p["hostname"] == "localhost"]
    assert me[0]["uuid"] == ua
    assert a.peer_files() == [ub] and b.peer_files() == [ua]
    wait_for(lambda: a.peers_connected() == {ub: True} and b.peers_connected() == {ua: True},
             what="reconnected after restart")


@pytest.mark.parametrize("which", ["info", "peer"])
def test_corrupt_state_file_stops_daemon_naming_it(cluster: Callable[[str], Node],
                                                   which: str) -> None:
    a, b = cluster("127.0.0.2"), cluster("127.0.0.3")
    a.start()
    b.start()
    assert a.cli("peer", "probe", b.addr).returncode == 0
    ub = b.uuid
    port = a.port
    assert a.stop() == 0
    bad = a.state / ("pyglfsd.info" if which == "info" else f"peers/{ub}")
    garbage = b'{"uuid": "truncated'
    bad.write_bytes(garbage)
    r = subprocess.run([*a.daemon_args(port), "--foreground"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert str(bad) in r.stderr and "corrupt" in r.stderr
    assert "Traceback" not in r.stderr
    assert bad.read_bytes() == garbage
    assert a.listen_record() is None


def test_cli_without_daemon_names_the_address(cluster: Callable[[str], Node]) -> None:
    a = cluster("127.0.0.2")
    addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    r = subprocess.run([PYGLFS, "--mgmt", addr, "peer", "status"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.startswith("Connection failed. Please check if pyglfsd")
    assert addr in r.stderr and "Traceback" not in r.stderr
    r = a.cli("--mgmt", "bad:port:x", "peer", "status")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    r = subprocess.run([PYGLFS, "--mgmt", addr, "peer", "probe", "a b"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and r.stderr == "peer probe: failed: invalid address 'a b'\n"


def test_daemonizes_returns_when_listening_and_exits_on_sigterm(
        cluster: Callable[[str], Node]) -> None:
    a = cluster("127.0.0.2")
    port = free_port("127.0.0.2")
    r = subprocess.run(a.daemon_args(port), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    rec = a.listen_record()
    assert rec is not None and rec["port"] == port
    pid = rec["pid"]
    a._pids.append(pid)
    assert r.stdout == f"pyglfsd: listening on 127.0.0.2:{port} (pid {pid})\n"
    a.port = port
    assert a.cli("peer", "status").stdout == "Number of Peers: 0\n"
    # A second daemon on the same state dir is refused, naming the lock.
    r2 = subprocess.run(a.daemon_args(free_port("127.0.0.2")), capture_output=True,
                        text=True, timeout=30)
    assert r2.returncode == 1 and "another pyglfsd" in r2.stderr
    # And one on a busy port reports it and exits non-zero.
    b = cluster("127.0.0.3")
    r3 = subprocess.run([PYGLFSD, "--state-dir", str(b.state), "--listen", f"127.0.0.2:{port}",
                         "--log-file", str(b.log)], capture_output=True, text=True, timeout=30)
    assert r3.returncode == 1 and f"cannot listen on 127.0.0.2:{port}" in r3.stderr
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), what="daemon exit after SIGTERM")
    assert a.listen_record() is None


def test_silent_peer_is_disconnected_after_ping_timeout(two: tuple[Node, Node]) -> None:
    a, b = two
    assert a.cli("peer", "probe", b.addr).returncode == 0
    ub = b.uuid
    wait_for(lambda: a.peers_connected() == {ub: True}, what="a sees b")
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_for(lambda: a.peers_connected() == {ub: False}, timeout=15,
                 what="a sees the stopped b disconnected")
        assert time.monotonic() - t0 < 10  # ping timeout 3 s, plus the poll
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: a.peers_connected() == {ub: True}, timeout=15, what="b back")


# A volfile watcher as a mount keeps one (pinging every ~0.8 s); it writes
# "ready" to argv[4] once subscribed, then waits for the end of the connection.
# The volume is not started: pyglfsd refuses the volfile and keeps the watch.
WATCHER = """
import sys, trio
from pathlib import Path
from pyglfs.rpc.connection import open_rpc_connection
async def main(host, port, volume, ready):
    async with open_rpc_connection(host, int(port), volume=volume, client_id="mount:h4",
                                   ping_timeout=0.8) as conn:
        try:
            await conn.call("getspec", {"volume": volume, "watch": True}, timeout=10)
        except OSError:  # not started: a mount waits, subscribed, for the start
            pass
        Path(ready).write_text("ready")
        await conn.wait_closed()
trio.run(main, *sys.argv[1:])
"""
TCP_STATES = {"01": "ESTABLISHED", "08": "CLOSE_WAIT"}


def _hexaddr(ip: str, port: int) -> str:
    packed = int.from_bytes(bytes(map(int, ip.split("."))), "little")
    return f"{packed:08X}:{port:04X}"


def tcp_states(pid: int, remote: tuple[str, int]) -> list[str]:
    """States of ``pid``'s TCP sockets connected to ``remote`` (/proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    want = _hexaddr(*remote)
    states = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[2] == want and cols[9] in inodes:
                states.append(TCP_STATES.get(cols[3], cols[3]))
    return states


def test_a_stopped_volfile_watcher_is_dropped_after_the_idle_limit(
        cluster: Callable[[str], Node], tmp_path: Path) -> None:
    """A client that vanishes without closing its socket (here: stopped) sends no
    more pings; pyglfsd drops it after --idle-timeout instead of keeping it
    subscribed until a send fails. A live client pinging is kept."""
    limit = 2.0
    a = cluster("127.0.0.2")
    a.extra_args = ["--idle-timeout", str(limit)]
    a.start()
    r = a.cli("volume", "create", "gv", f"{a.ip}:{tmp_path}/b1", "force")
    assert r.returncode == 0, r.stderr
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, a.ip, str(a.port), "gv", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    a._pids.append(proc.pid)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None,
                 what="the watcher subscribed")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert tcp_states(proc.pid, (a.ip, a.port)) == ["ESTABLISHED"]
        deadline = time.monotonic() + limit * 1.5
        while time.monotonic() < deadline:  # alive and pinging: kept past the limit
            assert tcp_states(proc.pid, (a.ip, a.port)) == ["ESTABLISHED"]
            time.sleep(0.1)
        proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        wait_for(lambda: tcp_states(proc.pid, (a.ip, a.port)) == ["CLOSE_WAIT"],
                 timeout=limit * 5, what="pyglfsd closing the stopped watcher's connection")
        took = time.monotonic() - t0
        assert took < limit * 1.25 + 1.5, took
        assert "sent nothing for" in a.log.read_text()
    finally:
        proc.send_signal(signal.SIGCONT)
    proc.wait(10)  # resumed, it finds its connection ended and exits
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else b""
