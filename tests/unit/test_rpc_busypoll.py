"""Busy-polling (rpc/busypoll.py): a lone call polls its socket for the reply, and
a server connection polls for the next request.

The peer here is plain blocking code in a worker thread, so it answers while the
trio thread polls, as a peer in another process would. The tests check that
replies, events and failures that arrive during a poll are handled exactly as the
reader task would handle them, that polling backs off when it does not pay, and
that a caller whose replies always come by polling still yields and can be
cancelled.
"""

from __future__ import annotations

import errno
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from helpers.procs import stop_pids

from pyglfs.rpc import busypoll, connection, messages
from pyglfs.rpc.busypoll import (
    MAX_BUDGET,
    MAX_SKIP,
    BusyPoll,
    MachineLoad,
    fitted_budget,
    nothing_else_runnable,
)
from pyglfs.rpc.connection import RpcConnection, calls_in_flight, open_rpc_connection
from pyglfs.rpc.framing import encode_frame
from pyglfs.rpc.server import serve_rpc
from pyglfs.rpc.testing import EchoService

HOST = "127.0.0.1"
BUDGET = 0.05  # generous: a loaded test machine must still answer within it


@pytest.fixture(autouse=True)
def _ignore_machine_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Polling stops while the test machine is busy; these tests are about what
    happens when it polls."""
    monkeypatch.setattr(busypoll, "machine_has_room", lambda: True)

Reply = Callable[[dict[str, Any]], list[Any]]


def _read_frame(sock: socket.socket, buf: bytearray) -> Any:
    while True:
        if len(buf) >= 4:
            (size,) = struct.unpack_from(">I", buf)
            if len(buf) >= 4 + size:
                msg = msgpack.unpackb(bytes(buf[4 : 4 + size]))
                del buf[: 4 + size]
                return msg
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # the client left with a reply still unread
            return None
        if not data:
            return None
        buf += data


def _serve_blocking(listener: socket.socket, reply: Reply) -> int:
    """Answer one client: welcome, then ``reply(request)`` frames (raw bytes are
    sent as they are) for each request. Returns how many requests it saw."""
    conn, _ = listener.accept()
    listener.close()
    seen = 0
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        hello = _read_frame(conn, buf)
        assert hello is not None and "hello" in hello
        conn.sendall(encode_frame({"welcome": {"version": 1, "server": "t", "volume": "v"}}))
        while (msg := _read_frame(conn, buf)) is not None:
            if "ping" in msg:
                conn.sendall(encode_frame({"pong": msg["ping"]}))
                continue
            seen += 1
            out = [m if isinstance(m, bytes) else encode_frame(m) for m in reply(msg)]
            if not out:
                return seen
            conn.sendall(b"".join(out))
    return seen


def _ok(msg: dict[str, Any]) -> list[Any]:
    return [{"id": msg["id"], "ok": msg["args"]}]


@asynccontextmanager
async def threaded_peer(
    reply: Reply = _ok, budget: float = BUDGET, **kwargs: Any
) -> AsyncIterator[RpcConnection]:
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: trio.to_thread.run_sync(_serve_blocking, listener, reply))
        async with open_rpc_connection(HOST, port, volume="v", client_id="c",
                                       busy_poll=budget, **kwargs) as conn:
            yield conn


def _ok_later(msg: dict[str, Any]) -> list[Any]:
    time.sleep(0.0005)  # later than the yield before a poll, as a peer process is
    return _ok(msg)


async def test_lone_call_gets_its_reply_by_polling() -> None:
    async with threaded_peer(_ok_later) as conn:
        for i in range(20):
            assert await conn.call("echo", {"i": i}) == {"i": i}
        # The reader task may take the first replies while it starts up.
        assert conn.busy_poll.hits >= 15


async def test_no_polling_with_a_zero_budget() -> None:
    async with threaded_peer(budget=0.0) as conn:
        for i in range(5):
            assert await conn.call("echo", {"i": i}) == {"i": i}
        assert conn.busy_poll.polls == 0


async def test_no_polling_while_other_tasks_are_runnable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(trio.lowlevel.checkpoint)
        assert not nothing_else_runnable()
    # Tasks of the scheduler's current batch are not in its run queue: which of
    # them stay runnable past a call's yield depends on trio's batch order, so
    # the call is shown a run queue that never empties.
    monkeypatch.setattr(connection, "nothing_else_runnable", lambda: False)
    async with threaded_peer(_ok_later) as conn:
        for i in range(5):
            conn.busy_poll._skip = 0
            assert await conn.call("echo", {"i": i}) == {"i": i}
        assert conn.busy_poll.polls == 0


async def test_a_task_woken_just_before_the_call_does_not_stop_its_poll() -> None:
    # As pyfuse3's next reader, woken when the current one releases the read lock,
    # takes the lock and goes back to wait while the request is being handled.
    lock = trio.Lock()
    parked = trio.Event()

    async def next_reader() -> None:
        async with lock:
            await parked.wait()

    async with threaded_peer(_ok_later) as conn:
        await conn.call("echo", {})
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                await lock.acquire()
                nursery.start_soon(next_reader)
                await trio.testing.wait_all_tasks_blocked()
                conn.busy_poll._skip = 0  # no back-off from earlier calls
                polls = conn.busy_poll.polls
                lock.release()
                assert not nothing_else_runnable()
                assert await conn.call("echo", {"x": 1}) == {"x": 1}
                assert conn.busy_poll.polls == polls + 1
                parked.set()
                await trio.testing.wait_all_tasks_blocked()
                parked = trio.Event()


async def test_event_and_other_frames_during_a_poll_are_delivered() -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    def reply(msg: dict[str, Any]) -> list[Any]:
        time.sleep(0.0005)
        return [{"event": "inval", "args": {"n": msg["id"]}}, {"pong": 7},
                {"id": msg["id"], "ok": 1}]

    async with threaded_peer(reply, on_event=lambda n, a: events.append((n, a))) as conn:
        await conn.call("null", {})
        hits = conn.busy_poll.hits
        conn.busy_poll._skip = 0  # no back-off from a first poll the reader task beat
        assert await conn.call("null", {}) == 1
        assert conn.busy_poll.hits == hits + 1
    assert events[-1] == ("inval", {"n": 2})


async def test_bad_frame_during_a_poll_closes_the_connection() -> None:
    def reply(msg: dict[str, Any]) -> list[Any]:
        return [encode_frame({"id": msg["id"], "ok": 1})] if msg["id"] == 1 else [b"\0\0\0\1\xc1"]

    async with threaded_peer(reply) as conn:
        assert await conn.call("null", {}) == 1
        with pytest.raises(OSError) as info:
            await conn.call("null", {})
        assert info.value.errno == errno.ENOTCONN
        assert "bad frame" in (conn.close_reason or "")


async def test_peer_closing_during_a_poll_fails_the_call_with_enotconn() -> None:
    def reply(msg: dict[str, Any]) -> list[Any]:
        return [{"id": msg["id"], "ok": 1}] if msg["id"] == 1 else []

    async with threaded_peer(reply) as conn:
        assert await conn.call("null", {}) == 1
        with trio.fail_after(10):
            with pytest.raises(OSError) as info:
                await conn.call("null", {})
        assert info.value.errno == errno.ENOTCONN


async def test_a_caller_served_by_polls_still_yields_and_can_be_cancelled() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.001)
            ticks += 1

    async with threaded_peer() as conn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            calls = 0
            with trio.move_on_after(0.3) as scope:
                with trio.fail_after(10):
                    while True:
                        await conn.call("null", {})
                        calls += 1
            nursery.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert calls > 20 and ticks > 5


async def test_backoff_after_fruitless_polls_and_reset_after_a_hit() -> None:
    poll = BusyPoll(0.001)
    assert poll.should_poll()
    poll.record(False)
    assert [poll.should_poll() for _ in range(3)] == [False, False, True]
    poll.record(False)
    assert [poll.should_poll() for _ in range(5)] == [False] * 4 + [True]
    for _ in range(20):
        poll.record(False)
    assert sum(poll.should_poll() for _ in range(MAX_SKIP + 1)) == 1
    poll.record(True)
    assert poll.should_poll() and poll.should_poll()


def test_fitted_budget_covers_the_expected_wait_within_the_bound() -> None:
    base, bound = 100e-6, 500e-6
    assert fitted_budget(None, base, bound) == base
    assert fitted_budget(None, 0.0, bound) == 0.0
    assert fitted_budget(50e-6, 0.0, bound) == 0.0
    # a little past the expected wait, never below the base nor above the bound
    assert 200e-6 < fitted_budget(200e-6, base, bound) <= bound
    assert fitted_budget(10e-6, base, bound) == base
    assert fitted_budget(400e-6, base, bound) == bound
    assert fitted_budget(bound, base, bound) == bound
    # a reply expected later than the bound is slept for
    assert fitted_budget(bound * 1.01, base, bound) == 0.0
    assert fitted_budget(5e-3, base, bound) == 0.0


def test_learnt_waits_fit_each_key_and_an_idle_pause_is_soon_forgotten() -> None:
    poll = BusyPoll(100e-6)
    assert poll.bound == MAX_BUDGET
    assert poll.budget_for("read") == 100e-6
    for _ in range(30):
        poll.learn("read", 300e-6)
        poll.learn("fsync", 5e-3)
    assert poll.expect["read"] == pytest.approx(300e-6)
    assert 300e-6 < poll.budget_for("read") <= MAX_BUDGET
    assert poll.budget_for("fsync") == 0.0
    assert poll.budget_for("stat") == 100e-6  # nothing learnt: the base
    poll.learn("read", 30.0)  # one long idle pause counts as two bounds only
    assert poll.budget_for("read") > poll.expect["read"] > 300e-6
    for _ in range(2):
        poll.learn("read", 30.0)
    assert poll.budget_for("read") == 0.0
    for _ in range(8):
        poll.learn("read", 300e-6)
    assert poll.budget_for("read") > 300e-6
    assert BusyPoll(0.0).budget_for("read") == 0.0
    assert BusyPoll(0.05).bound == 0.05


async def test_a_call_whose_replies_come_late_sleeps_at_once() -> None:
    def reply(msg: dict[str, Any]) -> list[Any]:
        if msg["op"] == "slow":
            time.sleep(3 * MAX_BUDGET)
        return _ok(msg)

    async with threaded_peer(reply, budget=100e-6) as conn:
        poll = conn.busy_poll
        for i in range(10):  # the reader task may take the first replies while it starts
            assert await conn.call("slow", {"i": i}) == {"i": i}
            if "slow" in poll.expect:
                break
        assert poll.expect["slow"] > MAX_BUDGET
        polls = poll.polls
        for i in range(5):
            assert await conn.call("slow", {"i": i}) == {"i": i}
        assert poll.polls == polls
        assert poll.expect["slow"] > MAX_BUDGET, "fades only while it stops polls"
        assert poll.budget_for("echo") == 100e-6


async def test_a_key_expected_beyond_the_bound_is_tried_again_later() -> None:
    poll = BusyPoll(100e-6)
    for _ in range(30):
        poll.learn("fsync", 5e-3)
    assert poll.expect["fsync"] == pytest.approx(2 * MAX_BUDGET)
    answers = [poll.should_poll("fsync") for _ in range(40)]
    assert not answers[0] and any(answers)
    declined = answers.index(True)
    assert 5 < declined < 30
    assert poll.budget_for("fsync") > 0


async def test_only_a_call_alone_in_the_process_polls_longer_than_the_base(
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = 100e-6
    polls: list[tuple[int, float]] = []
    received: list[float] = []
    real_poll = RpcConnection._poll_reply

    def poll_reply(self: RpcConnection, c: Any, budget: float) -> Any:
        polls.append((calls_in_flight(), budget))
        return real_poll(self, c, budget)

    monkeypatch.setattr(RpcConnection, "_poll_reply", poll_reply)

    def reply(msg: dict[str, Any]) -> list[Any]:
        received.append(time.monotonic())
        time.sleep(0.02)
        return _ok(msg)

    async with threaded_peer(reply, budget=base) as one, \
            threaded_peer(reply, budget=base) as two:
        for conn in (one, two):
            conn.busy_poll.bound = 0.05  # a loaded test machine answers late
            for _ in range(10):
                await conn.call("read", {})
                if "read" in conn.busy_poll.expect:
                    break
            assert conn.busy_poll.budget_for("read") > base
        polls.clear()
        for _ in range(10):  # past the back-off of the first, fruitless polls
            await one.call("read", {})
            if polls:
                break
        assert polls and polls[-1][0] == 1 and polls[-1][1] > base
        for _ in range(5):
            polls.clear()
            received.clear()
            one.busy_poll._skip = two.busy_poll._skip = 0  # no back-off: both may poll
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one.call, "read", {})
                nursery.start_soon(two.call, "read", {})
            # no call held the loop while the other had still to be sent
            assert all(p == (2, base) for p in polls), polls
            assert len(received) == 2 and abs(received[1] - received[0]) < 0.015


def test_must_yield_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(busypoll, "perf_counter", lambda: now[0])
    poll = BusyPoll()
    assert not poll.must_yield()
    now[0] += busypoll.YIELD_EVERY
    assert poll.must_yield()
    assert not poll.must_yield()
    now[0] += busypoll.YIELD_EVERY / 2
    assert not poll.must_yield()
    now[0] += busypoll.YIELD_EVERY / 2
    assert poll.must_yield()


def test_machine_load_allows_polling_only_with_a_cpu_to_spare(tmp_path: Any) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.50 0.40 0.30 2/120 4567\n")
    load = MachineLoad(str(loadavg), ncpu=2)
    assert load.has_room()
    loadavg.write_text("3.10 2.00 1.00 3/121 4568\n")
    assert load.has_room(), "read again only after LOAD_CHECK_EVERY"
    load.checked_at = -1.0
    assert not load.has_room()
    loadavg.write_text("garbage\n")
    load.checked_at = -1.0
    assert load.has_room()


async def test_no_polling_on_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(busypoll, "machine_has_room", lambda: False)
    async with threaded_peer() as conn:
        for i in range(5):
            assert await conn.call("echo", {"i": i}) == {"i": i}
        assert conn.busy_poll.polls == 0


def test_outside_trio_nothing_is_polled() -> None:
    assert not nothing_else_runnable()
    assert not BusyPoll().should_poll()


# ---- the server side ------------------------------------------------------------------


def _blocking_client(port: int, seconds: float) -> list[float]:
    """Handshake, then null requests one at a time for ``seconds``; returns each
    round trip's duration."""
    times: list[float] = []
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        sock.sendall(encode_frame(messages.hello(volume="v", client_id="raw", role="bench")))
        assert "welcome" in _read_frame(sock, buf)
        stop_at = time.monotonic() + seconds
        rid = 0
        while time.monotonic() < stop_at:
            rid += 1
            t0 = time.monotonic()
            sock.sendall(encode_frame(messages.request(rid, "null", {})))
            assert _read_frame(sock, buf) == {"id": rid, "ok": {}}
            times.append(time.monotonic() - t0)
    return times


@asynccontextmanager
async def polling_server(budget: float) -> AsyncIterator[tuple[int, EchoService]]:
    svc = EchoService()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_rpc(svc, HOST, 0, busy_poll=budget, task_status=task_status))
        yield port, svc
        nursery.cancel_scope.cancel()


async def test_server_polls_for_the_next_request_of_a_lone_client() -> None:
    async with polling_server(BUDGET) as (port, svc):
        with trio.fail_after(20):
            times = await trio.to_thread.run_sync(_blocking_client, port, 0.2)
        poll = svc.connections[0].busy_poll
    assert len(times) > 20
    assert poll.hits >= len(times) // 2


async def test_server_does_not_poll_with_a_zero_budget() -> None:
    async with polling_server(0.0) as (port, svc):
        with trio.fail_after(20):
            await trio.to_thread.run_sync(_blocking_client, port, 0.05)
        assert svc.connections[0].busy_poll.polls == 0


# A client in another process that sends requests far faster than the server can
# answer them (and throws the replies away): the server always finds more waiting
# when it polls.
_HOG = r"""
import socket, struct, sys, threading, time
import msgpack

def frame(obj):
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body

sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.sendall(frame({"hello": {"version": 1, "role": "bench", "volume": "v",
                              "client_id": "hog", "auth": None}}))

def discard():
    while sock.recv(1 << 20):
        pass

threading.Thread(target=discard, daemon=True).start()
burst = b"".join(frame({"id": i, "op": "null", "args": {}}) for i in range(1000))
stop_at = time.monotonic() + float(sys.argv[2])
while time.monotonic() < stop_at:
    sock.sendall(burst)
"""


async def test_a_connection_served_by_polls_does_not_starve_another() -> None:
    async with polling_server(BUDGET) as (port, svc):
        hog = subprocess.Popen(  # noqa: ASYNC220 - stopped by PID in the finally
            [sys.executable, "-c", _HOG, str(port), "20"], stdout=subprocess.DEVNULL)
        try:
            with trio.fail_after(20):
                while not svc.connections or svc.connections[0].busy_poll.hits < 3:
                    assert hog.poll() is None, "the hog client ended early"
                    await trio.sleep(0.01)
            # A client in this process runs only when the hog's connection yields.
            async with open_rpc_connection(HOST, port, volume="v", client_id="c") as conn:
                times = []
                for _ in range(3):
                    t0 = time.monotonic()
                    await conn.call("null", {})
                    times.append(time.monotonic() - t0)
            assert hog.poll() is None, "the hog client ended early"
        finally:
            stop_pids([hog.pid])
        hog_poll = svc.connections[0].busy_poll
    assert hog_poll.hits >= 3
    # Each of the hog's batches of requests (256 KiB of them) takes 0.1 s or more,
    # and a call needs a few turns of the loop. Were the hog's connection never to
    # yield, the first call would wait for the hog's end, 20 s after it started.
    assert max(times) < 6.0
