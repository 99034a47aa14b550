"""A mount by name across ``volume stop`` and ``volume start``, as a GlusterFS user
sees it: while the volume is stopped the mount stays and its files are out of
reach (ENOTCONN); once started, the same mount serves again, on the bricks' old
ports or, when a port was taken meanwhile, through the volfile the start changed.

Real pyglfsd processes on 127.0.0.2/3 (one module-wide pool, replica-2 ``gvol0``),
as in test_volfile_switch.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
from helpers.mounts import Mount, files_hold
from test_mgmt_pool import wait_for
from test_mount_by_name import Pool, mounts, needs_fuse
from test_volfile_switch import SWITCH_TIMEOUT as TIMEOUT
from test_volfile_switch import _mount, spool

__all__ = ["mounts", "spool"]  # the fixtures, imported for pytest

pytestmark = [pytest.mark.mount, needs_fuse]


def _cli(pool: Pool, *args: str) -> None:
    r = pool.a.cli(*args)
    assert r.returncode == 0, r.stderr


def _stop(pool: Pool, m: Mount) -> None:
    _cli(pool, "volume", "stop", "gvol0")
    line = "volume gvol0 is stopped"
    wait_for(lambda: line in m.log_text(), TIMEOUT, line)
    with pytest.raises(OSError) as ei:
        (m.mountpoint / "while-stopped").write_bytes(b"no\n")
    assert ei.value.errno == errno.ENOTCONN


def _start(pool: Pool, m: Mount) -> None:
    """Start the volume; return once the mount has both bricks again (each
    reconnects on its own backoff: a write before that lands on one only)."""
    start = len(m.log_text())
    _cli(pool, "volume", "start", "gvol0")
    lines = ("volume gvol0 is started again",
             "brick 0 (gvol0-client-0) is up", "brick 1 (gvol0-client-1) is up")
    wait_for(lambda: all(x in m.log_text()[start:] for x in lines), TIMEOUT, " and ".join(lines))


def _writes(path: Path, data: bytes) -> bool:
    try:
        path.write_bytes(data)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        return False
    return True


def test_stop_and_start_on_the_same_ports(spool: Pool, mounts: list[Mount],
                                          tmp_path: Path) -> None:
    m = _mount(spool, tmp_path / "mnt", mounts)
    (m.mountpoint / "before").write_bytes(b"before\n")
    ports = [b["port"] for b in spool.a.bricks("gvol0")]
    _stop(spool, m)
    _start(spool, m)
    assert [b["port"] for b in spool.a.bricks("gvol0")] == ports
    path = m.mountpoint / "after"
    wait_for(lambda: _writes(path, b"after\n"), TIMEOUT, "a write after the start")
    assert files_hold([b / "after" for b in spool.bricks], b"after\n")
    assert (m.mountpoint / "before").read_bytes() == b"before\n"
    assert "switched to new graph" not in m.log_text()


def test_a_brick_that_must_move_reaches_the_mount(spool: Pool, mounts: list[Mount],
                                                  tmp_path: Path) -> None:
    m = _mount(spool, tmp_path / "mnt", mounts)
    old = spool.a.bricks("gvol0")[0]["port"]
    _stop(spool, m)
    # Something else listens on the first brick's port while the volume is down.
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.2", old))
        squatter.listen()
        _start(spool, m)
        assert spool.a.bricks("gvol0")[0]["port"] != old
        line = "switched to new graph (generation 2)"
        wait_for(lambda: line in m.log_text(), TIMEOUT, line)
        path = m.mountpoint / "moved"
        wait_for(lambda: _writes(path, b"moved\n"), TIMEOUT, "a write after the start")
        # On the moved brick: the mount found it at its new port.
        assert files_hold([spool.bricks[0] / "moved"], b"moved\n")
    finally:
        squatter.close()
