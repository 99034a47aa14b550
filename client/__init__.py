"""The FUSE client and its layers (protocol client, replicate)."""
