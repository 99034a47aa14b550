"""Release-behind over replicate and real brick processes: a flush-behind close and
its release return before the bricks have the data, and each brick still gets the
release (with the post-op and unlock) only after the file's write."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from helpers.replica import ReplicaEnv, index_dir, leased, open_replica
from test_replicate_compound import given_back

from pyglfs.client.replicate.changelog import decode
from pyglfs.client.writebehind import WriteBehind
from pyglfs.rpc.brickops import ROOT_GFID

K4 = 4096
Call = tuple[str, list[tuple[str, bytes | None, bool]]]


def record(env: ReplicaEnv) -> list[list[Call]]:
    """Per brick, every request this client sends: its op and its sub-ops (a lone
    op is its own), each with its gfid and whether it carries an ``xattrop``."""
    seen: list[list[Call]] = [[] for _ in env.bricks]
    for i in range(len(env.bricks)):
        pc = env.brick_client(env.rep, i)
        orig = pc.rpc.call

        async def call(op: str, args: dict[str, Any], *, timeout: float | None = None,
                       _i: int = i, _orig: Callable[..., Any] = orig) -> Any:
            ops = args["ops"] if op == "compound" else [(op, args)]
            seen[_i].append((op, [(sub, a.get("gfid"), bool(a.get("xattrop")))
                                  for sub, a in ops]))
            return await _orig(op, args, timeout=timeout)

        pc.rpc.call = call  # type: ignore[method-assign]
    return seen


async def test_release_behind_reaches_each_brick_after_the_write(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        wb = WriteBehind("wb", rep, flush_behind=True)
        await env.nursery.start(wb.serve_writes)
        seen = record(env)
        files = [uuid.uuid4().bytes for _ in range(3)]
        with trio.fail_after(20):
            await leased(wb, ROOT_GFID)  # a new file's close is behind only under it
            for i, f in enumerate(files):
                wb.want_lease(ROOT_GFID)
                await wb.create(ROOT_GFID, b"f%d" % i, f, 0o644, 0, 0, os.O_WRONLY)
                await wb.write(f, 0, bytes([65 + i]) * K4)
                await wb.flush(f)
                await wb.release(f)
                # returned before the write was even sent: the write's task releases
                assert f not in wb.opened and wb.inodes[f].releases == 1
            await wb.settle()
            assert wb.inodes == {} and rep.opens == {}
            await given_back(rep, *files)
        for calls in seen:
            for f in files:
                ops = [sub for _, subs in calls for sub, gfid, _ in subs if gfid == f]
                assert ops == ["create", "write", "xattrop", "inodelk", "release"], ops
        for b in env.bricks:
            for i in range(3):
                p = b.root / f"f{i}"
                assert p.read_bytes() == bytes([65 + i]) * K4
                assert decode(os.getxattr(p, "trusted.afr.dirty")) == (0, 0, 0)
            assert index_dir(b.root) == set()
