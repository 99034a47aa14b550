"""How the CLI prints results: gluster's layouts for people, JSON for programs.

Each ``format_*`` takes the daemon's reply and returns the text ``gluster`` would
print for the same facts, so an operator reads our output as theirs.
"""

from __future__ import annotations

import json
from typing import Any

from pyglfs.mgmt.peerlink import DEFAULT_PORT


def connection_state(peer: dict[str, Any]) -> str:
    return "Connected" if peer.get("connected") else "Disconnected"


def format_peer_status(reply: dict[str, Any]) -> str:
    peers = reply["peers"]
    lines = [f"Number of Peers: {len(peers)}"]
    for p in peers:
        lines += ["", f"Hostname: {p['hostname']}"]
        if p["port"] != DEFAULT_PORT:  # gluster's layout for a peer off the default port
            lines.append(f"Port: {p['port']}")
        lines += [f"Uuid: {p['uuid']}", f"State: {p['state']} ({connection_state(p)})"]
    return "\n".join(lines)


def format_pool_list(reply: dict[str, Any]) -> str:
    lines = ["UUID\t\t\t\t\tHostname \tState"]
    for p in reply["pool"]:
        lines.append(f"{p['uuid']}\t{p['hostname']}\t{connection_state(p)} ")
    return "\n".join(lines)


def format_options(reply: dict[str, Any]) -> str:
    """`volume get`'s two-column table."""
    lines = [f"{'Option':<40}{'Value':<40}", f"{'------':<40}{'-----':<40}"]
    lines += [f"{k:<40}{v:<40}" for k, v in reply["options"].items()]
    return "\n".join(lines)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)


def json_result(result: Any) -> str:
    """A success for --json: ``{"ok": true, ...result}`` (a non-map result under "result")."""
    body = dict(result) if isinstance(result, dict) else {"result": result}
    body["ok"] = True
    return to_json(body)


def json_error(message: str, errno_name: str) -> str:
    return to_json({"ok": False, "error": message, "errno": errno_name})
