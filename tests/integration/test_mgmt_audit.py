"""What issue 4's test list asks for and the other mgmt tests left out.

Real pyglfsd processes on 127.0.0.2/3 (VolNode: own state dir, free ports), the
real `pyglfs` program where a terminal or a second CLI matters: two CLIs racing
on one volume, `volume stop NAME force`, confirmations on a terminal and none
without one, a restart of both daemons, and corrupt volume and option files.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
import test_mgmt_volumes
from helpers.procs import pid_alive
from test_mgmt_pool import PYGLFS, wait_for
from test_mgmt_volumes import VolNode

# The volume tests' fixtures: pyglfsd on 127.0.0.2 and .3 probed into one pool.
nodes, pair = test_mgmt_volumes.nodes, test_mgmt_volumes.pair


def create_replica(a: VolNode, b: VolNode, root: Path, name: str = "gv") -> None:
    r = a.cli("volume", "create", name, "replica", "2", f"{a.ip}:{root}/{name}1",
              f"{b.ip}:{root}/{name}2", "force")
    assert r.returncode == 0, r.stderr


def pyglfs(node: VolNode, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """The real program, without --mode=script and with no terminal."""
    return subprocess.run([PYGLFS, "--mgmt", node.addr, *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def test_two_clis_on_one_volume_one_wins(pair: tuple[VolNode, VolNode],
                                         tmp_path: Path) -> None:
    a, b = pair
    create_replica(a, b, tmp_path)
    assert a.cli("volume", "start", "gv").returncode == 0
    # b's brick is frozen: SIGTERM stays pending, so b's half of `volume stop` takes
    # the supervisor's 5 s grace, and the first CLI's transaction stays open for it.
    slow = a.bricks("gv")[1]["pid"]
    os.kill(slow, signal.SIGSTOP)
    first = subprocess.Popen([PYGLFS, "--mgmt", a.addr, "--mode=script", "volume", "stop",
                              "gv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "stopped (pid" in a.log.read_text(), timeout=20,
                 what="a's brick stopped by the first CLI")
        second = b.cli("volume", "set", "gv", "network.ping-timeout", "5", spawn=True)
        out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 1
    assert second.stderr.startswith("volume set: failed: Another transaction is in progress"), \
        second.stderr
    assert (first.returncode, out) == (0, "volume stop: gv: success\n"), err
    assert "did not stop on SIGTERM" in b.log.read_text() and not pid_alive(slow)
    for n in (a, b):  # the loser changed nothing anywhere
        info = n.cli("volume", "info", "gv").stdout
        assert "Status: Stopped" in info and "Options Reconfigured" not in info
    r = b.cli("volume", "set", "gv", "network.ping-timeout", "5")
    assert r.returncode == 0, r.stderr


def test_stop_force_is_a_word_and_scripts_are_never_asked(pair: tuple[VolNode, VolNode],
                                                          tmp_path: Path) -> None:
    a, b = pair
    create_replica(a, b, tmp_path)
    # Both bricks of a replica set on one server: refused without force (as the volume
    # tests show), accepted with it.
    r = pyglfs(a, "volume", "create", "same", "replica", "2", f"{a.ip}:{tmp_path}/s1",
               f"{a.ip}:{tmp_path}/s2", "force")
    assert r.returncode == 0, r.stderr
    assert "Type: Replicate" in b.cli("volume", "info", "same").stdout
    r = pyglfs(a, "volume", "stop", "gv")
    assert (r.returncode, r.stderr) == (
        1, "volume stop: gv: failed: Volume gv is not in the started state\n")
    r = pyglfs(a, "volume", "stop", "gv", "now")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = pyglfs(a, "volume", "stop", "gv", "force")
    assert (r.returncode, r.stdout, r.stderr) == (0, "volume stop: gv: success\n", "")
    assert a.cli("volume", "start", "gv").returncode == 0
    # No terminal and no --mode=script: no question, the command runs.
    r = pyglfs(a, "volume", "stop", "gv")
    assert (r.returncode, r.stdout) == (0, "volume stop: gv: success\n"), r.stderr
    assert "continue?" not in r.stdout + r.stderr
    assert a.cli("volume", "start", "gv").returncode == 0
    r = pyglfs(a, "volume", "stop", "gv", "force")
    assert (r.returncode, r.stdout) == (0, "volume stop: gv: success\n"), r.stderr
    assert not any(pid_alive(p) for p in a.brick_pids() + b.brick_pids())


def on_terminal(node: VolNode, *args: str, answer: bytes | None) -> tuple[int, str]:
    """Run `pyglfs` with a pseudo-terminal as stdin and stdout; type ``answer`` once
    it asks. The exit status and everything it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([PYGLFS, "--mgmt", node.addr, *args], stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the program closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if answer is not None and b"[y/N]" in out:
                    os.write(master, answer)
                    answer = None
            elif proc.poll() is not None:
                break
        return proc.wait(10), out.decode(errors="replace").replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_terminal_asks_unless_mode_script(pair: tuple[VolNode, VolNode],
                                          tmp_path: Path) -> None:
    a, b = pair
    create_replica(a, b, tmp_path)
    assert a.cli("volume", "start", "gv").returncode == 0
    code, out = on_terminal(a, "volume", "stop", "gv", answer=b"n\n")
    assert code == 1 and "Do you want to continue? [y/N]" in out
    assert "volume stop: gv: cancelled" in out
    assert "Status: Started" in b.cli("volume", "info", "gv").stdout
    code, out = on_terminal(a, "--mode=script", "volume", "stop", "gv", answer=None)
    assert (code, out) == (0, "volume stop: gv: success\n")
    code, out = on_terminal(a, "volume", "delete", "gv", answer=b"y\n")
    assert code == 0 and out.endswith("volume delete: gv: success\n"), out
    assert a.vol_names() == b.vol_names() == []


def test_both_daemons_restart_keep_volumes_options_and_restart_dead_bricks(
        pair: tuple[VolNode, VolNode], tmp_path: Path) -> None:
    a, b = pair
    create_replica(a, b, tmp_path)
    create_replica(a, b, tmp_path, "idle")
    assert a.cli("volume", "set", "gv", "cluster.quorum-type", "fixed").returncode == 0
    assert a.cli("volume", "start", "gv").returncode == 0
    before = a.bricks("gv")
    info = {n.ip: n.cli("volume", "info").stdout for n in (a, b)}
    assert b.stop() == 0
    # A brick whose daemon is down shows offline, with the same fields.
    st = json.loads(a.cli("volume", "status", "gv", json_out=True).stdout)["volumes"][0]
    assert [{k: x[k] for k in ("host", "path", "port", "online", "pid")}
            for x in st["bricks"]] == [
        {k: before[0][k] for k in ("host", "path", "port", "online", "pid")},
        {"host": b.ip, "path": f"{tmp_path}/gv2", "port": None, "online": False, "pid": None}]
    # The brick dies while nobody supervises it; a goes down too.
    os.kill(before[1]["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(before[1]["pid"]), what="b's brick gone")
    assert a.stop() == 0
    a.start()
    b.start()
    for n in (a, b):
        assert n.cli("volume", "info").stdout == info[n.ip]
        assert "cluster.quorum-type: fixed" in info[n.ip] and "Status: Created" in info[n.ip]
    wait_for(lambda: all(x["online"] for x in a.bricks("gv")), timeout=20,
             what="both bricks online after the restart")
    now = a.bricks("gv")
    assert now[0]["pid"] == before[0]["pid"]  # adopted
    assert now[1]["pid"] != before[1]["pid"] and pid_alive(now[1]["pid"])  # restarted
    assert now[1]["port"] == before[1]["port"]
    assert "adopted" in a.log.read_text()


@pytest.mark.parametrize("which", ["vols/gv/info", "options"])
def test_corrupt_volume_or_options_file_stops_daemon_naming_it(
        pair: tuple[VolNode, VolNode], tmp_path: Path, which: str) -> None:
    a, b = pair
    create_replica(a, b, tmp_path)
    assert a.cli("volume", "set", "all", "cluster.brick-multiplex", "on").returncode == 0
    port = a.port
    assert a.stop() == 0
    bad = a.state / which
    garbage = bad.read_bytes()[:20]
    bad.write_bytes(garbage)
    r = subprocess.run([*a.daemon_args(port), "--foreground"], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    assert str(bad) in r.stderr and "corrupt" in r.stderr and "Traceback" not in r.stderr
    assert bad.read_bytes() == garbage
    assert a.listen_record() is None


def test_every_command_answers_json(pair: tuple[VolNode, VolNode], tmp_path: Path) -> None:
    a, b = pair

    def ok(*args: str) -> dict[str, object]:
        r = a.cli(*args, json_out=True)
        d = json.loads(r.stdout)
        assert r.returncode == 0 and d["ok"] is True, (args, r.stdout, r.stderr)
        return d

    ok("volume", "create", "gv", "replica", "2", f"{a.ip}:{tmp_path}/1",
       f"{b.ip}:{tmp_path}/2", "force")
    for args in (("peer", "status"), ("pool", "list"), ("volume", "list"),
                 ("volume", "info", "gv"), ("volume", "get", "gv", "all"),
                 ("volume", "set", "gv", "network.ping-timeout", "5"),
                 ("volume", "reset", "gv", "network.ping-timeout"), ("volume", "start", "gv"),
                 ("volume", "status", "gv"), ("volume", "stop", "gv"),
                 ("volume", "delete", "gv")):
        ok(*args)
    r = a.cli("volume", "info", "gv", json_out=True)
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"ok": False, "errno": "ENOENT",
                                    "error": "volume info: failed: Volume gv does not exist"}


def test_reset_one_key_and_unknown_keys_list_the_valid_ones(
        pair: tuple[VolNode, VolNode], tmp_path: Path) -> None:
    a, b = pair
    create_replica(a, b, tmp_path)
    assert a.cli("volume", "set", "gv", "network.ping-timeout", "5").returncode == 0
    assert a.cli("volume", "set", "gv", "cluster.quorum-type", "none").returncode == 0
    r = b.cli("volume", "reset", "gv", "network.ping-timeout")
    assert (r.returncode, r.stdout) == (0, "volume reset: success\n"), r.stderr
    for n in (a, b):
        info = n.cli("volume", "info", "gv").stdout
        assert "cluster.quorum-type: none" in info and "network.ping-timeout" not in info
    for args in (("reset", "gv", "cluster.nope"), ("get", "gv", "cluster.nope"),
                 ("set", "gv", "cluster.nope", "1")):
        r = a.cli("volume", *args)
        assert r.returncode == 1 and "cluster.nope" in r.stderr, r.stderr
        assert "Valid options: " in r.stderr and "network.ping-timeout" in r.stderr, r.stderr
    r = a.cli("volume", "start", "gv", "force")
    assert (r.returncode, r.stdout) == (0, "volume start: gv: success\n"), r.stderr
    first = a.bricks("gv")
    r = a.cli("volume", "start", "gv", "force")
    assert r.returncode == 0, r.stderr
    assert a.bricks("gv") == first  # nothing down: force starts nothing twice
