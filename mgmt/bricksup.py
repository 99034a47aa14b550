"""Starting and supervising this node's brick daemons (``pyglfs-brickd``).

Each local brick of a started volume has one runner task: it starts the brick
(or adopts one a previous pyglfsd left running), waits for it to exit and starts
it again after a backoff (0.2 s doubling to 10 s, back to 0.2 s after a minute
of good health), logging every crash. A brick keeps its port across restarts so
the published volfile stays right; a port taken meanwhile makes it move to a new
one (logged). Bricks run in their own session so they outlive a pyglfsd restart,
as glusterfsd outlives glusterd; the new pyglfsd adopts a brick whose PID is
alive, runs pyglfs-brickd for that brick and answers on its port.

``start`` returns once the brick listens (or raises BrickStartError with the
brick's own reason); ``stop`` kills by PID (SIGTERM, then SIGKILL after 5 s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from pyglfs.mgmt.volstore import VolumeRecord, VolumeStore
from pyglfs.volfiles.generator import brick_flags

log = logging.getLogger(__name__)

DEFAULT_BRICK_PORT = 49750
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX, HEALTHY_AFTER = 0.2, 10.0, 60.0


class BrickStartError(Exception):
    """A brick did not come up; ``str()`` is the reason for the operator."""


@dataclass
class BrickProc:
    """A local brick this node runs: what ``volume status`` reports about it."""

    volume: str
    index: int
    host: str
    path: str
    port: int = 0
    pid: int = 0
    online: bool = False
    restarts: int = 0
    proc: trio.Process | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.path}"


def brickd_command() -> list[str]:
    exe = Path(sys.executable).parent / "pyglfs-brickd"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pyglfs.brickd.main"]


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def is_brick_process(pid: int, path: str) -> bool:
    """Whether ``pid`` is a pyglfs-brickd serving ``path`` (guards against PID reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return path.encode() in argv and any(b"brickd" in a for a in argv)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # As the brick's listener will: a port with connections in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class BrickSupervisor:
    """Runs this node's bricks; ``serve`` must be running before ``start``."""

    def __init__(self, store: VolumeStore, log_dir: Path, *,
                 base_port: int = DEFAULT_BRICK_PORT,
                 command: Callable[[], list[str]] = brickd_command) -> None:
        self.store = store
        self.log_dir = log_dir
        self.base_port = base_port
        self.command = command
        self.bricks: dict[tuple[str, int], BrickProc] = {}
        self._nursery: trio.Nursery | None = None
        # Told (in a task of its own) when a restarted brick had to move to a new port.
        self.on_port_change: Callable[[str, int, int], Awaitable[None]] | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def get(self, volume: str, index: int) -> BrickProc | None:
        return self.bricks.get((volume, index))

    def _pick_port(self, bp: BrickProc) -> int:
        host, want = bp.host, bp.port
        taken = {b.port for b in self.bricks.values()
                 if b is not bp and b.host == host and b.port}
        if want and want not in taken and port_free(host, want):
            return want
        port = self.base_port
        while port < 65536:
            if port not in taken and port_free(host, port):
                return port
            port += 1
        raise BrickStartError(f"no free port from {self.base_port} on {host}")

    async def start(self, rec: VolumeRecord, index: int, *, adopt: bool = False) -> BrickProc:
        """Run brick ``index`` of ``rec`` (no-op if running); adopt a live one if asked."""
        key = (rec.name, index)
        bp = self.bricks.get(key)
        if bp is not None:
            return bp
        ref = rec.bricks[index]
        bp = BrickProc(rec.name, index, ref.host, ref.path, port=ref.port)
        adopted = 0
        if adopt:
            run = self.store.load_run(rec.name, index)
            if run and pid_alive(run[0]) and is_brick_process(run[0], ref.path) \
                    and await _answers(ref.host, run[1]):
                adopted, bp.port = run
                log.info("brick %s of volume %s adopted: pid %d port %d", ref.path, rec.name,
                         adopted, bp.port)
        assert self._nursery is not None, "BrickSupervisor.serve is not running"
        self.bricks[key] = bp
        try:
            await self._nursery.start(self._run, rec, bp, adopted)
        except BaseException:
            self.bricks.pop(key, None)
            raise
        return bp

    async def stop(self, volume: str, index: int) -> None:
        """Stop the brick by its PID and forget it; a no-op if it is not running."""
        bp = self.bricks.pop((volume, index), None)
        if bp is None:
            return
        bp.scope.cancel()
        pid, proc = bp.pid, bp.proc
        bp.online = False
        if pid and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT) as cs:
                await _wait_exit(pid, proc)
            if cs.cancelled_caught:
                log.warning("brick %s did not stop on SIGTERM: killing pid %d", bp.name, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await _wait_exit(pid, proc)
        await trio.to_thread.run_sync(self.store.clear_run, volume, index)
        log.info("brick %s of volume %s stopped (pid %d)", bp.name, volume, pid)

    async def _run(self, rec: VolumeRecord, bp: BrickProc, adopted: int, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = BACKOFF_MIN
        first = True
        with bp.scope:
            while True:
                began = trio.current_time()
                if adopted:
                    bp.pid, bp.online, bp.proc = adopted, True, None
                    adopted = 0
                    if first:
                        task_status.started()
                        first = False
                    while pid_alive(bp.pid):
                        await trio.sleep(0.5)
                    status: int | None = None
                else:
                    try:
                        await self._spawn(rec, bp)
                    except BrickStartError as exc:
                        if first:
                            raise
                        log.error("brick %s of volume %s failed to restart: %s", bp.name,
                                  rec.name, exc)
                    else:
                        if first:
                            task_status.started()
                            first = False
                        assert bp.proc is not None
                        status = await bp.proc.wait()
                        log.warning("brick %s of volume %s (pid %d) exited with status %s",
                                    bp.name, rec.name, bp.pid, status)
                bp.online = False
                if trio.current_time() - began > HEALTHY_AFTER:
                    backoff = BACKOFF_MIN
                log.warning("restarting brick %s of volume %s in %.1fs", bp.name, rec.name,
                            backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                bp.restarts += 1

    async def _spawn(self, rec: VolumeRecord, bp: BrickProc) -> None:
        port = self._pick_port(bp)
        if bp.port and port != bp.port:
            log.warning("brick %s of volume %s: port %d is taken, moving to %d", bp.name,
                        rec.name, bp.port, port)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logname = f"{rec.name}-{bp.path.strip('/').replace('/', '-') or 'root'}.log"
        cmd = [*self.command(), "--brick", bp.path, "--listen", f"{bp.host}:{port}",
               "--volume", rec.name, "--volume-id", rec.id]
        if rec.username:
            cmd += ["--auth-file", str(self.store.auth_file(rec.name))]
        cmd += brick_flags(rec.options)
        with open(self.log_dir / logname, "ab") as logf:
            proc = await trio.lowlevel.open_process(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf,
                start_new_session=True)
        bp.proc, bp.pid = proc, proc.pid
        assert proc.stdout is not None
        line = b""
        with trio.move_on_after(READY_TIMEOUT):
            while b"\n" not in line:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    break
                line += chunk
        await proc.stdout.aclose()
        text = line.decode(errors="replace").strip()
        if not text.startswith("listening on "):
            if proc.returncode is None and b"\n" not in line:
                proc.kill()
            await proc.wait()
            raise BrickStartError(f"brick {bp.name} did not start: "
                                  f"{_last_line(self.log_dir / logname) or 'no reason given'}")
        old, bp.port = bp.port, int(text.rsplit(":", 1)[1])
        bp.online = True
        if old and old != bp.port and self.on_port_change and self._nursery:
            self._nursery.start_soon(self.on_port_change, rec.name, bp.index, bp.port)
        await trio.to_thread.run_sync(self.store.save_run, rec.name, bp.index, bp.pid, bp.port)
        log.info("brick %s of volume %s started: pid %d port %d", bp.name, rec.name, bp.pid,
                 bp.port)


async def _answers(host: str, port: int) -> bool:
    with trio.move_on_after(2):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


async def _wait_exit(pid: int, proc: trio.Process | None) -> None:
    if proc is not None:
        await proc.wait()
        return
    for _ in range(int(STOP_TIMEOUT * 200) + 1):
        if not pid_alive(pid):
            return
        await trio.sleep(0.05)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].removeprefix("Error: ") if lines else ""
