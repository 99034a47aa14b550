"""Daemonizing the mount, as glusterfs does: the command returns once mounted.

``daemonize`` forks before trio starts. The parent waits on a pipe for the
child's word: ``ready`` makes it exit 0 (the mount is in place), an error text
is printed and makes it exit 1, and a pipe closed without a word (the child
died) is reported as such. The child leaves the terminal's session, moves to
``/`` and points its stdio at /dev/null; it tells the parent through the
``Readiness`` it gets back.

``auto_unmount`` is kept as glusterfs keeps it, by a guard process of our own
(``Readiness.guard_unmount``): libfuse's watcher (fusermount3 3.14) gives up on
a mount whose daemon was killed when its probe of the mount point races the
kernel's abort of the dead connection. The kernel releases the dead daemon's
control socket, which wakes fusermount3, before its /dev/fuse; an OPENDIR sent
in between ends with ECONNABORTED rather than ENOTCONN, which fusermount3 reads
as "not dead" and leaves the mount in place (about 1 kill in 15 on a busy
machine). The guard needs no probe: it knows the device of the mount it guards.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
from typing import NoReturn

_READY = b"ready\n"
_ERROR = b"error "
_ARM = b"armed\n"
_DISARM = b"disarmed\n"
_GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE)
UNMOUNT_CMD = ("fusermount3", "-u", "-z")


class Readiness:
    """How the mount process says it is mounted or why it could not mount.

    Only the first word counts; later calls do nothing. In the foreground there
    is no parent: errors go to stderr and ``ready`` is silent.
    """

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd
        self._done = False
        self._guard: int | None = None
        self.guard_pid: int | None = None

    @property
    def reported(self) -> bool:
        return self._done

    def ready(self) -> None:
        """The mount is in place: tell the parent, and arm the unmount guard."""
        if self._guard is not None:
            with contextlib.suppress(OSError):
                os.write(self._guard, _ARM)
        self._send(_READY)

    def guard_unmount(self, mountpoint: str) -> None:
        """Have ``mountpoint`` unmounted (lazily) if this process ends while the
        mount it makes there is still in place: the ``auto_unmount`` option.

        Call once, before trio starts (it forks). The guard is a process of its
        own session that ignores the signals a shell or an init system sends to
        a group; it learns the mount's device at ``ready`` and waits for this
        process's end (the close of a pipe, however it ends). A process that
        ends by exiting (not killed) has unmounted already or meant to leave the
        mount: it disarms the guard on the way out. Otherwise the guard unmounts
        a mount on ``mountpoint`` that has that device, never another one.
        """
        if self._guard is not None:
            return
        r, w = os.pipe()
        mountpoint = os.path.abspath(mountpoint)
        # Blocked across the fork: until the guard has its own session and
        # ignores them, a signal to this process's group would end it too.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                _guard(r, mountpoint, mask)
            finally:
                os._exit(0)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(r)
        self._guard, self.guard_pid = w, pid
        atexit.register(self._disarm)

    def _disarm(self) -> None:
        if self._guard is not None:
            with contextlib.suppress(OSError):
                os.write(self._guard, _DISARM)

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


def _guard(r: int, mountpoint: str, mask: set[int | signal.Signals]) -> None:
    """The guard process (see ``Readiness.guard_unmount``)."""
    for sig in _GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # which also drops one already pending
    os.setsid()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # Nothing of the mount's but the pipe: its other fds must close when it ends.
    os.closerange(3, r)
    os.closerange(r + 1, os.sysconf("SC_OPEN_MAX"))
    device = None
    heard = b""
    while chunk := os.read(r, 64):
        heard += chunk
        if _DISARM in heard:
            return
        if device is None and _ARM in heard:
            device = mount_device(mountpoint)
    if device is not None and mount_device(mountpoint) == device:
        subprocess.run([*UNMOUNT_CMD, mountpoint], timeout=60, check=False)


def mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the newest mount on ``mountpoint``, from our mountinfo.

    Read from /proc rather than by stat(): a FUSE mount whose daemon is not
    serving (not yet, or never again) would leave a stat waiting.
    """
    fields = _newest_mount(mountpoint)
    return fields[2] if fields else None


def mount_fstype(mountpoint: str) -> str | None:
    """The type (``fuse.pyglfs``) of the newest mount on ``mountpoint``, read
    as ``mount_device`` reads it; None when nothing is mounted there."""
    fields = _newest_mount(mountpoint)
    if not fields or "-" not in fields[6:]:
        return None
    sep = fields.index("-", 6)
    return fields[sep + 1] if sep + 1 < len(fields) else None


def _newest_mount(mountpoint: str) -> list[str] | None:
    """The mountinfo fields of the newest mount on ``mountpoint``."""
    # realpath of the parent only: resolving the mount point itself would stat it
    parent, name = os.path.split(os.path.abspath(mountpoint).rstrip("/") or "/")
    target = os.path.join(os.path.realpath(parent), name)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape_octal(fields[4]) == target:
                found = fields
    return found


def _unescape_octal(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
