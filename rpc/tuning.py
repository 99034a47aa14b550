"""Process tuning shared by every pyglfs process that moves bulk data.

glibc's malloc hands big buffers (every 1 MiB payload) back to the kernel and
faults them in again on the next request; with its mmap and trim thresholds
raised the brick and the client keep them, which measurably raised write rates
(DESIGN.md). It lives beside the wire protocol because both the brick and the
client need it and neither may import the other. The bound of the client's
tables (``TABLE_LIMIT``) lives here too: it only holds for these settings.
"""

from __future__ import annotations

import os
import sys

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4194304", "MALLOC_TRIM_THRESHOLD_": "67108864"}

TABLE_LIMIT = 40_000
"""Entries at most in each of the client's bounded LRU tables (md-cache's inodes
and names, replicate's read state per inode). A full table churns (an entry out
for every entry in), and CPython then rebuilds its hash table now and again,
sized for three times its entries: up to 43,690 entries that is 2.5 MiB, under
``MALLOC_ENV``'s mmap threshold, so every rebuild reuses one block of the heap.
From 43,691 entries it is 5 MiB, mapped afresh at each rebuild and faulted in
as it fills: with 65,536 the client's RSS rose and fell by up to 8 MiB from
one stat pass over 100,000 files to the next (bench/README.md, session 8)."""


def reexec_with_tuned_malloc(module: str, prog: str) -> None:
    """Re-exec ``python -m module`` once with ``MALLOC_ENV`` (keeping the PID).

    glibc reads these variables only at start, hence the re-exec; a value the
    caller already set is left alone, which also ends the recursion.
    """
    missing = {k: v for k, v in MALLOC_ENV.items() if k not in os.environ}
    if not missing:
        return
    env = {**os.environ, **missing}
    argv = [sys.executable, "-m", module, *sys.argv[1:]]
    try:
        os.execve(sys.executable, argv, env)
    except OSError as e:
        print(f"{prog}: warning: cannot re-exec with tuned malloc: {e}", file=sys.stderr)
