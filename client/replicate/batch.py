"""Writes of several files as one request per brick (``Replicate.writev_many``).

Write-behind hands over the queued writes of new files closed within a few
milliseconds of each other. Each file's change is the transaction
``Writer.inode_op`` runs (same quorum, dirty mark in that file's own
``xattrop``, blame of bricks that miss it, read-side blame), under the eager
lock its create took; only the transport is shared: the files' ``write`` (and
``setattr``) sub-ops for one brick travel in one ``compound``.

A brick runs a compound's sub-ops in order and stops at the first that fails:
the files before it have their change, that file failed on that brick, and
the files after it are sent again without it, so each file ends up as a lone
``writev`` would have left it. A compound that gets no answer (the brick was
not reached, or the deadline passed) fails every file it carried on that brick,
and the ones not sent yet: that brick is then blamed for them.

A file whose lock is not held and idle-ready here (given back, wanted by
another client, or a change of this client overlapping it in flight) takes the
usual path, ``inode_op``, alongside the batch.

The post-op of each file stays with the lock's give-back, after the results:
a dirty mark is never taken back in the request that sets it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pyglfs.client.layer import Layer, WriteItem
from pyglfs.client.protocol import writev_iatt, writev_ops
from pyglfs.client.replicate.changelog import DATA, METADATA
from pyglfs.client.replicate.eagerlock import HELD, META_SPAN, LockState, Span
from pyglfs.client.replicate.fanout import fanout
from pyglfs.client.replicate.transaction import Outcome, Plan, Writer
from pyglfs.rpc.brickops import COMPOUND_MAX, Iatt

Ops = list[tuple[str, dict[str, Any]]]
_D, _M = 1 << DATA, 1 << METADATA


class _Joined:
    """One file's change in the batch: its hold, spans and plan."""

    __slots__ = ("k", "item", "st", "spans", "plan")

    def __init__(self, k: int, item: WriteItem, st: LockState, spans: list[Span]) -> None:
        self.k = k
        self.item = item
        self.st = st
        self.spans = spans
        self.plan: Plan | None = None

    def ops(self, i: int) -> Ops:
        """The sub-ops brick i runs for this file, with the file's ``xattrop``."""
        gfid, writes, attrs = self.item
        assert self.plan is not None
        return writev_ops(gfid, writes, self.plan.xops[i], attrs)


def kinds_spans(item: WriteItem) -> tuple[int, list[Span]]:
    """The changelog kinds and lock spans of a file's ``writev``."""
    _, writes, attrs = item
    spans = [(off, off + max(len(data), 1)) for off, data in writes]
    if attrs is None:
        return _D, spans
    spans.append(META_SPAN)
    return _D | _M, spans


def _enter(writer: Writer, k: int, item: WriteItem) -> _Joined | None:
    """Use the file's held lock now, as ``acquire`` and ``enter`` would without
    waiting; None when that would mean waiting or taking the lock."""
    st = writer.locks.inode.get(item[0])
    if st is None or st.state != HELD or st.release_wanted or not writer.usable(st.locked_on):
        return None
    kinds, spans = kinds_spans(item)
    if st.overlaps(spans):
        return None
    st.users += 1
    st.spans.extend(spans)
    j = _Joined(k, item, st, spans)
    try:
        j.plan = writer.plan([st], kinds, None)
    except OSError:
        _leave(writer, j)
        raise
    return j


def _leave(writer: Writer, j: _Joined) -> None:
    j.st.leave(j.spans)
    writer.locks.done(j.st)


async def _send(child: Layer, i: int, js: list[_Joined]) -> list[Iatt | OSError]:
    """Every file of ``js`` on brick i, in compounds of up to ``COMPOUND_MAX``
    sub-ops; per file its attributes after the change or its error there."""
    out: list[Iatt | OSError | None] = [None] * len(js)
    ops = [j.ops(i) for j in js]
    pending = list(range(len(js)))
    while pending:
        k = pending[0]
        if len(ops[k]) > COMPOUND_MAX:  # a file alone too big for one: as a lone writev
            gfid, writes, attrs = js[k].item
            plan = js[k].plan
            assert plan is not None
            try:
                out[k] = await child.writev(gfid, writes, plan.xops[i], attrs)
            except OSError as e:
                out[k] = e
            del pending[0]
            continue
        chunk: list[int] = []
        subs: Ops = []
        while pending and len(subs) + len(ops[pending[0]]) <= COMPOUND_MAX:
            k = pending.pop(0)
            chunk.append(k)
            subs += ops[k]
        try:
            results, failed = await child.compound(subs)
        except OSError as e:
            for k in chunk + pending:
                out[k] = e
            break
        at = 0
        for pos, k in enumerate(chunk):
            end = at + len(ops[k])
            if failed is None or end <= failed[0]:
                out[k] = writev_iatt(results[at:end])
            else:
                out[k] = failed[1]
                pending[:0] = chunk[pos + 1:]  # did not run: send them again
                break
            at = end
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


async def writev_many(writer: Writer, items: list[WriteItem],
                      lone: Callable[[WriteItem], Awaitable[Iatt]],
                      pick: Callable[[bytes, Outcome], Iatt]) -> list[Iatt | OSError]:
    """Each item's ``writev`` as a replicated change (see the module docstring):
    its attributes (``pick`` of its outcome), or the error a lone ``writev`` of
    it would have raised. ``lone`` runs the items that cannot join."""
    out: list[Iatt | OSError | None] = [None] * len(items)
    try:
        writer.check_quorum()
    except OSError as e:
        return [e] * len(items)
    joined: list[_Joined] = []
    alone: list[int] = []
    try:
        for k, item in enumerate(items):
            try:
                j = _enter(writer, k, item)
            except OSError as e:
                out[k] = e
                continue
            if j is None:
                alone.append(k)
            else:
                joined.append(j)

        async def one(k: int) -> None:
            try:
                out[k] = await lone(items[k])
            except OSError as e:
                out[k] = e

        async with trio.open_nursery() as nursery:
            for k in alone:
                nursery.start_soon(one, k)
            if joined:
                await _run(writer, joined, out, pick)
    finally:
        for j in joined:
            _leave(writer, j)
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


async def _run(writer: Writer, joined: list[_Joined], out: list[Iatt | OSError | None],
               pick: Callable[[bytes, Outcome], Iatt]) -> None:
    n = writer.n
    per: list[list[_Joined]] = [[] for _ in range(n)]
    for j in joined:
        assert j.plan is not None
        for i in j.plan.targets:
            per[i].append(j)
    targets = [i for i in range(n) if per[i]]
    children = writer.children
    got = await fanout(n, targets, lambda i: _send(children[i], i, per[i]), writer.split)
    slot = [{id(j): pos for pos, j in enumerate(per[i])} for i in range(n)]
    for j in joined:
        assert j.plan is not None
        results: list[Any] = [None] * n
        for i in j.plan.targets:
            r = got[i]
            results[i] = r if isinstance(r, OSError) else r[slot[i][id(j)]]  # type: ignore[index]
        try:
            o = await writer.conclude([j.st], j.plan, results)
        except OSError as e:
            out[j.k] = e
        else:
            out[j.k] = pick(j.item[0], o)
