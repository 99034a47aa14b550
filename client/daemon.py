"""Daemonizing the mount, as glusterfs does: the command returns once mounted.

``daemonize`` forks before trio starts. The parent waits on a pipe for the
child's word: ``ready`` makes it exit 0 (the mount is in place), an error text
is printed and makes it exit 1, and a pipe closed without a word (the child
died) is reported as such. The child leaves the terminal's session, moves to
``/`` and points its stdio at /dev/null; it tells the parent through the
``Readiness`` it gets back.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

_READY = b"ready\n"
_ERROR = b"error "


class Readiness:
    """How the mount process says it is mounted or why it could not mount.

    Only the first word counts; later calls do nothing. In the foreground there
    is no parent: errors go to stderr and ``ready`` is silent.
    """

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd
        self._done = False

    @property
    def reported(self) -> bool:
        return self._done

    def ready(self) -> None:
        self._send(_READY)

    def failed(self, message: str) -> None:
        if self._fd is None and not self._done:
            print(message, file=sys.stderr, flush=True)
        self._send(_ERROR + message.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n")

    def _send(self, data: bytes) -> None:
        if self._done:
            return
        self._done = True
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, data)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def daemonize(what: str = "mount") -> Readiness:
    """Fork into the background; returns in the child only (see module doc)."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        _parent_wait(r, pid, what)
    os.close(r)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return Readiness(w)


def _parent_wait(r: int, pid: int, what: str) -> NoReturn:
    # One line is the whole word: do not wait for EOF, which a process the
    # child started could hold off.
    word = b""
    while b"\n" not in word:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        word += chunk
    os.close(r)
    if word.startswith(_READY):
        os._exit(0)
    if word.startswith(_ERROR):
        text = word[len(_ERROR):].decode("utf-8", "replace").strip()
        print(text, file=sys.stderr, flush=True)
        os._exit(1)
    status = ""
    with contextlib.suppress(ChildProcessError):
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = f" ({_describe(code)})"
    print(f"pyglfs-mount: the {what} process ended before it was ready{status}; "
          "see its log file", file=sys.stderr, flush=True)
    os._exit(1)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
