"""cluster/replicate: synchronous replication over a replica set of bricks."""

from pyglfs.client.replicate.core import Replicate
from pyglfs.client.replicate.quorum import Quorum

__all__ = ["Quorum", "Replicate"]
