"""A volfile change reaches a live mount, which switches graphs without unmounting.

Real pyglfsd processes on 127.0.0.2/3 (one module-wide pool, a started replica-2
volume ``gvol0``), mounted by name with 127.0.0.3 as backup volfile server. The
tests change client-graph options with ``pyglfs volume set`` and watch the
mount's log, its PID and /proc/mounts, and what applications see.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mounts import Mount, files_hold, mount_entry
from helpers.procs import pid_alive
from test_mgmt_pool import wait_for
from test_mgmt_volumes import VolNode
from test_mount_by_name import Pool, mount_by_name, mounts, needs_fuse, replica_pool

__all__ = ["mounts"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.mount, needs_fuse]

SWITCH_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    with replica_pool(tmp_path_factory.mktemp("switch")) as p:
        yield p


def _mount(pool: Pool, mnt: Path, mounts: list[Mount]) -> Mount:
    m = mount_by_name("127.0.0.2:/gvol0", mnt,
                      f"volfile-server-port={pool.port},backup-volfile-servers=127.0.0.3")
    mounts.append(m)
    line = f"watching the volfile of gvol0 on 127.0.0.2:{pool.port}"
    wait_for(lambda: line in m.log_text(), SWITCH_TIMEOUT, line)
    return m


def _volume_set(node: VolNode, key: str, value: str) -> None:
    r = node.cli("volume", "set", "gvol0", key, value)
    assert r.returncode == 0, r.stderr


def _wait_switch(m: Mount, generation: int) -> None:
    line = f"switched to new graph (generation {generation})"
    wait_for(lambda: line in m.log_text(), SWITCH_TIMEOUT, line)
    # The graph it replaced is stopped: its brick connections are closed.
    line = f"generation {generation - 1} stopped"
    wait_for(lambda: line in m.log_text(), SWITCH_TIMEOUT, line)


def _sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for f in fds.iterdir() if os.readlink(f).startswith("socket:"))


def test_volume_set_switches_a_live_mount(spool: Pool, mounts: list[Mount],
                                          tmp_path: Path) -> None:
    m = _mount(spool, tmp_path / "mnt", mounts)
    entry = mount_entry(m.mountpoint)
    sockets = _sockets(m.pid)
    held = open(m.mountpoint / "held", "w+b")  # noqa: SIM115 (held across the switches)
    ghost = open(m.mountpoint / "ghost", "w+b")  # noqa: SIM115
    try:
        held.write(b"before ")
        held.flush()
        # Unlinked while open: only the bricks' open counts keep its data.
        ghost.write(b"boo")
        ghost.flush()
        os.unlink(m.mountpoint / "ghost")
        _volume_set(spool.a, "network.ping-timeout", "2")
        _wait_switch(m, 2)
        _volume_set(spool.a, "cluster.quorum-type", "none")
        _wait_switch(m, 3)
        # The file opened on generation 1 goes on working on generation 3.
        held.write(b"after")
        held.flush()
        os.fsync(held.fileno())
        held.seek(0)
        assert held.read() == b"before after"
        for brick in spool.bricks:
            assert (brick / "held").read_bytes() == b"before after"
        # Generations 1 and 2, which made and moved the ghost's opens, are gone.
        ghost.write(b"!")
        ghost.flush()
        os.fsync(ghost.fileno())
        # Read back from the bricks, past the page cache, through a new open.
        fd = os.open(f"/proc/self/fd/{ghost.fileno()}", os.O_RDONLY | os.O_DIRECT)
        try:
            assert os.pread(fd, 4096, 0) == b"boo!"
        finally:
            os.close(fd)
    finally:
        held.close()
        ghost.close()
    assert pid_alive(m.pid) and mount_entry(m.mountpoint) == entry
    assert _sockets(m.pid) == sockets

    # quorum-type none in force: with the first brick silent (stopped, so its
    # supervisor does not restart it), writes still succeed once the 2 s
    # ping-timeout, also new, declares it down; under auto they would be EROFS.
    first = spool.a.bricks("gvol0")[0]["pid"]
    os.kill(first, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        (m.mountpoint / "while-down").write_bytes(b"quorum none\n")
        assert time.monotonic() - t0 < 15
    finally:
        os.kill(first, signal.SIGCONT)
    assert files_hold([spool.bricks[1] / "while-down"], b"quorum none\n")
    assert "generation 4" not in m.log_text()
    r = spool.a.cli("volume", "reset", "gvol0", "all")
    assert r.returncode == 0, r.stderr
    _wait_switch(m, 4)
    assert pid_alive(m.pid) and mount_entry(m.mountpoint) == entry


def test_an_unreachable_volfile_server_does_not_disturb_the_mount(
        spool: Pool, mounts: list[Mount], tmp_path: Path) -> None:
    m = _mount(spool, tmp_path / "mnt2", mounts)
    entry = mount_entry(m.mountpoint)
    spool.a.stop()
    try:
        (m.mountpoint / "no-mgmt").write_bytes(b"still here\n")
        assert (m.mountpoint / "no-mgmt").read_bytes() == b"still here\n"
        # The watch moves to the backup server.
        line = f"watching the volfile of gvol0 on 127.0.0.3:{spool.port}"
        wait_for(lambda: line in m.log_text(), SWITCH_TIMEOUT, line)
    finally:
        spool.a.start()
    _volume_set(spool.b, "network.ping-timeout", "3")
    _wait_switch(m, 2)
    assert (m.mountpoint / "no-mgmt").read_bytes() == b"still here\n"
    with pytest.raises(OSError) as ei:
        (m.mountpoint / "missing").read_bytes()
    assert ei.value.errno == errno.ENOENT
    assert pid_alive(m.pid) and mount_entry(m.mountpoint) == entry
    r = spool.b.cli("volume", "reset", "gvol0", "all")
    assert r.returncode == 0, r.stderr


def test_write_behind_switched_off_and_on_under_a_writer(
        spool: Pool, mounts: list[Mount], tmp_path: Path) -> None:
    vol = spool.a.state / "vols" / "gvol0" / "gvol0.vol"
    assert "performance/write-behind" in vol.read_text()  # on by default
    m = _mount(spool, tmp_path / "mnt3", mounts)
    block = bytes(range(256)) * 4096  # 1 MiB
    with open(m.mountpoint / "wb", "wb") as f:
        for i in range(6):  # queued on generation 1 while the switch is made
            f.write(block[i:] + block[:i])
            f.flush()
            if i == 2:
                _volume_set(spool.a, "performance.write-behind", "off")
        _wait_switch(m, 2)
        assert "performance/write-behind" not in vol.read_text()
        f.write(b"tail")
    want = b"".join(block[i:] + block[:i] for i in range(6)) + b"tail"
    for brick in spool.bricks:
        assert (brick / "wb").read_bytes() == want
    _volume_set(spool.a, "performance.write-behind-window-size", "2MB")
    r = spool.a.cli("volume", "reset", "gvol0", "performance.write-behind")
    assert r.returncode == 0, r.stderr
    _wait_switch(m, 3)  # the window size alone changed nothing while it was off
    assert "option cache-size 2MB" in vol.read_text()
    r = spool.a.cli("volume", "reset", "gvol0", "all")
    assert r.returncode == 0, r.stderr
