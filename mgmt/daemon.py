"""Entry point of `pyglfsd` (placeholder until the management issue lands)."""

import sys


def main() -> None:
    print("pyglfsd: not yet available in this build", file=sys.stderr)
    sys.exit(1)
