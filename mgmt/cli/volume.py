"""`pyglfs volume ...`: create, info, list, delete, start, stop, status, set, get, reset.

Every command prints gluster's wording (``volume create: NAME: success: ...``) or,
with --json, the daemon's reply; a refusal is ``volume CMD: NAME: failed: ...`` on
stderr and exit status 1.
"""

from __future__ import annotations

import errno
from typing import Any

import click

from pyglfs.mgmt.cli.common import CliContext, fail, json_option, print_result, run_op
from pyglfs.mgmt.cli.output import (
    format_options,
    format_volume_info,
    format_volume_list,
    format_volume_status,
)

DELETE_WARNING = ("Deleting volume will erase all information about the volume. "
                  "Do you want to continue?")
STOP_WARNING = ("Stopping volume will make its data inaccessible. "
                "Do you want to continue?")
CREATE_USAGE = "Usage: volume create NAME [replica COUNT] HOST:/PATH ... [force]"


@click.group("volume")
def volume() -> None:
    """Manage volumes and cluster-wide options ("all")."""


def parse_create(words: tuple[str, ...]) -> tuple[int, list[str], bool]:
    """``[replica N] BRICK... [force]`` -> (replica, bricks, force); ValueError if malformed."""
    rest = list(words)
    replica = 1
    if rest and rest[0] == "replica":
        if len(rest) < 2 or not rest[1].isdigit() or int(rest[1]) < 1:
            raise ValueError("replica count should be a positive integer")
        replica = int(rest[1])
        rest = rest[2:]
    force = bool(rest) and rest[-1] == "force"
    if force:
        rest = rest[:-1]
    if not rest:
        raise ValueError("no bricks given")
    for b in rest:
        if ":" not in b or not b.split(":", 1)[1]:
            raise ValueError(f"wrong brick type: {b}, use <HOSTNAME>:<export-dir-abs-path>")
    return replica, rest, force


@volume.command("create", context_settings={"ignore_unknown_options": True})
@click.argument("volname")
@click.argument("words", nargs=-1, required=True,
                metavar="[replica COUNT] HOST:/PATH... [force]")
@json_option
@click.pass_obj
def create(obj: CliContext, volname: str, words: tuple[str, ...]) -> None:
    """Create VOLNAME from bricks; every COUNT consecutive bricks form a replica set."""
    try:
        replica, bricks, force = parse_create(words)
    except ValueError as exc:
        fail(obj, f"{exc}\n\n{CREATE_USAGE}", errno.EINVAL)
    result = run_op(obj, f"volume create: {volname}", "volume_create",
                    {"name": volname, "replica": replica, "bricks": bricks, "force": force})
    print_result(obj, result,
                 f"volume create: {volname}: success: please start the volume to access data")


@volume.command("info")
@click.argument("volname", required=False)
@json_option
@click.pass_obj
def info(obj: CliContext, volname: str | None) -> None:
    """Show the definition of VOLNAME (default: every volume)."""
    args: dict[str, Any] = {} if volname is None else {"name": volname}
    result = run_op(obj, "volume info", "volume_info", args)
    print_result(obj, result, format_volume_info)


@volume.command("list")
@json_option
@click.pass_obj
def list_(obj: CliContext) -> None:
    """List the volume names."""
    print_result(obj, run_op(obj, "volume list", "volume_list", {}), format_volume_list)


@volume.command("delete")
@click.argument("volname")
@json_option
@click.pass_obj
def delete(obj: CliContext, volname: str) -> None:
    """Delete a stopped (or never started) volume; the brick data stays."""
    if obj.interactive() and not click.confirm(DELETE_WARNING, default=False):
        fail(obj, f"volume delete: {volname}: cancelled", errno.ECANCELED)
    result = run_op(obj, f"volume delete: {volname}", "volume_delete", {"name": volname})
    print_result(obj, result, f"volume delete: {volname}: success")


@volume.command("start")
@click.argument("volname")
@click.argument("force", required=False, type=click.Choice(["force"]))
@json_option
@click.pass_obj
def start(obj: CliContext, volname: str, force: str | None) -> None:
    """Start the bricks of VOLNAME ("force": also restart bricks that are down)."""
    result = run_op(obj, f"volume start: {volname}", "volume_start",
                    {"name": volname, "force": force == "force"})
    print_result(obj, result, f"volume start: {volname}: success")


@volume.command("stop")
@click.argument("volname")
@click.argument("force", required=False, type=click.Choice(["force"]))
@json_option
@click.pass_obj
def stop(obj: CliContext, volname: str, force: str | None) -> None:
    """Stop the bricks of VOLNAME."""
    if obj.interactive() and not click.confirm(STOP_WARNING, default=False):
        fail(obj, f"volume stop: {volname}: cancelled", errno.ECANCELED)
    result = run_op(obj, f"volume stop: {volname}", "volume_stop",
                    {"name": volname, "force": force == "force"})
    print_result(obj, result, f"volume stop: {volname}: success")


@volume.command("status")
@click.argument("volname", required=False)
@json_option
@click.pass_obj
def status(obj: CliContext, volname: str | None) -> None:
    """Show the brick processes of VOLNAME (default: every started volume)."""
    args: dict[str, Any] = {} if volname is None else {"name": volname}
    result = run_op(obj, "", "volume_status", args)
    print_result(obj, result, format_volume_status)


@volume.command("set")
@click.argument("volname")
@click.argument("key")
@click.argument("value")
@json_option
@click.pass_obj
def volume_set(obj: CliContext, volname: str, key: str, value: str) -> None:
    """Set option KEY to VALUE on VOLNAME ("all": the cluster-wide options)."""
    result = run_op(obj, "volume set", "volume_set",
                    {"volume": volname, "key": key, "value": value})
    print_result(obj, result, "volume set: success")


@volume.command("get")
@click.argument("volname")
@click.argument("key", required=False, default="all")
@json_option
@click.pass_obj
def volume_get(obj: CliContext, volname: str, key: str) -> None:
    """Show option KEY (default: all options) of VOLNAME ("all": cluster-wide)."""
    result = run_op(obj, "volume get option", "volume_get", {"volume": volname, "key": key})
    print_result(obj, result, format_options)


@volume.command("reset")
@click.argument("volname")
@click.argument("key", required=False)
@json_option
@click.pass_obj
def volume_reset(obj: CliContext, volname: str, key: str | None) -> None:
    """Return option KEY (default: every option) of VOLNAME to its default."""
    args: dict[str, Any] = {"volume": volname}
    if key is not None:
        args["key"] = key
    result = run_op(obj, "volume reset", "volume_reset", args)
    print_result(obj, result, "volume reset: success")
