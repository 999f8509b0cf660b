"""Every Python package in the tree is listed in setup.cfg, so a non-editable
install ships it (the slow installed-package test proves the whole install)."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_setup_cfg() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    found = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "bambid").rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert found <= listed, f"add to setup.cfg [options] packages: {sorted(found - listed)}"
