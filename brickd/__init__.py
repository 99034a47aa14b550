"""The brick server: POSIX storage under one brick root, addressed by gfid."""
