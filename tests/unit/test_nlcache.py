"""nl-cache (client/nlcache.py) against a fake child that counts the lookups
reaching it."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.client.graph import build_graph
from pyglfs.client.layer import DirEntry, Layer, Lookup
from pyglfs.client.mdcache import EVENT
from pyglfs.client.nlcache import NAME_COST, NlCache
from pyglfs.rpc.brickops import ROOT_GFID, Iatt
from pyglfs.volfiles.parser import parse

D_GFID = b"\x33" * 16
E_GFID = b"\x44" * 16


def iatt(gfid: bytes, mode: int = 0o100644) -> Iatt:
    return Iatt(gfid, 1, mode, 1, 0, 0, 0, 0, 0, 1, 2, 3)


class Fake(Layer):
    """Names -> gfids; ``gate`` holds entry operations and listings until set,
    ``lookup_gate`` holds a lookup's answer (decided when it arrived) until
    set; ``fail`` makes entry operations raise it."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.names: dict[tuple[bytes, bytes], bytes] = {(ROOT_GFID, b"here"): b"\x11" * 16}
        self.lookups: list[bytes] = []
        self.gate: trio.Event | None = None
        self.lookup_gate: trio.Event | None = None
        self.fail: OSError | None = None
        self._n = 0

    async def _wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    def _gfid(self) -> bytes:
        self._n += 1
        return self._n.to_bytes(16, "big")

    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        self.lookups.append(name)
        gfid = self.names.get((pgfid, name))
        if self.lookup_gate is not None:
            await self.lookup_gate.wait()
        if gfid is None:
            raise OSError(errno.ENOENT, "no such name")
        return Lookup(iatt(gfid), {})

    async def _make(self, pgfid: bytes, name: bytes, gfid: bytes) -> Iatt:
        await self._wait()
        if self.fail is not None:
            raise self.fail
        if (pgfid, name) in self.names:
            raise OSError(errno.EEXIST, "exists")
        self.names[(pgfid, name)] = gfid
        return iatt(gfid)

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0, xattrop: Any = None) -> Any:
        return await self._make(pgfid, name, gfid)

    async def mkdir(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                    gid: int, xattrop: Any = None) -> Any:
        return await self._make(pgfid, name, gfid)

    async def symlink(self, pgfid: bytes, name: bytes, gfid: bytes, target: bytes, uid: int,
                      gid: int, xattrop: Any = None) -> Any:
        return await self._make(pgfid, name, gfid)

    async def mknod(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, rdev: int,
                    uid: int, gid: int, xattrop: Any = None) -> Any:
        return await self._make(pgfid, name, gfid)

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes, xattrop: Any = None) -> Any:
        return await self._make(pgfid, name, gfid)

    async def unlink(self, pgfid: bytes, name: bytes, xattrop: Any = None) -> Any:
        await self._wait()
        if self.fail is not None:
            raise self.fail
        if self.names.pop((pgfid, name), None) is None:
            raise OSError(errno.ENOENT, "no such name")
        return None

    async def rmdir(self, pgfid: bytes, name: bytes, xattrop: Any = None) -> Any:
        return await self.unlink(pgfid, name)

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int = 0, xattrop: Any = None) -> Any:
        await self._wait()
        if self.fail is not None:
            raise self.fail
        gfid = self.names.pop((old_pgfid, old_name))
        if flags & 2:
            self.names[(old_pgfid, old_name)] = self.names[(new_pgfid, new_name)]
        self.names[(new_pgfid, new_name)] = gfid
        return None

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        await self._wait()
        names = sorted(n for p, n in self.names if p == gfid)
        page = [DirEntry(n, i + 1, 8, None) for i, n in enumerate(names)][cookie:cookie + count]
        return page, cookie + count >= len(names)

    def foreign(self, pgfid: bytes, name: bytes, gfids: bool = True) -> None:
        """Another client makes ``name`` and its event comes up."""
        self.names[(pgfid, name)] = self._gfid()
        self.parent_event({"gfids": [pgfid] if gfids else [], "entries": [[pgfid, name]]})

    def parent_event(self, args: dict[str, Any]) -> None:
        assert self.parent is not None
        self.parent.on_event(self, EVENT, args)


class Top(Layer):
    def __init__(self, child: Layer) -> None:
        super().__init__("top", [child])
        self.events: list[dict[str, Any]] = []

    def on_event(self, child: Layer, name: str, args: dict[str, Any]) -> None:
        self.events.append(args)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(timeout: float = 600.0, **kw: Any) -> tuple[NlCache, Fake, Clock]:
    fake, clock = Fake(), Clock()
    nlc = NlCache("nlc", fake, timeout=timeout, invalidation=True, clock=clock, **kw)
    Top(nlc)
    return nlc, fake, clock


async def exists(layer: Layer, pgfid: bytes, name: bytes) -> bool:
    try:
        await layer.lookup(pgfid, name)
    except FileNotFoundError:
        return False
    return True


async def test_second_lookup_of_an_absent_name_is_answered() -> None:
    nlc, fake, _ = make()
    assert not await exists(nlc, ROOT_GFID, b"nope")
    assert not await exists(nlc, ROOT_GFID, b"nope")
    assert fake.lookups == [b"nope"]
    assert await exists(nlc, ROOT_GFID, b"here")
    assert await exists(nlc, ROOT_GFID, b"here")
    assert fake.lookups == [b"nope", b"here", b"here"]
    assert nlc.hits == 1 and nlc.misses == 3


async def test_a_directory_made_here_answers_every_lookup_of_a_new_name() -> None:
    nlc, fake, _ = make()
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    for i in range(20):
        name = b"f%d" % i
        assert not await exists(nlc, D_GFID, name)
        await nlc.create(D_GFID, name, bytes([i + 1]) * 16, 0o100644, 0, 0)
    assert fake.lookups == []
    assert await exists(nlc, D_GFID, b"f3")  # made here: asked below
    assert not await exists(nlc, D_GFID, b"other")
    assert fake.lookups == [b"f3"]
    await nlc.symlink(D_GFID, b"s", E_GFID, b"f1", 0, 0)
    await nlc.mknod(D_GFID, b"p", b"\x66" * 16, 0o10644, 0, 0, 0)
    await nlc.link(b"\x01" * 16, D_GFID, b"l")
    await nlc.rename(D_GFID, b"f4", D_GFID, b"g4")
    await nlc.unlink(D_GFID, b"f5")
    for name in (b"s", b"p", b"l", b"g4"):
        assert await exists(nlc, D_GFID, name)
    for name in (b"f4", b"f5"):
        assert not await exists(nlc, D_GFID, name)
    assert fake.lookups == [b"f3", b"s", b"p", b"l", b"g4"]
    assert nlc.stats()["complete"] == 1


async def test_events_waiting_in_the_sockets_come_before_a_negative_answer() -> None:
    """``take_in`` stands for the brick sockets: an event already in one (a
    name made elsewhere) is taken in before the table answers "absent", and
    only then."""
    waiting: list[dict[str, Any]] = []
    calls = []

    def take_in() -> None:
        calls.append(len(waiting))
        while waiting:
            fake.parent_event(waiting.pop())

    nlc, fake, _ = make(take_in=take_in)
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    assert not await exists(nlc, D_GFID, b"x")
    assert calls == [0] and fake.lookups == []
    fake.names[(D_GFID, b"x")] = E_GFID
    waiting.append({"gfids": [D_GFID], "entries": [[D_GFID, b"x"]]})
    assert await exists(nlc, D_GFID, b"x")
    assert calls == [0, 1] and fake.lookups == [b"x"]
    assert await exists(nlc, D_GFID, b"x")  # a miss: nothing to take in first
    assert calls == [0, 1]
    off = NlCache("off", Fake(), timeout=600, invalidation=False, take_in=take_in)
    await off.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    assert not await exists(off, D_GFID, b"y")
    assert calls == [0, 1], "no events without cache-invalidation: nothing to take in"


async def test_special_names_pass_through_a_complete_directory() -> None:
    nlc, fake, _ = make()
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    for name in (b".", b"..", b"a/b", b"x" * 256, b""):
        assert not await exists(nlc, D_GFID, name)
    assert len(fake.lookups) == 5


async def test_foreign_changes_drop_what_is_known() -> None:
    nlc, fake, _ = make()
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    assert not await exists(nlc, ROOT_GFID, b"x")
    fake.foreign(D_GFID, b"y")  # names the directory: it is no longer complete
    assert await exists(nlc, D_GFID, b"y")
    fake.foreign(ROOT_GFID, b"x", gfids=False)  # an event naming only the entry
    assert await exists(nlc, ROOT_GFID, b"x")
    assert fake.lookups == [b"x", b"y", b"x"]
    # an event naming only the directory's gfid (its attributes) drops it too
    assert not await exists(nlc, D_GFID, b"z")
    fake.parent_event({"gfids": [D_GFID], "entries": []})
    assert not await exists(nlc, D_GFID, b"z")
    assert fake.lookups[-2:] == [b"z", b"z"]


async def test_events_are_passed_up() -> None:
    nlc, fake, _ = make()
    fake.foreign(D_GFID, b"y")
    fake.parent_event({"all": True})
    assert nlc.parent is not None
    assert [sorted(e) for e in nlc.parent.events] == [  # type: ignore[attr-defined]
        ["entries", "gfids"], ["all"]]


@pytest.mark.parametrize("how", ["all", "down", "up"])
async def test_everything_goes_on_all_events_and_brick_changes(how: str) -> None:
    nlc, fake, _ = make()
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    assert not await exists(nlc, ROOT_GFID, b"x")
    if how == "all":
        fake.parent_event({"all": True})
    elif how == "down":
        nlc.child_down(fake, "gone")
    else:
        nlc.child_up(fake)
    assert nlc.stats()["dirs"] == 0 and nlc.stats()["bytes"] == 0
    assert not await exists(nlc, ROOT_GFID, b"x")
    assert not await exists(nlc, D_GFID, b"x")
    assert fake.lookups == [b"x", b"x", b"x"]


async def test_an_enoent_racing_an_invalidation_is_not_kept() -> None:
    nlc, fake, _ = make()
    fake.lookup_gate = trio.Event()
    async with trio.open_nursery() as nursery:
        async def look() -> None:
            assert not await exists(nlc, ROOT_GFID, b"x")
        nursery.start_soon(look)
        await trio.testing.wait_all_tasks_blocked()
        fake.foreign(ROOT_GFID, b"x")
        fake.lookup_gate.set()
    fake.lookup_gate = None
    assert await exists(nlc, ROOT_GFID, b"x")
    assert fake.lookups == [b"x", b"x"]


async def test_an_enoent_racing_our_own_create_is_not_kept() -> None:
    nlc, fake, _ = make()
    fake.lookup_gate = trio.Event()
    async with trio.open_nursery() as nursery:
        async def look() -> None:
            assert not await exists(nlc, ROOT_GFID, b"x")
        nursery.start_soon(look)
        await trio.testing.wait_all_tasks_blocked()
        # the brick answered the lookup before the create landed, but the
        # create's reply comes first
        await nlc.create(ROOT_GFID, b"x", E_GFID, 0o100644, 0, 0)
        fake.lookup_gate.set()
    fake.lookup_gate = None
    assert await exists(nlc, ROOT_GFID, b"x")
    assert fake.lookups == [b"x", b"x"]


async def test_a_mkdir_racing_an_invalidation_is_not_complete() -> None:
    nlc, fake, _ = make()
    fake.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(nlc.mkdir, ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
        await trio.testing.wait_all_tasks_blocked()
        fake.names[(D_GFID, b"early")] = E_GFID
        fake.parent_event({"gfids": [D_GFID], "entries": [[D_GFID, b"early"]]})
        fake.gate.set()
    fake.gate = None
    assert await exists(nlc, D_GFID, b"early")
    assert not await exists(nlc, D_GFID, b"other")
    assert fake.lookups == [b"early", b"other"]


async def test_changes_elsewhere_do_not_spoil_answers_out() -> None:
    """Other clients' writes name files, other directories change: a lookup
    or a mkdir out meanwhile still counts."""
    nlc, fake, _ = make()
    fake.gate = trio.Event()
    fake.lookup_gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(nlc.mkdir, ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
        nursery.start_soon(exists, nlc, ROOT_GFID, b"x")
        await trio.testing.wait_all_tasks_blocked()
        fake.parent_event({"gfids": [b"\x77" * 16], "entries": []})
        fake.foreign(E_GFID, b"elsewhere")
        fake.lookup_gate.set()
        fake.gate.set()
    fake.gate = fake.lookup_gate = None
    assert nlc.stats()["complete"] == 1
    assert not await exists(nlc, D_GFID, b"y")
    assert not await exists(nlc, ROOT_GFID, b"x")
    assert fake.lookups == [b"x"]


async def test_own_changes_spoil_only_answers_on_the_same_name() -> None:
    nlc, fake, _ = make()
    fake.lookup_gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exists, nlc, ROOT_GFID, b"x")
        nursery.start_soon(exists, nlc, ROOT_GFID, b"y")
        await trio.testing.wait_all_tasks_blocked()
        await nlc.create(ROOT_GFID, b"x", E_GFID, 0o100644, 0, 0)
        fake.lookup_gate.set()
    fake.lookup_gate = None
    assert await exists(nlc, ROOT_GFID, b"x")
    assert not await exists(nlc, ROOT_GFID, b"y")
    assert sorted(fake.lookups) == [b"x", b"x", b"y"]


async def test_an_unlink_racing_an_invalidation_records_nothing() -> None:
    nlc, fake, _ = make()
    fake.names[(ROOT_GFID, b"x")] = E_GFID
    fake.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(nlc.unlink, ROOT_GFID, b"x")
        await trio.testing.wait_all_tasks_blocked()
        fake.gate.set()
        # another client re-creates x and its event arrives before our reply
        fake.parent_event({"gfids": [ROOT_GFID], "entries": [[ROOT_GFID, b"x"]]})
    fake.gate = None
    fake.names[(ROOT_GFID, b"x")] = E_GFID
    assert await exists(nlc, ROOT_GFID, b"x")
    await nlc.unlink(ROOT_GFID, b"x")
    assert not await exists(nlc, ROOT_GFID, b"x")
    assert fake.lookups == [b"x"]


async def test_failed_entry_operations() -> None:
    nlc, fake, _ = make()
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    fake.names[(D_GFID, b"made")] = E_GFID  # as if an earlier try had made it
    with pytest.raises(FileExistsError):
        await nlc.create(D_GFID, b"made", E_GFID, 0o100644, 0, 0)
    assert await exists(nlc, D_GFID, b"made")
    assert not await exists(nlc, D_GFID, b"n")
    assert fake.lookups == [b"made"]
    fake.fail = OSError(errno.EIO, "one brick failed")
    with pytest.raises(OSError):
        await nlc.create(D_GFID, b"n", b"\x55" * 16, 0o100644, 0, 0)
    fake.fail = None
    assert not await exists(nlc, D_GFID, b"n")
    assert fake.lookups == [b"made", b"n"]
    fake.fail = OSError(errno.EIO, "one brick failed")
    with pytest.raises(OSError):
        await nlc.rename(D_GFID, b"made", ROOT_GFID, b"moved")
    fake.fail = None
    assert not await exists(nlc, D_GFID, b"n")
    assert fake.lookups == [b"made", b"n", b"n"]


async def test_a_cancelled_create_drops_the_directory() -> None:
    nlc, fake, _ = make()
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    fake.gate = trio.Event()
    with trio.move_on_after(0.01):
        await nlc.create(D_GFID, b"n", E_GFID, 0o100644, 0, 0)
    fake.gate = None
    fake.names[(D_GFID, b"n")] = E_GFID  # it may have been made
    assert await exists(nlc, D_GFID, b"n")


async def test_a_full_listing_makes_a_directory_complete() -> None:
    nlc, fake, _ = make()
    for i in range(5):
        fake.names[(D_GFID, b"n%d" % i)] = bytes([i + 1]) * 16
    cookie, eof = 0, False
    while not eof:
        page, eof = await nlc.readdir(D_GFID, cookie, 2)
        cookie = page[-1].cookie if page else cookie
    assert nlc.stats()["complete"] == 1
    assert not await exists(nlc, D_GFID, b"zz")
    assert await exists(nlc, D_GFID, b"n3")
    assert fake.lookups == [b"n3"]


async def test_a_listing_with_a_change_in_the_middle_is_not_complete() -> None:
    nlc, fake, _ = make()
    for i in range(5):
        fake.names[(D_GFID, b"n%d" % i)] = bytes([i + 1]) * 16
    page, eof = await nlc.readdir(D_GFID, 0, 2)
    fake.foreign(D_GFID, b"a")  # lands before the cookie already passed
    while not eof:
        page, eof = await nlc.readdir(D_GFID, page[-1].cookie, 2)
    assert nlc.stats()["complete"] == 0
    assert await exists(nlc, D_GFID, b"a")
    # a listing that skips pages proves nothing either
    await nlc.readdir(D_GFID, 0, 2)
    await nlc.readdir(D_GFID, 4, 10)
    assert nlc.stats()["complete"] == 0


async def test_knowledge_expires() -> None:
    nlc, fake, clock = make(timeout=1.0)
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    assert not await exists(nlc, ROOT_GFID, b"x")
    clock.now += 0.5
    assert not await exists(nlc, ROOT_GFID, b"x")
    assert not await exists(nlc, D_GFID, b"x")
    assert fake.lookups == [b"x"]
    clock.now += 0.6
    assert not await exists(nlc, ROOT_GFID, b"x")
    assert not await exists(nlc, D_GFID, b"x")
    assert fake.lookups == [b"x", b"x", b"x"]


async def test_memory_is_bounded() -> None:
    limit = 4096 + 40 * NAME_COST
    nlc, fake, _ = make(limit=limit)
    for i in range(50):
        assert not await exists(nlc, bytes([i + 1]) * 16, b"gone%d" % i)
        assert nlc.stats()["bytes"] <= nlc.limit
    assert 1 <= nlc.stats()["dirs"] < 50
    # the newest are kept, the oldest evicted
    assert not await exists(nlc, bytes([50]) * 16, b"gone49")
    assert len(fake.lookups) == 50
    assert not await exists(nlc, bytes([1]) * 16, b"gone0")
    assert len(fake.lookups) == 51
    # one directory bigger than the limit is just not complete
    await nlc.mkdir(ROOT_GFID, b"big", D_GFID, 0o40755, 0, 0)
    for i in range(100):
        await nlc.create(D_GFID, b"f%03d" % i, (1000 + i).to_bytes(16, "big"), 0o100644, 0, 0)
        assert nlc.stats()["bytes"] <= nlc.limit
    before = len(fake.lookups)
    assert await exists(nlc, D_GFID, b"f000")
    assert not await exists(nlc, D_GFID, b"nope")
    assert len(fake.lookups) == before + 2


def test_the_volfile_builds_the_layer() -> None:
    text = """
volume v-client-0
    type protocol/client
    option remote-host 127.0.0.1
    option remote-subvolume /b
end-volume
volume v-nl-cache
    type performance/nl-cache
    option cache-invalidation %s
    %s
    subvolumes v-client-0
end-volume
volume v
    type debug/io-stats
    subvolumes v-nl-cache
end-volume
"""
    def built(inval: str, extra: str) -> NlCache:
        top = build_graph(parse(text % (inval, extra)), client_id="t")
        nlc = top.child
        assert isinstance(nlc, NlCache)
        return nlc

    on = built("on", "")
    assert on.invalidation and on.timeout == 600
    off = built("off", "option nl-cache-limit 1MB")
    assert not off.invalidation and off.timeout == 1 and off.limit == 1 << 20
    assert built("on", "option nl-cache-timeout 5").timeout == 5


async def test_renames_between_directories() -> None:
    nlc, fake, _ = make()
    await nlc.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
    await nlc.mkdir(ROOT_GFID, b"e", E_GFID, 0o40755, 0, 0)
    await nlc.create(D_GFID, b"a", b"\x0a" * 16, 0o100644, 0, 0)
    await nlc.create(E_GFID, b"b", b"\x0b" * 16, 0o100644, 0, 0)
    await nlc.rename(D_GFID, b"a", E_GFID, b"a2")
    assert not await exists(nlc, D_GFID, b"a")
    assert await exists(nlc, E_GFID, b"a2")
    await nlc.rename(E_GFID, b"a2", E_GFID, b"b", 2)  # RENAME_EXCHANGE: both stay
    assert await exists(nlc, E_GFID, b"a2") and await exists(nlc, E_GFID, b"b")
    await nlc.rmdir(ROOT_GFID, b"d")
    assert not await exists(nlc, ROOT_GFID, b"d")
    assert fake.lookups == [b"a2", b"a2", b"b"]


async def test_every_entry_change_elsewhere_reaches_the_cache(tmp_path: Any) -> None:
    """Over real bricks: each way another client can make or remove a name
    (create, mkdir, mknod, symlink, link, rename, unlink) reaches this client as
    an invalidation naming the entry, from each brick (brickd/upcall.py), and
    the name is then seen although this client's directory was complete."""
    from helpers.replica import open_replica, wait_for

    from pyglfs.client.fuse.inodes import new_gfid

    async with open_replica(tmp_path, post_op_delay=0.0) as env:
        a = env.rep
        b = NlCache("b", await env.new_client(post_op_delay=0.0), timeout=600,
                    invalidation=True)
        top = Top(b)

        def told(name: bytes) -> int:
            """Events naming ``name`` in d: one from each brick."""
            return sum(1 for e in top.events if [D_GFID, name] in e.get("entries", ()))
        file_gfid = new_gfid()
        await a.create(ROOT_GFID, b"src", file_gfid, 0o100644, 0, 0)
        await b.mkdir(ROOT_GFID, b"d", D_GFID, 0o40755, 0, 0)
        makers = {
            b"c": lambda n: a.create(D_GFID, n, new_gfid(), 0o100644, 0, 0),
            b"m": lambda n: a.mkdir(D_GFID, n, new_gfid(), 0o40755, 0, 0),
            b"p": lambda n: a.mknod(D_GFID, n, new_gfid(), 0o10644, 0, 0, 0),
            b"s": lambda n: a.symlink(D_GFID, n, new_gfid(), b"src", 0, 0),
            b"l": lambda n: a.link(file_gfid, D_GFID, n),
            b"r": lambda n: a.rename(ROOT_GFID, b"src", D_GFID, n),
        }
        for name, make_it in makers.items():
            assert not await exists(b, D_GFID, name)
            await make_it(name)
            # at once: the events are in b's sockets before a heard "done"
            assert await exists(b, D_GFID, name)
            await wait_for(lambda n=name: told(n) == 2, 5, f"{name!r} told by both bricks")
        await a.unlink(D_GFID, b"c")
        assert await exists(b, D_GFID, b"l")
        await wait_for(lambda: told(b"c") == 4, 5, "unlink told by both bricks")
        assert not await exists(b, D_GFID, b"c")
