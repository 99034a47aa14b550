"""Replacing the layer graph under a live mount (a volfile change), as glusterfs does.

The FUSE bridge talks to one ``GraphSwitch`` for the life of the mount; the
switch forwards every operation to the top layer of the graph in service, its
current *generation*. ``switch_to`` builds a graph from a new volfile, starts
it, waits (bounded) until it is up and its bricks are connected, and then points
the switch at it in one step. From then on new operations go to the new graph;
operations already running finish on the old one, which is retired in the
background: once it has no operation in flight its deferred work is settled
(delayed post-ops, eager locks given back) and it is stopped, which closes its
brick connections.

Why this is safe for the bridge's state:

- inode numbers and file handles name inodes by gfid, which is the same in every
  graph, so nothing the kernel holds changes;
- a brick-side open only keeps an unlinked-while-open file alive (data is
  addressed by gfid); every open the old graph holds is opened again on the new
  graph *before* the old graph's connections close, so such a file never loses
  its data; the application sees none of this. A release goes to the graph that
  holds that open (the current one once it has been moved there);
- a new graph that does not build, or is not up within ``up_timeout``, is
  stopped and the mount goes on with the old one; an error saying why is logged
  and nothing reaches applications.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pyglfs.client.layer import EntryReply, Layer
from pyglfs.client.protocol import ProtocolClient
from pyglfs.rpc.brickops import Iatt
from pyglfs.volfiles.model import Graph, VolfileError
from pyglfs.volfiles.parser import parse

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 120.0
SETTLE_TIMEOUT = 10.0
BRICKS_TIMEOUT = 5.0

GraphBuilder = Callable[[Graph, int], Layer]

# What ``switch_to`` did.
SWITCHED, UNCHANGED, INVALID, NOT_UP = "switched", "unchanged", "invalid", "not up"


def protocol_clients(layer: Layer) -> list[ProtocolClient]:
    """The protocol clients (one per brick) at the bottom of ``layer``."""
    if isinstance(layer, ProtocolClient):
        return [layer]
    return [p for c in layer.children for p in protocol_clients(c)]


class Generation(Layer):
    """One graph in a mount's life: stands above its top layer to hear it come up,
    and counts what runs on it (operations in flight, opens it holds)."""

    def __init__(self, number: int, graph: Graph, top: Layer) -> None:
        super().__init__("fuse", [top])
        self.number = number
        self.graph = graph
        self.top = top
        self.changed = trio.Event()
        self.inflight = 0
        self.drained: trio.Event | None = None
        self.opens: dict[bytes, int] = {}
        self.scope = trio.CancelScope()
        self._targets: dict[str, Callable[..., Awaitable[Any]]] = {}

    def __repr__(self) -> str:
        return f"<Generation {self.number} of {self.graph.name}>"

    def child_up(self, child: Layer) -> None:
        self.changed.set()

    def child_down(self, child: Layer, reason: str) -> None:
        self.changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve the graph until ``scope`` is cancelled."""
        with self.scope:
            await self.top.serve(task_status=task_status)

    async def wait_up(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not self.top.is_up:
                await self.changed.wait()
                self.changed = trio.Event()
        return self.top.is_up

    def bricks_up(self) -> int:
        return sum(1 for c in protocol_clients(self.top) if c.is_up)

    async def wait_all_bricks(self, timeout: float, want: int | None = None) -> None:
        """Give bricks still connecting a moment (``want`` of them, default all), so
        that the first changes reach every replica instead of needing heal."""
        clients = protocol_clients(self.top)
        n = len(clients) if want is None else min(want, len(clients))
        with trio.move_on_after(timeout):
            while sum(1 for c in clients if c.is_up) < n:
                await trio.sleep(0.01)

    def target(self, op: str) -> Callable[..., Awaitable[Any]]:
        """Operation ``op`` of the first layer from the top down that does more
        than forward it: a pass-through layer (io-stats, a cache that leaves
        ``op`` alone) would only add a coroutine to every request. The layers of
        a generation never change, so the answer is kept."""
        fn = self._targets.get(op)
        if fn is None:
            fn = self._targets[op] = _resolve(self.top, op)
        return fn

    def opened(self, gfid: bytes) -> None:
        self.opens[gfid] = self.opens.get(gfid, 0) + 1

    def dropped(self, gfid: bytes) -> bool:
        """One open of ``gfid`` less here; False if this graph held none."""
        n = self.opens.get(gfid, 0)
        if n <= 0:
            return False
        if n == 1:
            del self.opens[gfid]
        else:
            self.opens[gfid] = n - 1
        return True

    def done(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self.drained is not None:
            self.drained.set()


def _resolve(layer: Layer, op: str) -> Callable[..., Awaitable[Any]]:
    base = getattr(Layer, op)
    for _ in range(64):
        if (len(layer.children) != 1 or op in vars(layer)
                or getattr(type(layer), op) is not base):
            break
        layer = layer.children[0]
    fn: Callable[..., Awaitable[Any]] = getattr(layer, op)
    return fn


def _forward(op: str) -> Callable[..., Awaitable[Any]]:
    async def forward(self: GraphSwitch, *args: Any, **kwargs: Any) -> Any:
        gen = self.current
        gen.inflight += 1
        try:
            return await gen.target(op)(*args, **kwargs)
        finally:
            gen.done()

    forward.__name__ = op
    forward.__qualname__ = f"GraphSwitch.{op}"
    return forward


class GraphSwitch(Layer):
    """The bridge's layer: the current generation's graph, replaceable at any time.

    ``build(graph, number)`` makes generation ``number``'s layers (wired, not
    started). Run ``serve`` (which starts generation 1) before using it.
    """

    def __init__(self, first: Generation, build: GraphBuilder, *,
                 up_timeout: float = 10.0) -> None:
        super().__init__("graph-switch")
        self.current = first
        self.build = build
        self.up_timeout = up_timeout
        self.retiring: list[Generation] = []
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    @property
    def generation(self) -> int:
        return self.current.number

    @property
    def graph(self) -> Graph:
        return self.current.graph

    @property
    def is_up(self) -> bool:
        return self.current.top.is_up

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.current.run)
            task_status.started()
            await trio.sleep_forever()

    async def settle(self) -> None:
        """Settle the current graph and any still retiring (unmount during a switch)."""
        for gen in [*self.retiring, self.current]:
            await gen.top.settle()

    # -- opens are tracked per generation ---------------------------------
    async def open(self, gfid: bytes, flags: int) -> Iatt:
        gen = self.current
        gen.inflight += 1
        try:
            iatt = await gen.target("open")(gfid, flags)
            gen.opened(gfid)
            return iatt
        finally:
            gen.done()

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0,
                     xattrop: dict[str, bytes] | None = None) -> EntryReply:
        gen = self.current
        gen.inflight += 1
        try:
            reply = await gen.target("create")(pgfid, name, gfid, mode, uid, gid, flags,
                                               xattrop)
            gen.opened(gfid)
            return reply
        finally:
            gen.done()

    async def release(self, gfid: bytes) -> None:
        gen = self.current
        if not gen.dropped(gfid):
            gen = next((g for g in self.retiring if g.dropped(gfid)), gen)
        gen.inflight += 1
        try:
            await gen.target("release")(gfid)
        finally:
            gen.done()

    # -- the switch -------------------------------------------------------
    async def apply_volfile(self, text: str, source: str) -> bool:
        """``switch_to`` the graph of volfile ``text``; False only when the new graph
        did not come up (worth trying again later)."""
        try:
            graph = parse(text, source=source)
        except VolfileError as e:
            log.error("new volfile not used, staying on generation %d: invalid volfile: %s",
                      self.generation, e)
            return True
        return await self.switch_to(graph) != NOT_UP

    async def switch_to(self, graph: Graph) -> str:
        """Serve ``graph`` from now on (SWITCHED). If it cannot be built (INVALID) or
        does not come up (NOT_UP) the old graph stays, with an error logged; a graph
        equal to the current one is UNCHANGED. Switches run one at a time."""
        async with self._lock:
            old = self.current
            if graph == old.graph:
                log.debug("volfile of %s unchanged (generation %d)", graph.name, old.number)
                return UNCHANGED
            number = old.number + 1
            try:
                top = self.build(graph, number)
            except (VolfileError, ValueError) as e:
                log.error("new volfile of %s not used, staying on generation %d: invalid "
                          "volfile: %s", graph.name, old.number, e)
                return INVALID
            gen = Generation(number, graph, top)
            assert self._nursery is not None
            await self._nursery.start(gen.run)
            if not await gen.wait_up(self.up_timeout):
                gen.scope.cancel()
                log.error("new graph of %s (generation %d) not used, staying on generation "
                          "%d: not up within %g s (bricks: %s)", graph.name, number,
                          old.number, self.up_timeout,
                          ", ".join(f"{c.host}:{c.port}" for c in protocol_clients(top)))
                return NOT_UP
            await gen.wait_all_bricks(min(BRICKS_TIMEOUT, self.up_timeout), old.bricks_up())
            self.current = gen
            self.retiring.append(old)
            log.info("switched to new graph (generation %d) of volume %s", number, graph.name)
            self._nursery.start_soon(self._retire, old)
            return SWITCHED

    async def _retire(self, old: Generation) -> None:
        """Move the old graph's opens over, let its operations finish, settle, stop."""
        try:
            with trio.move_on_after(DRAIN_TIMEOUT) as scope:
                while True:
                    await self._move_opens(old)
                    if old.inflight == 0 and not old.opens:
                        break
                    if old.inflight:
                        old.drained = trio.Event()
                        await old.drained.wait()
            if scope.cancelled_caught:
                log.warning("generation %d: %d operations still running after %g s; "
                            "stopping it anyway", old.number, old.inflight, DRAIN_TIMEOUT)
            with trio.move_on_after(SETTLE_TIMEOUT):
                await old.top.settle()
        finally:
            old.scope.cancel()
            self.retiring.remove(old)
            log.info("generation %d stopped", old.number)

    async def _move_opens(self, old: Generation) -> None:
        for gfid, n in list(old.opens.items()):
            for _ in range(n):
                if old.opens.get(gfid, 0) <= 0:
                    break
                new = self.current
                try:
                    await new.top.open(gfid, os.O_RDONLY)
                except OSError as e:
                    old.dropped(gfid)
                    level = logging.DEBUG if e.errno == errno.ENOENT else logging.WARNING
                    log.log(level, "open of gfid=%s not moved to generation %d: %s",
                            gfid.hex(), new.number, e)
                    continue
                if old.dropped(gfid):
                    new.opened(gfid)
                else:
                    # Released (on the old graph) while it was being moved.
                    await new.top.release(gfid)

for _name, _fn in list(vars(Layer).items()):
    if (inspect.iscoroutinefunction(_fn) and _name not in vars(GraphSwitch)
            and _name not in ("serve", "settle")):
        setattr(GraphSwitch, _name, _forward(_name))
