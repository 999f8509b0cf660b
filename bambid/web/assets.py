"""Where the installed templates and static files are (package ``bambid.assets``,
the repository's ``web/`` directory)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import jinja2


def assets_dir() -> Path:
    """The directory holding ``templates/`` and ``static/``."""
    return Path(str(files("bambid.assets")))


def bootstrap_dir() -> Path:
    """Bootstrap's ``css/`` and ``js/`` from the xstatic-bootstrap package."""
    from xstatic.pkg import bootstrap

    return Path(bootstrap.BASE_DIR)


def template_environment() -> jinja2.Environment:
    """The one Jinja2 environment: autoescaping on for HTML, undefined is an error."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(assets_dir() / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
