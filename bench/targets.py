"""Benchmark targets: where a workload runs, and how to bring it up and down.

A target's ``setup()`` returns a directory to run workloads in and
``teardown()`` undoes everything ``setup()`` did, even after a partial setup,
so the caller runs it in a ``finally``. A target that cannot run here raises
``TargetSkipped`` with one line saying why. ``pid`` is the FUSE client process
whose memory the ``rss`` workload reads (None for the local disk).

Every process a target starts is stopped by its PID; every mount is unmounted
with ``fusermount3 -u`` (lazily as a last resort). Mount state is read from
/proc/mounts, never by stat'ing a mount point, which would hang on a dead
FUSE daemon.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pyglfs.rpc.tuning import MALLOC_ENV

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOSTS = ("127.0.0.2", "127.0.0.3")


class TargetSkipped(Exception):
    """This target cannot run on this machine; the message says why."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``cond`` until true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def is_mounted(path: str | Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == real:
                return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_pid(pid: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    """Stop one process by PID: wait, then SIGTERM, then SIGKILL."""
    def gone() -> bool:
        if proc is not None:
            return proc.poll() is not None
        return not pid_alive(pid)

    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        try:
            wait_until(gone, timeout if sig != signal.SIGKILL else 5.0, f"pid {pid} to exit")
            return
        except TimeoutError:
            continue
    say(f"warning: pid {pid} did not exit")


def unmount(path: str | Path) -> None:
    """Unmount a FUSE mount; lazily if it stays busy."""
    for attempt in range(10):
        if not is_mounted(path):
            return
        r = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        if attempt == 9:
            say(f"warning: {path} busy ({r.stderr.strip()}); unmounting lazily")
            subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
            return
        time.sleep(0.2 * (attempt + 1))


def _first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line a child prints, or "" if it exits or stays silent for ``timeout`` s."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def own_block_groups(path: Path) -> bool:
    """Mark ``path`` an ext4 "top" directory (``chattr +T``), so that the
    directories made in it get block groups of their own, away from the inodes
    another target freed moments before; False where the filesystem has no such
    flag.

    Why: on ext4 without a journal (this project's VMs) the inode allocator
    skips, one by one and at every allocation, each free inode of the group
    that was freed within the last minute (up to six when its table block is
    dirty, which the allocation itself makes it). 5,000 files freed by one target made
    the next target's creates in the same group cost ~140 us of kernel time per
    inode instead of ~25 (plain system calls), a cost a replica-2 volume, which
    makes two inodes per file, paid twice. Orlov, ext4's allocator, spreads the
    subdirectories of a top directory over the emptiest groups, at random.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 4))[0]
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Target:
    """A place to run workloads (see the module docstring)."""

    name = "?"
    pid: int | None = None

    def __init__(self, work: Path) -> None:
        self.base = work / self.name

    def setup(self) -> Path:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError


class LocalTarget(Target):
    """A plain directory on the local disk: the reference for every ratio."""

    name = "local"

    def setup(self) -> Path:
        data = self.base / "data"
        data.mkdir(parents=True, exist_ok=True)
        own_block_groups(data)
        return data

    def teardown(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


class _FuseProcessTarget(Target):
    """A FUSE filesystem served by one foreground process we start."""

    proc: subprocess.Popen[bytes] | None = None

    def _start(self, argv: list[str], mnt: Path, log: Path, timeout: float = 30.0) -> None:
        env = dict(os.environ) | MALLOC_ENV
        with open(log, "wb") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise TargetSkipped(f"{self.name}: {argv[0]} exited with {proc.returncode} "
                                    f"before mounting; see {log}")
            return is_mounted(mnt)

        wait_until(ready, timeout, f"{self.name} mount on {mnt}")

    def _stop(self, mnt: Path) -> None:
        try:
            unmount(mnt)
        finally:
            if self.pid is not None:
                stop_pid(self.pid, self.proc)
                self.pid = None


class PassthroughTarget(_FuseProcessTarget):
    """bench/passthroughfs.py over a local directory: the "plain FUSE" reference."""

    name = "passthrough"

    def setup(self) -> Path:
        src, mnt = self.base / "src", self.base / "mnt"
        src.mkdir(parents=True, exist_ok=True)
        own_block_groups(src)
        mnt.mkdir(parents=True, exist_ok=True)
        self._start([sys.executable, str(BENCH_DIR / "passthroughfs.py"), str(src), str(mnt)],
                    mnt, self.base / "passthroughfs.log")
        return mnt

    def teardown(self) -> None:
        self._stop(self.base / "mnt")
        shutil.rmtree(self.base, ignore_errors=True)


def _tool(name: str) -> str | None:
    """A console script of this checkout's venv first, then PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


class PyglfsTarget(Target):
    """A replica-2 pyglfs volume: two brick daemons on 127.0.0.2/.3, bricks on local disk."""

    name = "pyglfs"
    VOLUME = "benchvol"

    def __init__(self, work: Path, options: str = "") -> None:
        super().__init__(work)
        self.options = options
        self.bricks: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _start_brick(self, host: str, brick: Path, volume_id: str) -> int:
        brickd = _tool("pyglfs-brickd")
        if brickd is None:
            raise TargetSkipped("pyglfs: pyglfs-brickd is not installed")
        brick.mkdir(parents=True, exist_ok=True)
        own_block_groups(brick)
        log = self.base / f"{brick.name}.log"
        argv = [brickd, "--brick", str(brick), "--listen", f"{host}:0", "--volume", self.VOLUME,
                "--volume-id", volume_id, "--log-file", str(log), "--log-level", "warning"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=dict(os.environ) | MALLOC_ENV)
        self.bricks.append((proc, brick))
        line = _first_line(proc, 30.0)
        if not line.startswith("listening on "):
            stop_pid(proc.pid, proc)
            raise TargetSkipped(f"pyglfs: brick daemon for {brick} did not start "
                                f"(exit {proc.returncode}); see {log}")
        return int(line.rsplit(":", 1)[1])

    def _volfile(self, ports: list[int], paths: list[Path], volume_id: str) -> str:
        try:
            from pyglfs.volfiles.generator import BrickSpec, VolumeSpec, client_volfile
        except ImportError:
            return _inline_volfile(self.VOLUME, ports, paths)
        spec = VolumeSpec(self.VOLUME, volume_id, 2, [
            BrickSpec(h, p, str(b)) for h, p, b in zip(HOSTS, ports, paths, strict=True)])
        return client_volfile(spec)

    def setup(self) -> Path:
        mount_tool = _tool("pyglfs-mount")
        if mount_tool is None:
            raise TargetSkipped("pyglfs: pyglfs-mount is not installed")
        self.base.mkdir(parents=True, exist_ok=True)
        volume_id = str(uuid.uuid4())
        paths = [self.base / "b1", self.base / "b2"]
        ports = [self._start_brick(h, b, volume_id)
                 for h, b in zip(HOSTS, paths, strict=True)]
        volfile = self.base / f"{self.VOLUME}.vol"
        volfile.write_text(self._volfile(ports, paths, volume_id))
        mnt = self.base / "mnt"
        mnt.mkdir(exist_ok=True)
        pid_file = self.base / "mount.pid"
        log = self.base / "mount.log"
        r = subprocess.run([mount_tool, "--volfile", str(volfile), str(mnt),
                            "-o", ",".join(o for o in (f"log-file={log}", self.options) if o),
                            "--pid-file", str(pid_file)],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode != 0 or not is_mounted(mnt):
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise TargetSkipped(f"pyglfs: pyglfs-mount could not mount (exit {r.returncode}): "
                                f"{msg[-1] if msg else 'no message'}")
        self.pid = int(pid_file.read_text().split()[0])
        return mnt

    def teardown(self) -> None:
        try:
            unmount(self.base / "mnt")
            if self.pid is not None:
                stop_pid(self.pid)
                self.pid = None
        finally:
            for proc, _ in self.bricks:
                stop_pid(proc.pid, proc)
                if proc.stdout is not None:
                    proc.stdout.close()
            self.bricks.clear()
            shutil.rmtree(self.base, ignore_errors=True)


def _inline_volfile(volume: str, ports: list[int], paths: list[Path]) -> str:
    """The client volfile, for a checkout that has no volfile generator."""
    out = []
    for i, (host, port, path) in enumerate(zip(HOSTS, ports, paths, strict=True)):
        out += [f"volume {volume}-client-{i}", "    type protocol/client",
                f"    option remote-host {host}", f"    option remote-port {port}",
                f"    option remote-subvolume {path}", "    option transport-type tcp",
                "end-volume", ""]
    out += [f"volume {volume}-replicate-0", "    type cluster/replicate",
            f"    option afr-pending-xattr {volume}-client-0,{volume}-client-1",
            f"    subvolumes {volume}-client-0 {volume}-client-1", "end-volume", "",
            f"volume {volume}", "    type debug/io-stats",
            f"    subvolumes {volume}-replicate-0", "end-volume", ""]
    return "\n".join(out)


