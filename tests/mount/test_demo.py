"""`make demo` end to end: deploy/demo.sh start/stop against tmp_path.

The script runs as the Makefile runs it, with its base directory and ports
overridden (PYGLFS_DEMO_DIR, PYGLFS_DEMO_PORT, PYGLFS_DEMO_BRICK_PORT) so it never
meets a real demo or another test on 127.0.0.2/3. It mounts through
/sbin/mount.fuse.pyglfs, so it needs `make install` (which `make test` runs first).
Whatever it started is stopped by PID and unmounted when the test ends, also when
it fails.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mounts import files_hold, fuse_skip_reason, mount_entry, wait_for
from helpers.procs import pid_alive, stop_pids

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "demo.sh"
HELPER = Path("/sbin/mount.fuse.pyglfs")
NODES = ("127.0.0.2", "127.0.0.3")


def _skip_reason() -> str | None:
    reason = fuse_skip_reason()
    if reason is None and not (HELPER.exists()
                               and filecmp.cmp(HELPER, REPO / "deploy" / HELPER.name,
                                               shallow=False)):
        reason = f"{HELPER} is not this checkout's: run make install"
    return reason


pytestmark = [pytest.mark.mount, pytest.mark.skipif(_skip_reason() is not None,
                                                    reason=str(_skip_reason()))]


def free_port_on_both() -> int:
    """A port free on 127.0.0.2 and 127.0.0.3 (pyglfsd uses one port on both)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((NODES[0], 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s2:
            try:
                s2.bind((NODES[1], port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free on both loopback addresses")


class Demo:
    def __init__(self, base: Path) -> None:
        self.dir = base
        self.port = free_port_on_both()
        self.env = {**os.environ, "PYGLFS_DEMO_DIR": str(base),
                    "PYGLFS_DEMO_PORT": str(self.port),
                    "PYGLFS_DEMO_BRICK_PORT": str(free_port_on_both())}
        self.seen: list[int] = []

    def run(self, action: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["bash", str(SCRIPT), action], env=self.env, text=True,
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        self.seen += self.daemon_pids().values()
        return r

    def daemon_pids(self) -> dict[str, int]:
        out = {}
        for ip in NODES:
            f = self.dir / "run" / f"pyglfsd-{ip}.pid"
            if f.exists():
                out[ip] = int(f.read_text())
        return out

    def brick_pids(self) -> list[int]:
        pids = []
        for f in self.dir.glob("state/*/vols/*/run/*.json"):
            pids.append(int(json.loads(f.read_text())["pid"]))
        self.seen += pids
        return pids

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(sys.executable).parent / "pyglfs"), "--mgmt",
                               f"{NODES[0]}:{self.port}", *args], text=True,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=60)


def processes_naming(path: Path) -> dict[int, str]:
    """Running processes whose command line names ``path``: PID -> command line."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(path) in cmd and pid_alive(int(d.name)):
                found[int(d.name)] = cmd
    return found


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    d = Demo(tmp_path / "demo")
    try:
        yield d
    finally:
        mnt = d.dir / "mnt"
        if mount_entry(mnt) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        stop_pids(d.seen + list(d.daemon_pids().values()))
        stop_pids(d.brick_pids())


def test_demo_start_twice_survives_a_dead_daemon_and_stops_clean(demo: Demo) -> None:
    mnt, b1, b2 = demo.dir / "mnt", demo.dir / "bricks" / "b1", demo.dir / "bricks" / "b2"
    r = demo.run("start")
    assert r.returncode == 0, r.stdout + r.stderr
    entry = mount_entry(mnt)
    assert entry is not None and entry["fstype"] == "fuse.pyglfs"
    for f in (mnt / "hello.txt", b1 / "hello.txt", b2 / "hello.txt"):
        assert f.read_text() == "hello from pyglfs\n"
    assert r.stdout.count("hello from pyglfs") >= 3
    assert "Volume Name: gvol0" in r.stdout and "Status: Started" in r.stdout
    assert "Status of volume: gvol0" in r.stdout and "make demo-stop" in r.stdout
    pids = demo.daemon_pids()
    assert sorted(pids) == list(NODES) and all(pid_alive(p) for p in pids.values())
    st = json.loads(demo.cli("volume", "status", "gvol0", "--json").stdout)
    bricks = st["volumes"][0]["bricks"]
    assert [(b["host"], b["path"], b["online"]) for b in bricks] == [
        (NODES[0], str(b1), True), (NODES[1], str(b2), True)]

    # Again: everything is found in place, nothing is created twice.
    r = demo.run("start")
    assert r.returncode == 0, r.stdout + r.stderr
    for said in ("pyglfsd on 127.0.0.2: already running", "pyglfsd on 127.0.0.3: already "
                 "running", "127.0.0.3 is already in the pool", "volume gvol0 already exists",
                 "volume gvol0 is already started", f"{mnt}: already mounted"):
        assert said in r.stdout
    assert "+ pyglfsd" not in r.stdout and "+ mount" not in r.stdout
    assert demo.daemon_pids() == pids
    assert demo.cli("volume", "list").stdout == "gvol0\n"
    assert "Number of Peers: 1" in demo.cli("peer", "status").stdout

    # The mount's volfile server dies: the mount goes on writing to both bricks, and
    # the next start brings the daemon back, leaving the mount and the other daemon.
    os.kill(pids[NODES[0]], signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pids[NODES[0]]), 10)
    (mnt / "during.txt").write_text("written while pyglfsd was down\n")
    assert files_hold([b / "during.txt" for b in (b1, b2)], b"written while pyglfsd was down\n")
    r = demo.run("start")
    assert r.returncode == 0, r.stdout + r.stderr
    now = demo.daemon_pids()
    assert now[NODES[1]] == pids[NODES[1]] and now[NODES[0]] != pids[NODES[0]]
    assert pid_alive(now[NODES[0]]) and f"{mnt}: already mounted" in r.stdout
    brick_pids = demo.brick_pids()
    assert len(brick_pids) == 2 and all(pid_alive(p) for p in brick_pids)

    # The mount's client dies: the dead mount is cleared and mounted again.
    [client] = [p for p, cmd in processes_naming(mnt).items() if "pyglfs.client.mount" in cmd]
    demo.seen.append(client)
    os.kill(client, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(client), 10)
    r = demo.run("start")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{mnt}: the mount's client is gone" in r.stdout
    assert (mnt / "during.txt").read_text() == "written while pyglfsd was down\n"
    assert demo.daemon_pids() == now and demo.brick_pids() == brick_pids

    r = demo.run("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert mount_entry(mnt) is None
    assert not any(pid_alive(p) for p in [*now.values(), *brick_pids])
    assert processes_naming(demo.dir) == {}
    # Stopping again is a no-op; what is left is plain files that can be removed.
    r = demo.run("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.rmtree(demo.dir)
    r = demo.run("stop")
    assert (r.returncode, r.stdout.startswith("demo: nothing to stop")) == (0, True)
