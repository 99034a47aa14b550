"""Directory leases of one replicate layer: taken when entries are being made,
given back when another client wants the directory or when idle.

A lease on directory ``pgfid`` is a whole-range "wr" inode lock on its gfid in
``LEASE_DOMAIN`` with replicate's lock owner, held on every brick that is up.
While it is held a brick holds other clients' requests that read or change
the directory's entries, so a layer above (create-behind) may answer a create
in it before the bricks have it. The contract:

- ``held(pgfid)`` is true only while the lock is held on every brick that is
  up now (a brick that came back since does not hold it), quorum allows
  writes, and no give-back has started. It is O(1) and allocates nothing:
  every create asks.
- ``want(pgfid)`` never waits. A lease that is held notes the use; one that is
  not held is taken in the background (the entry lock below, then the lease
  lock, non-blocking, on every up brick in parallel). Granted everywhere:
  held. Otherwise what was granted is given back and the directory is left
  alone for ``backoff`` seconds.
- A give-back first awaits the parent layer's ``lease_recalled(pgfid)`` (it
  returns once the bricks have every change it answered early), then
  unlocks. Once a give-back started, ``held`` is false. Causes: a brick's
  ``lock-contention`` (``recall``; then ``backoff`` before the next take, so
  two mounts creating in one directory do not pass it to and fro every
  millisecond), ``idle`` seconds without a use, more than ``max_leases``
  leases (least recently used first), and ``settle``.
- A brick that goes down dropped the lock with our connection (``child_down``);
  one that comes back makes every lease go back (``child_up``), so the next
  one is taken there too; their entry locks are let go at once (see there).
- A lease holds replicate's eager entry lock on the directory as one more
  user, taken before the lease lock and kept until the lease is back. The
  creates answered early run under that entry lock; another client's entry
  change waits for it (not at the brick's gate, while holding the entry lock
  the creates need: that would wait for itself). Contention for that entry
  lock recalls the lease first (``entry_contended``) and only then lets the
  entry lock go, so the creates still pending keep it until they are done.
- Idleness is told by one sweeper task, with ``IDLE_TICKS`` sweeps per
  ``idle``: a use stamps the sweep count, so the common path reads no clock.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from pyglfs.client.layer import Layer
from pyglfs.client.replicate.eagerlock import EagerLocks, LockState
from pyglfs.client.replicate.fanout import bits, fanout, splittable
from pyglfs.client.replicate.giveback import Ops, send_ops
from pyglfs.client.replicate.quorum import Quorum
from pyglfs.rpc.brickops import LEASE_DOMAIN

log = logging.getLogger(__name__)

LEASE_BACKOFF = 1.0
"""Seconds a directory's lease is not taken again after a recall or a failed take."""
LEASE_IDLE = 2.0
"""Seconds without a ``want`` after which a lease is given back."""
MAX_LEASES = 1024
"""Leases held at most; taking one more gives back the least recently used."""
IDLE_TICKS = 4
"""Sweeps per ``idle``: a lease goes back after ``idle`` to ``idle * 5/4`` unused."""
RECALL_PARALLEL = 16
"""Parent ``lease_recalled`` hooks one give-back of many leases runs at once."""

TAKING, HELD, GIVING = range(3)


class Lease:
    """One directory's lease. ``on``: bitmask of bricks that granted it (or
    may have: a take whose reply was lost). ``last_use``: sweep count at the
    last ``want``. ``recalled``: a brick asked for it back (give back as soon
    as it is taken, then back off). ``was_held``: the parent may have answered
    entry changes under it, so a give-back must ask the parent first.
    ``entry``: the eager entry lock this lease holds as a user (once taken);
    ``entry_contended``: another client waits for it (let it go afterwards)."""

    __slots__ = ("pgfid", "state", "on", "last_use", "recalled", "was_held", "done",
                 "entry", "entry_contended")

    def __init__(self, pgfid: bytes, tick: int) -> None:
        self.pgfid = pgfid
        self.state = TAKING
        self.on = 0
        self.last_use = tick
        self.recalled = False
        self.was_held = False
        self.done = trio.Event()
        self.entry: LockState | None = None
        self.entry_contended = False

    def __repr__(self) -> str:
        return (f"<Lease {self.pgfid.hex()} state={self.state} on={self.on:b} "
                f"recalled={self.recalled}>")


class Leases:
    """The directory leases of replicate layer ``layer`` over ``children``,
    with its eager ``locks`` (their owner is the leases' too).

    Background work runs in the nursery of ``serve``; without it (not served)
    no lease is taken.
    """

    def __init__(self, layer: Layer, children: list[Layer], locks: EagerLocks,
                 quorum: Quorum, *, backoff: float = LEASE_BACKOFF,
                 idle: float = LEASE_IDLE, max_leases: int = MAX_LEASES) -> None:
        self.layer = layer
        self.children = children
        self.n = len(children)
        self.split = splittable(children)
        self.locks = locks
        self.owner = locks.owner
        self.quorum = quorum
        self._up = locks.up_mask
        self._all = (1 << self.n) - 1
        self.backoff = backoff
        self.idle = idle
        self.max_leases = max_leases
        self.table: dict[bytes, Lease] = {}
        self._backoff_until: dict[bytes, float] = {}
        self._tick = 0
        self._giving = 0
        self._settling = 0
        self._nursery: trio.Nursery | None = None
        self._limiter = trio.CapacityLimiter(RECALL_PARALLEL)
        self.taken = 0
        """Leases granted so far (for logs and tests)."""
        self.recalls = 0
        """Recalls by a brick or for an entry lock so far."""

    def __len__(self) -> int:
        return len(self.table)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the idle sweeper and the takes and give-backs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    await trio.sleep(self.idle / IDLE_TICKS)
                    self._tick += 1
                    idle = self._sweep()
                    if idle:
                        await self._give_back(idle, False)
            finally:
                self._nursery = None

    def _sweep(self) -> list[Lease]:
        """Mark the leases unused for ``IDLE_TICKS`` whole sweeps as given back."""
        tick = self._tick
        idle = [ls for ls in self.table.values()
                if ls.state == HELD and tick - ls.last_use > IDLE_TICKS]
        for ls in idle:
            self._mark_giving(ls)
        if self._backoff_until:
            now = trio.current_time()
            for k in [k for k, t in self._backoff_until.items() if t <= now]:
                del self._backoff_until[k]
        return idle

    # -- asking -------------------------------------------------------------
    def held(self, pgfid: bytes) -> bool:
        ls = self.table.get(pgfid)
        if ls is None or ls.state != HELD:
            return False
        up = self._up()
        return ls.on & up == up and (up == self._all or self.quorum.met(up))

    def want(self, pgfid: bytes) -> None:
        ls = self.table.get(pgfid)
        if ls is not None:
            ls.last_use = self._tick
            return
        if self._nursery is None or self._settling:
            return
        until = self._backoff_until.get(pgfid)
        if until is not None:
            if trio.current_time() < until:
                return
            del self._backoff_until[pgfid]
        if not self.quorum.met(self._up()):
            return
        if len(self.table) - self._giving >= self.max_leases and not self._evict():
            return
        ls = self.table[pgfid] = Lease(pgfid, self._tick)
        self._nursery.start_soon(self._take, ls)

    def _evict(self) -> bool:
        """Start giving back the least recently used lease; False when none is held."""
        victim = None
        for ls in self.table.values():
            if ls.state == HELD and (victim is None or ls.last_use < victim.last_use):
                victim = ls
        if victim is None or self._nursery is None:
            return False
        log.debug("replicate %s: %d leases held, giving back %r", self.layer.name,
                  len(self.table), victim)
        self._mark_giving(victim)
        self._nursery.start_soon(self._give_back, [victim], False)
        return True

    # -- taking ---------------------------------------------------------------
    async def _take(self, ls: Lease) -> None:
        """Take ``ls`` (TAKING): the directory's entry lock, then the lease lock
        on every up brick; anything short of that is given back."""
        why = ""
        try:
            ls.entry = await self.locks.acquire(ls.pgfid, entry=True)
        except OSError as e:
            why = f"entry lock: {e}"
        up = self._up()
        if ls.entry is not None and not ls.recalled:
            if ls.entry.locked_on & up != up:
                why = "entry lock not held on every brick up"
            else:
                why = await self._lock_all(ls, up)
                up = self._up()
        if why or ls.recalled or self._settling or not self.quorum.met(up):
            if why:
                log.debug("replicate %s: lease of %s not taken: %s", self.layer.name,
                          ls.pgfid.hex(), why)
            self._mark_giving(ls)
            await self._give_back([ls], bool(why) or ls.recalled)
            return
        ls.state = HELD
        ls.was_held = True
        self.taken += 1

    async def _lock_all(self, ls: Lease, up: int) -> str:
        """Lock ``ls`` on bricks ``up``; what went wrong, or "" when every brick
        up now granted it (and the entry lock is still held on all of them)."""
        targets = bits(up)
        pgfid, children, owner = ls.pgfid, self.children, self.owner
        res = await fanout(self.n, targets, lambda i: children[i].inodelk(
            pgfid, LEASE_DOMAIN, "wr", 0, 0, owner, False), self.split)
        # A brick whose answer was lost may have granted it: unlock there too.
        ls.on |= up
        failed = [f"brick {i}: {r}" for i in targets if isinstance(r := res[i], OSError)]
        if failed:
            return ", ".join(failed)
        now = self._up()
        ls.on &= now
        if ls.on != now or ls.entry is None or ls.entry.locked_on & now != now:
            return "a brick went down or came back meanwhile"
        return ""

    # -- giving back ----------------------------------------------------------
    def _mark_giving(self, ls: Lease) -> None:
        ls.state = GIVING
        self._giving += 1

    def recall(self, pgfid: bytes) -> None:
        """A brick says another client waits for the lease of ``pgfid``.

        Holding none means a brick granted one whose answer we never saw: it is
        unlocked on every up brick all the same, or the other client would wait
        for the brick's recall timeout.
        """
        ls = self.table.get(pgfid)
        if ls is None:
            if self._nursery is None:
                return
            log.info("replicate %s: lease of %s recalled but not held here: unlocking",
                     self.layer.name, pgfid.hex())
            ls = self.table[pgfid] = Lease(pgfid, self._tick)
            ls.on = self._up()
            ls.recalled = True
            self._mark_giving(ls)
            self._nursery.start_soon(self._give_back, [ls], True)
            return
        log.debug("replicate %s: lease of %s recalled", self.layer.name, pgfid.hex())
        self.recalls += 1
        ls.recalled = True
        if ls.state == HELD and self._nursery is not None:
            self._mark_giving(ls)
            self._nursery.start_soon(self._give_back, [ls], True)

    def entry_contended(self, pgfid: bytes) -> bool:
        """Another client waits for our entry lock on ``pgfid``: if a lease holds
        it (or is being taken), recall the lease and let the entry lock go once
        the lease is back; True then. False: the eager locks' business."""
        ls = self.table.get(pgfid)
        if ls is None or (ls.entry is None and ls.state != TAKING):
            return False
        ls.entry_contended = True
        self.recall(pgfid)
        return True

    async def _recalled(self, ls: Lease) -> None:
        parent = self.layer.parent
        if parent is None or not ls.was_held:
            return
        async with self._limiter:
            try:
                await parent.lease_recalled(ls.pgfid)
            except Exception:
                log.exception("replicate %s: lease_recalled(%s) failed; giving it back anyway",
                              self.layer.name, ls.pgfid.hex())

    async def _give_back(self, leases: list[Lease], backoff: bool) -> None:
        """Give back ``leases`` (GIVING): the parent's ``lease_recalled`` of each,
        then the unlocks, one request per brick; then forget them. ``backoff``
        (or a recall meanwhile) keeps a directory from being taken again soon."""
        try:
            if len(leases) == 1:
                await self._recalled(leases[0])
            else:
                async with trio.open_nursery() as nursery:
                    for ls in leases:
                        nursery.start_soon(self._recalled, ls)
            up = self._up()
            ops: list[Ops] = [[] for _ in range(self.n)]
            for ls in leases:
                for i in bits(ls.on & up):
                    ops[i].append(("inodelk", {
                        "gfid": ls.pgfid, "domain": LEASE_DOMAIN, "type": "un", "start": 0,
                        "len": 0, "owner": self.owner, "block": False}))
            targets = [i for i in range(self.n) if ops[i]]
            children = self.children
            await fanout(self.n, targets, lambda i: send_ops(children[i], i, ops[i]),
                         self.split)
        finally:
            until = trio.current_time() + self.backoff
            for ls in leases:
                self._giving -= 1
                if self.table.get(ls.pgfid) is ls:
                    del self.table[ls.pgfid]
                if backoff or ls.recalled:
                    self._backoff_until[ls.pgfid] = until
                if ls.entry_contended:
                    self.locks.contended(ls.pgfid)
                if ls.entry is not None:
                    self.locks.done(ls.entry)
                    ls.entry = None
                ls.done.set()

    # -- bricks and shutdown ----------------------------------------------------
    def child_down(self, i: int) -> None:
        """Brick i dropped our connection, and with it our leases there."""
        bit = ~(1 << i)
        for ls in self.table.values():
            ls.on &= bit

    def child_up(self) -> None:
        """A brick came back: every lease goes back (no back-off), so the next
        one is taken there too. Their entry locks are let go at once, before
        the caller makes the eager locks go back: a create pending under a
        lease finds its entry lock short of that brick and waits for it to be
        taken again, which a lease still holding it would never allow."""
        held = []
        for ls in self.table.values():
            if ls.entry is not None:
                self.locks.done(ls.entry)
                ls.entry = None
            if ls.state == HELD:
                self._mark_giving(ls)
                held.append(ls)
        if held and self._nursery is not None:
            self._nursery.start_soon(self._give_back, held, False)

    async def settle(self) -> None:
        """Give every lease back; return when none is held or on its way."""
        self._settling += 1
        try:
            for _ in range(len(self.table) + 2):
                held = [ls for ls in self.table.values() if ls.state == HELD]
                for ls in held:
                    self._mark_giving(ls)
                if held:
                    await self._give_back(held, False)
                other = next(iter(self.table.values()), None)
                if other is None:
                    return
                await other.done.wait()
        finally:
            self._settling -= 1
