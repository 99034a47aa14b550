"""The `pyglfs` CLI without a cluster: parsing, output layouts, errors, --json."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyglfs.mgmt.cli import cli
from pyglfs.mgmt.cli.common import CliContext, resolve_mgmt
from pyglfs.mgmt.cli.output import format_peer_status, format_pool_list, json_result
from pyglfs.mgmt.daemon import listen_address
from pyglfs.mgmt.errors import MgmtError
from pyglfs.mgmt.peers import parse_hostport
from pyglfs.mgmt.statestore import StateStore

U1 = "fc8f5ac8-78ea-4d72-bb3c-902679b471c5"
U2 = "2c0f5ac8-78ea-4d72-bb3c-902679b471c5"


def peer(uuid: str, host: str, port: int = 24750, connected: bool = True) -> dict[str, object]:
    return {"uuid": uuid, "hostname": host, "port": port, "name": host,
            "state": "Peer in Cluster", "connected": connected}


def test_peer_status_reads_like_gluster() -> None:
    assert format_peer_status({"peers": []}) == "Number of Peers: 0"
    text = format_peer_status({"peers": [peer(U2, "10.0.0.2"),
                                         peer(U1, "10.0.0.3", 40000, connected=False)]})
    assert text.splitlines() == [
        "Number of Peers: 2",
        "", "Hostname: 10.0.0.2", f"Uuid: {U2}", "State: Peer in Cluster (Connected)",
        "", "Hostname: 10.0.0.3", "Port: 40000", f"Uuid: {U1}",
        "State: Peer in Cluster (Disconnected)"]


def test_pool_list_reads_like_gluster() -> None:
    text = format_pool_list({"pool": [peer(U2, "10.0.0.2", connected=False),
                                      peer(U1, "localhost")]})
    assert text == ("UUID\t\t\t\t\tHostname \tState\n"
                    f"{U2}\t10.0.0.2\tDisconnected \n"
                    f"{U1}\tlocalhost\tConnected ")


def test_json_result_shapes() -> None:
    assert json.loads(json_result({"peers": []})) == {"ok": True, "peers": []}
    assert json.loads(json_result([1])) == {"ok": True, "result": [1]}


@pytest.mark.parametrize("text,want", [
    ("host", ("host", 24750)), ("10.0.0.2:1234", ("10.0.0.2", 1234)),
    ("[::1]:99", ("::1", 99)), ("[fe80::1]", ("fe80::1", 24750)), ("::1", ("::1", 24750)),
])
def test_parse_hostport(text: str, want: tuple[str, int]) -> None:
    assert parse_hostport(text) == want


@pytest.mark.parametrize("text", ["", ":1", "h:0", "h:70000", "h:x", "a b", "[::1", "[::1]x",
                                  "a/b", "h:"])
def test_parse_hostport_refuses(text: str) -> None:
    with pytest.raises(MgmtError):
        parse_hostport(text)


def test_listen_address() -> None:
    assert listen_address("127.0.0.2:0") == ("127.0.0.2", 0)
    assert listen_address(":24750") == ("0.0.0.0", 24750)
    assert listen_address("*") == ("0.0.0.0", 24750)
    assert listen_address("127.0.0.3") == ("127.0.0.3", 24750)


def test_mgmt_address_from_listen_record(tmp_path: Path) -> None:
    assert resolve_mgmt(None, str(tmp_path)) == ("127.0.0.1", 24750)
    s = StateStore(tmp_path)
    s.open(lock=False)
    s.save_listen("127.0.0.2", 4321)
    assert resolve_mgmt(None, str(tmp_path)) == ("127.0.0.2", 4321)
    assert resolve_mgmt("127.0.0.9:5", str(tmp_path)) == ("127.0.0.9", 5)


def free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return f"127.0.0.2:{s.getsockname()[1]}"


@pytest.mark.parametrize("argv", [["peer", "status"], ["pool", "list"],
                                  ["peer", "probe", "127.0.0.3"],
                                  ["--mode=script", "peer", "detach", "127.0.0.3"]])
def test_no_daemon_is_one_line_naming_the_address(argv: list[str]) -> None:
    addr = free_addr()
    r = CliRunner().invoke(cli, ["--mgmt", addr, *argv])
    assert r.exit_code == 1
    assert r.output.splitlines() == [
        "Connection failed. Please check if pyglfsd (the pyglfs management daemon) is "
        f"operational on {addr}."]
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_json_on_the_command_or_the_group() -> None:
    addr = free_addr()
    for argv in (["--json", "peer", "status"], ["peer", "status", "--json"]):
        r = CliRunner().invoke(cli, ["--mgmt", addr, *argv])
        assert r.exit_code == 1
        d = json.loads(r.output)
        assert d["ok"] is False and d["errno"] == "ENOTCONN" and addr in d["error"]


def test_bad_arguments_are_clean_errors() -> None:
    r = CliRunner().invoke(cli, ["--mgmt", "h:99999", "peer", "status"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["peer", "detach", "h", "sometimes"])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["--mgmt", free_addr(), "peer", "probe", "h:x"])
    assert (r.exit_code, r.output) == (1, "peer probe: failed: invalid port in 'h:x'\n")


def test_detach_asks_on_a_terminal_and_no_cancels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CliContext, "interactive", lambda self: True)
    r = CliRunner().invoke(cli, ["--mgmt", free_addr(), "peer", "detach", "h"], input="n\n")
    assert r.exit_code == 1
    assert "do you want to proceed?" in r.output
    assert r.stderr == "peer detach: cancelled\n"
    r = CliRunner().invoke(cli, ["--mgmt", free_addr(), "peer", "detach", "h"], input="y\n")
    assert r.exit_code == 1 and "Connection failed" in r.stderr
