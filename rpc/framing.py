"""Length-prefixed msgpack frames over a trio stream.

A frame is a 4-byte big-endian length and that many bytes of msgpack. The reader
checks every announced length against its maximum as soon as the 4 bytes are in,
so an oversized frame costs nothing but the bytes already received. It decodes every
complete frame found in one receive at once, which keeps a busy connection at one
receive per batch of messages. Over a socket it receives into one buffer kept for
the connection's life: a fresh 256 KiB ``bytes`` per receive costs a malloc (an
mmap and munmap, in a process without tuned malloc thresholds) per round trip.
The writer coalesces whatever was queued while a send was in progress into one
``send_all``; bodies of 64 KiB or more go out as their own buffer so they are not
copied again, and a message's bulk data (a bin of 64 KiB or more, the last value
of its args or reply) goes out as one more buffer of its own, never copied into
a frame.

The reader hands a ``write`` request's data to the brick as a memoryview of the
buffer the frame was received into, instead of the copy msgpack would make
(``VIEW_OPS``; see ``_decode_with_view``). Such a buffer is reused only once no
view of it is left.
"""

from __future__ import annotations

import logging
import struct
import sys
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from pyglfs.rpc.errors import FrameTooLarge, ProtocolError
from pyglfs.rpc.transport import ByteStream, SocketTransport

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME = 16 * 1024 * 1024 + 64 * 1024
RECEIVE_SIZE = 256 * 1024
MAX_RECEIVE_SIZE = 4 * 1024 * 1024
_BIG = 64 * 1024
_EMPTY_BIN = b"\xc4\x00"
_KEEP_BIG = 4 * 1024 * 1024
_LOWAT_MAX = 1024 * 1024
HIGH_WATER = 32 * 1024 * 1024
# Requests whose bulk data the reader hands over as a memoryview: their
# receivers accept one (rpc/brickops.py).
VIEW_OPS = frozenset({"write"})
_HEAD_MAX = 4096
_BIN32 = 0xC6
_POOL = 4
# References to an idle pooled buffer while _take_big looks at it: the pool
# list, the loop variable, getrefcount's argument.
_IDLE_REFS = 3

_HDR = struct.Struct(">I")
_unpack_hdr = _HDR.unpack_from
_pack_hdr = _HDR.pack
_unpackb = msgpack.unpackb


def decode_body(body: bytes | bytearray | memoryview) -> Any:
    """Decode one frame body; anything that is not exactly one msgpack object raises
    ProtocolError."""
    try:
        return _unpackb(body)
    except Exception as exc:
        raise ProtocolError(f"frame body is not msgpack ({type(exc).__name__}: {exc})") from None


def encode_frame(obj: Any) -> bytes:
    """One whole frame as bytes (for small messages and tests)."""
    body = msgpack.packb(obj)
    return _pack_hdr(len(body)) + body


class FrameReader:
    """Receives frames from ``stream`` and returns their decoded messages.

    ``first_frame_max``, if set, is a tighter limit for the first frame only (a
    server's hello comes from a client that has not proven anything yet).

    Over a SocketTransport, the rest of a frame of 64 KiB or more is received
    straight into a buffer of the frame's size (a few, up to 4 MiB each, are
    kept for reuse) rather than through intermediate chunks, with the socket's
    receive low-water mark set to what is missing (up to 1 MiB), so the frame
    costs one wake-up, not one per TCP burst. A request of ``VIEW_OPS`` received
    that way gets its ``args["data"]`` as a memoryview of that buffer.
    """

    def __init__(
        self, stream: ByteStream, max_frame: int = DEFAULT_MAX_FRAME, *, first_frame_max: int = 0
    ) -> None:
        self._stream = stream
        self._fast = stream if isinstance(stream, SocketTransport) else None
        self.max_frame = max_frame
        self.first_frame_max = first_frame_max
        self._buf = bytearray()
        self._want = 0
        self._big: bytearray | None = None
        self._bigs: list[bytearray] = []
        self._big_pos = 0
        # As big as a receive was before it was kept: a 128 KiB write still comes
        # in with one receive, not as 64 KiB plus the big-frame path.
        self._rview = memoryview(bytearray(RECEIVE_SIZE)) if self._fast else None

    async def receive(self) -> list[Any] | None:
        """The next batch of one or more messages, or None at a clean end of stream.

        Raises ProtocolError (FrameTooLarge included) for bad input and whatever the
        stream raises for a broken transport.
        """
        stream = self._stream
        fast = self._fast
        if fast is not None and not fast.blocked:
            # The last receive found data waiting: let other tasks run before the
            # next one, or a peer that keeps us busy would starve them.
            await trio.lowlevel.checkpoint()
        rview = self._rview
        while True:
            want = self._want - len(self._buf)
            if fast is not None:
                if self._big_pos or want >= _BIG:
                    return await self._receive_big(fast)
                assert rview is not None
                n = await fast.receive_into(rview)
                data: bytes | bytearray | memoryview = rview[:n]
            else:
                size = RECEIVE_SIZE if want <= RECEIVE_SIZE else min(want, MAX_RECEIVE_SIZE)
                data = await stream.receive_some(size)
            if not data:
                if self._buf:
                    raise ProtocolError(
                        f"stream ended inside a frame ({len(self._buf)} bytes pending)"
                    )
                return None
            msgs = self._feed(data)
            if msgs:
                return msgs

    @property
    def can_poll(self) -> bool:
        return self._rview is not None

    def poll(self, deadline: float) -> list[Any] | None:
        """Messages that arrive before ``perf_counter()`` reaches ``deadline``,
        received by busy-polling the socket instead of waiting in the event loop
        (see busypoll.py).

        An empty list when no complete message came in time; None when polling is
        not possible now: not a socket, a big frame on its way, end of stream or an
        error (those are left for ``receive``). Raises ProtocolError for bad input.
        """
        fast = self._fast
        rview = self._rview
        if fast is None or rview is None:
            return None
        while not self._big_pos and self._want - len(self._buf) < _BIG:
            n = fast.poll_into(rview, deadline)
            if n <= 0:
                return [] if n == 0 else None
            msgs = self._feed(rview[:n])
            if msgs:
                return msgs
        return None

    def _take_big(self, total: int) -> bytearray:
        """A buffer of at least ``total`` bytes that no view refers to."""
        for big in self._bigs:
            if len(big) >= total and sys.getrefcount(big) == _IDLE_REFS:
                return big
        # Rounded up: frames of one size of data differ by a few header bytes.
        big = bytearray((total + _BIG - 1) & -_BIG)
        if total <= _KEEP_BIG:
            if len(self._bigs) >= _POOL:
                self._bigs.pop(0)
            self._bigs.append(big)
        return big

    async def _receive_big(self, fast: SocketTransport) -> list[Any]:
        total = self._want
        if not self._big_pos:
            self._big = self._take_big(total)
            have = len(self._buf)
            self._big[:have] = self._buf
            self._buf.clear()
            self._big_pos = have
        big = self._big
        assert big is not None
        with memoryview(big) as view:
            while self._big_pos < total:
                fast.set_receive_lowat(min(total - self._big_pos, _LOWAT_MAX))
                n = await fast.receive_into(view[self._big_pos : total])
                if not n:
                    raise ProtocolError(
                        f"stream ended inside a frame ({self._big_pos} bytes pending)"
                    )
                self._big_pos += n
            fast.set_receive_lowat(1)
            msg = _decode_with_view(big, total)
            if msg is None:
                msg = decode_body(view[4:total])
        self._big = None
        self._big_pos = 0
        self._want = 0
        return [msg]

    def _feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Decode the complete frames of the buffered bytes plus ``data``; keeps the
        rest. ``data`` may be a view of a buffer that is reused once this returns."""
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            src = data
        n = len(src)
        pos = 0
        out: list[Any] = []
        with memoryview(src) as mv:
            while n - pos >= 4:
                (size,) = _unpack_hdr(mv, pos)
                limit = self.first_frame_max or self.max_frame
                if size > limit:
                    raise FrameTooLarge(f"frame of {size} bytes announced, maximum is {limit}")
                end = pos + 4 + size
                if end > n:
                    self._want = end - pos
                    break
                out.append(decode_body(mv[pos + 4 : end]))
                pos = end
                self.first_frame_max = 0
            else:
                self._want = 0
        if src is buf:
            del buf[:pos]
        elif pos < n:
            buf += memoryview(data)[pos:]
        return out


class FrameWriter:
    """Queues messages and sends them, coalescing those queued during a send.

    Only one task sends at a time: whoever calls ``flush`` while no send is in
    progress becomes the sender and keeps sending until the queue is empty; others
    return at once, their frames already queued. A transport failure is recorded in
    ``broken`` and reported through ``on_broken`` instead of raised, because the
    task that happens to be sending is usually not the one that owns the connection.

    With ``shield``, a send that has to wait for the peer is not interrupted by the
    sending task's cancellation (half a frame would corrupt the stream for every
    other caller); it ends when the data is out or the transport is closed. Without
    it, a send cancelled half-way marks the writer broken, which ends the
    connection rather than corrupting it. Over a
    SocketTransport, queued buffers go out with one ``sendmsg`` and without any
    checkpoint when the kernel takes them at once.
    """

    def __init__(
        self,
        stream: ByteStream,
        *,
        shield: bool = False,
        on_broken: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._stream = stream
        self._fast = stream if isinstance(stream, SocketTransport) else None
        self._out: list[bytes | memoryview] = []
        self._queued = 0
        self._drained: trio.Event | None = None
        self._sending = False
        self._shield = shield
        self._on_broken = on_broken
        self._packer = msgpack.Packer()
        self.broken: BaseException | None = None

    def put(self, obj: Any) -> None:
        """Queue ``obj`` as one frame. Raises TypeError/ValueError if it cannot be packed."""
        blob = _find_blob(obj)
        if blob is not None:
            self._put_blob(obj, *blob)
            return
        body = self._packer.pack(obj)
        if self.broken is not None:
            return
        n = len(body)
        self._queued += n
        if n < _BIG:
            self._out.append(_pack_hdr(n) + body)
        else:
            self._out.append(_pack_hdr(n))
            self._out.append(body)

    def _put_blob(self, obj: dict[Any, Any], outer: Any, key: Any, data: bytes) -> None:
        """Queue ``obj`` without copying ``data``: the message is packed with an empty
        bin in its place, moved to the very end, and the frame goes out as that head
        with a bin32 header, then ``data`` itself."""
        inner = {k: v for k, v in obj[outer].items() if k != key}
        inner[key] = b""
        shell = dict(obj)
        shell[outer] = inner
        head = self._packer.pack(shell)
        if self.broken is not None:
            return
        assert head.endswith(_EMPTY_BIN)
        n = len(head) - len(_EMPTY_BIN) + 5 + len(data)
        self._queued += n
        self._out.append(b"".join((
            _pack_hdr(n), memoryview(head)[: -len(_EMPTY_BIN)], b"\xc6", _pack_hdr(len(data)),
        )))
        self._out.append(data)

    def send_now(self) -> bool:
        """Send what is queued now, over a socket the kernel takes it all from at
        once (one ``sendmsg``, no coroutine, no checkpoint); False when the caller
        must ``await flush()`` instead: another task is sending, the kernel took
        only part, not a socket, or the writer is broken (flush then does what
        it does in those cases)."""
        fast = self._fast
        if fast is None or self._sending or self.broken is not None:
            return False
        bufs = self._out
        if not bufs:
            return True
        try:
            n = fast.try_send_buffers(bufs)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._failed(exc)
            return True
        rest = _advance(bufs, n)
        if rest:
            self._out = rest
            return False
        self._out = []
        self._queued = 0
        if self._drained is not None:
            self._wake_drained()
        return True

    async def flush(self) -> None:
        """Send everything queued, unless another task is already doing so."""
        if self._sending:
            if self._queued > HIGH_WATER:
                if self._drained is None:
                    self._drained = trio.Event()
                await self._drained.wait()
            return
        if not self._out:
            return
        self._sending = True
        try:
            if self._fast is not None:
                await self._send_fast(self._fast)
            elif self._shield:
                with trio.CancelScope(shield=True):
                    await self._send_queued()
            else:
                await self._send_queued()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._failed(exc)
        except BaseException as exc:
            # Cancelled mid-send: part of a frame may be out, and the frames taken
            # from the queue are lost. The stream cannot be trusted any more.
            self._failed(exc)
            raise
        finally:
            self._sending = False

    async def send(self, obj: Any) -> None:
        self.put(obj)
        await self.flush()

    def _failed(self, exc: BaseException) -> None:
        self._out.clear()
        self._queued = 0
        self._wake_drained()
        if self.broken is None:
            self.broken = exc
            if self._on_broken is not None:
                self._on_broken(exc)

    def _wake_drained(self) -> None:
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    async def _send_fast(self, fast: SocketTransport) -> None:
        while self._out:
            bufs = self._out
            self._out = []
            self._queued = 0
            if self.broken is not None:
                continue
            while bufs:
                n = fast.try_send_buffers(bufs)
                bufs = _advance(bufs, n)
                if bufs and not n:
                    if self._shield:
                        with trio.CancelScope(shield=True):
                            await fast.wait_writable()
                    else:
                        await fast.wait_writable()
            self._wake_drained()

    async def _send_queued(self) -> None:
        send_all = self._stream.send_all
        while self._out:
            bufs = self._out
            self._out = []
            self._queued = 0
            if self.broken is not None:
                continue
            if len(bufs) == 1:
                await send_all(bufs[0])
            else:
                small: list[bytes | memoryview] = []
                for b in bufs:
                    if len(b) >= _BIG:
                        if small:
                            await send_all(b"".join(small))
                            small = []
                        await send_all(b)
                    else:
                        small.append(b)
                if small:
                    await send_all(b"".join(small))
            self._wake_drained()


def _unique_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate map key")
    return d


def _decode_with_view(big: bytearray, total: int) -> Any:
    """The request in ``big[4:total]`` with its ``args["data"]`` as a view of
    ``big``, or None when it is not a ``VIEW_OPS`` request ending in that data.

    The data is found without decoding it: a frame ends in a bin32 of length n
    starting at p exactly when decoding the bytes before p plus an empty bin
    gives one whole object (msgpack is decoded front to back, so the bytes at p
    are then read as the last value of every map still open). Each ``0xc6`` in
    the first ``_HEAD_MAX`` bytes whose length field fits is tried. Maps with a
    repeated key are refused here (their last pair would not be the dict's
    last), and such a frame is decoded the usual way.
    """
    end = min(total - 5, 4 + _HEAD_MAX)
    p = big.find(_BIN32, 4, end)
    while p >= 0:
        if int.from_bytes(big[p + 1:p + 5], "big") == total - p - 5:
            try:
                msg = _unpackb(bytes(big[4:p]) + _EMPTY_BIN, object_pairs_hook=_unique_pairs)
            except Exception:
                p = big.find(_BIN32, p + 1, end)
                continue
            if type(msg) is dict:
                args = msg.get("args")
                if (msg.get("op") in VIEW_OPS and type(args) is dict
                        and next(reversed(msg)) == "args" and next(reversed(args)) == "data"
                        and args["data"] == b""):
                    args["data"] = memoryview(big)[p + 5:total]
                    return msg
            return None
        p = big.find(_BIN32, p + 1, end)
    return None


def _find_blob(obj: Any) -> tuple[Any, Any, bytes] | None:
    """Where ``obj`` carries bulk data worth sending without a copy: a bin of 64 KiB
    or more directly in the map that is ``obj``'s last value (a request's args, a
    reply's ok). Returns (outer key, inner key, data) or None."""
    if type(obj) is not dict or not obj:
        return None
    outer = next(reversed(obj))
    inner = obj[outer]
    if type(inner) is not dict:
        return None
    for key, value in inner.items():
        if type(value) is bytes and _BIG <= len(value) < 0xFFFF0000:
            return outer, key, value
    return None


def _advance(bufs: list[bytes | memoryview], n: int) -> list[bytes | memoryview]:
    """``bufs`` without its first ``n`` bytes."""
    i = 0
    count = len(bufs)
    while i < count:
        size = len(bufs[i])
        if n < size:
            if n:
                bufs[i] = memoryview(bufs[i])[n:]
            break
        n -= size
        i += 1
    return bufs[i:] if i else bufs
