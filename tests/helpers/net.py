"""Loopback addresses for tests."""

from __future__ import annotations

import socket


def free_port(ip: str) -> int:
    """A TCP port free on ``ip`` at the time of asking (another process may take it)."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])
