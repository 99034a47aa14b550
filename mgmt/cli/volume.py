"""`pyglfs volume ...`. This slice serves the cluster-wide options (volume name
``all``); volume create/start/info/status come with the volume slice."""

from __future__ import annotations

import click

from pyglfs.mgmt.cli.common import CliContext, json_option, print_result, run_op
from pyglfs.mgmt.cli.output import format_options


@click.group("volume")
def volume() -> None:
    """Manage volumes and cluster-wide options ("all")."""


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
