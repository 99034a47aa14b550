"""performance/write-behind as a graph layer: built from the volfile, and retired
by a graph switch without letting anything overtake the writes it still queues."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.testing
from test_writebehind import FakeFile, G

from pyglfs.client.graph import build_graph
from pyglfs.client.graphswitch import SWITCHED, Generation, GraphSwitch
from pyglfs.client.layer import Layer
from pyglfs.client.writebehind import DEFAULT_WINDOW, WriteBehind
from pyglfs.volfiles.model import Graph
from pyglfs.volfiles.parser import parse

CLIENT = ("volume v-client-0\n type protocol/client\n option remote-host 127.0.0.2\n"
          " option remote-subvolume /b\nend-volume\n")


def volfile(wb_options: str | None) -> Graph:
    if wb_options is None:
        return parse(CLIENT + "volume v\n type debug/io-stats\n subvolumes v-client-0\n"
                              "end-volume\n")
    return parse(CLIENT + f"volume v-write-behind\n type performance/write-behind\n"
                          f"{wb_options}subvolumes v-client-0\nend-volume\n"
                          "volume v\n type debug/io-stats\n subvolumes v-write-behind\n"
                          "end-volume\n")


def write_behinds(layer: Layer) -> list[WriteBehind]:
    found = [layer] if isinstance(layer, WriteBehind) else []
    return found + [w for c in layer.children for w in write_behinds(c)]


def test_the_volfile_translator_is_the_write_behind_layer() -> None:
    (wb,) = write_behinds(build_graph(volfile(" option cache-size 2MB\n"), client_id="c"))
    assert wb.name == "v-write-behind" and wb.window == 2 << 20 and wb.queue
    (wb,) = write_behinds(build_graph(volfile(""), client_id="c"))
    assert wb.window == DEFAULT_WINDOW
    (wb,) = write_behinds(build_graph(volfile(""), client_id="c", write_behind=False))
    assert not wb.queue
    assert write_behinds(build_graph(volfile(None), client_id="c")) == []


def test_a_mount_graph_without_the_translator_gets_a_write_through_layer() -> None:
    group: list[WriteBehind] = []
    top = build_graph(volfile(None), client_id="c", wb_group=group)
    assert isinstance(top, WriteBehind) and not top.queue and top.child.name == "v"
    wb = write_behinds(build_graph(volfile(""), client_id="c", wb_group=group))
    assert group == [top, *wb] and wb[0].queue


class Gen:
    """Builds a write-behind layer per generation over fakes sharing one file."""

    def __init__(self, data: dict[bytes, bytearray], group: list[WriteBehind]) -> None:
        self.data = data
        self.group = group
        self.fakes: list[FakeFile] = []
        self.queue_next = True

    def __call__(self, graph: Graph, number: int) -> Layer:
        fake = FakeFile()
        fake.data = self.data
        self.fakes.append(fake)
        return WriteBehind(f"wb{number}", fake, queue=self.queue_next, group=self.group)


@pytest.mark.parametrize("new_queues", [True, False], ids=["wb-on", "wb-off"])
async def test_a_switch_with_writes_queued(nursery: trio.Nursery, new_queues: bool) -> None:
    data: dict[bytes, bytearray] = {}
    group: list[WriteBehind] = []
    gen = Gen(data, group)
    switch = GraphSwitch(Generation(1, volfile(""), gen(volfile(""), 1)), gen)
    await nursery.start(switch.serve)
    old = gen.fakes[0]
    with trio.fail_after(5):
        await switch.write(G, 0, b"old-data")
        assert old.applied == []  # queued in generation 1, whose bricks hold it back
        gen.queue_next = new_queues
        assert await switch.switch_to(volfile(" option cache-size 1MB\n")) == SWITCHED
        new = gen.fakes[1]
        new.gate.set()
        done: list[str] = []

        async def later(op: str, *args: Any) -> None:
            await getattr(switch, op)(*args)
            done.append(op)

        nursery.start_soon(later, "write", G, 0, b"new")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(later, "flush", G)
        await trio.testing.wait_all_tasks_blocked()
        # Neither the overlapping write nor close may pass the old graph's write.
        assert new.applied == [] and new.flushed == 0 and old.flushed == 0
        assert "flush" not in done
        old.gate.set()
        while len(done) < 2 or switch.retiring:
            await trio.sleep(0.01)
    assert bytes(data[G]) == b"new-data"
    assert old.applied == [(0, b"old-data")] and new.applied == [(0, b"new")]
    assert new.flushed == 1
    assert group == [switch.current.top]  # generation 1 settled, stopped, left the group


async def test_a_write_cut_off_by_a_stopped_graph_fails_the_next_close() -> None:
    group: list[WriteBehind] = []
    old, new = FakeFile(), FakeFile()
    wb_old = WriteBehind("wb1", old, group=group)
    wb_new = WriteBehind("wb2", new, group=group)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def serve_old() -> None:
                with scope:
                    await wb_old.serve_writes()

            nursery.start_soon(serve_old)
            await trio.testing.wait_all_tasks_blocked()
            await wb_old.write(G, 0, b"never lands")
            scope.cancel()  # the settle timed out: generation 1 is stopped
        assert group == [wb_new] and old.applied == []
        new.gate.set()
        with pytest.raises(OSError) as ei:
            await wb_new.flush(G)
        assert ei.value.errno == errno.EIO
        await wb_new.flush(G)  # reported once
        assert new.flushed == 1
