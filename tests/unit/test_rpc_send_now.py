"""FrameWriter.send_now: a call's request goes out without a coroutine when the
kernel takes it at once, and falls back to ``flush`` in every other case."""

from __future__ import annotations

import socket
from typing import Any

import trio

from pyglfs.rpc.framing import FrameReader, FrameWriter
from pyglfs.rpc.transport import SocketTransport


def _pair() -> tuple[SocketTransport, SocketTransport]:
    s1, s2 = socket.socketpair()
    return SocketTransport(s1), SocketTransport(s2)


async def _read(reader: FrameReader, n: int) -> list[Any]:
    got: list[Any] = []
    with trio.fail_after(10):
        while len(got) < n:
            msgs = await reader.receive()
            assert msgs is not None
            got.extend(msgs)
    return got


async def test_a_small_frame_goes_out_at_once() -> None:
    t1, t2 = _pair()
    try:
        w = FrameWriter(t1, shield=True)
        w.put({"id": 1, "op": "null", "args": {}})
        w.put({"id": 2, "op": "null", "args": {}})
        assert w.send_now()
        assert w._out == [] and w._queued == 0
        assert await _read(FrameReader(t2), 2) == [
            {"id": 1, "op": "null", "args": {}}, {"id": 2, "op": "null", "args": {}}]
        assert w.send_now()  # nothing queued: nothing to do
    finally:
        t1.close()
        t2.close()


async def test_what_the_kernel_does_not_take_is_left_to_flush() -> None:
    t1, t2 = _pair()
    try:
        t1.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        w = FrameWriter(t1, shield=True)
        data = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes now
        msg = {"id": 7, "op": "write", "args": {"offset": 0, "data": data}}
        w.put(msg)
        assert not w.send_now()
        assert w._out, "the rest stays queued"
        got: list[Any] = []
        async with trio.open_nursery() as nursery:
            async def read() -> None:
                got.extend(await _read(FrameReader(t2), 1))

            nursery.start_soon(read)
            with trio.fail_after(10):
                await w.flush()
        assert got[0]["args"]["data"] == data
        assert got == [{"id": 7, "op": "write", "args": {"offset": 0, "data": data}}]
    finally:
        t1.close()
        t2.close()


async def test_another_tasks_send_keeps_the_frame_queued_in_order() -> None:
    t1, t2 = _pair()
    try:
        w = FrameWriter(t1, shield=True)
        w.put({"id": 1})
        w._sending = True  # as while another task waits to send
        assert not w.send_now()
        w._sending = False
        w.put({"id": 2})
        assert w.send_now()
        assert await _read(FrameReader(t2), 2) == [{"id": 1}, {"id": 2}]
    finally:
        t1.close()
        t2.close()


async def test_a_broken_socket_marks_the_writer_broken() -> None:
    t1, t2 = _pair()
    broken: list[BaseException] = []
    w = FrameWriter(t1, shield=True, on_broken=broken.append)
    t2.close()
    w.put({"id": 1, "op": "null", "args": {}})
    assert w.send_now()  # nothing left to send: the failure is recorded instead
    assert w.broken is not None and broken == [w.broken]
    w.put({"id": 2})
    assert not w.send_now() and w._out == []
    await w.flush()  # a no-op once broken
    t1.close()
