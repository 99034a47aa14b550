"""pyglfs: a GlusterFS-style replicated filesystem.

The code folders at the repository root (rpc, brickd, client, mgmt, volfiles)
are reached through this namespace by directory symlinks, so nothing generic
lands in site-packages.
"""

__version__ = "0.1.0"
