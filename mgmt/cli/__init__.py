"""`pyglfs`: the operator CLI, one click group talking to a pyglfsd.

Command families live in their own modules (``peer``, ``volume``) and share
``common`` (options, the daemon call, errors) and ``output`` (gluster layouts,
JSON).
"""

from __future__ import annotations

import logging

import click

from pyglfs import __version__
from pyglfs.mgmt.cli.common import CliContext, default_state_dir, resolve_mgmt
from pyglfs.mgmt.cli.peer import peer, pool
from pyglfs.mgmt.cli.volume import volume


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mgmt", metavar="HOST[:PORT]", envvar="PYGLFS_MGMT",
              help="The pyglfsd to talk to (default: the local one's listen record, "
                   "else 127.0.0.1:24750).")
@click.option("--state-dir", default=default_state_dir, show_default="/var/lib/pyglfs",
              help="The local daemon's state directory (to find where it listens).")
@click.option("--json", "json_", is_flag=True, help="Machine-readable output.")
@click.option("--mode", type=click.Choice(["script", "interactive"]), default="interactive",
              help="script: never ask for confirmation.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait for the daemon's answer.")
@click.option("--log-level", default="ERROR", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(__version__, prog_name="pyglfs")
@click.pass_context
def cli(ctx: click.Context, mgmt: str | None, state_dir: str, json_: bool, mode: str,
        timeout: float, log_level: str) -> None:
    """Manage a pyglfs trusted storage pool and its volumes."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    obj = ctx.ensure_object(CliContext)
    obj.mgmt = resolve_mgmt(mgmt, state_dir)
    obj.json = obj.json or json_
    obj.script = mode == "script"
    obj.timeout = timeout


cli.add_command(peer)
cli.add_command(pool)
cli.add_command(volume)


def main() -> None:
    cli(prog_name="pyglfs")
