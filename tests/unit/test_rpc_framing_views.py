"""A write request's bulk data reaches its receiver as a view of the buffer the
frame was received into (rpc/framing.py ``VIEW_OPS``), not as a copy.

What must hold: the view has exactly the bytes sent, however the sender's
bytes were cut; a buffer is never refilled while a view of it is alive (a
brick may still be writing the data of one request when the next arrives), and
is reused once none is; only ``write`` requests get views (replies, events and
other ops decode as before); frames that merely look like such a request
(duplicate keys, a wrong length field, garbage) decode exactly as msgpack
decodes them, or fail as before; an announced length over the maximum is still
refused before anything is allocated.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack
import pytest
import trio
import trio.lowlevel
import trio.testing

from pyglfs.rpc import framing
from pyglfs.rpc.brickops import MAX_IO, ArgError, validate
from pyglfs.rpc.errors import FrameTooLarge, ProtocolError
from pyglfs.rpc.framing import FrameReader, FrameWriter
from pyglfs.rpc.transport import SocketTransport

MIB = 1 << 20


def _pair() -> tuple[SocketTransport, SocketTransport]:
    s1, s2 = socket.socketpair()
    return SocketTransport(s1), SocketTransport(s2)


def write_req(i: int, size: int = MIB, **extra: Any) -> dict[str, Any]:
    args = {"gfid": bytes([i % 256]) * 16, "offset": i * size, **extra,
            "data": bytes([i % 251]) * (size - 1) + b"\xc6"}
    return {"id": i, "op": "write", "args": args}


async def exchange(frames: list[bytes], cut: int = 0) -> list[Any]:
    """Sends raw ``frames`` (in pieces of ``cut`` bytes, with a yield between
    pieces, when cut > 0) and returns every message the reader decodes."""
    t1, t2 = _pair()
    got: list[Any] = []
    failed: ProtocolError | None = None
    try:
        async with trio.open_nursery() as nursery:
            async def send() -> None:
                data = b"".join(frames)
                step = cut or len(data)
                for pos in range(0, len(data), step):
                    await t1.send_all(data[pos:pos + step])
                    await trio.lowlevel.checkpoint()
                t1.socket.shutdown(socket.SHUT_WR)

            nursery.start_soon(send)
            reader = FrameReader(t2)
            try:
                with trio.fail_after(20):
                    while (batch := await reader.receive()) is not None:
                        got.extend(batch)
            except ProtocolError as e:
                failed = e
                t2.close()
                nursery.cancel_scope.cancel()
    finally:
        t1.close()
        t2.close()
    if failed is not None:
        raise failed
    return got


def frame_of(obj: Any) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


def plain(msg: Any) -> Any:
    """``msg`` with memoryviews turned into bytes, to compare with msgpack's decode."""
    if isinstance(msg, dict):
        return {k: plain(v) for k, v in msg.items()}
    if isinstance(msg, list):
        return [plain(v) for v in msg]
    return bytes(msg) if isinstance(msg, memoryview) else msg


async def send_with_writer(t: SocketTransport, msgs: list[Any]) -> None:
    """Each of ``msgs`` through a FrameWriter (bulk data in a buffer of its own),
    then the end of the stream."""
    writer = FrameWriter(t, shield=True)
    for m in msgs:
        await writer.send(m)
    t.socket.shutdown(socket.SHUT_WR)


async def test_write_data_arrives_as_a_view_that_outlives_later_frames() -> None:
    t1, t2 = _pair()
    msgs = [write_req(i, xattrop={"trusted.afr.v-client-0": b"\0" * 12} if i % 2 else {})
            for i in range(12)]
    held: list[Any] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_with_writer, t1, msgs)
            reader = FrameReader(t2)
            with trio.fail_after(20):
                while (batch := await reader.receive()) is not None:
                    held.extend(batch)
                    # Hold on to the first three (a brick still writing them).
                    if len(held) > 3:
                        del held[3:]
                        assert len(reader._bigs) <= framing._POOL
                    for m in held:
                        i = m["id"]
                        assert isinstance(m["args"]["data"], memoryview)
                        assert m["args"]["data"] == msgs[i]["args"]["data"]
                        assert m == {**msgs[i], "args": {**msgs[i]["args"],
                                                         "data": m["args"]["data"]}}
    finally:
        t1.close()
        t2.close()
    assert [m["id"] for m in held] == [0, 1, 2]
    # Three buffers stay pinned by the held views; the other frames shared one.
    assert len(reader._bigs) == framing._POOL


async def test_an_idle_buffer_is_reused() -> None:
    got = await exchange([frame_of(write_req(i)) for i in range(6)])
    assert [plain(m) for m in got] == [write_req(i) for i in range(6)]
    t1, t2 = _pair()
    seen = set()
    try:
        async with trio.open_nursery() as nursery:
            async def send() -> None:
                for i in range(5):
                    await t1.send_all(frame_of(write_req(i)))

            nursery.start_soon(send)
            reader = FrameReader(t2)
            for i in range(5):
                with trio.fail_after(10):
                    (m,) = await reader.receive() or [None]
                data = m["args"]["data"]
                same = data == write_req(i)["args"]["data"]
                seen.add(id(data.obj))
                del m, data  # the brick is done with the request
                assert same
    finally:
        t1.close()
        t2.close()
    assert len(seen) == 1


@pytest.mark.parametrize("cut", [1000, 65_536, 300_001])
async def test_pieces_of_any_size_give_the_same_views(cut: int) -> None:
    msgs = [write_req(i, size) for i, size in enumerate([MIB, 70_000, 3 * MIB + 7, 65_536])]
    got = await exchange([frame_of(m) for m in msgs], cut)
    # Frames bigger than one receive always take the big-frame path; smaller
    # ones may come whole in one receive and are decoded with a copy.
    big = [len(m["args"]["data"]) > framing.RECEIVE_SIZE + 65_536 for m in msgs]
    assert [isinstance(m["args"]["data"], memoryview) for m in got if big[m["id"]]] == [True] * 2
    assert [plain(m) for m in got] == msgs


@pytest.mark.parametrize("msg", [
    {"id": 1, "ok": {"data": b"r" * MIB}},
    {"event": "e", "args": {"data": b"\0" * 200_000}},
    {"id": 2, "op": "setxattr", "args": {"gfid": b"g" * 16, "name": "user.x",
                                          "value": b"v" * 100_000}},
    {"id": 3, "op": "write", "args": {"data": b"d" * 100_000, "gfid": b"g" * 16, "offset": 0}},
    {"id": 4, "args": {"gfid": b"g" * 16, "data": b"d" * 100_000}, "op": "write"},
    {"id": 5, "op": "write", "args": {"gfid": b"g" * 16, "data": [b"d" * 100_000]}},
])
async def test_other_messages_decode_as_before(msg: dict[str, Any]) -> None:
    (got,) = await exchange([frame_of(msg)])
    assert got == msg
    assert not any(isinstance(v, memoryview) for v in got.get("args", got.get("ok")).values())


def _dup_key_frame() -> bytes:
    # {"id": 1, "op": "write", "args": {"data": b"", "gfid": g, "data": <blob>}}
    # as raw msgpack: a map with a repeated key, which a dict cannot show in order.
    blob = b"z" * 100_000
    inner = (b"\x83" + msgpack.packb("data") + msgpack.packb(b"")
             + msgpack.packb("gfid") + msgpack.packb(b"g" * 16)
             + msgpack.packb("data") + b"\xc6" + struct.pack(">I", len(blob)) + blob)
    body = (b"\x83" + msgpack.packb("id") + msgpack.packb(1) + msgpack.packb("op")
            + msgpack.packb("write") + msgpack.packb("args") + inner)
    return struct.pack(">I", len(body)) + body


async def test_look_alikes_decode_exactly_as_msgpack_does() -> None:
    dup = _dup_key_frame()
    (got,) = await exchange([dup])
    assert got == msgpack.unpackb(dup[4:])
    assert type(got["args"]["data"]) is bytes
    # A 0xc6 in the head whose length field does not fit is skipped.
    tricky = write_req(7, gfid=b"\xc6" * 16)
    (got,) = await exchange([frame_of(tricky)])
    assert plain(got) == tricky and isinstance(got["args"]["data"], memoryview)


async def test_garbage_and_oversized_frames_still_fail_cleanly() -> None:
    body = b"\x83" + b"\xc6" * 200_000
    with pytest.raises(ProtocolError):
        await exchange([struct.pack(">I", len(body)) + body])
    # A frame that ends in a bin32 of the right length but whose head is not
    # msgpack.
    junk = b"\xc1\xc1\xc1" + b"\xc6" + struct.pack(">I", 100_000) + b"x" * 100_000
    with pytest.raises(ProtocolError):
        await exchange([struct.pack(">I", len(junk)) + junk])
    t1, t2 = _pair()
    try:
        await t1.send_all(struct.pack(">I", 64 * MIB) + b"\xc6")
        with pytest.raises(FrameTooLarge):
            await FrameReader(t2).receive()
    finally:
        t1.close()
        t2.close()


def test_the_brick_accepts_a_view_as_write_data_and_nothing_else_new() -> None:
    args = {"gfid": b"g" * 16, "offset": 0, "data": memoryview(bytearray(b"x" * 10))[2:]}
    assert validate("write", args) is args
    for bad in (bytearray(10), "text", memoryview(bytearray(MAX_IO + 1))):
        with pytest.raises(ArgError):
            validate("write", {**args, "data": bad})
    # Other bulk arguments stay bytes only.
    with pytest.raises(ArgError):
        validate("setxattr", {"gfid": b"g" * 16, "name": "user.x", "value": memoryview(b"v")})


async def test_a_poll_that_takes_a_big_frames_start_while_the_reader_waits() -> None:
    """The reader task parked in its small receive while another task polled
    (a fan-out's late reply, nl-cache's take_in_all) and took the start of a
    big frame: the rest that wakes the reader must continue that frame, not be
    read as a new header (a reverted shortcut put the start where the parked
    reader did not look: 'frame of 2,143,819,718 bytes announced')."""
    t1, t2 = _pair()
    reader = FrameReader(t2)
    body = msgpack.packb({"id": 7, "reply": {"data": bytes(range(256)) * 4096}})
    frame = struct.pack("!I", len(body)) + body
    got: list[Any] = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                async def read() -> None:
                    got.extend(await reader.receive() or [])

                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                t1.socket.sendall(frame[:100_000])
                polled: list[Any] | None = []
                for _ in range(1000):  # until the poll has taken the start in
                    polled = reader.poll(0.0)
                    if polled is None or reader._buf or reader._big_pos:
                        break
                    await trio.sleep(0.001)
                assert polled in ([], None)
                await t1.send_all(frame[100_000:])
    finally:
        t1.socket.close()
        t2.socket.close()
    assert got == [msgpack.unpackb(body)]
