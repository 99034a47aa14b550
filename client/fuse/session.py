"""The mount's life in trio: start the layer graph, wait for it, mount, serve.

``serve_mount`` is what ``pyglfs-mount`` runs once it is in the background:
it builds the graph from the plan, waits (bounded) until the graph is up, mounts
with pyfuse3, tells the waiting parent, and serves until the kernel ends the
session (umount) or SIGTERM/SIGINT/SIGHUP asks it to, unmounting on the way out.
Teardown runs in reverse of start-up whatever ends the session.

The bridge talks to a ``GraphSwitch`` above the graph. A mount by name also
watches its volfile (``client.volwatch``): when pyglfsd says it changed, the new
graph is started and switched to without unmounting (``client.graphswitch``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pyfuse3
import trio

from pyglfs.client.daemon import mount_device
from pyglfs.client.fuse.base import BridgeConfig
from pyglfs.client.fuse.kernelinval import KernelInvalidator
from pyglfs.client.fuse.operations import FuseOperations
from pyglfs.client.fuse.workers import FuseWorkers, fuse_fds
from pyglfs.client.graph import build_graph
from pyglfs.client.graphswitch import Generation, GraphSwitch, protocol_clients
from pyglfs.client.layer import Layer
from pyglfs.client.mdcache import MdCache
from pyglfs.client.subdir import SubdirError, resolve_subdir
from pyglfs.client.volwatch import VolfileWatcher
from pyglfs.client.writebehind import WriteBehind
from pyglfs.volfiles.model import Graph, VolfileError

if TYPE_CHECKING:
    from pyglfs.client.daemon import Readiness
    from pyglfs.client.mount import MountPlan

log = logging.getLogger(__name__)

SETTLE_TIMEOUT = 1.0
UNMOUNT_SETTLE_TIMEOUT = 5.0
READAHEAD_KB = 1024
# pyfuse3 workers kept waiting for requests, when pyfuse3's own reader lock
# is in use (``workers.FuseWorkers`` not installed). With its default of 1, a
# request that arrives while the others wait on bricks (the RELEASE of one file
# under the CREATE of the next) spawns a worker that ends as soon as it is idle:
# a task spawned and torn down for most created files. With ``FuseWorkers``
# pyfuse3 keeps all FUSE_MAX_TASKS workers (it no longer sees idle ones).
FUSE_MIN_TASKS = 8
FUSE_MAX_TASKS = 99


def _bricks(layer: Layer) -> list[str]:
    return [f"{c.host}:{c.port}:{c.brick_path}" for c in protocol_clients(layer)]


# -- serving --------------------------------------------------------------------
async def serve_mount(plan: MountPlan, readiness: Readiness) -> int:
    """Run the graph and the FUSE session; returns the exit status."""
    client_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    opts = plan.options
    # One list for the write-behind layers of every graph this mount runs, so
    # a switch never lets an operation overtake a write the old graph queued.
    wb_group: list[WriteBehind] = []

    kernel_inval = KernelInvalidator()

    def build(graph: Graph, generation: int) -> Layer:
        cid = client_id if generation == 1 else f"{client_id}-g{generation}"
        top = build_graph(graph, client_id=cid, volume=plan.graph.name,
                          write_behind=opts.write_behind and not opts.read_only,
                          wb_group=wb_group)
        for mdc in _mdcaches(top):
            mdc.kernel_hook = kernel_inval
        return top

    try:
        top = build(plan.graph, 1)
    except (VolfileError, ValueError) as e:
        readiness.failed(f"pyglfs-mount: invalid volfile: {e}")
        return 1
    watch = Generation(1, plan.graph, top)
    switch = GraphSwitch(watch, build, up_timeout=plan.up_timeout)
    config = BridgeConfig(attr_timeout=opts.attribute_timeout,
                          entry_timeout=opts.entry_timeout,
                          negative_timeout=opts.negative_timeout,
                          read_only=opts.read_only,
                          writeback_cache=opts.kernel_writeback_cache)
    async with trio.open_nursery() as nursery:

        def give_up(msg: str) -> int:
            """Before mounting: tell the waiting parent why, stop the graph; the exit status."""
            log.error("%s", msg)
            readiness.failed(msg)
            nursery.cancel_scope.cancel()
            return 1

        await nursery.start(switch.serve)
        if not await watch.wait_up(plan.up_timeout):
            return give_up(f"pyglfs-mount: volume {plan.graph.name} is not reachable within "
                           f"{plan.up_timeout:g} s (bricks: {', '.join(_bricks(top))}); "
                           "nothing mounted")
        await watch.wait_all_bricks(min(SETTLE_TIMEOUT, plan.up_timeout))
        try:
            root_gfid = await resolve_subdir(top, plan.subdir, plan.graph.name)
        except SubdirError as e:
            return give_up(f"pyglfs-mount: {e}; nothing mounted")
        ops = FuseOperations(switch, dataclasses.replace(config, root_gfid=root_gfid))
        kernel_inval.inodes = ops.inodes
        fds_before = fuse_fds()
        try:
            pyfuse3.init(ops, plan.mountpoint, opts.fuse_options(plan.fsname))
        except RuntimeError as e:
            return give_up(f"pyglfs-mount: cannot mount on {plan.mountpoint}: {e}")
        workers = _fuse_workers(fuse_fds() - fds_before)
        log.info("mounted volume %s on %s (volfile %s, pid %d)", plan.graph.name,
                 plan.mountpoint, plan.volfile, os.getpid())
        inval_scope = trio.CancelScope()
        inval_done = trio.Event()
        nursery.start_soon(_serve_in_scope, kernel_inval.serve, inval_scope, inval_done)
        try:
            await nursery.start(_serve_signals, ops, workers)
            if plan.pid_file:
                _write_pid_file(plan.pid_file)
            readiness.ready()
            nursery.start_soon(_raise_readahead, plan.mountpoint, READAHEAD_KB)
            if plan.volume and plan.servers:
                watcher = VolfileWatcher(plan.servers, plan.volume, client_id,
                                         switch.apply_volfile)
                nursery.start_soon(watcher.serve)
            await pyfuse3.main(FUSE_MIN_TASKS, FUSE_MAX_TASKS)
        finally:
            if workers is not None:
                workers.uninstall()
            # No kernel notification may run once the session is gone.
            kernel_inval.stop()
            inval_scope.cancel()
            with trio.CancelScope(shield=True):
                await inval_done.wait()
            pyfuse3.close(unmount=True)
            # Clear the dirty marks this mount left on the bricks, so a clean
            # unmount leaves nothing for heal to look at.
            with trio.CancelScope(shield=True), trio.move_on_after(UNMOUNT_SETTLE_TIMEOUT):
                await ops.layer.settle()
            if plan.pid_file:
                with contextlib.suppress(OSError):
                    os.unlink(plan.pid_file)
            nursery.cancel_scope.cancel()
            log.info("unmounted %s", plan.mountpoint)
    return 0


def _fuse_workers(new_fds: set[int]) -> FuseWorkers | None:
    """The reader hand-off for the session on the one /dev/fuse fd ``pyfuse3.init``
    opened; None (pyfuse3's own loop) when that fd cannot be told apart."""
    if len(new_fds) != 1:
        log.info("FUSE session fd not found (%s): pyfuse3's own reader lock", sorted(new_fds))
        return None
    workers = FuseWorkers(new_fds.pop())
    workers.install()
    return workers


def _mdcaches(layer: Layer) -> list[MdCache]:
    found = [layer] if isinstance(layer, MdCache) else []
    return found + [m for c in layer.children for m in _mdcaches(c)]


async def _serve_in_scope(serve: Callable[[], Awaitable[None]], scope: trio.CancelScope,
                          done: trio.Event) -> None:
    try:
        with scope:
            await serve()
    finally:
        done.set()


async def _raise_readahead(mountpoint: str, kb: int) -> None:
    """Let the kernel read ahead ``kb`` KiB: with its default (128 KiB) every
    sequential read is a 128 KiB round trip, and the bricks' cost per byte is
    several times that of 1 MiB requests.

    The kernel sets the mount's read-ahead when it gets the reply to FUSE_INIT,
    which pyfuse3.main() sends once it runs; so the value is written, and
    written again if INIT put it back, for a bounded second.
    """
    dev = mount_device(mountpoint)
    if dev is None:
        log.debug("no mountinfo line for %s; read-ahead left as it is", mountpoint)
        return
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    for _ in range(50):
        try:
            with open(path) as f:
                current = int(f.read())
            if current != kb:
                with open(path, "w") as f:
                    f.write(str(kb))
        except (OSError, ValueError) as e:
            log.debug("cannot set read-ahead of %s (%s): %s", mountpoint, dev, e)
            return
        await trio.sleep(0.02)
    log.debug("read-ahead of %s (%s) is %d KiB", mountpoint, dev, kb)


def _write_pid_file(path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def _serve_signals(ops: FuseOperations, workers: FuseWorkers | None, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """SIGTERM, SIGINT, SIGHUP: unmount and end; SIGUSR1: log a state dump (as
    glusterfs does), for operators and for tests that follow the inode table."""
    with trio.open_signal_receiver(*_STOP_SIGNALS, signal.SIGUSR1) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGUSR1:
                log.info("statedump: %s", " ".join(f"{k}={v}" for k, v in statedump(ops).items()))
                continue
            log.info("signal %d: unmounting", signum)
            if workers is not None:
                # before terminate(): a worker handed the reader role but not
                # yet waiting on the fd would miss terminate's fd close
                workers.close()
            pyfuse3.terminate()
            return


def statedump(ops: FuseOperations) -> dict[str, int]:
    """What the bridge holds: inodes the kernel references, open files and
    directories, and the process's resident memory."""
    rss_kib = 0
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return {"inodes": len(ops.inodes), "open_files": len(ops.files),
            "open_dirs": len(ops.dirs), "rss_kib": rss_kib}
