"""The deployment examples (Dockerfile, deploy/compose.yaml, the nginx site) say
what bambid really accepts: docker and nginx do not run here, so these tests
hold them to the configuration loader and to a running daemon instead."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import attrs

from bambid import config as configuration
from tests.daemon import REPO, Daemon

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "compose.yaml"
NGINX = REPO / "deploy" / "nginx" / "bambid.conf"
SYSTEMD = REPO / "systemd"
ENV_NAME = re.compile(r"\bBAMBID_[A-Z0-9_]+\b")


def accepted_variables() -> dict[str, tuple[str, str]]:
    """``BAMBID_SECTION_KEY`` -> (section, key), for every key config.py reads."""
    return {
        f"BAMBID_{section}_{field.name}".upper(): (section, field.name)
        for section, cls in configuration.SECTIONS.items()
        for field in attrs.fields(cls)
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def dockerfile_environment() -> dict[str, str]:
    """The BAMBID_* variables the image sets with ENV (``ENV A=b C=d``)."""
    values: dict[str, str] = {}
    for instruction, rest in dockerfile_instructions():
        if instruction == "ENV":
            for name, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S*)", rest):
                if name.startswith("BAMBID_"):
                    values[name] = value.strip('"')
    return values


def compose_environment() -> dict[str, str]:
    """The BAMBID_* variables compose.yaml sets (``KEY: "value"`` lines, not
    commented out)."""
    pattern = re.compile(r'^\s+(BAMBID_[A-Z0-9_]+):\s*"([^"]*)"\s*$', re.M)
    return dict(pattern.findall(COMPOSE.read_text()))


def test_every_variable_set_is_one_config_accepts() -> None:
    known = accepted_variables()
    environment = {**dockerfile_environment(), **compose_environment()}
    assert len(environment) >= 4
    assert set(environment) <= set(known), set(environment) - set(known)
    loaded = configuration.load(None, environment)
    for name, text in environment.items():
        section, key = known[name]
        value = getattr(getattr(loaded, section), key)
        assert (value if isinstance(value, str) else json.dumps(value)) == text, name


def test_every_variable_mentioned_exists() -> None:
    """Commented-out examples too: a misspelled name would be ignored silently."""
    known = accepted_variables()
    files = [DOCKERFILE, COMPOSE, NGINX, *(p for p in SYSTEMD.rglob("bambid.*") if p.is_file())]
    mentioned = {name for path in files for name in ENV_NAME.findall(path.read_text())}
    assert mentioned - set(known) == set()


def test_compose_wires_kokoro_mongodb_and_the_host_llm() -> None:
    environment = compose_environment()
    assert environment["BAMBID_VOICE_BACKEND"] == "kokoro"
    assert environment["BAMBID_VOICE_URL"] == "http://kokoro:8880/v1"
    assert environment["BAMBID_STORAGE_URI"] == "mongodb://mongo:27017/bambid"
    assert environment["BAMBID_AI_URL"] == "http://host.docker.internal:1234/v1"
    text = COMPOSE.read_text()
    for line in (
        "image: ghcr.io/remsky/kokoro-fastapi-cpu:latest",
        "image: mongo:7",
        "image: redis:7",
        '- "host.docker.internal:host-gateway"',
        "- bambid-data:/var/lib/bambid",
    ):
        assert re.search(rf"^\s+{re.escape(line)}$", text, re.M), line
    for service in ("bambid", "kokoro", "mongo", "redis"):
        assert re.search(rf"^  {service}:$", text, re.M), service


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    arguments: dict[str, list[str]] = {}
    for instruction, rest in instructions:
        arguments.setdefault(instruction, []).append(rest)
    assert arguments["FROM"][-1] == "python:3.11-slim-bookworm"
    assert any("espeak-ng ffmpeg" in run for run in arguments["RUN"])
    assert arguments["USER"] == ["bambid"]
    assert arguments["WORKDIR"] == ["/var/lib/bambid"]
    assert json.loads(arguments["VOLUME"][0]) == ["/var/lib/bambid"]
    assert arguments["STOPSIGNAL"] == ["SIGTERM"]
    assert json.loads(arguments["CMD"][0]) == [
        "twist",
        "bambid",
        "--port",
        "tcp:6969:interface=0.0.0.0",
    ]


def healthcheck_command() -> list[str]:
    (healthcheck,) = [rest for word, rest in dockerfile_instructions() if word == "HEALTHCHECK"]
    command: list[str] = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:6969/health/api" in command[2]
    return command


def run_healthcheck(port: int) -> int:
    code = healthcheck_command()[2].replace(":6969/", f":{port}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode


def test_healthcheck_passes_against_a_running_daemon(daemon: Daemon) -> None:
    assert run_healthcheck(daemon.port) == 0


def test_healthcheck_fails_when_nothing_answers() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert run_healthcheck(port) != 0


def nginx_location(path: str) -> str:
    """The body of the last ``location PATH { ... }`` (the TLS server's)."""
    bodies = re.findall(rf"location {re.escape(path)} \{{(.*?)\n    \}}", NGINX.read_text(), re.S)
    assert bodies, path
    return str(bodies[-1])


def test_nginx_upgrades_the_websocket() -> None:
    ws = nginx_location("= /ws")
    for line in (
        "proxy_pass http://127.0.0.1:6969;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Host $host;",
    ):
        assert line in ws, line
    text = NGINX.read_text()
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s+default upgrade;", text)
    assert "ssl_certificate /etc/letsencrypt/live/" in text
    assert "proxy_pass http://127.0.0.1:6969;" in nginx_location("/")
