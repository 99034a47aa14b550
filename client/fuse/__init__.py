"""The FUSE bridge: pyfuse3 requests -> operations on the client's layer graph."""

from pyglfs.client.fuse.operations import BridgeConfig, FuseOperations

__all__ = ["BridgeConfig", "FuseOperations"]
