"""nl-cache through real mounts: a name another mount creates is found at once
although this mount had it cached as absent (the bricks' invalidations), and
files created in a directory this mount made cost no lookup on the bricks
(counted by a proxy that decodes the requests on their way to each brick)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from helpers.countproxy import CountingProxy
from helpers.mounts import Mount, Volume, files_hold, mount_volume, mounted_volume, wait_for

from pyglfs.volfiles.generator import generate, with_options
from pyglfs.volfiles.model import Graph, Xlator
from pyglfs.volfiles.parser import parse_file

# The kernel's entry timeout (1 s) plus slack: nl-cache's 600 s must not show.
# Data written through one mount is polled for too (flush-behind).
PROMPT = 1.0 + 3.0


def with_caches(volume: Volume, path: Path,
                ports: dict[str, tuple[str, int]] | None = None) -> Path:
    """``volume``'s volfile with nl-cache (unless it has one) and md-cache under
    its top, as the generator places them; ``ports`` points protocol clients
    elsewhere."""
    g = parse_file(volume.volfile)
    if ports:
        g = with_options(g, {name: {"remote-host": h, "remote-port": str(p)}
                             for name, (h, p) in ports.items()})
    top = g.top
    inval = {"cache-invalidation": "on"}
    below = list(top.subvolumes)
    xls = [x for x in g if x.name != top.name]
    if not g.by_type("performance/nl-cache"):
        below = [Xlator(f"{top.name}-nl-cache", "performance/nl-cache",
                        inval | {"nl-cache-timeout": "600"}, below)]
        xls += below
    mdc = Xlator(f"{top.name}-md-cache", "performance/md-cache",
                 inval | {"md-cache-timeout": "600"}, below)
    new_top = Xlator(top.name, top.type, dict(top.options), [mdc])
    xls += [mdc, new_top]
    path.write_text(generate(Graph.from_xlators(xls)))
    return path


@pytest.fixture(scope="module")
def nl_mounts(volume: Volume) -> Iterator[tuple[Path, Path]]:
    base = volume.volfile.parent
    vf = with_caches(volume, base / "nlcache.vol")
    with mounted_volume(vf, base / "mnt-nlc-a") as a, mounted_volume(vf, base / "mnt-nlc-b") as b:
        yield a.mountpoint, b.mountpoint


def _exists(p: Path) -> bool:
    try:
        os.lstat(p)
    except FileNotFoundError:
        return False
    return True


def test_a_name_made_elsewhere_replaces_a_cached_absence(nl_mounts: tuple[Path, Path]) -> None:
    a, b = nl_mounts
    d = f"nl-{uuid.uuid4().hex[:8]}"
    os.mkdir(b / d)  # a directory A did not make: A learns absences by asking
    for _ in range(3):
        assert not _exists(a / d / "late")
    (b / d / "late").write_bytes(b"here")
    assert wait_for(lambda: _exists(a / d / "late"), PROMPT)
    assert files_hold([a / d / "late"], b"here", PROMPT)
    os.rename(b / d / "late", b / d / "later")
    assert wait_for(lambda: not _exists(a / d / "late"), PROMPT)
    assert files_hold([a / d / "later"], b"here", PROMPT)
    os.symlink("later", b / d / "link")
    assert wait_for(lambda: _exists(a / d / "link"), PROMPT)
    assert os.readlink(a / d / "link") == "later"


def test_a_directory_made_here_sees_names_made_elsewhere(nl_mounts: tuple[Path, Path]) -> None:
    a, b = nl_mounts
    d = a / f"own-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    for i in range(20):
        with open(d / f"f{i}", "xb") as f:
            f.write(b"x" * 100)
    assert not _exists(d / "x")
    bd = b / d.name
    (bd / "x").write_bytes(b"from b")
    assert wait_for(lambda: _exists(d / "x"), PROMPT)
    assert files_hold([d / "x"], b"from b", PROMPT)
    os.mkdir(bd / "sub")
    assert wait_for(lambda: _exists(d / "sub"), PROMPT)
    # A keeps working in it: its own names and B's are all there
    (d / "sub" / "deep").write_bytes(b"d")
    assert files_hold([bd / "sub" / "deep"], b"d", PROMPT)
    assert sorted(os.listdir(d)) == sorted([*(f"f{i}" for i in range(20)), "x", "sub"])
    os.unlink(bd / "x")
    assert wait_for(lambda: not _exists(d / "x"), PROMPT)
    with open(d / "x", "xb") as f:  # and A may make it again
        f.write(b"again")
    assert files_hold([bd / "x"], b"again", PROMPT)


async def test_files_made_in_a_directory_made_here_cost_no_lookup(
        volume: Volume, tmp_path: Path) -> None:
    g = parse_file(volume.volfile)
    clients = g.by_type("protocol/client")
    proxies = [CountingProxy("127.0.0.1", (c.opt("remote-host") or "",
                                           int(c.opt("remote-port") or 0)))
               for c in clients]

    def looked_up() -> list[list[bytes]]:
        return [[args["name"] for op, args in p.requests if op == "lookup"] for p in proxies]

    def work(root: Path) -> dict[str, list[list[bytes]]]:
        d = root / f"count-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        seen = {"before": looked_up()}
        for i in range(100):
            fd = os.open(d / f"f{i:03d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, b"x" * 4096)
            finally:
                os.close(fd)
            with pytest.raises(FileNotFoundError):
                os.stat(d / f"missing{i}")
        os.mkdir(d / "sub")
        os.symlink("f000", d / "sym")
        os.rename(d / "f001", d / "g001")
        seen["made"] = looked_up()
        # a name in a directory it did not make: asked once, then known
        name = f"nowhere-{uuid.uuid4().hex}"
        for _ in range(3):
            with pytest.raises(FileNotFoundError):
                os.stat(root / name)
        seen["missed"] = looked_up()
        return seen

    async with trio.open_nursery() as nursery:
        for p in proxies:
            await nursery.start(p.serve)
        vf = with_caches(volume, tmp_path / "counted.vol",
                         {c.name: (p.host, p.port) for c, p in zip(clients, proxies,
                                                                   strict=True)})
        m: Mount = await trio.to_thread.run_sync(mount_volume, vf, tmp_path / "mnt")
        try:
            seen = await trio.to_thread.run_sync(work, m.mountpoint)
        finally:
            await trio.to_thread.run_sync(m.unmount)
            nursery.cancel_scope.cancel()
    assert sum(p.ops["create"] for p in proxies) >= 100 * len(proxies)  # the proxies count
    for before, made, missed in zip(seen["before"], seen["made"], seen["missed"], strict=True):
        # the kernel may look the directory itself up again (its entry timeout)
        inside = [n for n in made[len(before):] if not n.startswith(b"count-")]
        assert inside == [], "creating files in a directory made here looked names up"
        assert [n for n in missed[len(made):] if n.startswith(b"nowhere-")] != []
        assert len(set(missed[len(made):])) == len(missed[len(made):]), "asked twice"
    bad = m.unexpected_errors()
    assert bad is None, bad


RACE_ROUNDS = 300


def test_a_directory_made_elsewhere_is_seen_at_once(nl_mounts: tuple[Path, Path]) -> None:
    """The bricks push B's invalidation before they answer A, so once A's mkdir
    returned, B must not answer "absent" from a listing it made before: not
    even when B's reader task has not yet taken the event from its socket."""
    a, b = nl_mounts
    d = f"race-{uuid.uuid4().hex[:8]}"
    os.mkdir(a / d)
    assert os.listdir(b / d) == []
    stale: list[tuple[str, int]] = []
    for i in range(RACE_ROUNDS):
        name = f"d{i:03d}"
        os.mkdir(a / d / name)
        if i % 2:
            if name not in os.listdir(b / d):
                stale.append(("list", i))
            if not _exists(b / d / name):
                stale.append(("stat", i))
        else:
            # B's last listing made the directory complete there: the name is
            # absent from what B knows, and only the event says otherwise
            if not _exists(b / d / name):
                stale.append(("stat", i))
            if name not in os.listdir(b / d):
                stale.append(("list", i))
    assert stale == [], f"{len(stale)} stale answers in {RACE_ROUNDS} rounds"
