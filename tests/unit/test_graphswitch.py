"""GraphSwitch: the bridge's layer swaps graphs without losing operations or opens.

The graphs here are fake top layers that record what reaches them; the real
graphs (replicate over bricks) are exercised by the mount test.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import pytest
import trio

from pyglfs.client.graphswitch import (
    INVALID,
    NOT_UP,
    SWITCHED,
    UNCHANGED,
    Generation,
    GraphSwitch,
)
from pyglfs.client.layer import Layer
from pyglfs.rpc.brickops import Iatt
from pyglfs.volfiles.model import Graph, VolfileError
from pyglfs.volfiles.parser import parse

G = b"\x11" * 16


def volfile(ping: str) -> str:
    return ("volume v-client-0\n type protocol/client\n option remote-host 127.0.0.2\n"
            f" option remote-subvolume /b\n option ping-timeout {ping}\nend-volume\n")


def iatt(gfid: bytes) -> Iatt:
    return Iatt(gfid, 1, 0o100644, 1, 0, 0, 0, 0, 0, 0, 0, 0)


class FakeTop(Layer):
    def __init__(self, name: str, up: bool = True) -> None:
        super().__init__(name)
        self.up = up
        self.calls: list[tuple[str, Any]] = []
        self.gate: trio.Event | None = None
        self.running = False
        self.stopped = False
        self.settled = False

    @property
    def is_up(self) -> bool:
        return self.up

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.running = False
            self.stopped = True

    async def settle(self) -> None:
        self.settled = True

    async def stat(self, gfid: bytes) -> Iatt:
        self.calls.append(("stat", gfid))
        if self.gate is not None:
            await self.gate.wait()
        return iatt(gfid)

    async def open(self, gfid: bytes, flags: int) -> Iatt:
        self.calls.append(("open", gfid))
        return iatt(gfid)

    async def release(self, gfid: bytes) -> None:
        self.calls.append(("release", gfid))


class Builder:
    def __init__(self) -> None:
        self.tops: list[FakeTop] = []
        self.up = True

    def __call__(self, graph: Graph, number: int) -> Layer:
        if graph.top.options.get("ping-timeout") == "bad":
            raise VolfileError("volume 'v-client-0': bad ping-timeout")
        top = FakeTop(f"g{number}", self.up)
        self.tops.append(top)
        return top


async def started(nursery: trio.Nursery, builder: Builder) -> GraphSwitch:
    first = FakeTop("g1")
    builder.tops.append(first)
    switch = GraphSwitch(Generation(1, parse(volfile("10")), first), builder, up_timeout=3)
    await nursery.start(switch.serve)
    return switch


async def wait_for(cond: Any) -> None:
    with trio.fail_after(5):
        while not cond():
            await trio.sleep(0.01)


async def test_in_flight_ops_finish_on_the_old_graph_and_new_ones_go_to_the_new(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    b = Builder()
    sw = await started(nursery, b)
    g1 = b.tops[0]
    g1.gate = trio.Event()
    results: list[Iatt] = []

    async def slow_stat() -> None:
        results.append(await sw.stat(G))

    nursery.start_soon(slow_stat)
    await wait_for(lambda: g1.calls)
    with caplog.at_level(logging.INFO, "pyglfs.client.graphswitch"):
        assert await sw.switch_to(parse(volfile("5"))) == SWITCHED
    assert "switched to new graph (generation 2) of volume v-client-0" in caplog.text
    g2 = b.tops[1]
    assert sw.generation == 2 and g2.running
    await sw.stat(G)
    assert g2.calls == [("stat", G)]
    # The old graph waits for its operation before it is settled and stopped.
    await trio.sleep(0.05)
    assert g1.running and not g1.settled
    g1.gate.set()
    await wait_for(lambda: g1.stopped)
    assert g1.settled and results == [iatt(G)] and sw.retiring == []


async def test_opens_move_to_the_new_graph_and_releases_follow_them(
        nursery: trio.Nursery) -> None:
    b = Builder()
    sw = await started(nursery, b)
    g1 = b.tops[0]
    await sw.open(G, os.O_RDWR)
    await sw.open(G, os.O_RDONLY)
    assert await sw.switch_to(parse(volfile("5"))) == SWITCHED
    g2 = b.tops[1]
    await wait_for(lambda: g1.stopped)
    assert g2.calls == [("open", G), ("open", G)]
    await sw.release(G)
    await sw.release(G)
    assert g2.calls[2:] == [("release", G), ("release", G)]
    assert [c for c in g1.calls if c[0] == "release"] == []
    assert sw.current.opens == {}


async def test_a_graph_that_cannot_be_used_leaves_the_old_one_serving(
        nursery: trio.Nursery, autojump_clock: trio.abc.Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    b = Builder()
    sw = await started(nursery, b)
    assert await sw.switch_to(parse(volfile("10"))) == UNCHANGED
    assert await sw.switch_to(parse(volfile("bad"))) == INVALID
    assert await sw.apply_volfile("volume broken", "test") is True
    assert "invalid volfile" in caplog.text
    b.up = False
    assert await sw.switch_to(parse(volfile("5"))) == NOT_UP
    assert "not up within 3 s" in caplog.text
    await wait_for(lambda: b.tops[1].stopped)
    assert await sw.apply_volfile(volfile("5"), "test") is False
    assert sw.generation == 1 and b.tops[0].running
    await sw.stat(G)
    assert b.tops[0].calls == [("stat", G)]


class CountingPassThrough(Layer):
    """A layer that forwards ``stat`` itself (does more than the default), and
    notes which function awaited it."""

    def __init__(self, name: str, children: list[Layer]) -> None:
        super().__init__(name, children)
        self.callers: list[str] = []

    async def stat(self, gfid: bytes) -> Iatt:
        caller = sys._getframe(1)
        self.callers.append(caller.f_code.co_qualname)
        return await self.child.stat(gfid)


async def test_ops_skip_layers_that_only_forward_them() -> None:
    leaf = FakeTop("leaf")
    counting = CountingPassThrough("counting", [leaf])
    top = Layer("io-stats", [Layer("plain", [counting])])
    gen = Generation(1, parse(volfile("10")), top)
    assert gen.target("stat").__self__ is counting  # type: ignore[attr-defined]
    assert gen.target("open").__self__ is leaf  # type: ignore[attr-defined]
    switch = GraphSwitch(gen, lambda graph, n: FakeTop("unused"))
    assert await switch.stat(G) == iatt(G)
    # Awaited by the switch itself, not through the two plain layers above.
    assert counting.callers == ["_forward.<locals>.forward"]
    assert leaf.calls == [("stat", G)]
    await switch.open(G, os.O_RDONLY)
    await switch.release(G)
    assert leaf.calls[1:] == [("open", G), ("release", G)]
    assert gen.inflight == 0 and not gen.opens


async def test_an_op_replaced_on_a_layer_instance_is_not_skipped() -> None:
    leaf = FakeTop("leaf")
    middle = Layer("plain", [leaf])
    seen: list[bytes] = []

    async def stat(gfid: bytes) -> Iatt:
        seen.append(gfid)
        return await leaf.stat(gfid)

    middle.stat = stat  # type: ignore[method-assign]
    gen = Generation(1, parse(volfile("10")), Layer("io-stats", [middle]))
    switch = GraphSwitch(gen, lambda graph, n: FakeTop("unused"))
    await switch.stat(G)
    assert seen == [G] and leaf.calls == [("stat", G)]
