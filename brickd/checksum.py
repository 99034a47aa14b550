"""Per-block checksums for diff heal.

Heal compares the xxh3_64 of each block on source and sink and copies only the
blocks that differ, so the checksums must be cheap and computed where the data
is. This runs blocking reads: the caller runs it in a worker thread.
"""

from __future__ import annotations

import errno
import os

import xxhash

MAX_BLOCKS = 1 << 16
_READ_CHUNK = 1 << 20


def block_checksums(fd: int, offset: int, size: int, block: int) -> list[int]:
    """xxh3_64 of each ``block``-sized piece of ``[offset, offset + size)`` of ``fd``.

    The last piece may be shorter (end of the range or of the file); pieces
    that start at or after end of file are omitted, so a shorter list tells
    the caller the file ends inside the range. ``block`` must be positive and
    the range may cover at most ``MAX_BLOCKS`` blocks (EINVAL otherwise).
    """
    if block <= 0 or offset < 0 or size < 0:
        raise OSError(errno.EINVAL, "checksum: block must be positive, range non-negative")
    if -(-size // block) > MAX_BLOCKS:
        raise OSError(errno.EINVAL, f"checksum: more than {MAX_BLOCKS} blocks requested")
    sums: list[int] = []
    end = offset + size
    # Read several small blocks per syscall, never splitting a block across reads.
    chunk = max(block, _READ_CHUNK // block * block)
    pos = offset
    while pos < end:
        want = min(chunk, end - pos)
        data = os.pread(fd, want, pos)
        if not data:
            break
        view = memoryview(data)
        for i in range(0, len(data), block):
            sums.append(xxhash.xxh3_64_intdigest(view[i:i + block]))
        if len(data) < want:
            break
        pos += len(data)
    return sums
