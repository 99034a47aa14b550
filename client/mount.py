"""Entry point of `pyglfs-mount` (placeholder until the FUSE client issue lands)."""

import sys


def main() -> None:
    print("pyglfs-mount: not yet available in this build", file=sys.stderr)
    sys.exit(1)
