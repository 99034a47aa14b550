"""Helpers shared by test layers (importable as ``helpers.*``: tests/ is on sys.path)."""
