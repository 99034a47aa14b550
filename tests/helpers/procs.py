"""Processes the tests started: alive or not, and stopping them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (and is reaped if it is ours)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_pids(pids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGTERM each live PID, wait up to ``timeout`` for each, SIGKILL what is left."""
    pids = list(pids)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    for pid in pids:
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
