"""The replicated change: pre-op, op and post-op folded into as few round trips as we can.

One change (``Writer.inode_op`` / ``Writer.entry_op``):

1. Quorum check: no brick up is ENOTCONN, up bricks without quorum EROFS.
2. The eager lock (see ``eagerlock``): free when already held.
3. The op goes to every brick holding the lock, in parallel, carrying in its
   ``xattrop`` the dirty mark (first change of that kind under this hold) and
   the blame of bricks that will not get it (down, or not locked): pre-op and
   op are one request.
4. Bricks that failed while another succeeded are blamed on the good ones at
   once (one more round trip, only when degraded), and the gfid is recorded
   as bad on them for reads.
5. The post-op that takes the dirty marks back waits for the lock's release.

Round trips (each to all bricks in parallel) in the common case, one client
alone in a directory: create a file for writing 1 (its lock rides along, see
``Replicate.create``), write 1, flush 0, release 0: the bricks' release, the
post-op and the unlock go in the background as one ``compound`` request per
brick, shared by the files closed within ``eagerlock.CLOSE_BATCH_DELAY``. The
directory's entry lock and its dirty mark cost 1 + 1 once per burst of entry
changes, not per change.

When every brick fails, the caller gets the error (the same errno from all of
them gives that errno). A change that lands only on bricks that are not a
quorum (the first brick died under it) is recorded and then reported as EROFS.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pyglfs.client.layer import Layer
from pyglfs.client.replicate import changelog
from pyglfs.client.replicate.eagerlock import EagerLocks, LockState, Span
from pyglfs.client.replicate.fanout import bits, fanout, pick_error, splittable
from pyglfs.client.replicate.fanout import mask as _mask
from pyglfs.client.replicate.quorum import Quorum
from pyglfs.client.replicate.readsel import InodeTable
from pyglfs.rpc.brickops import AFR_DIRTY

log = logging.getLogger(__name__)

Call = Callable[[Layer, dict[str, bytes] | None], Awaitable[Any]]
_KIND_LISTS = tuple(tuple(k for k in changelog.KINDS if m >> k & 1) for m in range(8))


class Outcome:
    """What one replicated change did: per-brick results, and who missed it."""

    __slots__ = ("results", "ok", "bad")

    def __init__(self, results: list[Any], ok: list[int], bad: int) -> None:
        self.results = results
        self.ok = ok
        self.bad = bad

    def first(self, prefer: int = -1) -> Any:
        """The result of brick ``prefer`` if it succeeded, else of the first good brick."""
        if prefer in self.ok:
            return self.results[prefer]
        return self.results[self.ok[0]]


class Plan:
    """A change's targets and per-brick ``xattrop`` (``Writer.plan``): ``marking[i]``
    the kinds whose dirty mark brick i's request sets; ``missing`` the bricks
    blamed in it."""

    __slots__ = ("kinds", "targets", "missing", "xops", "marking")

    def __init__(self, kinds: int, targets: list[int], missing: int,
                 xops: list[dict[str, bytes] | None], marking: list[int]) -> None:
        self.kinds = kinds
        self.targets = targets
        self.missing = missing
        self.xops = xops
        self.marking = marking


class Writer:
    """Runs the changes of one replicate layer over its ``children``."""

    def __init__(self, children: list[Layer], names: list[str], quorum: Quorum,
                 locks: EagerLocks, inodes: InodeTable) -> None:
        self.children = children
        self.n = len(children)
        self.all = (1 << self.n) - 1
        self.names = names
        self.quorum = quorum
        self.locks = locks
        self.inodes = inodes
        self.split = splittable(children)
        self._all_bits = bits(self.all)

    def check_quorum(self) -> int:
        """The up bricks if they may take a change; else ENOTCONN or EROFS."""
        up = self.locks.up_mask()
        if not up:
            raise OSError(errno.ENOTCONN, "no brick is connected")
        if not self.quorum.met(up):
            raise OSError(errno.EROFS, f"no quorum ({self.quorum.type}): "
                          f"bricks up {bits(up)} of {self.n}")
        return up

    def usable(self, locked: int) -> bool:
        """False when re-taking the lock would reach a quorum this hold lacks."""
        up = self.locks.up_mask()
        return self.quorum.met(locked & up) or not self.quorum.met(up)

    async def inode_op(self, gfid: bytes, kinds: int, spans: list[Span], call: Call,
                       extra: dict[str, bytes] | None = None) -> Outcome:
        """A data/metadata change (``kinds``: bitmask of changelog kinds) of ``gfid``."""
        self.check_quorum()
        for attempt in range(3):
            st = await self.locks.acquire(gfid, entry=False)
            try:
                if attempt < 2 and not self.usable(st.locked_on):
                    st.release_wanted = True
                    continue
                await st.enter(spans)
                try:
                    return await self._apply([st], kinds, call, extra)
                finally:
                    st.leave(spans)
            finally:
                self.locks.done(st)
        raise AssertionError("unreachable")

    async def entry_op(self, pgfids: list[bytes], call: Call,
                       new_gfid: bytes | None = None, new_kinds: int = 0,
                       extra: dict[str, bytes] | None = None) -> Outcome:
        """An entry change in the directories ``pgfids`` (two for a rename).

        ``new_gfid``: the inode the change creates; bricks that miss the change
        are blamed for its ``new_kinds`` too, so heal knows to create it there.
        """
        self.check_quorum()
        keys = sorted(set(pgfids))
        for attempt in range(3):
            held: list[LockState] = []
            try:
                for key in keys:  # sorted: clients never wait on each other in a cycle
                    held.append(await self.locks.acquire(key, entry=True))
                locked = self.all
                for st in held:
                    locked &= st.locked_on
                if attempt < 2 and not self.usable(locked):
                    for st in held:
                        st.release_wanted = True
                    continue
                out = await self._apply(held, 1 << changelog.ENTRY, call, extra,
                                        check_quorum=False)
                if new_gfid is not None:
                    await self._mark_new(new_gfid, new_kinds, out)
                if out.bad and not self.quorum.met(_mask(out.ok)):
                    raise _no_quorum_after(out)
                return out
            finally:
                for st in held:
                    self.locks.done(st)
        raise AssertionError("unreachable")

    async def _apply(self, states: list[LockState], kinds: int, call: Call,
                     extra: dict[str, bytes] | None, check_quorum: bool = True) -> Outcome:
        plan = self.plan(states, kinds, extra)
        children = self.children
        xops = plan.xops
        results = await fanout(self.n, plan.targets, lambda i: call(children[i], xops[i]),
                               self.split)
        return await self.conclude(states, plan, results, check_quorum)

    def plan(self, states: list[LockState], kinds: int,
             extra: dict[str, bytes] | None) -> Plan:
        """The first half of a change under ``states`` (held): which bricks get
        it and the ``xattrop`` each carries (dirty mark, blame of the missing);
        no quorum among the locked bricks is EROFS (ENOTCONN with none up)."""
        locked = self.all
        for st in states:
            locked &= st.locked_on
        up = self.locks.up_mask()
        targets_m = locked & up
        if not self.quorum.met(targets_m):
            if not up:
                raise OSError(errno.ENOTCONN, "no brick is connected")
            raise OSError(errno.EROFS, f"no quorum ({self.quorum.type}): bricks locked and "
                          f"up {bits(targets_m)} of {self.n}")
        all_ = self.all
        targets = self._all_bits if targets_m == all_ else bits(targets_m)
        missing = all_ & ~targets_m
        kind_list = _KIND_LISTS[kinds]
        blames = self._missing_blames(states, kind_list, missing) if missing else None
        xops: list[dict[str, bytes] | None] = [None] * self.n
        marking = [0] * self.n
        for i in targets:
            need = 0
            for k in kind_list:
                for st in states:
                    if st.marks[i][k] == 0:
                        need |= 1 << k
                        break
            if not need and not blames:
                if extra:
                    xops[i] = dict(extra)
                continue
            xop: dict[str, bytes] = dict(extra) if extra else {}
            if need:
                changelog.add(xop, AFR_DIRTY, changelog.delta(need))
                marking[i] = need
            if blames:
                for name, value in blames.items():
                    changelog.add(xop, name, value)
            xops[i] = xop or None
        return Plan(kinds, targets, missing, xops, marking)

    async def conclude(self, states: list[LockState], plan: Plan, results: list[Any],
                       check_quorum: bool = True) -> Outcome:
        """The second half: ``results`` (per brick, ``OSError`` for a failure)
        counted in the holds' marks and blames; bricks that failed while another
        succeeded are blamed on the good ones now. Every target failing raises
        the error the caller gets."""
        kinds = plan.kinds
        kind_list = _KIND_LISTS[kinds]
        targets = plan.targets
        missing = plan.missing
        errors = {i: r for i in targets if isinstance(r := results[i], OSError)}
        ok = [i for i in targets if i not in errors]
        if not ok:
            raise pick_error(errors)
        marking = plan.marking
        for i in ok:
            need = marking[i]
            if need:
                for st in states:
                    for k in kind_list:
                        if need >> k & 1:
                            st.marks[i][k] += 1
        if missing:
            for st in states:
                for k in kind_list:
                    st.blamed[k] |= missing
        failed = _mask(list(errors))
        if failed:
            for i, e in errors.items():
                log.warning("change of %s failed on brick %s (%s), blaming it: %s",
                            " ".join(st.key.hex() for st in states), i,
                            self.children[i].name, e)
            await self._blame(states, kinds, failed, ok)
        bad = failed | missing
        if bad:
            for st in states:
                self.inodes.blame(st.key, kinds, bad)
        out = Outcome(results, ok, bad)
        if check_quorum and failed and not self.quorum.met(_mask(ok)):
            raise _no_quorum_after(out)
        return out

    def _missing_blames(self, states: list[LockState], kind_list: tuple[int, ...],
                        missing: int) -> dict[str, bytes]:
        """Per missing brick not yet blamed for a kind under these holds, its delta."""
        out: dict[str, bytes] = {}
        for j in bits(missing):
            jk = 0
            for k in kind_list:
                if any(not st.blamed[k] >> j & 1 for st in states):
                    jk |= 1 << k
            if jk:
                out[self.names[j]] = changelog.delta(jk)
        return out

    async def _blame(self, states: list[LockState], kinds: int, failed: int,
                     ok: list[int]) -> None:
        """Record on the good bricks that the ``failed`` ones missed this change."""
        for st in states:
            xop: dict[str, bytes] = {}
            for j in bits(failed):
                jk = 0
                for k in changelog.KINDS:
                    if kinds >> k & 1 and not st.blamed[k] >> j & 1:
                        jk |= 1 << k
                if jk:
                    xop[self.names[j]] = changelog.delta(jk)
            if not xop:
                continue
            res = await fanout(self.n, ok, _xattrop_call(self.children, st.key, xop),
                               self.split)
            if any(not isinstance(res[i], OSError) for i in ok):
                for k in changelog.KINDS:
                    if kinds >> k & 1:
                        st.blamed[k] |= failed
            else:
                log.error("could not record pending changes of %s for bricks %s: %s",
                          st.key.hex(), bits(failed), [res[i] for i in ok])

    async def _mark_new(self, gfid: bytes, kinds: int, out: Outcome) -> None:
        """Blame the bricks that did not get a new inode on its own changelog."""
        if not out.bad:
            self.inodes.learn(gfid, changelog.no_masks(), False)
            return
        self.inodes.blame(gfid, kinds, out.bad)
        xop = {self.names[j]: changelog.delta(kinds) for j in bits(out.bad)}
        res = await fanout(self.n, out.ok, lambda i: self.children[i].xattrop(gfid, xop),
                           self.split)
        for i in out.ok:
            if isinstance(res[i], OSError):
                log.error("could not mark new inode %s pending on brick %s: %s",
                          gfid.hex(), i, res[i])


def _xattrop_call(children: list[Layer], gfid: bytes,
                  xop: dict[str, bytes]) -> Callable[[int], Awaitable[dict[str, bytes]]]:
    def call(i: int) -> Awaitable[dict[str, bytes]]:
        return children[i].xattrop(gfid, xop)

    return call


def _no_quorum_after(out: Outcome) -> OSError:
    return OSError(errno.EROFS, f"change landed only on bricks {out.ok}: no quorum")
