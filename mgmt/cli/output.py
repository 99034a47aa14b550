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


def format_volume_info(reply: dict[str, Any]) -> str:
    """`volume info`: one block per volume, as gluster prints it."""
    vols = reply["volumes"]
    if not vols:
        return "No volumes present"
    lines: list[str] = []
    for v in vols:
        count = (f"{v['sets']} x {v['replica']} = {v['brick_count']}" if v["replica"] > 1
                 else str(v["brick_count"]))
        lines += [" ", f"Volume Name: {v['name']}", f"Type: {v['type']}",
                  f"Volume ID: {v['id']}", f"Status: {v['status']}", "Snapshot Count: 0",
                  f"Number of Bricks: {count}", "Transport-type: tcp", "Bricks:"]
        lines += [f"Brick{i}: {b['host']}:{b['path']}" for i, b in enumerate(v["bricks"], 1)]
        if v["options"]:
            lines.append("Options Reconfigured:")
            lines += [f"{k}: {val}" for k, val in v["options"].items()]
    return "\n".join(lines)


def format_volume_list(reply: dict[str, Any]) -> str:
    return "\n".join(reply["volumes"]) or "No volumes present in cluster"


STATUS_RULE = "-" * 78


def format_volume_status(reply: dict[str, Any]) -> str:
    """`volume status`: gluster's process table (brick, TCP port, RDMA port, online, pid)."""
    out: list[str] = []
    for v in reply["volumes"]:
        out += [f"Status of volume: {v['name']}",
                f"{'Gluster process':<44}{'TCP Port':<10}{'RDMA Port':<11}{'Online':<8}Pid",
                STATUS_RULE]
        for b in v["bricks"]:
            name = f"Brick {b['host']}:{b['path']}"
            if b["online"]:
                port, rdma, online, pid = str(b["port"]), "0", "Y", str(b["pid"])
            else:
                port, rdma, online, pid = "N/A", "N/A", "N", "N/A"
            if len(name) > 47:  # gluster wraps a long brick name onto its own line
                out.append(name)
                name = ""
            out.append(f"{name:<48}{port:<10}{rdma:<11}{online:<8}{pid}")
        out += [" ", f"Task Status of Volume {v['name']}", STATUS_RULE,
                "There are no active volume tasks", " "]
    return "\n".join(out)
