"""Real FUSE mounts of real bricks, for tests/mount.

``start_volume`` starts one ``pyglfs-brickd`` per protocol/client of an example
volfile (on the example's loopback host, port 0) and writes the volfile pointing
at them; ``mount_volume`` runs ``pyglfs-mount`` (daemonized, as a user would)
and returns once it is mounted. Everything started is stopped by PID and every
mount is unmounted with ``fusermount3 -u``, also when the test failed; see
``mounted_volume``. A mount's log is checked on unmount: a traceback or an
unexpected-exception marker (the mount runs with ``PYGLFS_TEST_STRICT=1``)
fails the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers.brickd import BrickdProcess, start_brickd
from helpers.procs import pid_alive
from pyglfs.volfiles.generator import generate, with_options
from pyglfs.volfiles.parser import parse_file

MOUNT_CMD = [sys.executable, "-m", "pyglfs.client.mount"]
EXAMPLES = Path(__file__).resolve().parents[2] / "volfiles" / "examples"
MOUNT_TIMEOUT = 30.0
STRICT_MARKER = "PYGLFS-UNEXPECTED-EXCEPTION"


def fuse_skip_reason() -> str | None:
    """Why real mounts cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "mount tests need root"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing"
    return None


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entry(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The /proc/self/mountinfo entry mounted on ``path`` (the last one), or None."""
    target = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if _unescape(parts[4]) != target:
                continue
            fstype, source, *rest = right.split()
            found = {"fstype": fstype, "source": _unescape(source), "options": parts[5],
                     "super_options": rest[0] if rest else ""}
    return found


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return mount_entry(path) is not None


def wait_for(cond: object, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``cond()`` until true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():  # type: ignore[operator]
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def files_hold(paths: list[Path], want: bytes, timeout: float = 10.0) -> bool:
    """Poll until every file of ``paths`` (one file as each brick stores it) holds
    ``want``: with flush-behind (on by default) close(2) returns before the
    bricks have the data, a round trip later."""

    def held() -> bool:
        try:
            return all(p.read_bytes() == want for p in paths)
        except FileNotFoundError:
            return False

    return wait_for(held, timeout)


@dataclass
class Volume:
    """Bricks started for one volume and the client volfile that reaches them."""

    name: str
    volfile: Path
    bricks: list[BrickdProcess] = field(default_factory=list)

    def stop(self) -> None:
        for b in self.bricks:
            b.stop()


def start_volume(tmp_path: Path, kind: str = "single") -> Volume:
    """Start the bricks of ``volfiles/examples/<kind>.vol`` and write its volfile."""
    graph = parse_file(EXAMPLES / f"{kind}.vol")
    vol = Volume(graph.name, tmp_path / f"{kind}.vol")
    changes: dict[str, dict[str, str]] = {}
    try:
        for i, xl in enumerate(graph.by_type("protocol/client")):
            brick_dir = tmp_path / f"{graph.name}-brick{i}"
            brick_dir.mkdir()
            b = start_brickd(tmp_path, brick=brick_dir, volume=graph.name,
                             host=xl.opt("remote-host") or "127.0.0.1")
            vol.bricks.append(b)
            changes[xl.name] = {"remote-host": b.host, "remote-port": str(b.port),
                                "remote-subvolume": str(brick_dir)}
        vol.volfile.write_text(generate(with_options(graph, changes)))
    except BaseException:
        vol.stop()
        raise
    return vol


class MountFailed(RuntimeError):
    def __init__(self, returncode: int, stderr: str) -> None:
        super().__init__(f"pyglfs-mount exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass
class Mount:
    mountpoint: Path
    pid: int
    log_file: Path

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def unexpected_errors(self) -> str | None:
        """The log's tail when it shows an unexpected exception, else None."""
        text = self.log_text()
        if "Traceback" in text or STRICT_MARKER in text:
            return text[-6000:]
        return None

    def unmount(self, timeout: float = 10.0) -> None:
        """``fusermount3 -u`` (lazy as a last resort), then make sure the PID is gone."""
        try:
            deadline = time.monotonic() + timeout
            while is_mounted(self.mountpoint) and time.monotonic() < deadline:
                r = subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                                   capture_output=True, text=True, timeout=timeout)
                if r.returncode != 0:
                    time.sleep(0.1)
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, timeout=timeout)
        finally:
            self.stop_process()

    def stop_process(self, timeout: float = 10.0) -> None:
        if wait_for(lambda: not pid_alive(self.pid), timeout):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if wait_for(lambda: not pid_alive(self.pid), timeout):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(self.pid), timeout)


def mount_argv(volfile: Path | str, mountpoint: Path | str, options: str = "",
               extra: list[str] | None = None) -> list[str]:
    argv = [*MOUNT_CMD, str(mountpoint), "--volfile", str(volfile)]
    if options:
        argv += ["-o", options]
    return argv + list(extra or [])


def mount_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYGLFS_TEST_STRICT"] = "1"
    env.update(extra or {})
    return env


def mount_volume(volfile: Path, mountpoint: Path, options: str = "", *,
                 log_file: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = MOUNT_TIMEOUT) -> Mount:
    """Run ``pyglfs-mount`` and return once the volume is mounted on ``mountpoint``.

    Raises MountFailed (with its stderr) when the command exits non-zero; it
    must then have mounted nothing.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    log_file = log_file or mountpoint.parent / f"{mountpoint.name}.log"
    pid_file = mountpoint.parent / f"{mountpoint.name}.pid"
    opts = ",".join(o for o in (f"log-file={log_file}", options) if o)
    r = subprocess.run(mount_argv(volfile, mountpoint, opts, ["--pid-file", str(pid_file)]),
                       capture_output=True, text=True, timeout=timeout,
                       env=mount_env(env), stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise MountFailed(r.returncode, r.stderr)
    m = Mount(mountpoint, int(pid_file.read_text()), log_file)
    if not is_mounted(mountpoint):
        m.unmount()
        raise MountFailed(0, "pyglfs-mount said it mounted, but nothing is mounted")
    return m


@contextlib.contextmanager
def mounted_volume(volfile: Path, mountpoint: Path, options: str = "",
                   **kwargs: object) -> Iterator[Mount]:
    """``mount_volume`` that always unmounts and fails on an unexpected exception."""
    m = mount_volume(volfile, mountpoint, options, **kwargs)  # type: ignore[arg-type]
    try:
        yield m
    finally:
        m.unmount()
    bad = m.unexpected_errors()
    if bad is not None:
        raise AssertionError(f"the mount logged an unexpected exception:\n{bad}")
