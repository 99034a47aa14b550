"""Drop-behind for streaming writes: a brick's page cache recycles a few MiB
per sequential writer instead of filling with the whole file.

Why: a buffered write copies into page-cache pages. Into pages the machine
used moments ago that copy costs ~0.3 ms of CPU per MiB here; into pages it
has not touched lately (a VM whose free memory went back to the host, a big
file written into mostly free memory) ~1.5 ms, and a brick streaming a big
file writes into ever new pages. Once a file's sequential writes have run a
``window`` ahead, the brick starts writeback of that window
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``) and drops the pages that are
``lag`` behind the newest write (``POSIX_FADV_DONTNEED``): by then their
writeback has usually finished, so they are clean and go back to the free
lists, and the next writes land in them. Pages still under writeback are
skipped by the kernel, so each drop covers again the ``RECOVER`` lags before.

What it does not change: what a write or fsync means. Nothing here waits for
writeback or reports its errors (``SYNC_FILE_RANGE_WAIT_*`` would consume the
file's writeback error before the client's fsync saw it): fsync still writes
and waits for whatever is dirty and reports any error. DONTNEED drops only
clean pages; pages still dirty or under writeback stay cached.

The cost: a stream's data is not in the brick's page cache afterwards, so
reading it back soon after goes to the disk, and the writer's dirty data
stays under ~``lag`` bytes per file (writeback starts early instead of at the
kernel's dirty thresholds). Writes under ``MIN_WRITE`` are left alone; a
write more than a window away from where the file's stream is (a rewind, a
jump) starts a new stream, as the first write of a file does.
"""

from __future__ import annotations

import ctypes
import os
from collections import OrderedDict
from typing import NamedTuple

MIN_WRITE = 64 * 1024
WINDOW = 8 * 1024 * 1024
LAG = 16 * 1024 * 1024
KEEP = 256
RECOVER = 4
SYNC_FILE_RANGE_WRITE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int


class Advice(NamedTuple):
    """What to do for one file now: start writeback of [write_from, write_to) and
    drop the clean pages of [drop_from, drop_to) (an empty range: nothing)."""

    write_from: int
    write_to: int
    drop_from: int
    drop_to: int


class _Stream:
    __slots__ = ("start", "end", "kicked", "dropped")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.kicked = start
        self.dropped = start


class DropBehind:
    """Tracks the sequential writers of a brick (by gfid, the last ``keep``
    files written) and says when to advise the kernel about one.

    ``note`` is cheap and synchronous; the advice it returns is carried out with
    ``advise`` (two syscalls that may block on a congested disk queue: run it in
    a worker thread). Advice is handed out once: a write that comes while an
    earlier one's advice is still being carried out gets none.
    """

    def __init__(self, window: int = WINDOW, lag: int = LAG, keep: int = KEEP) -> None:
        if not 0 < window <= lag:
            raise ValueError("need 0 < window <= lag")
        self.window = window
        self.lag = lag
        self.keep = keep
        self._streams: OrderedDict[bytes, _Stream] = OrderedDict()

    def note(self, gfid: bytes, offset: int, size: int) -> Advice | None:
        """Record that ``size`` bytes were written to ``gfid`` at ``offset``."""
        if size < MIN_WRITE:
            return None
        streams = self._streams
        end = offset + size
        s = streams.get(gfid)
        # Within a window of the stream's front counts as the stream: a brick
        # may finish the writes of one writer a little out of order.
        if s is None or not s.kicked - self.window <= offset <= s.end + self.window:
            if s is None and len(streams) >= self.keep:
                streams.popitem(last=False)
            streams[gfid] = _Stream(offset, end)
            return None
        streams.move_to_end(gfid)
        if end <= s.end:
            return None
        s.end = end
        if end - s.kicked < self.window:
            return None
        # Pages still under writeback at the last drops were skipped: cover
        # them again, back to RECOVER lags.
        advice = Advice(s.kicked, end, max(s.start, s.dropped - RECOVER * self.lag),
                        max(s.dropped, end - self.lag))
        s.kicked = end
        s.dropped = advice.drop_to
        return advice


def advise(fd: int, advice: Advice) -> None:
    """Carry out ``advice`` on ``fd``. Errors are left out: this is only a hint, and
    a real I/O error is the next fsync's to report."""
    if _sync_file_range is not None and advice.write_to > advice.write_from:
        _sync_file_range(fd, advice.write_from, advice.write_to - advice.write_from,
                         SYNC_FILE_RANGE_WRITE)
    if advice.drop_to > advice.drop_from:
        try:
            os.posix_fadvise(fd, advice.drop_from, advice.drop_to - advice.drop_from,
                             os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
