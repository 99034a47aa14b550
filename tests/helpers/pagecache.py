"""How much of a file the page cache holds, for tests of what the brick keeps
cached (drop-behind, direct writes)."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
MIB = 1 << 20


def resident_mib(path: Path) -> float:
    """MiB of ``path`` in the page cache now: mincore of a shared mapping, which
    reads nothing and dirties nothing."""
    size = path.stat().st_size
    vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), size) as m:
        anchor = ctypes.c_char.from_buffer(m)
        try:
            rc = _libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)),
                               ctypes.c_size_t(size), vec)
        finally:
            del anchor
    if rc != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(v & 1 for v in vec) * mmap.PAGESIZE / MIB
