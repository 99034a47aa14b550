"""The GlusterFS reference target: a replica-2 volume on the local disk, loopback only.

Runs only where Debian's glusterfs-server is installed (``/usr/sbin/glusterd``);
it is never required. Follows /work/shared/reference/glusterfs-on-loopback.md:
glusterd runs inside a network namespace whose only interface is ``lo``, so
nothing it or its bricks open is reachable from outside; both bricks sit on
127.0.0.2 (the CLI refuses 127.0.0.1) and need ``force``. The FUSE client is
started directly (``glusterfs --volfile-server ... --pid-file``) inside the
namespace so its PID is known for the memory figure.

The target refuses to touch a glusterd that is already running, and removes
the volume, the namespace and the daemons it started on teardown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from targets import (
    Target,
    TargetSkipped,
    is_mounted,
    own_block_groups,
    pid_alive,
    say,
    stop_pid,
    unmount,
    wait_until,
)

GLUSTERD = "/usr/sbin/glusterd"
NETNS = "pyglfs-bench"
HOST = "127.0.0.2"
VOLUME = "pyglfsbench"
GLUSTERD_PID = "/var/run/glusterd.pid"


class GlusterfsTarget(Target):
    """See the module docstring."""

    name = "glusterfs"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.glusterd_pid: int | None = None
        self.netns = False
        self.volume = False

    def _ns(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{NETNS}", *argv]

    def _gluster(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        r = subprocess.run(self._ns("gluster", "--mode=script", *args), capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f"gluster {' '.join(args)}: {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def setup(self) -> Path:
        if not os.path.exists(GLUSTERD):
            raise TargetSkipped("glusterfs: not installed (Debian: apt-get install "
                                "glusterfs-server); skipped")
        if os.path.exists(GLUSTERD_PID):
            try:
                pid = int(Path(GLUSTERD_PID).read_text().split()[0])
            except (ValueError, IndexError):
                pid = 0
            if pid and pid_alive(pid):
                raise TargetSkipped(f"glusterfs: a glusterd is already running (pid {pid}); "
                                    "not touching it")
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "netns", "add", NETNS], check=True, capture_output=True)
        self.netns = True
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
        subprocess.run(self._ns(GLUSTERD, "-p", GLUSTERD_PID, "--log-level", "WARNING"),
                       check=True, timeout=60, stdin=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(GLUSTERD_PID), 30, "glusterd's pid file")
        self.glusterd_pid = int(Path(GLUSTERD_PID).read_text().split()[0])

        def answers() -> bool:
            r = subprocess.run(self._ns("gluster", "--mode=script", "peer", "status"),
                               capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
            return r.returncode == 0

        wait_until(answers, 60, "glusterd to answer", interval=0.5)
        b1, b2 = self.base / "b1", self.base / "b2"
        b1.mkdir(exist_ok=True)
        b2.mkdir(exist_ok=True)
        own_block_groups(b1)
        own_block_groups(b2)
        self._gluster("volume", "create", VOLUME, "replica", "2", f"{HOST}:{b1}", f"{HOST}:{b2}",
                      "force")
        self.volume = True
        self._gluster("volume", "start", VOLUME)
        mnt = self.base / "mnt"
        mnt.mkdir(exist_ok=True)
        pid_file = self.base / "client.pid"
        subprocess.run(self._ns("glusterfs", f"--volfile-server={HOST}", f"--volfile-id={VOLUME}",
                                f"--pid-file={pid_file}",
                                f"--log-file={self.base / 'client.log'}", str(mnt)),
                       check=True, timeout=60, stdin=subprocess.DEVNULL)
        wait_until(lambda: is_mounted(mnt) and pid_file.exists(), 60, "the glusterfs mount")
        self.pid = int(pid_file.read_text().split()[0])
        return mnt

    def teardown(self) -> None:
        try:
            unmount(self.base / "mnt")
            if self.pid is not None:
                stop_pid(self.pid)
                self.pid = None
            if self.volume:
                # stops the bricks and the self-heal daemon with the volume
                self._gluster("volume", "stop", VOLUME, check=False)
                self._gluster("volume", "delete", VOLUME, check=False)
                self.volume = False
        except Exception as e:  # keep tearing down: the daemons must still go
            say(f"warning: glusterfs teardown: {e}")
        finally:
            if self.glusterd_pid is not None:
                stop_pid(self.glusterd_pid)
                self.glusterd_pid = None
            if self.netns:
                subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
                self.netns = False
            shutil.rmtree(self.base, ignore_errors=True)
