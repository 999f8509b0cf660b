"""A non-editable ``pip install .`` into a fresh virtual environment gives a
working ``twist bambid`` that serves its installed templates and static files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"bambid listening on .*port=(\d+)")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_installed_package_runs_outside_the_repository(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environ["PIP_CONSTRAINT"] = str(REPO / "constraints.txt")
    environ = {k: v for k, v in environ.items() if not k.startswith("BAMBID_")}
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(REPO)],
        check=True,
        env=environ,
        cwd=tmp_path,
        timeout=840,
    )
    site = subprocess.run(
        [python, "-c", "import bambid, sys; print(bambid.__file__)"],
        check=True,
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    assert str(env_dir) in site, "bambid must be imported from the installed copy"

    help_text = subprocess.run(
        [env_dir / "bin" / "twist", "--help"],
        check=True,
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    assert re.search(r"^\s+bambid\s", help_text, re.M), help_text

    workdir = tmp_path / "run"
    workdir.mkdir()
    daemon = subprocess.Popen(
        [
            env_dir / "bin" / "twist",
            "--log-format=text",
            "bambid",
            "--port",
            "tcp:0:interface=127.0.0.1",
        ],
        env=environ,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        port = None
        for line in daemon.stdout:
            match = LISTENING.search(line)
            if match:
                port = int(match.group(1))
                break
        assert port, "daemon did not start"
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/") as page:
            assert b"connection-state" in page.read()
        with urllib.request.urlopen(base + "/static/js/connection.js") as script:
            assert b"WebSocket" in script.read()
        with urllib.request.urlopen(base + "/vendor/bootstrap/css/bootstrap.min.css") as css:
            assert css.status == 200
        with urllib.request.urlopen(base + "/health/api") as health:
            assert b'"status":"ok"' in health.read()
        assert (workdir / "var" / "bambid.sqlite3").exists()
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=30) == 0
    assert sys.prefix != str(env_dir)
