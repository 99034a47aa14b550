"""The pending counters replicate keeps in ``trusted.afr.*`` xattrs, client side.

A changelog value is three big-endian signed 32-bit counters, one per kind of
change: data, metadata, entry. ``pending[j]`` on brick i non-zero means "brick
i has changes of that kind that brick j may lack": brick j is *blamed* and must
not serve reads of that kind until heal clears it. ``trusted.afr.dirty``
non-zero means an operation was (or is) in flight: it blames nobody, it only
tells heal to look. Counters are only ever added to (``xattrop``), so
concurrent updates from many clients commute.

Blame sets are bitmasks over brick indices, one per kind (``Masks``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from pyglfs.rpc.brickops import AFR_DIRTY

DATA, METADATA, ENTRY = 0, 1, 2
KINDS = (DATA, METADATA, ENTRY)
KIND_NAMES = ("data", "metadata", "entry")

_COUNTERS = struct.Struct(">iii")
ZERO = b"\x00" * _COUNTERS.size

Masks = list[int]
"""Per kind (``DATA``, ``METADATA``, ``ENTRY``), a bitmask of brick indices."""


def encode(data: int = 0, metadata: int = 0, entry: int = 0) -> bytes:
    return _COUNTERS.pack(data, metadata, entry)


def decode(value: bytes) -> tuple[int, int, int]:
    """The three counters; a value of the wrong size counts as pending everywhere.

    A damaged changelog must make heal look at the inode, never be read as clean.
    """
    if len(value) != _COUNTERS.size:
        return (1, 1, 1)
    d, m, e = _COUNTERS.unpack(value)
    return d, m, e


def delta(kinds: int, n: int = 1) -> bytes:
    """``n`` on each counter whose kind bit (``1 << kind``) is set in ``kinds``."""
    return encode(*(n if kinds >> k & 1 else 0 for k in KINDS))


def add(xop: dict[str, bytes], name: str, value: bytes) -> None:
    """Merge ``value`` into the delta ``xop[name]`` (counters add)."""
    old = xop.get(name)
    if old is None:
        xop[name] = value
    else:
        xop[name] = encode(*(a + b for a, b in zip(decode(old), decode(value), strict=True)))


def kinds_of(value: bytes) -> int:
    """Bitmask of the kinds whose counter is non-zero in ``value``."""
    return sum(1 << k for k, c in zip(KINDS, decode(value), strict=True) if c)


def no_masks() -> Masks:
    return [0, 0, 0]


def accused(xattrs: Mapping[int, Mapping[str, bytes]], names: Sequence[str]) -> Masks:
    """Which bricks the answering bricks blame, per kind.

    ``xattrs`` maps a brick index to the changelog it reported; ``names[j]`` is
    the xattr in which a brick blames brick j. A brick's blame of itself is
    ignored (it says nothing about which copy is good).
    """
    masks = no_masks()
    for i, xa in xattrs.items():
        for j, name in enumerate(names):
            if j == i:
                continue
            value = xa.get(name)
            if value is None or value == ZERO:
                continue
            k = kinds_of(value)
            for kind in KINDS:
                if k >> kind & 1:
                    masks[kind] |= 1 << j
    return masks


def is_dirty(xattrs: Mapping[str, bytes]) -> bool:
    value = xattrs.get(AFR_DIRTY)
    return value is not None and value != ZERO


def has_pending(xattrs: Mapping[str, bytes]) -> bool:
    """Any non-zero changelog counter (dirty or blame) in ``xattrs``."""
    return any(v != ZERO for v in xattrs.values())


def describe(masks: Masks) -> str:
    """For log lines: ``data=[1] metadata=[] entry=[0,1]``."""
    return " ".join(
        f"{KIND_NAMES[k]}={[i for i in range(masks[k].bit_length()) if masks[k] >> i & 1]}"
        for k in KINDS)
