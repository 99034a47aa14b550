"""A replica set for replicate tests: bricks on loopback, a Replicate over them.

Bricks are either in-process (``InProcBrick``: a real BrickStore served over
TCP by the real brick service, stopped and restarted by cancelling it) or real
``pyglfs-brickd`` processes (``ProcBrick``, killed by PID). Either way the
client side is the production stack: ProtocolClient -> ReconnectingClient.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from helpers.brickd import BrickdProcess, start_brickd
from pyglfs.brickd.server import serve_brick
from pyglfs.brickd.store import open_store
from pyglfs.client.layer import Layer
from pyglfs.client.protocol import ProtocolClient
from pyglfs.client.replicate import Replicate

VOLUME = "rvol"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")


class InProcBrick:
    """A brick served in this process; ``stop``/``start`` act like a brick restart."""

    def __init__(self, root: Path, host: str, volume_id: str) -> None:
        self.root = root
        self.host = host
        self.port = 0
        self.volume_id = volume_id
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None
        self.nursery: trio.Nursery | None = None

    @property
    def running(self) -> bool:
        return self._scope is not None

    async def _run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        store = open_store(str(self.root), self.volume_id)
        done = self._done = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                await serve_brick(store, VOLUME, self.host, self.port, task_status=task_status)
        finally:
            self._scope = None
            store.close()
            done.set()

    async def start(self, nursery: trio.Nursery | None = None) -> None:
        self.nursery = nursery or self.nursery
        assert self.nursery is not None
        self.port = await self.nursery.start(self._run)

    async def stop(self) -> None:
        if self._scope is not None and self._done is not None:
            self._scope.cancel()
            await self._done.wait()


class ProcBrick:
    """A real pyglfs-brickd process; ``kill`` is kill -9 by PID."""

    def __init__(self, tmp: Path, root: Path, host: str, volume_id: str) -> None:
        self.tmp = tmp
        self.root = root
        self.host = host
        self.port = 0
        self.volume_id = volume_id
        self.proc: BrickdProcess | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    async def start(self, nursery: trio.Nursery | None = None) -> None:
        self.proc = await trio.to_thread.run_sync(lambda: start_brickd(
            self.tmp, brick=self.root, volume=VOLUME, volume_id=self.volume_id,
            host=self.host, port=self.port))
        self.port = self.proc.port

    async def kill(self) -> None:
        if self.proc is not None:
            proc = self.proc
            await trio.to_thread.run_sync(proc.kill)

    async def stop(self) -> None:
        if self.proc is not None:
            proc = self.proc
            await trio.to_thread.run_sync(proc.stop)


class ReplicaEnv:
    def __init__(self, nursery: trio.Nursery, bricks: list[Any]) -> None:
        self.nursery = nursery
        self.bricks = bricks
        self.clients: list[Replicate] = []

    @property
    def rep(self) -> Replicate:
        return self.clients[0]

    async def new_client(self, *, ping_timeout: float = 5.0, call_timeout: float | None = None,
                         wrap: Callable[[int, Layer], Layer] | None = None,
                         ports: list[int] | None = None, **kwargs: Any) -> Replicate:
        """A Replicate (one more mount) over the bricks, served and up."""
        cid = uuid.uuid4().hex[:8]
        children: list[Layer] = []
        for i, b in enumerate(self.bricks):
            pc: Layer = ProtocolClient(
                f"{VOLUME}-client-{i}", host=b.host, port=ports[i] if ports else b.port,
                volume=VOLUME, brick_path=str(b.root), client_id=f"test-{cid}",
                ping_timeout=ping_timeout, call_timeout=call_timeout)
            children.append(wrap(i, pc) if wrap else pc)
        rep = Replicate(f"{VOLUME}-replicate-0", children, **kwargs)
        await self.nursery.start(rep.serve)
        await wait_for(lambda: all(c.is_up for c in children), 10, "bricks up")
        self.clients.append(rep)
        return rep

    def brick_client(self, rep: Replicate, i: int) -> ProtocolClient:
        c = rep.children[i]
        while not isinstance(c, ProtocolClient):
            c = c.children[0]
        return c

    async def index(self, rep: Replicate, i: int) -> set[bytes]:
        """The gfids brick i's heal index names (through the index_list op)."""
        out: set[bytes] = set()
        cookie = 0
        for _ in range(10000):
            r = await self.brick_client(rep, i).rpc.call(
                "index_list", {"cookie": cookie, "count": 1000})
            out.update(r["gfids"])
            if r["eof"]:
                return out
            cookie = r["cookie"]
        raise AssertionError("index listing did not end")


async def leased(layer: Layer, pgfid: bytes) -> None:
    """Have ``layer`` take the lease of directory ``pgfid`` and wait until it holds it."""
    layer.want_lease(pgfid)
    await wait_for(lambda: layer.lease_held(pgfid), 5, "the directory's lease taken")


@asynccontextmanager
async def open_replica(tmp_path: Path, *, n: int = 2, processes: bool = False,
                       client: bool = True, **client_kwargs: Any) -> AsyncIterator[ReplicaEnv]:
    """``n`` bricks on 127.0.0.2.. and (``client``) one Replicate over them."""
    volume_id = str(uuid.uuid4())
    bricks: list[Any] = []
    for i in range(n):
        root = tmp_path / f"brick{i}"
        root.mkdir()
        if processes:
            bricks.append(ProcBrick(tmp_path, root, HOSTS[i], volume_id))
        else:
            bricks.append(InProcBrick(root, HOSTS[i], volume_id))
    try:
        async with trio.open_nursery() as nursery:
            env = ReplicaEnv(nursery, bricks)
            for b in bricks:
                await b.start(nursery)
            if client:
                await env.new_client(**client_kwargs)
            try:
                yield env
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for b in bricks:
            if isinstance(b, ProcBrick):
                await b.stop()


# -- brick trees ----------------------------------------------------------------
def tree(root: Path, xattrs: bool = True) -> dict[str, tuple[Any, ...]]:
    """Every inode under ``root`` but ``.pyglfs``: path -> (type, mode, uid, gid,
    size, content digest or link target, xattrs)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".pyglfs"]
        for name in [".", *dirnames, *filenames]:
            p = os.path.join(dirpath, name) if name != "." else dirpath
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body: Any = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            else:
                body = None
            xa: dict[str, bytes] = {}
            if xattrs:
                for x in os.listxattr(p, follow_symlinks=False):
                    xa[x] = os.getxattr(p, x, follow_symlinks=False)
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, size, body, tuple(sorted(xa.items())))
    return out


def gfid_of(path: Path) -> bytes:
    return os.getxattr(path, "trusted.gfid", follow_symlinks=False)


def index_dir(root: Path) -> set[bytes]:
    """The gfids indexed on disk under ``.pyglfs/indices/xattrop``."""
    d = root / ".pyglfs" / "indices" / "xattrop"
    return {bytes.fromhex(n) for n in os.listdir(d) if not n.startswith("base-")}
