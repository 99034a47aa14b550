"""`pyglfs peer probe|detach|status` and `pyglfs pool list`."""

from __future__ import annotations

import errno

import click

from pyglfs.mgmt.cli.common import CliContext, fail, json_option, print_result, run_op
from pyglfs.mgmt.cli.output import format_peer_status, format_pool_list
from pyglfs.mgmt.errors import MgmtError
from pyglfs.mgmt.peers import parse_hostport

DETACH_WARNING = (
    "All clients mounted through the peer which is getting detached need to be remounted "
    "using one of the other active peers in the trusted storage pool to ensure client gets "
    "notification on any changes done on the pyglfs configuration and if the same has been "
    "done do you want to proceed?")


def _address(obj: CliContext, prefix: str, text: str) -> tuple[str, int | None]:
    try:
        host, port = parse_hostport(text)
    except MgmtError as exc:
        fail(obj, f"{prefix}: failed: {exc.message}", errno.EINVAL)
    return host, (port if ":" in text and not text.endswith("]") else None)


@click.group("peer")
def peer() -> None:
    """Manage the trusted storage pool."""


@peer.command("probe")
@click.argument("host", metavar="HOST[:PORT]")
@json_option
@click.pass_obj
def probe(obj: CliContext, host: str) -> None:
    """Add HOST (a node running pyglfsd) to the pool."""
    h, port = _address(obj, "peer probe", host)
    args: dict[str, object] = {"host": h}
    if port is not None:
        args["port"] = port
    result = run_op(obj, "peer probe", "peer_probe", args)
    print_result(obj, result, "peer probe: success")


@peer.command("detach")
@click.argument("host", metavar="HOST[:PORT]|UUID")
@click.argument("force", required=False, type=click.Choice(["force"]))
@json_option
@click.pass_obj
def detach(obj: CliContext, host: str, force: str | None) -> None:
    """Remove HOST from the pool ("force": even if it cannot be reached)."""
    h, port = _address(obj, "peer detach", host)
    if obj.interactive() and not click.confirm(DETACH_WARNING, default=False):
        fail(obj, "peer detach: cancelled", errno.ECANCELED)
    args: dict[str, object] = {"host": h, "force": force == "force"}
    if port is not None:
        args["port"] = port
    result = run_op(obj, "peer detach", "peer_detach", args)
    print_result(obj, result, "peer detach: success")


@peer.command("status")
@json_option
@click.pass_obj
def status(obj: CliContext) -> None:
    """Show the other nodes of the pool and whether they are connected."""
    result = run_op(obj, "peer status", "peer_status", {})
    print_result(obj, result, format_peer_status)


@click.group("pool")
def pool() -> None:
    """The trusted storage pool, this node included."""


@pool.command("list")
@json_option
@click.pass_obj
def pool_list(obj: CliContext) -> None:
    """List every node of the pool (this one as "localhost")."""
    result = run_op(obj, "pool list", "pool_list", {})
    print_result(obj, result, format_pool_list)
