"""Start and stop real ``pyglfs-brickd`` processes for tests.

``start_brickd`` returns once the brick printed its ``listening on`` line, so
the port is known and the brick is ready; whoever starts one stops it by PID
(``BrickdProcess.stop`` / ``kill``), best in a ``finally`` or through the
``brickd_process`` context manager.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BRICKD = [sys.executable, "-m", "pyglfs.brickd.main"]
START_TIMEOUT = 20.0


@dataclass
class BrickdProcess:
    proc: subprocess.Popen[bytes]
    brick: Path
    volume: str
    volume_id: str
    host: str
    port: int
    log_file: Path
    auth: dict[str, str] | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by PID, wait; SIGKILL if it does not exit in time. Returns the status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._reap()

    def kill(self) -> int:
        """SIGKILL by PID and reap."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        return self._reap()

    def _reap(self) -> int:
        rc = self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class BrickdStartError(RuntimeError):
    def __init__(self, message: str, returncode: int | None, stderr: str) -> None:
        super().__init__(f"{message} (exit status {returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def brickd_argv(
    brick: Path, *, volume: str, volume_id: str, host: str, port: int,
    auth_file: Path | None = None, log_file: Path | None = None, log_level: str = "INFO",
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [*BRICKD, "--brick", str(brick), "--listen", f"{host}:{port}", "--volume", volume,
            "--volume-id", volume_id, "--log-level", log_level]
    if auth_file is not None:
        argv += ["--auth-file", str(auth_file)]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    return argv + list(extra)


def start_brickd(
    tmp_path: Path,
    *,
    brick: Path | None = None,
    volume: str = "vol0",
    volume_id: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    auth: dict[str, str] | None = None,
    log_level: str = "INFO",
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> BrickdProcess:
    """Start a brickd serving ``brick`` (default: a new dir under ``tmp_path``).

    Raises BrickdStartError with its stderr when it exits or stays silent
    instead of printing ``listening on HOST:PORT``; the process is reaped then.
    """
    volume_id = volume_id or str(uuid.uuid4())
    if brick is None:
        brick = tmp_path / f"brick-{uuid.uuid4().hex[:8]}"
        brick.mkdir()
    tag = brick.name
    log_file = tmp_path / f"brickd-{tag}.log"
    auth_file = None
    if auth is not None:
        auth_file = tmp_path / f"brickd-{tag}.auth"
        auth_file.write_text(json.dumps(auth))
        auth_file.chmod(0o600)
    argv = brickd_argv(brick, volume=volume, volume_id=volume_id, host=host, port=port,
                       auth_file=auth_file, log_file=log_file, log_level=log_level, extra=extra)
    stderr_file = tmp_path / f"brickd-{tag}.stderr"
    with open(stderr_file, "ab") as err:
        # stderr to a file: a pipe nobody drains could fill and stall the brick.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=env)
    try:
        line = _read_line(proc, timeout)
        if not line.startswith("listening on "):
            raise ValueError(f"unexpected first line {line!r}")
    except BaseException as e:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        raise BrickdStartError(f"pyglfs-brickd did not start: {e}", proc.returncode,
                               _tail(stderr_file) + _tail(log_file)) from None
    prefix = "listening on "
    bound_host, _, port_s = line[len(prefix):].rpartition(":")
    return BrickdProcess(proc, brick, volume, volume_id, bound_host.strip("[]"), int(port_s),
                         log_file, auth, argv)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except FileNotFoundError:
        return ""


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no 'listening on' line in time")
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise EOFError("brickd exited before it was ready")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def run_brickd(argv_tail: Sequence[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run brickd with arguments expected to make it exit at once (refusals)."""
    return subprocess.run([*BRICKD, *argv_tail], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def brickd_process(tmp_path: Path, **kwargs: object) -> Iterator[BrickdProcess]:
    """``start_brickd`` that always stops the brick (by PID) on exit."""
    b = start_brickd(tmp_path, **kwargs)  # type: ignore[arg-type]
    try:
        yield b
    finally:
        b.stop()
