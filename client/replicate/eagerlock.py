"""Eager inode and entry locks: taken once, kept while this client is the only writer.

Every change replicate makes is ordered against other clients by a lock in
the replicate layer's domain: an inode lock (whole file) for data and metadata
changes, an entry lock (whole directory) on the parent for entry changes. A
lock, once held, stays held after the change: the next change on the same
inode costs no lock round trip, and its dirty mark (set by the first change
under the lock, in the same request) stays set. The lock goes, after a post-op
that takes the dirty marks back, when

- a brick tells us another client waits for it (``lock-contention`` event),
- the inode's last open was released (``close_soon``): within
  ``CLOSE_BATCH_DELAY``, together with the locks of the other files closed
  meanwhile, and the bricks' releases of those opens travel along,
- it was unused for ``post-op-delay-secs``,
- a brick comes back (so the next holder includes it), or ``settle()``.

Taking a lock: non-blocking on every brick at once; if any brick says EAGAIN,
give back what was taken and take it blocking, brick by brick in brick order,
so two clients never each hold one brick's lock waiting for the other's. A
file this client creates for writing gets its lock in the create request
(``hold_new``, then ``granted`` or ``not_granted``): nobody else knows the gfid
yet, so no one can be waiting for it.

Within this client, changes to overlapping byte ranges of one inode (or two
metadata changes) run one after the other, so both bricks apply them in the
same order.

Giving locks back costs one request per brick: the post-ops, the unlocks and
the releases of closed files travel as one ``compound`` (several locks given
back at once share it). When a part fails, the parts after it are sent again
without it, so a brick ends up as separate requests would have left it.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import trio

from pyglfs.client.layer import Layer
from pyglfs.client.replicate.fanout import bits, fanout, pick_error, splittable
from pyglfs.client.replicate.giveback import Ops, give_back_ops, send_ops, take_marks
from pyglfs.rpc.brickops import COMPOUND_MAX

log = logging.getLogger(__name__)

FREE, ACQUIRING, HELD, RELEASING = range(4)
OFFSET_END = 1 << 63
META_SPAN = (-2, -1)
"""The span metadata changes take: they exclude each other, not data changes."""

Span = tuple[int, int]

CLOSE_BATCH_DELAY = 0.05
"""Seconds a closed file's lock may wait to be given back with others'."""
CLOSE_BATCH_MAX = COMPOUND_MAX // 3
"""Closed files whose locks are given back in one request (3 sub-ops each)."""


class LockState:
    """One eager lock (inode lock on a gfid, or entry lock on a directory gfid).

    ``locked_on``: bitmask of bricks holding it for us. ``marks[i][kind]``: how
    many dirty increments brick i applied under this hold (the post-op
    subtracts exactly those). ``blamed[kind]``: bricks already blamed on the
    good bricks during this hold (a counter once non-zero stays so until heal,
    so once per hold is enough). ``closed``: bricks owed the release of the
    inode's last open, sent with the lock's give-back.
    """

    __slots__ = ("key", "entry", "state", "locked_on", "users", "marks", "blamed",
                 "release_wanted", "last_used", "changed", "spans", "gate", "closed")

    def __init__(self, key: bytes, entry: bool, n: int) -> None:
        self.key = key
        self.entry = entry
        self.state = FREE
        self.locked_on = 0
        self.users = 0
        self.marks = [[0, 0, 0] for _ in range(n)]
        self.blamed = [0, 0, 0]
        self.release_wanted = False
        self.last_used = 0.0
        self.changed = trio.Event()
        self.spans: list[Span] = []
        self.gate: trio.Event | None = None
        self.closed = 0

    def __repr__(self) -> str:
        kind = "entry" if self.entry else "inode"
        return (f"<LockState {kind} {self.key.hex()} state={self.state} "
                f"on={self.locked_on:b} users={self.users}>")

    def notify(self) -> None:
        ev, self.changed = self.changed, trio.Event()
        ev.set()

    def overlaps(self, spans: list[Span]) -> bool:
        """Whether a change of this client overlapping ``spans`` is in flight."""
        return any(a[0] < b[1] and b[0] < a[1] for a in spans for b in self.spans)

    async def enter(self, spans: list[Span]) -> None:
        """Wait until no change of this client overlapping ``spans`` is in flight."""
        while self.overlaps(spans):
            if self.gate is None:
                self.gate = trio.Event()
            await self.gate.wait()
        self.spans.extend(spans)

    def leave(self, spans: list[Span]) -> None:
        for s in spans:
            self.spans.remove(s)
        if self.gate is not None:
            self.gate.set()
            self.gate = None


class EagerLocks:
    """The eager locks of one replicate layer (``domain``) and lock ``owner``.

    ``delay`` 0 (or ``eager`` False) gives the lock back as soon as the last
    change using it is done. Background work (post-op, unlock) runs in the
    nursery given to ``serve``.
    """

    def __init__(self, children: list[Layer], domain: str, owner: bytes, *,
                 delay: float = 1.0, eager: bool = True, parallel: int = 64) -> None:
        self.children = children
        self.n = len(children)
        # Protocol clients: a fan-out sends to every brick from the caller's task.
        self.split = splittable(children)
        self.domain = domain
        self.owner = owner
        self.delay = delay if eager else 0.0
        # Bricks push contention for entry locks as for inode locks (older
        # bricks did not, and entry locks were kept at most 0.25 s idle).
        self.entry_delay = self.delay
        self.inode: dict[bytes, LockState] = {}
        self.entry: dict[bytes, LockState] = {}
        self._nursery: trio.Nursery | None = None
        self._limiter = trio.CapacityLimiter(parallel)
        self.close_delay = min(self.delay, CLOSE_BATCH_DELAY)
        self._closing: dict[bytes, LockState] = {}
        self._closing_wake = trio.Event()
        self._closing_full = trio.Event()

    def up_mask(self) -> int:
        m = 0
        for i, c in enumerate(self.children):
            if c.is_up:
                m |= 1 << i
        return m

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise RuntimeError("replicate layer is not being served")
        self._nursery.start_soon(fn, *args)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                if self.delay <= 0:
                    await trio.sleep_forever()
                nursery.start_soon(self._serve_closing)
                while True:
                    await trio.sleep(max(self.entry_delay / 2, 0.05))
                    now = trio.current_time()
                    idle = []
                    for table, delay in ((self.inode, self.delay),
                                         (self.entry, self.entry_delay)):
                        for st in table.values():
                            if (st.state == HELD and not st.users
                                    and now - st.last_used >= delay):
                                idle.append(st)
                    self._release_together(idle)
            finally:
                self._nursery = None

    # -- taking and using -------------------------------------------------
    async def acquire(self, key: bytes, entry: bool) -> LockState:
        """The lock on ``key``, held on the bricks in ``locked_on``; pair with ``done``."""
        table = self.entry if entry else self.inode
        while True:
            st = table.get(key)
            if st is None:
                st = self._new_hold(table, key, entry)
                await self._take_into(st)
                st.users = 1
                st.notify()
                return st
            if st.state == HELD and not st.release_wanted:
                st.users += 1
                return st
            await st.changed.wait()

    async def prefetch(self, key: bytes) -> None:
        """Take the inode lock on ``key`` ahead of its first use, if it is free."""
        try:
            st = await self.acquire(key, entry=False)
        except OSError as e:
            log.debug("lock prefetch of %s: %s", key.hex(), e)
            return
        self.done(st)

    def prefetch_soon(self, key: bytes) -> None:
        """``prefetch`` in the background; a user of the lock meanwhile waits for it.

        The lock's state exists before this returns, so a ``want_release`` or an
        ``acquire`` that comes next finds the request in flight.
        """
        if self._nursery is None or key in self.inode:
            return
        self._nursery.start_soon(self._take_for, self._new_hold(self.inode, key, False))

    async def _take_for(self, st: LockState) -> None:
        try:
            await self._take_into(st)
        except OSError as e:
            log.debug("lock prefetch of %s: %s", st.key.hex(), e)
            return
        st.last_used = trio.current_time()
        st.notify()
        if st.release_wanted or self.delay <= 0:
            self._start_release(st)

    def hold_new(self, key: bytes) -> LockState | None:
        """The inode-lock state of a file this client is creating, the lock
        being asked for in the create request itself; pair with ``granted``
        or ``not_granted``. None when eager locking is off or ``key`` is known.
        Users of ``key`` wait until then, as for a lock on its way."""
        if self._nursery is None or self.delay <= 0 or key in self.inode:
            return None
        return self._new_hold(self.inode, key, False)

    def granted(self, st: LockState, got: int, want: int) -> None:
        """The create of ``st`` is through: bricks ``got`` granted the lock, and
        every brick in ``want`` (where the file was made) should have. Anything
        less is given back, and the next user takes the lock the usual way."""
        up = self.up_mask()
        got &= up
        if not got or got != want & up:
            self.not_granted(st, got)
            return
        st.locked_on = got
        st.state = HELD
        st.last_used = trio.current_time()
        st.notify()
        if st.release_wanted:
            self._start_release(st)

    def not_granted(self, st: LockState, maybe: int) -> None:
        """Give back the lock of ``st`` on bricks ``maybe`` (they may hold it)."""
        st.state = RELEASING
        self._spawn(self._abandon, st, bits(maybe))

    def done(self, st: LockState) -> None:
        st.users -= 1
        st.last_used = trio.current_time()
        if not st.users:
            if st.release_wanted or self.delay <= 0:
                self._start_release(st)
            elif st.closed:
                self._queue_closed(st)

    def _new_hold(self, table: dict[bytes, LockState], key: bytes, entry: bool) -> LockState:
        st = LockState(key, entry, self.n)
        st.state = ACQUIRING
        table[key] = st
        return st

    async def _take_into(self, st: LockState) -> None:
        """Take the lock of ``st`` (ACQUIRING, in its table): HELD, or forgotten on OSError."""
        try:
            st.locked_on = await self._take(st)
        except OSError:
            self._forget(st)
            raise
        except BaseException:
            # Cancelled part-way: a brick may have granted it. Until the unlock is
            # through, a new hold of this key must wait, or the late unlock (same
            # owner) would drop the new one.
            st.state = RELEASING
            self._spawn(self._abandon, st, bits(self.up_mask()))
            raise
        st.state = HELD

    async def _lock(self, st: LockState, i: int, type: str, block: bool) -> None:
        c = self.children[i]
        if st.entry:
            await c.entrylk(st.key, None, self.domain, type, self.owner, block)
        else:
            await c.inodelk(st.key, self.domain, type, 0, 0, self.owner, block)

    async def _take(self, st: LockState) -> int:
        targets = bits(self.up_mask())
        if not targets:
            raise OSError(errno.ENOTCONN, "no brick is connected")
        res = await fanout(self.n, targets, lambda i: self._lock(st, i, "wr", False),
                           self.split)
        errors = {i: r for i in targets if isinstance(r := res[i], OSError)}
        got = [i for i in targets if i not in errors]
        if any(e.errno == errno.EAGAIN for e in errors.values()):
            log.debug("lock %r contended, taking it in brick order", st)
            await self._unlock(st, got)
            got = []
            errors = {}
            for i in targets:
                try:
                    await self._lock(st, i, "wr", True)
                    got.append(i)
                except OSError as e:
                    errors[i] = e
        if not got:
            raise pick_error(errors)
        for i, err in errors.items():
            log.warning("lock %s %s not taken on brick %s: %s",
                        "entry" if st.entry else "inode", st.key.hex(), i, err)
        m = 0
        for i in got:
            m |= 1 << i
        return m

    async def _unlock(self, st: LockState, targets: list[int]) -> None:
        res = await fanout(self.n, targets, lambda i: self._lock(st, i, "un", False),
                           self.split)
        for i in targets:
            if isinstance(res[i], OSError):
                log.debug("unlock %r on brick %s: %s", st, i, res[i])

    # -- giving back ------------------------------------------------------
    def _forget(self, st: LockState) -> None:
        st.state = FREE
        table = self.entry if st.entry else self.inode
        if table.get(st.key) is st:
            del table[st.key]
        st.notify()

    async def _abandon(self, st: LockState, targets: list[int]) -> None:
        try:
            await self._unlock(st, targets)
        finally:
            self._forget(st)

    def _start_release(self, st: LockState) -> None:
        if st.state != HELD or st.users:
            return
        st.state = RELEASING
        self._spawn(self._release, st)

    def _release_together(self, states: list[LockState]) -> None:
        """Give back ``states`` (HELD, unused) in the same requests."""
        for st in states:
            st.state = RELEASING
        if states:
            self._spawn(self._release_many, states)

    async def _release(self, st: LockState) -> None:
        await self._release_many([st])

    async def _release_many(self, states: list[LockState]) -> None:
        """Post-op and unlock each of ``states`` (RELEASING), with the releases
        they owe (``closed``), in one compound per brick; then forget them."""
        try:
            async with self._limiter:
                up = self.up_mask()
                ops: list[Ops] = [[] for _ in range(self.n)]
                for st in states:
                    locked = st.locked_on & up
                    for i in bits((locked | st.closed) & up):
                        ops[i] += give_back_ops(st, i, locked >> i & 1,
                                                st.closed >> i & 1, self.domain, self.owner)
                targets = [i for i in range(self.n) if ops[i]]
                children = self.children
                await fanout(self.n, targets, lambda i: send_ops(children[i], i, ops[i]),
                             self.split)
        finally:
            for st in states:
                self._forget(st)

    def close_soon(self, key: bytes, closed: int) -> bool:
        """The last open of ``key`` was released: bricks ``closed`` are owed its
        release. If the inode lock is held and idle, it goes back within
        ``close_delay`` (or when another client wants it, or with ``settle``),
        the releases with it; True then, and nothing is sent now. False when
        the caller must send the releases itself."""
        st = self.inode.get(key)
        if (st is None or st.state != HELD or st.users or st.closed or not closed
                or self._nursery is None or self.close_delay <= 0):
            return False
        st.closed = closed
        self._queue_closed(st)
        return True

    def _queue_closed(self, st: LockState) -> None:
        """Give back ``st``, a closed file's idle lock, with the next batch; a
        user that takes it meanwhile puts it back here when done."""
        if not self._closing:
            self._closing_wake.set()
        self._closing[st.key] = st
        if len(self._closing) >= CLOSE_BATCH_MAX:
            self._closing_full.set()

    async def _serve_closing(self) -> None:
        """Give back the locks of closed files in batches (see ``close_soon``)."""
        while True:
            await self._closing_wake.wait()
            self._closing_wake = trio.Event()
            with trio.move_on_after(self.close_delay):
                await self._closing_full.wait()
            self._closing_full = trio.Event()
            batch = []
            for st in self._closing.values():
                if st.state == HELD and not st.users:
                    st.state = RELEASING
                    batch.append(st)
            self._closing.clear()
            if batch:
                await self._release_many(batch)

    async def post_op_now(self, key: bytes) -> None:
        """Clear the dirty marks of an idle inode lock, keeping the lock (fsync)."""
        st = self.inode.get(key)
        if st is None or st.state != HELD or st.users:
            return
        st.users += 1
        try:
            targets = [i for i in bits(st.locked_on & self.up_mask()) if any(st.marks[i])]
            xops = {i: take_marks(st, i) for i in targets}

            async def one(i: int) -> None:
                xop = xops[i]
                if xop is not None:
                    await self.children[i].xattrop(st.key, xop)

            await fanout(self.n, targets, one, self.split)
        finally:
            self.done(st)

    def want_release(self, key: bytes, entry: bool = False) -> None:
        """Give the lock on ``key`` back as soon as it is unused."""
        st = (self.entry if entry else self.inode).get(key)
        if st is None or st.state not in (ACQUIRING, HELD):
            return
        st.release_wanted = True
        if st.state == HELD and not st.users:
            self._start_release(st)

    def contended(self, key: bytes) -> None:
        """A brick says another client waits for our lock on ``key``.

        Holding no such lock means a brick granted one whose answer we never
        saw (a timed-out request): give it back, or the other client waits
        until our connection drops.
        """
        if key not in self.inode and key not in self.entry and self._nursery is not None:
            log.info("lock on %s wanted elsewhere but not held here: unlocking", key.hex())
            st = LockState(key, False, self.n)
            st.state = RELEASING
            self.inode[key] = st
            self._spawn(self._abandon, st, bits(self.up_mask()))
            return
        self.want_release(key, False)
        self.want_release(key, True)

    def release_all(self) -> None:
        idle = []
        for table in (self.inode, self.entry):
            for st in table.values():
                if st.state == HELD and not st.users:
                    st.release_wanted = True
                    idle.append(st)
                elif st.state in (ACQUIRING, HELD):
                    st.release_wanted = True
        self._release_together(idle)

    def child_down(self, i: int) -> None:
        """Brick i dropped our connection, and with it our locks and opens there."""
        bit = 1 << i
        for table in (self.inode, self.entry):
            for st in table.values():
                st.locked_on &= ~bit
                st.closed &= ~bit
                st.marks[i] = [0, 0, 0]

    def busy(self) -> int:
        return len(self.inode) + len(self.entry)

    async def settle(self) -> None:
        """Post-op and unlock everything now; return when no lock is held."""
        self.release_all()
        while True:
            st = next(iter(self.inode.values()), None) or next(iter(self.entry.values()), None)
            if st is None:
                return
            if st.state == HELD:
                self.want_release(st.key, st.entry)
            await st.changed.wait()
