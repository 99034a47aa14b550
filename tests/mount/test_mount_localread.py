"""Short-circuit local reads through a real mount: with the bricks on this
host, file reads reach no brick as a request (counted by a proxy in front of
each brick) yet return the right data, see another mount's writes at once,
and many open/read/close cycles leave the mount with no more fds than before."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from helpers.countproxy import CountingProxy
from helpers.mounts import Mount, Volume, mount_volume, start_volume, wait_for

from pyglfs.volfiles.generator import generate, with_options
from pyglfs.volfiles.parser import parse_file

BLOCK = 4096


def _read_direct(path: Path, offset: int, size: int) -> bytes:
    """A read that reaches the mount every time (no kernel page cache)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def _unmounting(*mounts: Mount) -> Iterator[None]:
    try:
        yield
    finally:
        for m in mounts:
            m.unmount()


async def test_reads_skip_the_bricks(volume: Volume, tmp_path: Path) -> None:
    own = await trio.to_thread.run_sync(start_volume, tmp_path, volume.volfile.stem)
    try:
        graph = parse_file(own.volfile)
        clients = graph.by_type("protocol/client")
        proxies = [CountingProxy("127.0.0.1", (xl.opt("remote-host") or "",
                                               int(xl.opt("remote-port") or 0)))
                   for xl in clients]
        async with trio.open_nursery() as nursery:
            for p in proxies:
                await nursery.start(p.serve)
            vf = tmp_path / "proxied.vol"
            vf.write_text(generate(with_options(graph, {
                xl.name: {"remote-host": p.host, "remote-port": str(p.port)}
                for xl, p in zip(clients, proxies, strict=True)})))
            vf_off = tmp_path / "proxied-off.vol"
            vf_off.write_text(generate(with_options(graph, {
                xl.name: {"remote-host": p.host, "remote-port": str(p.port),
                          "local-read": "off"}
                for xl, p in zip(clients, proxies, strict=True)})))
            a = await trio.to_thread.run_sync(mount_volume, vf, tmp_path / "mnt-a")
            b = await trio.to_thread.run_sync(mount_volume, own.volfile, tmp_path / "mnt-b")

            def work() -> None:
                with _unmounting(a, b):
                    name = f"lr-{uuid.uuid4().hex[:8]}"
                    data = os.urandom(64 * BLOCK)
                    (a.mountpoint / name).write_bytes(data)
                    before = sum(p.ops["read"] for p in proxies)
                    for off in (0, 7 * BLOCK, 63 * BLOCK):
                        assert _read_direct(a.mountpoint / name, off, BLOCK) == \
                            data[off:off + BLOCK]
                    assert _read_direct(a.mountpoint / name, 0, 256 * 1024) == data
                    assert sum(p.ops["read"] for p in proxies) == before, \
                        "a read reached a brick"
                    assert sum(p.ops["write"] for p in proxies) >= 1  # the proxies count
                    # Another mount's writes show at once.
                    for i in range(3):
                        chunk = bytes([i]) * BLOCK
                        fd = os.open(b.mountpoint / name, os.O_WRONLY | os.O_DIRECT)
                        try:
                            os.pwrite(fd, chunk, BLOCK)
                        finally:
                            os.close(fd)
                        assert _read_direct(a.mountpoint / name, BLOCK, BLOCK) == chunk
                    # No fd kept after the files are closed.
                    start = _fds(a.pid)
                    for _i in range(100):
                        assert _read_direct(a.mountpoint / name, 0, BLOCK) == data[:BLOCK]
                    # close(2) returns before the kernel's RELEASE reaches the mount.
                    assert wait_for(lambda: _fds(a.pid) <= start, 10), \
                        f"mount fds {start} -> {_fds(a.pid)}"
                    assert "reads served locally" in a.log_text()
                    # The volume option turns it off: the same reads reach a brick.
                    c = mount_volume(vf_off, tmp_path / "mnt-c")
                    with _unmounting(c):
                        before = sum(p.ops["read"] for p in proxies)
                        assert _read_direct(c.mountpoint / name, 0, BLOCK) == data[:BLOCK]
                        assert sum(p.ops["read"] for p in proxies) == before + 1
                        assert "reads served locally" not in c.log_text()
                    assert c.unexpected_errors() is None

            try:
                await trio.to_thread.run_sync(work)
            finally:
                nursery.cancel_scope.cancel()
        assert a.unexpected_errors() is None and b.unexpected_errors() is None
    finally:
        await trio.to_thread.run_sync(own.stop)
