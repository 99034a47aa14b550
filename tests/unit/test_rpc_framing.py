"""Frames, errno mapping and the socket transport, below the connection layer."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyglfs.rpc.errors import (
    FrameTooLarge,
    HandshakeRefused,
    ProtocolError,
    errno_name,
    oserror_from_name,
    transport_errno,
)
from pyglfs.rpc.framing import FrameReader, FrameWriter, _advance, encode_frame
from pyglfs.rpc.transport import SocketTransport, fast_transport

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


class ChunkStream(trio.abc.ReceiveStream):
    """Hands out ``data`` in the given chunk sizes, then end of stream."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.chunks: list[bytes] = []
        pos = 0
        for cut in sorted(set(cuts)):
            if pos < cut < len(data):
                self.chunks.append(data[pos:cut])
                pos = cut
        self.chunks.append(data[pos:])

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if max_bytes is not None and len(chunk) > max_bytes:
            self.chunks.insert(0, chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    async def aclose(self) -> None:
        pass


async def read_all(reader: FrameReader) -> list[Any]:
    out: list[Any] = []
    while (msgs := await reader.receive()) is not None:
        out.extend(msgs)
    return out


def test_errno_names_round_trip() -> None:
    assert errno_name(errno.ENOENT) == "ENOENT"
    assert errno_name(99999) == "EIO"
    exc = oserror_from_name("ENOTEMPTY", "dir not empty")
    assert exc.errno == errno.ENOTEMPTY and exc.strerror == "dir not empty"
    for bad in ("NOPE", "EWHATEVER", "", "errorcode", "E2BIG" + "x"):
        assert oserror_from_name(bad).errno == errno.EIO


def test_transport_errno_is_the_one_mapping() -> None:
    assert transport_errno(trio.TooSlowError()) == errno.ETIMEDOUT
    assert transport_errno(OSError(errno.ETIMEDOUT, "x")) == errno.ETIMEDOUT
    for exc in (trio.BrokenResourceError(), trio.ClosedResourceError(), EOFError(),
                ConnectionResetError(), ConnectionRefusedError(), ProtocolError("x"),
                HandshakeRefused("no")):
        assert transport_errno(exc) == errno.ENOTCONN, exc


def test_handshake_refused_carries_reason() -> None:
    exc = HandshakeRefused("wrong credentials")
    assert exc.reason == "wrong credentials" and "wrong credentials" in str(exc)
    assert isinstance(exc, ConnectionError)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(msgpack_values, min_size=1, max_size=8), st.lists(st.integers(0, 400)))
def test_frames_decode_the_same_however_they_are_cut(msgs: list[Any], cuts: list[int]) -> None:
    data = b"".join(encode_frame(m) for m in msgs)

    async def main() -> list[Any]:
        return await read_all(FrameReader(ChunkStream(data, cuts)))

    assert trio.run(main) == msgs


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
def test_arbitrary_bytes_give_messages_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    async def main() -> None:
        reader = FrameReader(ChunkStream(data, cuts), max_frame=200)
        try:
            await read_all(reader)
        except ProtocolError:
            pass

    trio.run(main)


async def test_oversized_length_fails_on_the_header_alone() -> None:
    reader = FrameReader(ChunkStream(struct.pack(">I", 101), []), max_frame=100)
    with pytest.raises(FrameTooLarge):
        await reader.receive()


async def test_truncated_stream_is_a_protocol_error() -> None:
    frame = encode_frame({"a": 1})
    with pytest.raises(ProtocolError, match="inside a frame"):
        await read_all(FrameReader(ChunkStream(frame[:-1], [])))


def test_advance_drops_sent_bytes() -> None:
    bufs: list[Any] = [b"abc", b"de", b"fghij"]
    assert [bytes(b) for b in _advance(list(bufs), 0)] == [b"abc", b"de", b"fghij"]
    assert [bytes(b) for b in _advance(list(bufs), 3)] == [b"de", b"fghij"]
    assert [bytes(b) for b in _advance(list(bufs), 4)] == [b"e", b"fghij"]
    assert [bytes(b) for b in _advance(list(bufs), 7)] == [b"hij"]
    assert _advance(list(bufs), 10) == []


async def test_writer_sends_small_and_big_frames_in_order_over_memory() -> None:
    a, b = trio.testing.memory_stream_pair()
    writer = FrameWriter(a)
    big = b"\x07" * (3 * 1024 * 1024)
    msgs = [{"n": 1}, {"data": big}, {"n": 2}, {"data": big[:70000]}, {"n": 3}]
    for m in msgs:
        writer.put(m)
    await writer.flush()
    await a.aclose()
    assert await read_all(FrameReader(b)) == msgs


async def test_writer_records_broken_transport_instead_of_raising() -> None:
    a, b = trio.testing.memory_stream_pair()
    seen: list[BaseException] = []
    writer = FrameWriter(a, on_broken=seen.append)
    await b.aclose()
    await a.aclose()
    await writer.send({"x": 1})
    assert isinstance(writer.broken, trio.ClosedResourceError)
    assert seen == [writer.broken]
    await writer.send({"x": 2})  # stays quiet once broken
    assert len(seen) == 1


def _socket_pair() -> tuple[SocketTransport, SocketTransport]:
    s1, s2 = socket.socketpair()
    return SocketTransport(s1), SocketTransport(s2)


async def test_socket_transport_moves_big_frames_both_ways() -> None:
    t1, t2 = _socket_pair()
    msgs = [{"i": i, "data": bytes([i]) * size}
            for i, size in enumerate([0, 10, 70_000, 1_500_000, 5, 4_300_000, 64 * 1024])]
    try:
        async with trio.open_nursery() as nursery:
            writer = FrameWriter(t1, shield=True)

            async def send() -> None:
                for m in msgs:
                    writer.put(m)
                    await writer.flush()
                t1.socket.shutdown(socket.SHUT_WR)

            nursery.start_soon(send)
            with trio.fail_after(20):
                got = await read_all(FrameReader(t2))
        assert [m["i"] for m in got] == [m["i"] for m in msgs]
        assert got == msgs
    finally:
        t1.close()
        t2.close()


async def test_socket_transport_close_wakes_a_blocked_receiver() -> None:
    t1, t2 = _socket_pair()
    try:
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def receive() -> None:
                try:
                    await FrameReader(t2).receive()
                except trio.ClosedResourceError as exc:
                    errors.append(exc)

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            t2.close()
        assert len(errors) == 1
    finally:
        t1.close()


def test_fast_transport_leaves_other_streams_alone() -> None:
    a, _ = trio.testing.memory_stream_pair()
    assert fast_transport(a) is a


async def test_send_cancelled_half_way_marks_the_writer_broken(autojump_clock: Any) -> None:
    a, b = trio.testing.lockstep_stream_pair()
    seen: list[BaseException] = []
    writer = FrameWriter(a, on_broken=seen.append)
    with trio.move_on_after(1):
        await writer.send({"data": b"x" * 100_000})  # nobody reads: blocks
    assert writer.broken is not None and seen == [writer.broken]
    writer.put({"later": 1})
    await writer.flush()
    assert seen == [writer.broken]


@pytest.mark.parametrize("msg", [
    {"id": 1, "op": "write", "args": {"gfid": b"g" * 16, "offset": 5, "data": b"d" * 70_000,
                                      "xattrop": {"a": b"x" * 12}}},
    {"id": 2, "ok": {"data": b"r" * 1_000_000}},
    {"id": 3, "ok": {"a": b"1" * 65_536, "b": b"2" * 65_536, "c": "three"}},
    {"event": "e", "args": {"blob": b"\x00" * 200_000}},
    {"id": 4, "ok": {"data": b"small"}},
    {"id": 5, "ok": [b"x" * 100_000]},
])
async def test_bulk_data_goes_out_uncopied_and_decodes_the_same(msg: dict[str, Any]) -> None:
    a, b = trio.testing.memory_stream_pair()
    writer = FrameWriter(a)
    writer.put(msg)
    blobs = [v for inner in msg.values() if isinstance(inner, dict) for v in inner.values()
             if isinstance(v, bytes) and len(v) >= 65_536]
    if blobs:
        assert any(buf is blobs[0] for buf in writer._out), "bulk data was copied"
    await writer.flush()
    await a.aclose()
    assert await read_all(FrameReader(b)) == [msg]
