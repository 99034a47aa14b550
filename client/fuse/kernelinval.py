"""Pass the bricks' cache invalidations on to the kernel's caches.

md-cache drops what a ``cache-invalidation`` event names (a change another
client made); the kernel keeps its own attributes and dentries for the mount's
attribute-timeout and entry-timeout. ``KernelInvalidator`` is md-cache's
``kernel_hook``: for inodes and parent directories the bridge's inode table
holds, it asks the kernel to drop their attributes (``invalidate_inode`` with
``attr_only``) and the named dentries (``invalidate_entry_async``). Gfids the
kernel does not hold cost a dict lookup.

Never from a handler or awaited on the event loop (DESIGN.md, "Facts
measured"): entries go through pyfuse3's own notify thread; inode invalidations,
which can block, are collected and run in batches in one worker thread at a
time. An invalidation of everything (a brick reconnected) is left to the
kernel's timeouts: it would be one call per inode the kernel holds.
"""

from __future__ import annotations

import logging

import pyfuse3
import trio

from pyglfs.client.fuse.inodes import ROOT_INODE, InodeTable, ino_of

log = logging.getLogger(__name__)


def _invalidate_inodes(inos: list[int]) -> None:
    for ino in inos:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as e:  # ENOENT: the kernel forgot it meanwhile
            log.debug("kernel invalidation of inode %d: %s", ino, e)


class KernelInvalidator:
    """Kernel invalidations for md-cache's events; ``serve`` runs the inode ones.

    ``inodes`` is set once the bridge exists, and events reach the kernel only
    while ``serve`` runs (start it after ``pyfuse3.init``).
    """

    def __init__(self) -> None:
        self.inodes: InodeTable | None = None
        self.sent_inodes = 0
        self.sent_entries = 0
        self._pending: set[int] = set()
        self._wake = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self._serving = False

    def _held(self, gfid: bytes) -> int | None:
        assert self.inodes is not None
        ino = ROOT_INODE if gfid == self.inodes.root_gfid else ino_of(gfid)
        try:
            return ino if self.inodes.gfid(ino) == gfid else None
        except OSError:
            return None

    def __call__(self, gfids: list[bytes], entries: list[tuple[bytes, bytes]]) -> None:
        """md-cache's hook: runs on the event loop, never blocks."""
        if not self._serving or self.inodes is None:
            return
        for gfid in gfids:
            ino = self._held(gfid)
            if ino is not None:
                self._pending.add(ino)
        for pgfid, name in entries:
            pino = self._held(pgfid)
            if pino is not None:
                pyfuse3.invalidate_entry_async(pino, name, ignore_enoent=True)
                self.sent_entries += 1
        if self._pending:
            self._wake.set()

    def stop(self) -> None:
        """No more invalidations from now on (the session is about to close)."""
        self._serving = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Send collected inode invalidations until cancelled."""
        self._serving = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                inos, self._pending = list(self._pending), set()
                self.sent_inodes += len(inos)
                await trio.to_thread.run_sync(_invalidate_inodes, inos,
                                              limiter=self._limiter)
        finally:
            self._serving = False
