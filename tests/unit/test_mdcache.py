"""md-cache (client/mdcache.py) against a fake child that counts its calls."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.client.layer import DirEntry, EntryReply, Layer, Lookup, RenameReply
from pyglfs.client.mdcache import EVENT, MdCache
from pyglfs.rpc.brickops import ROOT_GFID, Iatt

F_GFID = b"\x11" * 16
G_GFID = b"\x22" * 16
D_GFID = b"\x33" * 16


def iatt(gfid: bytes, size: int = 0, mode: int = 0o100644, nlink: int = 1) -> Iatt:
    return Iatt(gfid, 1, mode, nlink, 0, 0, 0, size, 0, 1, 2, 3)


class Fake(Layer):
    """A tree of one directory level: names -> gfids, gfid -> iatt, xattrs."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.names: dict[tuple[bytes, bytes], bytes] = {(ROOT_GFID, b"f"): F_GFID}
        self.iatts: dict[bytes, Iatt] = {F_GFID: iatt(F_GFID),
                                         ROOT_GFID: iatt(ROOT_GFID, mode=0o40755, nlink=2),
                                         D_GFID: iatt(D_GFID, mode=0o40755, nlink=2)}
        self.xattrs: dict[bytes, dict[str, bytes]] = {F_GFID: {"user.a": b"1"}}
        self.calls: list[str] = []
        self.gate: trio.Event | None = None

    def _touch(self, pgfid: bytes) -> Iatt:
        """The directory's attributes after an entry change in it (mtime moves on)."""
        old = self.iatts[pgfid]
        self.iatts[pgfid] = old._replace(mtime_ns=old.mtime_ns + 1)
        return self.iatts[pgfid]

    async def _maybe_wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    async def lookup(self, pgfid: bytes, name: bytes) -> Lookup:
        self.calls.append("lookup")
        await self._maybe_wait()
        try:
            return Lookup(self.iatts[self.names[(pgfid, name)]], {"trusted.afr.x": b"0" * 12})
        except KeyError:
            raise OSError(errno.ENOENT, "no such name") from None

    async def lookup_gfid(self, gfid: bytes) -> Lookup:
        self.calls.append("lookup_gfid")
        return Lookup(self.iatts[gfid], {})

    async def stat(self, gfid: bytes) -> Iatt:
        self.calls.append("stat")
        return self.iatts[gfid]

    async def create(self, pgfid: bytes, name: bytes, gfid: bytes, mode: int, uid: int,
                     gid: int, flags: int = 0, xattrop: Any = None) -> EntryReply:
        self.calls.append("create")
        await self._maybe_wait()
        self.names[(pgfid, name)] = gfid
        self.iatts[gfid] = iatt(gfid, mode=mode)
        return EntryReply(self.iatts[gfid], self._touch(pgfid))

    async def write(self, gfid: bytes, offset: int, data: bytes, xattrop: Any = None) -> Iatt:
        self.calls.append("write")
        old = self.iatts[gfid]
        self.iatts[gfid] = old._replace(size=max(old.size, offset + len(data)))
        return self.iatts[gfid]

    async def setattr(self, gfid: bytes, **kw: Any) -> Iatt:
        self.calls.append("setattr")
        if kw.get("mode") is not None:
            old = self.iatts[gfid]
            self.iatts[gfid] = old._replace(mode=old.mode & ~0o7777 | kw["mode"])
        return self.iatts[gfid]

    async def link(self, gfid: bytes, pgfid: bytes, name: bytes,
                   xattrop: Any = None) -> EntryReply:
        self.calls.append("link")
        self.names[(pgfid, name)] = gfid
        self.iatts[gfid] = self.iatts[gfid]._replace(nlink=self.iatts[gfid].nlink + 1)
        return EntryReply(self.iatts[gfid], self._touch(pgfid))

    async def unlink(self, pgfid: bytes, name: bytes, xattrop: Any = None) -> Iatt | None:
        self.calls.append("unlink")
        gfid = self.names.pop((pgfid, name))
        self.iatts[gfid] = self.iatts[gfid]._replace(nlink=self.iatts[gfid].nlink - 1)
        return self._touch(pgfid)

    async def rename(self, old_pgfid: bytes, old_name: bytes, new_pgfid: bytes,
                     new_name: bytes, flags: int = 0, xattrop: Any = None) -> RenameReply:
        self.calls.append("rename")
        gfid = self.names.pop((old_pgfid, old_name))
        self.names[(new_pgfid, new_name)] = gfid
        return RenameReply(self.iatts[gfid], self._touch(old_pgfid), self._touch(new_pgfid))

    async def getxattr(self, gfid: bytes, name: str) -> bytes:
        self.calls.append("getxattr")
        try:
            return self.xattrs.get(gfid, {})[name]
        except KeyError:
            raise OSError(errno.ENODATA, "no attr") from None

    async def listxattr(self, gfid: bytes) -> list[str]:
        self.calls.append("listxattr")
        return list(self.xattrs.get(gfid, {}))

    async def setxattr(self, gfid: bytes, name: str, value: bytes, flags: int = 0,
                       xattrop: Any = None) -> None:
        self.calls.append("setxattr")
        self.xattrs.setdefault(gfid, {})[name] = value

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool = False) -> tuple[list[DirEntry], bool]:
        self.calls.append("readdir")
        ents = [DirEntry(n, i + 1, 8, self.iatts[g] if plus else None)
                for i, ((p, n), g) in enumerate(sorted(self.names.items())) if p == gfid]
        return ents, True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(timeout: float = 600.0, **kw: Any) -> tuple[MdCache, Fake, Clock]:
    fake, clock = Fake(), Clock()
    return MdCache("mdc", fake, timeout=timeout, invalidation=True, clock=clock, **kw), fake, clock


async def test_lookup_is_cached_until_timeout_and_hides_changelog() -> None:
    mdc, fake, clock = make(timeout=5)
    first = await mdc.lookup(ROOT_GFID, b"f")
    assert first.iatt == iatt(F_GFID)
    again = await mdc.lookup(ROOT_GFID, b"f")
    assert again == Lookup(iatt(F_GFID), {}) and fake.calls == ["lookup"]
    assert await mdc.lookup_gfid(F_GFID) == again and fake.calls == ["lookup"]
    clock.now += 5.1
    await mdc.lookup(ROOT_GFID, b"f")
    assert fake.calls == ["lookup", "lookup"]
    assert mdc.stats()["hits"] == 2


async def test_missing_names_are_not_cached() -> None:
    mdc, fake, _ = make()
    for _ in range(2):
        with pytest.raises(OSError) as ei:
            await mdc.lookup(ROOT_GFID, b"nope")
        assert ei.value.errno == errno.ENOENT
    assert fake.calls == ["lookup", "lookup"]


async def test_own_changes_update_the_cache() -> None:
    mdc, fake, _ = make()
    await mdc.create(ROOT_GFID, b"g", G_GFID, 0o100600, 0, 0)
    assert (await mdc.lookup(ROOT_GFID, b"g")).iatt.mode == 0o100600
    await mdc.write(G_GFID, 0, b"x" * 10)
    assert (await mdc.lookup(ROOT_GFID, b"g")).iatt.size == 10
    await mdc.setattr(G_GFID, mode=0o640)
    assert (await mdc.lookup(ROOT_GFID, b"g")).iatt.mode == 0o100640
    assert fake.calls == ["create", "write", "setattr"]
    await mdc.rename(ROOT_GFID, b"g", ROOT_GFID, b"h")
    with pytest.raises(OSError):
        await mdc.lookup(ROOT_GFID, b"g")
    assert (await mdc.lookup(ROOT_GFID, b"h")).iatt.gfid == G_GFID
    assert fake.calls[-2:] == ["rename", "lookup"]
    await mdc.unlink(ROOT_GFID, b"h")
    with pytest.raises(OSError):
        await mdc.lookup(ROOT_GFID, b"h")


async def test_unlink_of_an_unknown_hard_link_refreshes_nlink() -> None:
    mdc, fake, _ = make()
    await mdc.link(F_GFID, ROOT_GFID, b"f2")
    assert (await mdc.lookup(ROOT_GFID, b"f")).iatt.nlink == 2
    fake.names[(D_GFID, b"f3")] = F_GFID  # a third name this client never saw
    fake.iatts[F_GFID] = fake.iatts[F_GFID]._replace(nlink=3)
    await mdc.unlink(D_GFID, b"f3")
    assert (await mdc.lookup(ROOT_GFID, b"f")).iatt.nlink == 2
    assert fake.calls[-1] == "lookup"


async def test_xattrs_and_their_absence_are_cached_and_dropped_on_change() -> None:
    mdc, fake, _ = make()
    assert await mdc.getxattr(F_GFID, "user.a") == b"1"
    for _ in range(2):
        with pytest.raises(OSError) as ei:
            await mdc.getxattr(F_GFID, "user.b")
        assert ei.value.errno == errno.ENODATA
    assert await mdc.getxattr(F_GFID, "user.a") == b"1"
    assert await mdc.listxattr(F_GFID) == ["user.a"]
    assert await mdc.listxattr(F_GFID) == ["user.a"]
    assert fake.calls == ["getxattr", "getxattr", "listxattr"]
    await mdc.setxattr(F_GFID, "user.b", b"2")
    assert await mdc.getxattr(F_GFID, "user.b") == b"2"
    assert sorted(await mdc.listxattr(F_GFID)) == ["user.a", "user.b"]


async def test_invalidation_event_drops_inodes_and_names() -> None:
    mdc, fake, _ = make()
    top = Layer("top", [mdc])
    seen: list[str] = []
    top.on_event = lambda child, name, args: seen.append(name)  # type: ignore[method-assign]
    await mdc.lookup(ROOT_GFID, b"f")
    fake.iatts[F_GFID] = iatt(F_GFID, size=7)
    # cached: nobody said otherwise
    assert (await mdc.lookup(ROOT_GFID, b"f")).iatt.size == 0
    mdc.on_event(fake, EVENT, {"gfids": [F_GFID], "entries": []})
    assert (await mdc.lookup(ROOT_GFID, b"f")).iatt.size == 7
    assert seen == [EVENT]  # passed on upwards
    fake.names[(ROOT_GFID, b"f")] = G_GFID
    fake.iatts[G_GFID] = iatt(G_GFID)
    mdc.on_event(fake, EVENT, {"gfids": [ROOT_GFID], "entries": [[ROOT_GFID, b"f"]],
                               "junk": 1})
    assert (await mdc.lookup(ROOT_GFID, b"f")).iatt.gfid == G_GFID
    mdc.on_event(fake, EVENT, {"entries": [["bad"]], "gfids": [1]})  # malformed: ignored
    mdc.on_event(fake, EVENT, {"all": True})
    assert mdc.stats()["inodes"] == 0 and mdc.stats()["names"] == 0


async def test_reply_racing_an_invalidation_is_not_stored() -> None:
    mdc, fake, _ = make()
    fake.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mdc.lookup, ROOT_GFID, b"f")
        await trio.testing.wait_all_tasks_blocked()
        mdc.on_event(fake, EVENT, {"gfids": [F_GFID]})
        fake.gate.set()
    assert mdc.stats()["names"] == 0
    fake.gate = None
    await mdc.lookup(ROOT_GFID, b"f")
    assert fake.calls == ["lookup", "lookup"]


async def test_readdirplus_feeds_lookups() -> None:
    mdc, fake, _ = make()
    fake.names[(ROOT_GFID, b"g")] = G_GFID
    fake.iatts[G_GFID] = iatt(G_GFID, size=3)
    entries, eof = await mdc.readdir(ROOT_GFID, 0, 100, plus=True)
    assert eof and [e.name for e in entries] == [b"f", b"g"]
    assert (await mdc.lookup(ROOT_GFID, b"g")).iatt.size == 3
    assert (await mdc.lookup(ROOT_GFID, b"f")).iatt.gfid == F_GFID
    assert fake.calls == ["readdir"]


async def test_tables_are_bounded() -> None:
    mdc, fake, _ = make(limit=16)
    for i in range(100):
        g = bytes([i]) * 16
        fake.names[(ROOT_GFID, b"n%d" % i)] = g
        fake.iatts[g] = iatt(g)
        await mdc.lookup(ROOT_GFID, b"n%d" % i)
    s = mdc.stats()
    assert s["inodes"] <= 16 and s["names"] <= 16
    n = len(fake.calls)
    await mdc.lookup(ROOT_GFID, b"n99")  # most recent: still there
    assert len(fake.calls) == n
    await mdc.lookup(ROOT_GFID, b"n0")  # evicted long ago
    assert len(fake.calls) == n + 1


async def test_stat_always_asks_below_and_refreshes_lookups() -> None:
    mdc, fake, _ = make()
    await mdc.lookup(ROOT_GFID, b"f")
    fake.iatts[F_GFID] = iatt(F_GFID, size=9)
    assert (await mdc.stat(F_GFID)).size == 9
    assert (await mdc.lookup(ROOT_GFID, b"f")).iatt.size == 9
    assert fake.calls == ["lookup", "stat"]


async def test_parent_stat_after_entry_changes_is_answered_from_the_cache() -> None:
    mdc, fake, _ = make()
    await mdc.create(ROOT_GFID, b"g", G_GFID, 0o100600, 0, 0)
    assert await mdc.stat(ROOT_GFID) == fake.iatts[ROOT_GFID]
    await mdc.rename(ROOT_GFID, b"g", D_GFID, b"h")
    assert await mdc.stat(ROOT_GFID) == fake.iatts[ROOT_GFID]
    assert await mdc.stat(D_GFID) == fake.iatts[D_GFID]
    assert (await mdc.unlink(D_GFID, b"h")) == fake.iatts[D_GFID]
    assert (await mdc.stat(D_GFID)).mtime_ns == 4
    assert fake.calls == ["create", "rename", "unlink"]
    assert mdc.hits == 4
    await mdc.stat(F_GFID)  # a file's stat still asks below
    assert fake.calls[-1] == "stat"


async def test_parent_attributes_expire_without_invalidation() -> None:
    mdc, fake, clock = make(timeout=1.0)
    await mdc.create(ROOT_GFID, b"g", G_GFID, 0o100600, 0, 0)
    await mdc.stat(ROOT_GFID)
    assert fake.calls == ["create"]
    clock.now += 1.5
    await mdc.stat(ROOT_GFID)
    assert fake.calls == ["create", "stat"]


async def test_postparent_racing_an_invalidation_is_not_stored() -> None:
    mdc, fake, _ = make()
    await mdc.stat(ROOT_GFID)
    fake.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mdc.create, ROOT_GFID, b"g", G_GFID, 0o100600, 0, 0)
        await trio.testing.wait_all_tasks_blocked()
        mdc.on_event(fake, EVENT, {"entries": [[ROOT_GFID, b"x"]]})
        fake.gate.set()
    fake.gate = None
    assert (await mdc.stat(ROOT_GFID)).mtime_ns == 3
    assert fake.calls == ["stat", "create", "stat"]


async def test_unknown_or_foreign_postparent_drops_the_parent() -> None:
    mdc, fake, _ = make()
    await mdc.stat(ROOT_GFID)
    await mdc.stat(ROOT_GFID)
    assert fake.calls == ["stat"]
    real_create = fake.create
    answer: list[Iatt | None] = []

    async def create(*args: Any) -> EntryReply:
        reply = await real_create(*args)
        return reply._replace(postparent=answer[-1])

    fake.create = create  # type: ignore[method-assign]
    for n, postparent in enumerate([None, fake.iatts[D_GFID]]):
        answer.append(postparent)
        await mdc.create(ROOT_GFID, b"g%d" % n, bytes([n]) * 16, 0o100600, 0, 0)
        assert await mdc.stat(ROOT_GFID) == fake.iatts[ROOT_GFID]
        assert fake.calls[-1] == "stat"


async def test_brick_going_down_empties_the_cache() -> None:
    mdc, fake, _ = make()
    await mdc.lookup(ROOT_GFID, b"f")
    mdc.child_down(fake, "gone")
    await mdc.lookup(ROOT_GFID, b"f")
    assert fake.calls == ["lookup", "lookup"]


def _built(**options: str) -> Layer:
    from pyglfs.client.graph import build_graph
    from pyglfs.volfiles.generator import BrickSpec, VolumeSpec, client_graph

    spec = VolumeSpec("gv", "6a1e6c55-9f61-4a49-9f1c-6f3c3f7a8a01", 2,
                      [BrickSpec("127.0.0.2", 49750, "/b/1"),
                       BrickSpec("127.0.0.3", 49751, "/b/2")], options=dict(options))
    return build_graph(client_graph(spec), client_id="me").child


def test_graph_options() -> None:
    default = _built()
    assert isinstance(default, MdCache) and default.invalidation and default.timeout == 600
    off = _built(**{"features.cache-invalidation": "off"})
    assert isinstance(off, MdCache) and not off.invalidation and off.timeout == 1
    short = _built(**{"performance.md-cache-timeout": "5"})
    assert isinstance(short, MdCache) and short.timeout == 5
    assert not isinstance(_built(**{"performance.stat-prefetch": "off"}), MdCache)
