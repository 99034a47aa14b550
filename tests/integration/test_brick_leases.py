"""Directory leases on a real ``pyglfs-brickd``: two raw connections, A and B.

While A holds the lease of directory D (a "wr" inodelk in LEASE_DOMAIN), B's
requests on D's entries wait, A hears "lock-contention" for D, A's own entry
ops in D pass at once, and once A unlocks, B's request runs and sees what A
made.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.brickclient import AUTH, VOLUME, BrickClient, ProcessBrick
from helpers.brickd import BrickdProcess, brickd_process

from pyglfs.rpc.brickops import LEASE_DOMAIN, ROOT_GFID

HELD = 0.3  # how long a held request is watched not completing (beyond the event)
SOON = 5.0


@pytest.fixture(scope="module")
def brickd_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrickdProcess]:
    tmp = tmp_path_factory.mktemp("brickd-leases")
    with brickd_process(tmp, volume=VOLUME, auth=AUTH) as proc:
        yield proc
        assert proc.alive(), "brickd died during the tests:\n" + proc.log_text()
        log = proc.log_text()
        assert "Traceback" not in log, log


@pytest.fixture
async def ab(brickd_proc: BrickdProcess) -> AsyncIterator[tuple[BrickClient, BrickClient]]:
    brick = ProcessBrick(brickd_proc)
    async with brick.connect() as a, brick.connect() as b:
        yield a, b


def lease(gfid: bytes, owner: bytes, kind: str = "wr") -> dict[str, Any]:
    return {"gfid": gfid, "domain": LEASE_DOMAIN, "type": kind, "start": 0, "len": 0,
            "owner": owner, "block": False}


async def mkdir(c: BrickClient, parent: bytes = ROOT_GFID, name: bytes | None = None) -> bytes:
    g = uuid.uuid4().bytes
    name = name or f"d-{uuid.uuid4().hex[:10]}".encode()
    await c.call("mkdir", {"pgfid": parent, "name": name, "gfid": g, "mode": 0o755,
                           "uid": 0, "gid": 0})
    return g


def create_args(parent: bytes, name: bytes) -> dict[str, Any]:
    return {"pgfid": parent, "name": name, "gfid": uuid.uuid4().bytes, "mode": 0o644,
            "uid": 0, "gid": 0}


async def create(c: BrickClient, parent: bytes, name: bytes) -> bytes:
    args = create_args(parent, name)
    await c.call("create", args)
    await c.call("release", {"gfid": args["gfid"]})
    return bytes(args["gfid"])


class Background:
    """One call run in its own task: ``done`` once it returned or raised."""

    def __init__(self, nursery: trio.Nursery, call: Callable[[], Awaitable[Any]]) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: OSError | None = None
        nursery.start_soon(self._run, call)

    async def _run(self, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            self.result = await call()
        except OSError as e:
            self.error = e
        finally:
            self.done.set()

    async def wait(self, timeout: float = SOON) -> Any:
        with trio.fail_after(timeout):
            await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def contention_for(c: BrickClient, gfid: bytes, timeout: float = SOON) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            for name, args in c.events:
                if (name == "lock-contention" and args.get("gfid") == gfid
                        and args.get("domain") == LEASE_DOMAIN):
                    return args
            await trio.sleep(0.005)


async def held_then_run(a: BrickClient, d: bytes, owner: bytes, waiting: Background,
                        while_held: Callable[[], Awaitable[Any]] | None = None) -> Any:
    """``waiting`` (B's request) stays held while A holds the lease of ``d``: A is
    told, A's own ``while_held`` passes at once; after A's unlock it completes."""
    told = await contention_for(a, d)
    assert told["owner"] == owner
    if while_held is not None:
        with trio.fail_after(SOON):
            await while_held()
    with trio.move_on_after(HELD):
        await waiting.done.wait()
    assert not waiting.done.is_set(), "the request ran while another connection held the lease"
    await a.call("inodelk", lease(d, owner, "un"))
    return await waiting.wait()


async def test_lookup_waits_for_the_lease_and_sees_the_holders_create(
        ab: tuple[BrickClient, BrickClient]) -> None:
    a, b = ab
    d = await mkdir(a)
    await a.call("inodelk", lease(d, b"A"))
    gfid: list[bytes] = []

    async def a_creates() -> None:
        gfid.append(await create(a, d, b"x"))

    async with trio.open_nursery() as n:
        look = Background(n, lambda: b.call("lookup", {"pgfid": d, "name": b"x"}))
        r = await held_then_run(a, d, b"A", look, a_creates)
    assert r["iatt"][0] == gfid[0]
    # B's gate lock is gone with its request: A can take the lease again at once.
    await a.call("inodelk", lease(d, b"A"))
    await a.call("inodelk", lease(d, b"A", "un"))


async def test_readdir_waits_and_lists_the_holders_file(
        ab: tuple[BrickClient, BrickClient]) -> None:
    a, b = ab
    d = await mkdir(a)
    await a.call("inodelk", lease(d, b"A"))
    async with trio.open_nursery() as n:
        ls = Background(n, lambda: b.call("readdir", {"gfid": d, "cookie": 0, "count": 100}))
        r = await held_then_run(a, d, b"A", ls, lambda: create(a, d, b"mine"))
    assert b"mine" in {e[0] for e in r["entries"]}


async def test_exclusive_create_of_the_same_name_gets_eexist(
        ab: tuple[BrickClient, BrickClient]) -> None:
    a, b = ab
    d = await mkdir(a)
    await a.call("inodelk", lease(d, b"A"))
    async with trio.open_nursery() as n:
        theirs = Background(n, lambda: b.call("create", create_args(d, b"same")))
        with pytest.raises(OSError) as ei:
            await held_then_run(a, d, b"A", theirs, lambda: create(a, d, b"same"))
    assert ei.value.errno == errno.EEXIST


async def test_rename_into_and_out_of_a_leased_dir_waits(
        ab: tuple[BrickClient, BrickClient]) -> None:
    a, b = ab
    d = await mkdir(a)
    e = await mkdir(a)
    await create(b, e, b"moving-in")
    await a.call("inodelk", lease(d, b"A"))
    async with trio.open_nursery() as n:
        into = Background(n, lambda: b.call("rename", {
            "old_pgfid": e, "old_name": b"moving-in", "new_pgfid": d, "new_name": b"in"}))
        await held_then_run(a, d, b"A", into, lambda: create(a, d, b"out"))
    await a.call("inodelk", lease(d, b"A"))
    async with trio.open_nursery() as n:
        out = Background(n, lambda: b.call("rename", {
            "old_pgfid": d, "old_name": b"out", "new_pgfid": e, "new_name": b"out"}))
        await held_then_run(a, d, b"A", out)
    r = await b.call("readdir", {"gfid": e, "cookie": 0, "count": 100})
    assert {x[0] for x in r["entries"]} >= {b"out"}


async def test_rmdir_of_a_leased_dir_waits_and_finds_the_holders_file(
        ab: tuple[BrickClient, BrickClient]) -> None:
    a, b = ab
    name = f"d-{uuid.uuid4().hex[:10]}".encode()
    d = await mkdir(a, name=name)
    await a.call("inodelk", lease(d, b"A"))
    async with trio.open_nursery() as n:
        rm = Background(n, lambda: b.call("rmdir", {"pgfid": ROOT_GFID, "name": name}))
        with pytest.raises(OSError) as ei:
            await held_then_run(a, d, b"A", rm, lambda: create(a, d, b"early"))
    assert ei.value.errno == errno.ENOTEMPTY


async def test_entry_ops_of_other_dirs_and_without_a_lease_never_wait(
        ab: tuple[BrickClient, BrickClient]) -> None:
    a, b = ab
    d = await mkdir(a)
    other = await mkdir(a)
    await a.call("inodelk", lease(other, b"A"))
    with trio.fail_after(SOON):
        await create(b, d, b"f")
        await b.call("lookup", {"pgfid": d, "name": b"f"})
        await b.call("readdir", {"gfid": d, "cookie": 0, "count": 10})
    await a.call("inodelk", lease(other, b"A", "un"))
    assert not [ev for ev in a.events + b.events if ev[0] == "lock-contention"]


async def test_the_holders_disconnect_frees_the_waiter(brickd_proc: BrickdProcess) -> None:
    brick = ProcessBrick(brickd_proc)
    async with brick.connect() as b:
        async with brick.connect() as a:
            d = await mkdir(a)
            await a.call("inodelk", lease(d, b"A"))
            async with trio.open_nursery() as n:
                look = Background(n, lambda: b.call("lookup", {"pgfid": d, "name": b"x"}))
                await contention_for(a, d)
                assert not look.done.is_set()
                await a.aclose()
                with pytest.raises(OSError) as ei:
                    await look.wait()
        assert ei.value.errno == errno.ENOENT


def test_brick_log_has_no_traceback(brickd_proc: BrickdProcess, tmp_path: Path) -> None:
    assert "Traceback" not in brickd_proc.log_text()
