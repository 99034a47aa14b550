"""Bounded busy-polling for a reply that is about to arrive.

On this project's reference machine (a 2-vCPU VM whose idle vCPUs halt at once)
waking a process that sleeps in ``epoll_wait`` on the other vCPU costs tens of
microseconds before it runs, and a null round trip on loopback takes about as long
as two such wake-ups. A caller with a single request in flight can instead poll its
socket for a short while: if the reply comes within that time, it is handled without
sleeping, without an event-loop pass and without a wake-up.

Polling burns CPU, so it is bounded in time, happens only when nothing else in the
process is ready to run and the machine has no more runnable tasks than CPUs (on
a busy machine the time spun is taken from others, the peer included), and backs
off when it does not pay (a peer that takes longer than the budget, or a server
running in the same thread): after ``n`` fruitless polls in a row the next
``2**n`` chances (at most ``MAX_SKIP``) are skipped.

The budget fits what is awaited. A caller may name what it waits for (an op name,
say) and report how long each polled wait took; the next poll for the same key
then lasts a little past the recent typical wait (its moving average), up to
``bound``, and a wait expected to last longer than ``bound`` is not polled at all:
a 4 KiB read that a brick answers in 300 us is caught by polling, an fsync of 5 ms
is slept through, and neither burns a fixed budget in vain. Only polled waits
teach (a wait slept through also pays the wake-up that polling saves, and would
keep a key from being polled ever again), and an expectation beyond ``bound``
fades by ``FORGET`` each time it stops a poll, so a key is tried again after a
stretch of slow waits (a busy minute of the machine) has passed.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

# trio's run queue is not public API (trio.lowlevel.current_statistics() would
# tell, at ten times the cost of a whole poll decision); without it we never poll.
try:
    _RUN_CONTEXT: Any = importlib.import_module("trio._core._run").GLOBAL_RUN_CONTEXT
except (ImportError, AttributeError):  # pragma: no cover - depends on trio's internals
    _RUN_CONTEXT = None

DEFAULT_BUDGET = 100e-6
MAX_BUDGET = 500e-6
FIT_SLACK = 50e-6
FIT_FACTOR = 1.5
LEARN_WEIGHT = 0.125
FORGET = 0.9
MAX_SKIP = 256
YIELD_EVERY = 1e-3
LOAD_CHECK_EVERY = 0.02

perf_counter = time.perf_counter
try:  # the CPUs this process may run on (taskset, cpusets), not all the machine's
    _NCPU = len(os.sched_getaffinity(0))
except (AttributeError, OSError):  # pragma: no cover - not Linux
    _NCPU = os.cpu_count() or 1


class MachineLoad:
    """Whether the machine has a CPU to spare, from the count of runnable tasks in
    /proc/loadavg (the reader included), read at most every LOAD_CHECK_EVERY
    seconds through a descriptor kept open (a pread costs ~10 us, an open ~100)."""

    def __init__(self, path: str = "/proc/loadavg", ncpu: int = _NCPU) -> None:
        self.path = path
        self.ncpu = ncpu
        self.fd: int | None = None
        self.checked_at = -LOAD_CHECK_EVERY
        self.room = True

    def has_room(self) -> bool:
        now = perf_counter()
        if now - self.checked_at < LOAD_CHECK_EVERY:
            return self.room
        self.checked_at = now
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            running = int(os.pread(self.fd, 128, 0).split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            self.room = True
        else:
            self.room = running <= self.ncpu
        return self.room


machine_has_room = MachineLoad().has_room


def nothing_else_runnable() -> bool:
    """True when no other trio task of this thread is waiting to run: polling now
    delays nobody but tasks that wait for I/O or time, and those by at most the
    budget. False when it cannot tell."""
    try:
        return not _RUN_CONTEXT.runner.runq
    except AttributeError:
        return False


def fitted_budget(expected: float | None, base: float, bound: float) -> float:
    """How long to poll for something expected ``expected`` seconds after the
    poll starts (None: not known yet).

    Unknown: ``base``. Expected within ``bound``: a margin past it
    (``FIT_FACTOR`` times plus ``FIT_SLACK``), never less than ``base`` nor more
    than ``bound``. Expected later than ``bound``: 0, sleep instead. A ``base``
    of 0 disables polling whatever is expected.
    """
    if not base:
        return 0.0
    if expected is None:
        return base
    if expected > bound:
        return 0.0
    fit = expected * FIT_FACTOR + FIT_SLACK
    return bound if fit > bound else max(fit, base)


class BusyPoll:
    """When to poll and for how long; one per connection.

    ``budget`` is how long a poll for an unknown key lasts, in seconds (0
    disables polling); ``bound`` the longest any poll may last once waits have
    been learnt (see ``fitted_budget``). A caller asks ``should_poll(key)``,
    polls until ``perf_counter() >= deadline(key)`` at most, reports with
    ``record(got_it)``, and tells how long the polled wait took with
    ``learn(key, seconds)``. ``must_yield()`` tells a caller that skipped the event loop
    through successful polls for ``YIELD_EVERY`` seconds to yield once, so other
    tasks and I/O are not starved (it does not know about yields in between; an
    extra one a millisecond costs little).
    """

    __slots__ = ("budget", "bound", "expect", "_fails", "_skip", "_yielded_at", "polls", "hits")

    def __init__(self, budget: float = DEFAULT_BUDGET, bound: float = MAX_BUDGET) -> None:
        self.budget = budget
        self.bound = max(bound, budget)
        self.expect: dict[object, float] = {}
        self._fails = 0
        self._skip = 0
        self._yielded_at = perf_counter()
        self.polls = 0
        self.hits = 0

    def budget_for(self, key: object = None) -> float:
        """The poll budget for ``key`` from what was learnt (no load checks)."""
        return fitted_budget(self.expect.get(key), self.budget, self.bound)

    def should_poll(self, key: object = None) -> bool:
        return self.may_poll(key) and nothing_else_runnable()

    def may_poll(self, key: object = None) -> bool:
        """``should_poll`` but for the run queue, which a caller that is about
        to yield once checks after its yield (``nothing_else_runnable``)."""
        if not self.budget:
            return False
        if self._skip:
            self._skip -= 1
            return False
        expect = self.expect.get(key)
        if expect is not None and expect > self.bound:
            self.expect[key] = expect * FORGET
            return False
        return machine_has_room()

    def deadline(self, key: object = None) -> float:
        return perf_counter() + self.budget_for(key)

    def learn(self, key: object, seconds: float) -> None:
        """One polled wait for ``key`` took ``seconds`` (got by the poll or slept
        through after it). Long waits count as two bounds: a rare slow one
        (a disk hiccup, an idle pause) moves the average a little only. Keys come from a small fixed set (op names)."""
        cap = 2 * self.bound
        if seconds > cap:
            seconds = cap
        old = self.expect.get(key)
        self.expect[key] = seconds if old is None else old + (seconds - old) * LEARN_WEIGHT

    def record(self, got_it: bool) -> None:
        self.polls += 1
        if got_it:
            self.hits += 1
            self._fails = 0
        else:
            self._fails += 1
            self._skip = min(1 << self._fails, MAX_SKIP)

    def must_yield(self) -> bool:
        now = perf_counter()
        if now - self._yielded_at < YIELD_EVERY:
            return False
        self._yielded_at = now
        return True
