"""Write quorum: whether the bricks that can take a change are enough.

``cluster.quorum-type``:

- ``none``: any one brick will do.
- ``fixed``: at least ``quorum-count`` bricks.
- ``auto``: more than half of the bricks, or exactly half when the first brick
  is among them. For replica 2 this means the first brick must be up, so two
  clients that each see a different brick cannot both write (no split-brain
  from a network partition), at the price of the second brick alone being
  read-only.

Reads do not need quorum: they go on while any brick that is a good source is up.
"""

from __future__ import annotations

QUORUM_TYPES = ("none", "auto", "fixed")


class Quorum:
    """The quorum rule of one replica set of ``n`` bricks."""

    def __init__(self, n: int, type: str = "auto", count: int = 1) -> None:
        if type not in QUORUM_TYPES:
            raise ValueError(f"quorum-type must be one of {', '.join(QUORUM_TYPES)}: {type!r}")
        if n < 1:
            raise ValueError("a replica set needs at least one brick")
        if type == "fixed" and not 1 <= count <= n:
            raise ValueError(f"quorum-count must be in 1..{n}: {count}")
        self.n = n
        self.type = type
        self.count = count

    def __repr__(self) -> str:
        extra = f" count={self.count}" if self.type == "fixed" else ""
        return f"<Quorum {self.type}{extra} of {self.n}>"

    def met(self, bricks: int) -> bool:
        """Whether the bricks in bitmask ``bricks`` form a quorum."""
        have = bricks.bit_count()
        if have == 0:
            return False
        if self.type == "none":
            return True
        if self.type == "fixed":
            return have >= self.count
        return 2 * have > self.n or (2 * have == self.n and bool(bricks & 1))
