"""Brick lock semantics: inode, entry and POSIX locks, waits, contention, disconnects."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.brickd.locks import LockManager

G = b"g" * 16
G2 = b"h" * 16
D = "replicate"


async def wait_until(cond: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.001)


def ilk(lm: LockManager, conn: int, owner: bytes, kind: str, start: int = 0, length: int = 0,
        block: bool = False, gfid: bytes = G, domain: str = D) -> Any:
    return lm.inodelk(conn_id=conn, gfid=gfid, domain=domain, type=kind, start=start,
                      len=length, owner=owner, block=block)


def plk(lm: LockManager, conn: int, owner: bytes, cmd: str, kind: str, start: int = 0,
        length: int = 0, pid: int = 1) -> Any:
    return lm.lk(conn_id=conn, gfid=G, cmd=cmd, type=kind, start=start, len=length, pid=pid,
                 owner=owner)


async def eagain(coro: Any) -> None:
    with pytest.raises(OSError) as ei:
        await coro
    assert ei.value.errno == errno.EAGAIN


# ---- inode locks -------------------------------------------------------------------------


async def test_inodelk_conflicts_by_type_range_and_owner() -> None:
    lm = LockManager()
    await ilk(lm, 1, b"a", "wr")
    await eagain(ilk(lm, 2, b"b", "wr"))
    await eagain(ilk(lm, 2, b"b", "rd", 100, 10))
    await eagain(ilk(lm, 1, b"other-owner", "wr"))  # same conn, other owner: conflicts
    await ilk(lm, 1, b"a", "wr", 5, 5)  # same owner never conflicts with itself
    await ilk(lm, 2, b"b", "wr", gfid=G2)
    await ilk(lm, 2, b"b", "wr", domain="other")
    await ilk(lm, 1, b"a", "un")
    await ilk(lm, 2, b"b", "wr")
    await ilk(lm, 2, b"b", "un")
    await ilk(lm, 2, b"b", "un", gfid=G2)
    await ilk(lm, 2, b"b", "un", domain="other")
    assert lm.is_idle()


async def test_inodelk_readers_share_and_ranges_split_conflicts() -> None:
    lm = LockManager()
    await ilk(lm, 1, b"a", "rd")
    await ilk(lm, 2, b"b", "rd")
    await eagain(ilk(lm, 3, b"c", "wr", 0, 1))
    lm2 = LockManager()
    await ilk(lm2, 1, b"a", "wr", 0, 10)
    await ilk(lm2, 2, b"b", "wr", 10, 10)  # [10, 20) touches but does not overlap [0, 10)
    await eagain(ilk(lm2, 3, b"c", "wr", 9, 2))
    await eagain(ilk(lm2, 3, b"c", "wr", 19, 0))  # to EOF overlaps [10, 20)
    await ilk(lm2, 3, b"c", "wr", 20, 0)


async def test_blocked_inodelk_notifies_holder_once_and_is_granted_on_unlock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[tuple[Any, ...]] = []
    lm = LockManager(on_contention=lambda *a: events.append(a))
    await ilk(lm, 1, b"a", "wr")
    got = trio.Event()

    async def waiter() -> None:
        await ilk(lm, 2, b"b", "wr", block=True)
        got.set()

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await wait_until(lambda: events)
        await trio.sleep(1)
        assert events == [(1, G, D, b"a")]
        assert not got.is_set()
        await ilk(lm, 1, b"a", "un")
        await wait_until(got.is_set)
    await eagain(ilk(lm, 1, b"a", "rd"))
    assert events == [(1, G, D, b"a")]


async def test_waiting_writer_is_not_starved_by_new_readers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lm = LockManager()
    await ilk(lm, 1, b"r1", "rd")
    order: list[str] = []

    async def take(name: str, conn: int, kind: str) -> None:
        await ilk(lm, conn, name.encode(), kind, block=True)
        order.append(name)

    async with trio.open_nursery() as n:
        n.start_soon(take, "w", 2, "wr")
        await trio.sleep(1)
        await eagain(ilk(lm, 3, b"r2", "rd"))  # a writer is queued before it
        n.start_soon(take, "r3", 4, "rd")
        await trio.sleep(1)
        assert order == []
        await ilk(lm, 1, b"r1", "un")
        await wait_until(lambda: order == ["w"])
        await trio.sleep(1)
        assert order == ["w"]
        await ilk(lm, 2, b"w", "un")
        await wait_until(lambda: order == ["w", "r3"])


async def test_new_holder_is_told_about_remaining_waiters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[tuple[Any, ...]] = []
    tasks: list[Any] = []

    def on_contention(*a: Any) -> None:
        events.append(a)
        tasks.append(trio.lowlevel.current_task())

    lm = LockManager(on_contention=on_contention)
    await ilk(lm, 1, b"a", "wr")
    b_task: list[Any] = []

    async def b_waits() -> None:
        b_task.append(trio.lowlevel.current_task())
        await ilk(lm, 2, b"b", "wr", block=True)

    async with trio.open_nursery() as n:
        n.start_soon(b_waits)
        await trio.sleep(1)
        n.start_soon(lambda: ilk(lm, 3, b"c", "wr", block=True))
        await trio.sleep(1)
        assert events == [(1, G, D, b"a")]  # a second waiter does not flood the holder
        await ilk(lm, 1, b"a", "un")
        await wait_until(lambda: len(events) == 2)
        assert events[1] == (2, G, D, b"b")  # b got it, c still waits: b is told
        # ... by b's own task as it returns, so a server queues b's reply first
        assert tasks[1] is b_task[0]
        await ilk(lm, 2, b"b", "un")
    await ilk(lm, 3, b"c", "un")
    assert lm.is_idle()
    assert len(events) == 2


async def test_holder_is_told_again_after_the_contention_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[tuple[Any, ...]] = []
    lm = LockManager(on_contention=lambda *a: events.append(a), contention_delay=5.0)
    await ilk(lm, 1, b"a", "wr")
    async with trio.open_nursery() as n:
        n.start_soon(lambda: ilk(lm, 2, b"b", "wr", block=True))
        await trio.sleep(4)
        n.start_soon(lambda: ilk(lm, 3, b"c", "wr", block=True))
        await trio.sleep(1)
        assert len(events) == 1
        n.start_soon(lambda: ilk(lm, 4, b"d", "wr", block=True))  # 5 s after the first
        await wait_until(lambda: len(events) == 2)
        assert events[1] == (1, G, D, b"a")
        lm.release_all(1)
        lm.release_all(2)
        lm.release_all(3)
    lm.release_all(4)
    assert lm.is_idle()


async def test_cancelled_waiter_leaves_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    lm = LockManager()
    await ilk(lm, 1, b"a", "rd")
    with trio.move_on_after(5) as scope:
        await ilk(lm, 2, b"w", "wr", block=True)
    assert scope.cancelled_caught
    await ilk(lm, 3, b"r", "rd")  # no queued writer blocks readers any more
    await ilk(lm, 1, b"a", "un")
    await ilk(lm, 3, b"r", "un")
    assert lm.is_idle()


async def test_waiter_cancelled_in_the_same_tick_as_its_grant_gives_the_lock_back() -> None:
    lm = LockManager()
    await ilk(lm, 1, b"a", "wr")
    async with trio.open_nursery() as n:
        cs = trio.CancelScope()

        async def waiter() -> None:
            with cs:
                await ilk(lm, 2, b"b", "wr", block=True)

        n.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        cs.cancel()
        await ilk(lm, 1, b"a", "un")  # grants to b, whose cancellation is already pending
    assert lm.is_idle()
    await ilk(lm, 3, b"c", "wr")


async def test_release_all_drops_locks_and_fails_own_waiters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lm = LockManager()
    await ilk(lm, 1, b"a", "wr")
    await ilk(lm, 1, b"a", "wr", gfid=G2)
    await lm.entrylk(conn_id=1, pgfid=G, domain=D, type="wr", owner=b"a", name=b"x")
    await plk(lm, 1, b"a", "setlk", "wr")
    results: dict[str, Any] = {}

    async def take(tag: str, coro: Any) -> None:
        try:
            await coro
            results[tag] = "ok"
        except OSError as e:
            results[tag] = errno.errorcode[e.errno or 0]

    await ilk(lm, 3, b"c", "wr", gfid=b"z" * 16)
    async with trio.open_nursery() as n:
        n.start_soon(take, "inode", ilk(lm, 2, b"b", "wr", block=True))
        n.start_soon(take, "posix", plk(lm, 2, b"b", "setlkw", "rd"))
        n.start_soon(take, "own", ilk(lm, 1, b"a2", "wr", block=True, gfid=b"z" * 16))
        await trio.sleep(1)
        assert results == {}
        lm.release_all(1)
        await wait_until(lambda: len(results) == 3)
    assert results == {"inode": "ok", "posix": "ok", "own": "ENOTCONN"}
    await lm.entrylk(conn_id=2, pgfid=G, domain=D, type="wr", owner=b"b", name=b"x")
    await ilk(lm, 2, b"b", "wr", gfid=G2)
    await eagain(ilk(lm, 1, b"a", "rd"))
    lm.release_all(2)
    lm.release_all(3)
    assert lm.is_idle()


async def test_bad_lock_arguments_are_einval() -> None:
    lm = LockManager()
    for coro in (
        ilk(lm, 1, b"a", "wr", 1 << 63, 0),
        ilk(lm, 1, b"a", "wr", (1 << 63) - 1, 2),
        ilk(lm, 1, b"a", "xx"),
        plk(lm, 1, b"a", "getlk", "un"),
        plk(lm, 1, b"a", "bogus", "wr"),
    ):
        with pytest.raises(OSError) as ei:
            await coro
        assert ei.value.errno == errno.EINVAL
    assert lm.is_idle()


# ---- entry locks -------------------------------------------------------------------------


async def test_entrylk_names_and_whole_directory() -> None:
    lm = LockManager()

    def elk(conn: int, kind: str, name: bytes | None, domain: str = D) -> Any:
        return lm.entrylk(conn_id=conn, pgfid=G, domain=domain, type=kind,
                          owner=b"o%d" % conn, name=name)

    await elk(1, "wr", b"x")
    await elk(2, "wr", b"y")
    await eagain(elk(2, "wr", b"x"))
    await eagain(elk(3, "rd", None))  # whole directory overlaps every name
    await elk(3, "wr", None, domain="other")
    await elk(1, "un", b"x")
    await elk(2, "un", b"y")
    await elk(3, "rd", None)
    await elk(4, "rd", None)
    await eagain(elk(5, "wr", b"z"))
    await elk(3, "un", None)
    await elk(4, "un", None)
    await elk(3, "un", None, domain="other")
    assert lm.is_idle()


# ---- POSIX locks -------------------------------------------------------------------------


async def test_getlk_reports_the_conflicting_lock() -> None:
    lm = LockManager()
    assert await plk(lm, 1, b"a", "getlk", "wr") == {"type": "un"}
    await plk(lm, 1, b"a", "setlk", "rd", 10, 10, pid=77)
    assert await plk(lm, 2, b"b", "getlk", "rd") == {"type": "un"}
    assert await plk(lm, 1, b"a", "getlk", "wr") == {"type": "un"}  # own locks never conflict
    assert await plk(lm, 2, b"b", "getlk", "wr", 0, 11) == {
        "type": "rd", "start": 10, "len": 10, "pid": 77, "owner": b"a"}
    assert await plk(lm, 2, b"b", "getlk", "wr", 0, 10) == {"type": "un"}
    await plk(lm, 1, b"a", "setlk", "wr", 100, 0, pid=78)
    assert await plk(lm, 2, b"b", "getlk", "rd", 1000, 1) == {
        "type": "wr", "start": 100, "len": 0, "pid": 78, "owner": b"a"}


async def test_posix_unlock_splits_and_same_type_merges() -> None:
    lm = LockManager()
    await plk(lm, 1, b"a", "setlk", "wr", 0, 100)
    await plk(lm, 1, b"a", "setlk", "un", 40, 20)  # hole at [40, 60)
    await plk(lm, 2, b"b", "setlk", "wr", 40, 20)
    await eagain(plk(lm, 2, b"b", "setlk", "wr", 39, 2))
    await eagain(plk(lm, 2, b"b", "setlk", "rd", 59, 2))
    await plk(lm, 2, b"b", "setlk", "un", 0, 0)
    # a re-locks the hole: the three pieces merge into one [0, 100) lock
    await plk(lm, 1, b"a", "setlk", "wr", 40, 20)
    assert await plk(lm, 2, b"b", "getlk", "rd", 50, 1) == {
        "type": "wr", "start": 0, "len": 100, "pid": 1, "owner": b"a"}
    await plk(lm, 1, b"a", "setlk", "un", 0, 0)
    assert lm.is_idle()


async def test_posix_conversion_down_and_up() -> None:
    lm = LockManager()
    await plk(lm, 1, b"a", "setlk", "wr", 0, 100)
    await plk(lm, 1, b"a", "setlk", "rd", 20, 10)  # downgrade a middle piece
    await plk(lm, 2, b"b", "setlk", "rd", 22, 5)
    await eagain(plk(lm, 2, b"b", "setlk", "rd", 19, 2))
    await eagain(plk(lm, 1, b"a", "setlk", "wr", 20, 10))  # upgrade blocked by b's reader
    await plk(lm, 2, b"b", "setlk", "un", 0, 0)
    await plk(lm, 1, b"a", "setlk", "wr", 20, 10)
    assert await plk(lm, 2, b"b", "getlk", "rd", 25, 1) == {
        "type": "wr", "start": 0, "len": 100, "pid": 1, "owner": b"a"}


async def test_setlkw_waits_until_range_is_free(autojump_clock: trio.testing.MockClock) -> None:
    lm = LockManager()
    await plk(lm, 1, b"a", "setlk", "wr", 0, 10)
    await plk(lm, 1, b"a", "setlk", "wr", 20, 10)
    done = trio.Event()

    async def waiter() -> None:
        await plk(lm, 2, b"b", "setlkw", "wr", 5, 20)
        done.set()

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.sleep(1)
        await plk(lm, 1, b"a", "setlk", "un", 0, 10)
        await trio.sleep(1)
        assert not done.is_set()  # [20, 30) still blocks
        await plk(lm, 1, b"a", "setlk", "un", 20, 10)
        await wait_until(done.is_set)
    await eagain(plk(lm, 1, b"a", "setlk", "rd", 24, 1))


async def test_setlkw_cycle_is_edeadlk(autojump_clock: trio.testing.MockClock) -> None:
    lm = LockManager()
    await plk(lm, 1, b"a", "setlk", "wr", 0, 10)
    await plk(lm, 2, b"b", "setlk", "wr", 10, 10)
    async with trio.open_nursery() as n:
        n.start_soon(lambda: plk(lm, 1, b"a", "setlkw", "wr", 10, 10))
        await trio.sleep(1)
        with pytest.raises(OSError) as ei:
            await plk(lm, 2, b"b", "setlkw", "wr", 0, 10)
        assert ei.value.errno == errno.EDEADLK
        await plk(lm, 2, b"b", "setlk", "un", 0, 0)
    assert await plk(lm, 2, b"b", "getlk", "wr", 15, 1) == {
        "type": "wr", "start": 0, "len": 20, "pid": 1, "owner": b"a"}


async def test_unlock_withdraws_the_owners_blocked_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lm = LockManager()
    await ilk(lm, 1, b"a", "wr")
    outcome: list[int] = []

    async def abandoned() -> None:
        try:
            await ilk(lm, 2, b"b", "wr", block=True)
        except OSError as e:
            outcome.append(e.errno or 0)

    async with trio.open_nursery() as n:
        n.start_soon(abandoned)
        await trio.sleep(1)
        await ilk(lm, 2, b"b", "un")  # b's client gave up waiting and unlocks
        await wait_until(lambda: outcome == [errno.ECANCELED])
    await ilk(lm, 1, b"a", "un")
    assert lm.is_idle()  # b's request was not granted behind a's back


async def test_blocked_entrylk_tells_the_directory_lock_holder() -> None:
    events: list[tuple[Any, ...]] = []
    lm = LockManager(on_contention=lambda *a: events.append(a))
    await lm.entrylk(conn_id=1, pgfid=G, domain=D, type="wr", owner=b"a")
    await eagain(lm.entrylk(conn_id=2, pgfid=G, domain=D, type="wr", owner=b"b", name=b"x"))
    assert events == []  # a non-blocking try tells nobody
    got = trio.Event()

    async def b_waits() -> None:
        await lm.entrylk(conn_id=2, pgfid=G, domain=D, type="wr", owner=b"b", name=b"x",
                         block=True)
        got.set()

    async with trio.open_nursery() as n:
        n.start_soon(b_waits)
        await wait_until(lambda: events == [(1, G, D, b"a")])
        assert not got.is_set()
        await lm.entrylk(conn_id=1, pgfid=G, domain=D, type="un", owner=b"a")
        with trio.fail_after(5):
            await got.wait()
    await lm.entrylk(conn_id=2, pgfid=G, domain=D, type="un", owner=b"b", name=b"x")
    assert lm.is_idle()
