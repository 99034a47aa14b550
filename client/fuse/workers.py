"""Who reads the next FUSE request: pyfuse3's workers without a hand-off per request.

pyfuse3's workers take turns on ``/dev/fuse`` through a ``trio.Lock``: the worker
woken by a request releases the lock before handling it, which wakes the next
worker, who then parks on the fd. For the requests the mount answers itself
(a cached lookup or getattr, the local ``getxattr``, a queued write or flush:
most of a small-file create) that is a second task step and a second pass of
trio's event loop per request, for nothing: the handler never waits.

``FuseWorkers`` replaces pyfuse3's ``_wait_fuse_readable`` (a module global
its Cython loop looks up on every call) with a reader role that is handed on
only when needed: the worker that reads a request keeps the role while its
handler runs, and ``fuse_handler`` calls ``handler_blocks`` when the handler
is about to wait (on a brick), which gives the role to an idle worker. A
handler that finishes without waiting leaves its worker the reader, which
waits on the fd again at once; when the next request is already there (in a
small-file create loop three times out of four: the application runs on
another core), it reads it without a pass of the event loop, ``BURST`` times
in a row at most.

Contract kept from pyfuse3: only the reader waits on the fd, and it reads right
after its wait returns True (no await in between), so no read ever blocks the
event loop; a request that waits never keeps others from being read; the loop
ends on ``pyfuse3.terminate`` (the fd is closed under the waiting reader) and
on unmount (the reader's read fails and its worker ends). pyfuse3 no longer
sees idle workers, so it starts one per request until it has ``max_tasks``;
idle workers are woken last-in-first-out, those that never read last, so only
as many of them ever read (and hold a receive buffer) as requests were in
flight at once.
"""

from __future__ import annotations

import logging
import os
import select
from typing import Any

import pyfuse3
import trio

log = logging.getLogger(__name__)

# Requests a reader may take from /dev/fuse without yielding to the event loop
# when the next one is already waiting; then it waits through trio, so brick
# replies and timers are served between bursts.
BURST = 8

_active: FuseWorkers | None = None


def fuse_fds() -> set[int]:
    """This process's open file descriptors on /dev/fuse."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.add(int(name))
        except OSError:
            continue
    return found


class FuseWorkers:
    """The reader role over pyfuse3's workers for the session on ``fd``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        self.reader: trio.lowlevel.Task | None = None
        self._idle: list[trio.lowlevel.Task] = []
        # workers that read a request whose handler waited: all that ever park
        # after reading one
        self._read: set[trio.lowlevel.Task] = set()
        self._saved: Any = None
        self._watch: _ExitWatch | None = None
        self._burst = 0
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._poll = poller.poll

    # -- pyfuse3's hook ------------------------------------------------------
    async def wait_fuse_readable(self) -> bool:
        """pyfuse3's contract: True when the fd is readable and the caller may
        read it now, False when the session loop should end."""
        if self.closed:
            return False
        task = trio.lowlevel.current_task()
        if self.reader is None:
            self.reader = task
        elif self.reader is not task:
            await self._park_idle(task)
            if self.closed:
                return False
        if self._burst < BURST and self._poll(0):
            self._burst += 1
            return True
        self._burst = 0
        try:
            await trio.lowlevel.wait_readable(self.fd)
        except trio.ClosedResourceError:
            self.close()
            return False
        return True

    async def _park_idle(self, task: trio.lowlevel.Task) -> None:
        if task in self._read:
            self._idle.append(task)
        else:
            # a worker that never read goes last: every worker that reads keeps
            # a receive buffer (1 MiB once a big write came through it)
            self._idle.insert(0, task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            if task in self._idle:
                self._idle.remove(task)
            if self.reader is task:
                self._pass_on()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _pass_on(self) -> None:
        """Give the reader role to the idle worker that parked last, if any."""
        if self._idle:
            task = self._idle.pop()
            self.reader = task
            trio.lowlevel.reschedule(task)
        else:
            self.reader = None

    # -- events --------------------------------------------------------------
    def handler_blocks(self) -> None:
        """The current task's handler is about to wait: let another worker read."""
        task = trio.lowlevel.current_task()
        if self.reader is task:
            self._read.add(task)
            self._pass_on()

    def close(self) -> None:
        """The session ends: every idle worker's wait returns False."""
        self.closed = True
        idle, self._idle = self._idle, []
        self.reader = None
        for task in idle:
            trio.lowlevel.reschedule(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        """A worker ends only with the session (an unmount makes its read fail):
        the idle ones must not wait for a turn that never comes."""
        if not self.closed and task.name.startswith("pyfuse-"):
            self.close()

    # -- installing ----------------------------------------------------------
    def install(self) -> None:
        """Take over from pyfuse3's reader lock; call in trio, before ``pyfuse3.main``."""
        global _active
        self._saved = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
        pyfuse3._wait_fuse_readable = self.wait_fuse_readable  # type: ignore[attr-defined]
        self._watch = _ExitWatch(self)
        trio.lowlevel.add_instrument(self._watch)
        _active = self

    def uninstall(self) -> None:
        """Give pyfuse3 its own hook back; call in trio once ``pyfuse3.main`` returned."""
        global _active
        if self._saved is not None:
            pyfuse3._wait_fuse_readable = self._saved  # type: ignore[attr-defined]
            self._saved = None
        if self._watch is not None:
            trio.lowlevel.remove_instrument(self._watch)
            self._watch = None
        if _active is self:
            _active = None
        self.close()


class _ExitWatch(trio.abc.Instrument):
    """Tells ``FuseWorkers`` when a task ends (trio calls only the hooks defined)."""

    def __init__(self, workers: FuseWorkers) -> None:
        self.task_exited = workers.task_exited  # type: ignore[method-assign]


def handler_blocks() -> None:
    """The running handler is about to wait: another worker may read meanwhile."""
    if _active is not None:
        _active.handler_blocks()
