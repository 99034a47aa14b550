"""Entry point of `pyglfs` (placeholder until the management issue lands)."""

import sys


def main() -> None:
    print("pyglfs: not yet available in this build", file=sys.stderr)
    sys.exit(1)
