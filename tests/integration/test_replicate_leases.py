"""Directory leases (client/replicate/lease.py) between two Replicate clients over
two real pyglfs-brickd processes on 127.0.0.2 and 127.0.0.3: taking, recall by
another client, idle give-back, bricks going down and coming back, quorum,
settle."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from helpers.replica import ReplicaEnv, leased, open_replica, wait_for

from pyglfs.client.layer import Layer
from pyglfs.client.replicate import Replicate
from pyglfs.rpc.brickops import LEASE_DOMAIN, ROOT_GFID

W = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def g() -> bytes:
    return uuid.uuid4().bytes


class Top(Layer):
    """A parent of replicate that records ``lease_recalled``, can hold it
    (``gate``) and can do work in it (``work``: what create-behind does there,
    send the creates it answered early)."""

    def __init__(self, child: Layer) -> None:
        super().__init__("top", [child])
        self.entered: list[bytes] = []
        self.returned: list[bytes] = []
        self.gate: trio.Event | None = None
        self.work: Callable[[bytes], Awaitable[None]] | None = None

    async def lease_recalled(self, pgfid: bytes) -> None:
        self.entered.append(pgfid)
        if self.gate is not None:
            await self.gate.wait()
        if self.work is not None:
            await self.work(pgfid)
        self.returned.append(pgfid)


async def mkdir(rep: Replicate, name: bytes) -> bytes:
    d = g()
    await rep.mkdir(ROOT_GFID, name, d, 0o755, 0, 0)
    return d


async def lock(env: ReplicaEnv, rep: Replicate, i: int, pgfid: bytes, type: str = "wr",
               block: bool = False) -> None:
    """Brick i's lease lock on ``pgfid`` for ``rep``'s owner, as another mount's
    lease manager would ask for it."""
    await env.brick_client(rep, i).inodelk(pgfid, LEASE_DOMAIN, type, 0, 0, rep.owner, block)


async def lockable(env: ReplicaEnv, rep: Replicate, i: int, pgfid: bytes) -> bool:
    """Whether ``rep`` could take the lease lock on brick i now (given back at once)."""
    try:
        await lock(env, rep, i, pgfid)
    except OSError as e:
        assert e.errno == errno.EAGAIN
        return False
    await lock(env, rep, i, pgfid, "un")
    return True


def wanted(rep: Replicate, pgfid: bytes) -> bool:
    rep.want_lease(pgfid)
    return rep.lease_held(pgfid)


async def two_clients(env: ReplicaEnv) -> tuple[Replicate, Top, Replicate]:
    a = await env.new_client()
    b = await env.new_client()
    return a, Top(a), b


async def test_take_recall_backoff(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top, b = await two_clients(env)
        assert a.leases is not None
        d = await mkdir(a, b"d")
        assert not a.lease_held(d)
        await leased(a, d)
        assert a.leases.table[d].on == 0b11
        for i in (0, 1):
            assert not await lockable(env, b, i, d)
        # Wanting it again while held sends nothing and keeps it.
        a.want_lease(d)
        assert a.lease_held(d)

        # B waits for the lease lock: A's parent is asked first, and the lock
        # goes only after the parent's hook returned.
        top.gate = trio.Event()
        got = trio.Event()

        async def b_waits() -> None:
            await lock(env, b, 0, d, block=True)
            got.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(b_waits)
            await wait_for(lambda: top.entered == [d], 5, "lease_recalled called")
            assert not a.lease_held(d)
            with trio.move_on_after(0.3):
                await got.wait()
            assert not got.is_set(), "the lease went back before lease_recalled returned"
            top.gate.set()
            with trio.fail_after(5):
                await got.wait()
        assert top.returned == [d]
        await wait_for(lambda: d not in a.leases.table, 5, "lease forgotten")
        assert not a.lease_held(d)
        # Backing off: wanting it does not take it again, even once B let go.
        await lock(env, b, 0, d, "un")
        a.want_lease(d)
        assert d not in a.leases.table
        assert await lockable(env, b, 1, d)
        # After the back-off it is taken again.
        await wait_for(lambda: wanted(a, d), 5, "lease retaken")
        assert len(top.entered) == 1
        await a.settle()
        assert top.entered == [d, d]
        for i in (0, 1):
            assert await lockable(env, b, i, d)


async def test_take_fails_where_another_holds_it(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top, b = await two_clients(env)
        assert a.leases is not None
        d = await mkdir(a, b"d")
        await lock(env, b, 1, d)
        a.want_lease(d)
        # Refused on brick 1, granted and given back on brick 0; nothing was
        # answered under it, so the parent is not asked.
        await wait_for(lambda: d not in a.leases.table, 5, "failed take given up")
        assert not a.lease_held(d)
        assert await lockable(env, b, 0, d)
        a.want_lease(d)
        assert d not in a.leases.table, "taken again within the back-off"
        assert top.entered == []


async def test_idle_give_back_and_lru(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top, b = await two_clients(env)
        assert a.leases is not None
        a.leases.idle = 0.4
        busy, quiet = await mkdir(a, b"busy"), await mkdir(a, b"quiet")
        await leased(a, busy)
        await leased(a, quiet)
        # Wanted every 50 ms it stays; the other goes back once idle.
        t0 = trio.current_time()
        for _ in range(100):
            a.want_lease(busy)
            assert a.lease_held(busy)
            if quiet not in a.leases.table:
                break
            await trio.sleep(0.05)
        assert quiet not in a.leases.table
        assert trio.current_time() - t0 >= 0.4
        assert top.entered == [quiet]
        for i in (0, 1):
            assert await lockable(env, b, i, quiet)
            assert not await lockable(env, b, i, busy)
        # An idle give-back does not back off.
        await leased(a, quiet)

        # Beyond max_leases the least recently used goes back first (quiet: it
        # was taken after busy, but busy was wanted since).
        a.leases.max_leases = 2
        a.leases.idle = 2.0
        third = await mkdir(a, b"third")
        a.want_lease(quiet)
        tick = a.leases._tick
        await wait_for(lambda: a.leases._tick > tick, 5, "a sweep")
        a.want_lease(busy)
        a.want_lease(third)
        await wait_for(lambda: quiet not in a.leases.table, 5, "LRU lease given back")
        await wait_for(lambda: a.lease_held(third), 5, "third lease taken")
        assert a.lease_held(busy)
        assert await lockable(env, b, 0, quiet)
        assert len(a.leases) == 2


async def test_brick_down_and_back(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top, b = await two_clients(env)
        assert a.leases is not None
        d = await mkdir(a, b"d")
        await leased(a, d)
        await env.bricks[1].kill()
        await wait_for(lambda: not a.children[1].is_up, 5, "brick 1 down")
        assert a.lease_held(d)
        await wait_for(lambda: a.leases.table[d].on == 0b01, 5, "brick 1 cleared")
        assert top.entered == []
        await env.bricks[1].start()
        await wait_for(lambda: a.children[1].is_up and b.children[1].is_up, 15, "brick 1 back")
        # The brick that came back does not hold it: not held until taken there
        # too (every lease goes back, the parent asked first).
        assert not a.lease_held(d)
        await wait_for(lambda: d not in a.leases.table, 5, "lease given back")
        assert top.entered == [d]
        assert await lockable(env, b, 1, d)
        await leased(a, d)
        assert a.leases.table[d].on == 0b11
        assert not await lockable(env, b, 1, d)

        # Without quorum (auto: the first brick must be up) it is not held,
        # and not taken.
        other = await mkdir(a, b"other")
        await env.bricks[0].kill()
        await wait_for(lambda: not a.children[0].is_up, 5, "brick 0 down")
        assert not a.lease_held(d)
        a.want_lease(other)
        assert other not in a.leases.table
        await wait_for(lambda: a.leases.table[d].on == 0b10, 5, "brick 0 cleared")
        await a.settle()
        assert not a.leases.table
        assert await lockable(env, b, 1, d)


async def test_settle_gives_everything_back(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top, b = await two_clients(env)
        assert a.leases is not None
        dirs = [await mkdir(a, b"d%d" % k) for k in range(3)]
        for d in dirs[:2]:
            await leased(a, d)
        a.want_lease(dirs[2])  # still on its way when settle starts
        await a.settle()
        assert not a.leases.table
        assert sorted(top.entered) == sorted(dirs[:2])
        for d in dirs:
            assert not a.lease_held(d)
            for i in (0, 1):
                assert await lockable(env, b, i, d)


async def test_leases_off_and_unknown_recall(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a = await env.new_client(leases=False)
        b = await env.new_client()
        assert a.leases is None and b.leases is not None
        d = await mkdir(a, b"d")
        a.want_lease(d)
        assert not a.lease_held(d)
        assert await lockable(env, b, 0, d)
        # A lock granted without our knowing (a lost reply) is given back when
        # a brick says another client waits for it.
        await lock(env, b, 0, d)
        b.on_event(b.children[0], "lock-contention",
                   {"gfid": d, "domain": LEASE_DOMAIN, "owner": b.owner})
        await wait_for(lambda: d not in b.leases.table, 5, "unknown lease unlocked")
        assert await lockable(env, a, 0, d)


async def test_lookup_elsewhere_waits_and_sees_the_early_create(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top, b = await two_clients(env)
        d = await mkdir(a, b"d")
        await leased(a, d)
        top.gate = trio.Event()
        made = g()

        async def send_early_create(pgfid: bytes) -> None:
            await a.create(pgfid, b"x", made, 0o644, 0, 0, W)
            await a.release(made)

        top.work = send_early_create
        found: list[bytes] = []

        async def b_looks() -> None:
            found.append((await b.lookup(d, b"x")).iatt.gfid)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b_looks)
                await wait_for(lambda: top.entered == [d], 5, "lease_recalled called")
                assert not a.lease_held(d)
                with trio.move_on_after(0.3):
                    await wait_for(lambda: bool(found), 1)
                assert not found, "the lookup went on while the lease was held"
                top.gate.set()
        # Held at the brick until the lease came back, the lookup saw the file.
        assert found == [made]
        assert top.returned == [d]


async def test_entry_change_elsewhere_waits_for_creates_under_the_lease(
        tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top, b = await two_clients(env)
        d = await mkdir(a, b"d")
        await leased(a, d)
        mine = g()
        order: list[str] = []

        async def send_early_create(pgfid: bytes) -> None:
            # The create this mount answered early, sent while the other mount
            # already waits for the directory: it must not wait for that one.
            await a.create(pgfid, b"x", mine, 0o644, 0, 0, W)
            await a.release(mine)
            order.append("a created")

        top.work = send_early_create

        async def b_creates() -> None:
            try:
                await b.create(d, b"x", g(), 0o644, 0, 0, W)
            except OSError as e:
                order.append(errno.errorcode[e.errno])
            else:
                order.append("b created")

        with trio.fail_after(8):
            await b_creates()
        # O_EXCL stays exact: the early create is first, the other mount's fails.
        assert order == ["a created", "EEXIST"]
        assert top.entered == [d]
        for brick in env.bricks:
            assert (brick.root / "d" / "x").exists()
        # B's lookup and create no longer wait, and A backs off.
        a.want_lease(d)
        assert not a.lease_held(d)
        with trio.fail_after(5):
            await b.create(d, b"y", g(), 0o644, 0, 0, W)


async def test_first_brick_back_with_a_create_pending(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top, b = await two_clients(env)
        assert a.leases is not None
        d = await mkdir(a, b"d")
        await leased(a, d)
        await env.bricks[0].kill()
        await wait_for(lambda: not a.children[0].is_up, 5, "brick 0 down")
        assert not a.lease_held(d)
        made = g()

        async def send_early_create(pgfid: bytes) -> None:
            # Its entry lock is held on brick 1 only: with brick 0 back it must
            # be taken again there, which the lease must not stand in the way of.
            await a.create(pgfid, b"x", made, 0o644, 0, 0, W)
            await a.release(made)

        top.work = send_early_create
        await env.bricks[0].start()
        with trio.fail_after(15):
            await wait_for(lambda: top.returned == [d], 15, "lease given back")
            await wait_for(lambda: d not in a.leases.table, 5, "lease forgotten")
        await a.settle()
        for brick in env.bricks:
            assert (brick.root / "d" / "x").exists()
        await wait_for(lambda: b.children[0].is_up, 15, "B back on brick 0")
        for i in (0, 1):
            assert await lockable(env, b, i, d)


async def test_two_mounts_creating_in_one_directory(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        a, top_a, b = await two_clients(env)
        top_b = Top(b)
        d = await mkdir(a, b"d")
        n = 400
        t0 = trio.current_time()

        async def creating(rep: Replicate, prefix: bytes) -> None:
            for k in range(n):
                rep.want_lease(d)
                x = g()
                await rep.create(d, b"%s%03d" % (prefix, k), x, 0o644, 0, 0, W)
                await rep.release(x)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(creating, a, b"a")
                nursery.start_soon(creating, b, b"b")
            await a.settle()
            await b.settle()
        elapsed = trio.current_time() - t0
        for brick in env.bricks:
            assert len(list((brick.root / "d").iterdir())) == 2 * n
        # The back-off keeps the lease from passing to and fro with every create
        # (whether either mount gets it at all depends on timing: each one's entry
        # changes recall the other's).
        assert a.leases is not None and b.leases is not None
        recalls = a.leases.recalls + b.leases.recalls
        assert recalls <= 2 * (elapsed / a.leases.backoff + 2), (recalls, elapsed)
        assert len(top_a.entered) + len(top_b.entered) <= recalls + 2
