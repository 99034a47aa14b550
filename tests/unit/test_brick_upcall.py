"""brickd/upcall.py: what a change names, who hears of it, and merging."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from pyglfs.brickd import upcall
from pyglfs.brickd.upcall import EVENT, Upcall, what_changed

P = b"\x01" * 16
Q = b"\x02" * 16
G = b"\x03" * 16


class Conn:
    """What Upcall uses of a ServerConnection."""

    _ids = iter(range(1, 1000))

    def __init__(self, client_id: str, role: str = "client") -> None:
        self.conn_id = next(self._ids)
        self.client_id = client_id
        self.role = role
        self.closed = False
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def send_event(self, name: str, args: dict[str, Any]) -> None:
        self.events.append((name, args))

    def can_send_now(self) -> bool:
        return not self.closed


def test_what_changed() -> None:
    assert what_changed("write", {"gfid": G, "offset": 0, "data": b"x"}, {}) == ([G], [])
    assert what_changed("create", {"pgfid": P, "name": b"n", "gfid": G}, {}) == \
        ([P], [(P, b"n")])
    assert what_changed("link", {"gfid": G, "pgfid": P, "name": b"l"}, {}) == \
        ([G, P], [(P, b"l")])
    r = what_changed("rename", {"old_pgfid": P, "old_name": b"a", "new_pgfid": Q,
                                "new_name": b"b"}, {"iatt": [G, 1, 2]})
    assert r == ([P, Q, G], [(P, b"a"), (Q, b"b")])
    assert what_changed("lookup", {"pgfid": P, "name": b"n"}, {}) == ([], [])
    assert what_changed("read", {"gfid": G, "offset": 0, "size": 1}, {}) == ([], [])


async def test_others_hear_merged_events_the_changer_does_not() -> None:
    async with trio.open_nursery() as nursery:
        up = Upcall(nursery)
        me_a, me_b = Conn("me"), Conn("me")  # one mount, two bricks' worth
        other, heal = Conn("other"), Conn("shd", role="heal")
        for c in (me_a, me_b, other, heal):
            up.seen(c)
        up.changed("write", {"gfid": G}, {}, me_a)
        up.changed("unlink", {"pgfid": P, "name": b"x"}, {}, me_a)
        assert other.events == []
        await up.deliver()
        assert me_a.events == me_b.events == heal.events == []
        assert len(other.events) == 1
        name, args = other.events[0]
        assert name == EVENT
        assert sorted(args["gfids"]) == sorted([G, P]) and args["entries"] == [[P, b"x"]]
        # a change by the heal daemon reaches the mount
        up.changed("setattr", {"gfid": G}, {}, heal)
        await up.deliver()
        assert me_a.events == me_b.events == [(EVENT, {"gfids": [G], "entries": []})]
        assert len(other.events) == 2 and heal.events == []
        up.gone(other)
        up.changed("write", {"gfid": G}, {}, me_a)
        await up.deliver()
        assert len(other.events) == 2


async def test_too_many_pending_items_become_all(monkeypatch: Any) -> None:
    monkeypatch.setattr(upcall, "PENDING_MAX", 3)
    async with trio.open_nursery() as nursery:
        up = Upcall(nursery)
        me, other = Conn("me"), Conn("other")
        up.seen(me)
        up.seen(other)
        for i in range(5):
            up.changed("write", {"gfid": bytes([i]) * 16}, {}, me)
        await up.deliver()
        assert other.events == [(EVENT, {"all": True})]


async def test_a_lone_client_costs_nothing() -> None:
    async with trio.open_nursery() as nursery:
        up = Upcall(nursery)
        me = Conn("me")
        up.seen(me)
        up.changed("write", {"gfid": G}, {}, me)
        assert not up.ready
        await up.deliver()
        assert up.sent == 0 and not up._pending


class SlowConn(Conn):
    def __init__(self, client_id: str) -> None:
        super().__init__(client_id)
        self.gate = trio.Event()

    async def send_event(self, name: str, args: dict[str, Any]) -> None:
        await self.gate.wait()
        self.events.append((name, args))

    def can_send_now(self) -> bool:
        return False


async def test_one_sender_per_connection_behind_a_slow_reader() -> None:
    async with trio.open_nursery() as nursery:
        up = Upcall(nursery)
        me, slow = Conn("me"), SlowConn("slow")
        up.seen(me)
        up.seen(slow)
        up.changed("write", {"gfid": P}, {}, me)
        with trio.fail_after(5):
            await up.deliver()  # hands the slow reader to a task, never waits on it
        await trio.testing.wait_all_tasks_blocked()
        for i in range(50):
            up.changed("write", {"gfid": bytes([i]) * 16}, {}, me)
            await up.deliver()
            await trio.testing.wait_all_tasks_blocked()
        assert len(up._senders) == 1
        slow.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(slow.events) == 2 and len(slow.events[1][1]["gfids"]) == 50
        assert not up._senders and not up._pending


class StallingConn(Conn):
    """Has room by its socket's account, yet its sends wait (a race with a
    reader that stops): the changer must not wait for more than its own one."""

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id)
        self.gates = [trio.Event(), trio.Event()]

    async def send_event(self, name: str, args: dict[str, Any]) -> None:
        await self.gates[len(self.events)].wait()
        self.events.append((name, args))


async def test_the_changer_sends_at_most_one_event_itself() -> None:
    async with trio.open_nursery() as nursery:
        up = Upcall(nursery)
        me, other = Conn("me"), StallingConn("other")
        try:
            up.seen(me)
            up.seen(other)
            up.changed("write", {"gfid": P}, {}, me)
            done = trio.Event()

            async def changer() -> None:
                await up.deliver()
                done.set()

            nursery.start_soon(changer)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(3):  # more changes while the changer's send waits
                up.changed("write", {"gfid": bytes([i]) * 16}, {}, me)
                with trio.fail_after(5):
                    await up.deliver()  # the sender is busy: queued, never waits
            assert not done.is_set()
            other.gates[0].set()
            await trio.testing.wait_all_tasks_blocked()
            # the changer is done; the rest waits in a sender task
            assert done.is_set() and other.events == [(EVENT, {"gfids": [P], "entries": []})]
            other.gates[1].set()
            await trio.testing.wait_all_tasks_blocked()
            assert len(other.events) == 2 and len(other.events[1][1]["gfids"]) == 3
            assert not up._senders and not up._pending and not up.ready
        finally:
            for gate in other.gates:  # a shielded send must be able to end
                gate.set()
