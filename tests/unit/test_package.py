"""The package installs under one namespace and its entry points exist."""

import importlib
import shutil

import pytest


@pytest.mark.parametrize("mod", ["rpc", "brickd", "client", "mgmt", "volfiles"])
def test_code_folders_import_through_namespace(mod: str) -> None:
    m = importlib.import_module(f"pyglfs.{mod}")
    assert m.__name__ == f"pyglfs.{mod}"


@pytest.mark.parametrize("script", ["pyglfs", "pyglfsd", "pyglfs-brickd", "pyglfs-mount"])
def test_console_scripts_installed(script: str) -> None:
    assert shutil.which(script) or shutil.which(script, path=".venv/bin"), script
