"""The ``auto_unmount`` guard (client/daemon.py) on a tmpfs standing in for the
FUSE mount: it unmounts when the process that armed it is killed, and leaves
alone a mount that is not the one it guards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mounts import is_mounted, wait_for
from helpers.procs import pid_alive, stop_pids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")

# Arms a guard for argv[1], says its PID, then waits for a signal; SIGTERM
# makes it exit as the mount does when it is asked to. SIGHUP ends it whatever
# the test runner's own disposition was (under nohup it is ignored, and a
# child inherits that).
GUARDED = """
import signal, sys, time
from pyglfs.client.daemon import Readiness
def leave(*_):
    sys.exit(0)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
signal.signal(signal.SIGTERM, leave)
r = Readiness()
r.guard_unmount(sys.argv[1])
r.ready()
print(r.guard_pid, flush=True)
time.sleep(120)
"""


def _mount_tmpfs(path: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    _mount_tmpfs(path)
    try:
        yield path
    finally:
        for _ in range(3):
            if is_mounted(path):
                subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def guarded() -> Iterator[list[int]]:
    """PIDs of guarded processes and their guards: stopped at the end."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        stop_pids(pids)


def _start(mnt: Path, pids: list[int]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", GUARDED, str(mnt)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    pids.append(proc.pid)
    assert proc.stdout is not None
    guard = int(proc.stdout.readline())
    pids.append(guard)
    return proc, guard


def test_a_killed_process_has_its_mount_unmounted(mnt: Path, guarded: list[int]) -> None:
    proc, guard = _start(mnt, guarded)
    # A signal to the process's group does not reach the guard (a session of its own).
    os.killpg(proc.pid, signal.SIGHUP)
    assert proc.wait(10) == -signal.SIGHUP
    assert wait_for(lambda: not is_mounted(mnt), 10)
    assert wait_for(lambda: not pid_alive(guard), 10)


def test_a_process_that_exits_leaves_the_mount_alone(mnt: Path, guarded: list[int]) -> None:
    proc, guard = _start(mnt, guarded)
    subprocess.run(["umount", str(mnt)], check=True)  # as the mount does at its end
    _mount_tmpfs(mnt)  # a newer mount on the same directory (it may get the same device)
    proc.terminate()
    assert proc.wait(10) == 0
    assert wait_for(lambda: not pid_alive(guard), 10)
    assert is_mounted(mnt)


def test_a_mount_of_another_device_is_left_alone(mnt: Path, guarded: list[int],
                                                 tmp_path: Path) -> None:
    proc, guard = _start(mnt, guarded)
    subprocess.run(["umount", str(mnt)], check=True)
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["mount", "--bind", str(other), str(mnt)], check=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert wait_for(lambda: not pid_alive(guard), 10)
    assert is_mounted(mnt)
