"""Configuration: defaults, TOML, environment, legacy variables and errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import attrs
import pytest

from bambid import config as c
from bambid.urls import redact_url

REPO = Path(__file__).resolve().parent.parent


def test_defaults_need_no_file_and_no_environment() -> None:
    config = c.load(None, {})
    assert config.server.endpoint == "tcp:6969:interface=127.0.0.1"
    assert config.storage.uri == "sqlite:///var/bambid.sqlite3"
    assert config.server.max_message_size == 65536
    assert config.ai.url == "http://127.0.0.1:1234/v1"
    assert config.voice.effective_backend == "espeak"


def test_sections_are_frozen() -> None:
    config = c.load(None, {})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.server.endpoint = "tcp:1"  # type: ignore[misc]


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bambid.toml"
    path.write_text(
        '[server]\nendpoint = "tcp:7000"\nallowed_origins = ["https://chat.example"]\n'
        '[storage]\nuri = "mongodb://db.example/bambid"\npool_size = 4\n'
    )
    config = c.load(path, {})
    assert config.server.endpoint == "tcp:7000"
    assert config.server.allowed_origins == ["https://chat.example"]
    assert config.storage.uri == "mongodb://db.example/bambid"
    assert config.storage.pool_size == 4


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "bambid.toml"
    path.write_text('[server]\nendpoint = "tcp:7000"\n')
    config = c.load(
        path,
        {
            "BAMBID_SERVER_ENDPOINT": "tcp:7100",
            "BAMBID_STORAGE_URI": "sqlite:////srv/bambid.db",
            "BAMBID_SERVER_MAX_MESSAGE_SIZE": "2048",
            "BAMBID_SERVER_PING_INTERVAL": "12.5",
            "BAMBID_STORAGE_JOURNAL": "off",
            "BAMBID_SERVER_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        },
    )
    assert config.server.endpoint == "tcp:7100"
    assert config.storage.uri == "sqlite:////srv/bambid.db"
    assert config.server.max_message_size == 2048
    assert config.server.ping_interval == 12.5
    assert config.storage.journal is False
    assert config.server.allowed_origins == ["https://a.example", "https://b.example"]


def test_original_app_variables_are_honoured() -> None:
    config = c.load(
        None,
        {
            "SERVER_PORT": "7070",
            "MONGODB_URI": "mongodb://mongo.example:27017/bambisleep",
            "KOKORO_HOST": "tts.example",
            "KOKORO_PORT": "8881",
            "KOKORO_DEFAULT_VOICE": "af_bella",
            "LMS_HOST": "llm.example",
            "LMS_PORT": "1235",
        },
    )
    assert config.server.endpoint == "tcp:7070:interface=127.0.0.1"
    assert config.storage.uri == "mongodb://mongo.example:27017/bambisleep"
    assert config.voice.url == "http://tts.example:8881/v1"
    assert config.voice.default_voice == "af_bella"
    assert config.voice.effective_backend == "kokoro"
    assert config.ai.url == "http://llm.example:1235/v1"


def test_kokoro_api_url_wins_over_host_and_port() -> None:
    config = c.load(
        None, {"KOKORO_API_URL": "https://tts.example/v1", "KOKORO_HOST": "ignored.example"}
    )
    assert config.voice.url == "https://tts.example/v1"


def test_bambid_variables_win_over_legacy_ones() -> None:
    config = c.load(None, {"SERVER_PORT": "7070", "BAMBID_SERVER_ENDPOINT": "tcp:7171"})
    assert config.server.endpoint == "tcp:7171"


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"BAMBID_SERVER_MAX_MESSAGE_SIZE": "big"}, "server.max_message_size"),
        ({"BAMBID_SERVER_MAX_MESSAGE_SIZE": "10"}, "server.max_message_size"),
        ({"BAMBID_STORAGE_URI": "postgres://x"}, "storage.uri"),
        ({"BAMBID_STORAGE_JOURNAL": "maybe"}, "storage.journal"),
        ({"BAMBID_SERVER_ALLOWED_ORIGINS": "ftp://x"}, "server.allowed_origins"),
        ({"BAMBID_VOICE_BACKEND": "festival"}, "voice.backend"),
        ({"BAMBID_AI_URL": "not a url"}, "ai.url"),
        ({"SERVER_PORT": "seventy"}, "SERVER_PORT"),
        ({"KOKORO_PORT": "x y"}, "voice.url"),
    ],
)
def test_bad_values_name_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(c.ConfigError) as caught:
        c.load(None, environ)
    assert str(caught.value).startswith(key)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nmax_body_size = 'lots'\n", "server.max_body_size"),
        ("[server]\nendpoit = 'tcp:1'\n", "server.endpoit"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("[server]\nallowed_origins = 'https://a.example'\n", "server.allowed_origins"),
        ("[storage]\npool_size = true\n", "storage.pool_size"),
        ("server = 3\n", "server"),
        ("[server\n", "--config"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(c.ConfigError) as caught:
        c.load(path, {})
    assert str(caught.value).startswith(key)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(c.ConfigError, match="no such file"):
        c.load(tmp_path / "absent.toml", {})


def test_example_file_documents_every_key_and_loads() -> None:
    example = REPO / "etc" / "bambid.toml.example"
    text = example.read_text()
    c.load(example, {})
    documented = tomllib.loads(text)
    for name, section in c.SECTIONS.items():
        keys = {f.name for f in attrs.fields(section)}
        commented = set(re.findall(r"^#?\s*(\w+)\s*=", _section_text(text, name), re.M))
        assert keys <= commented | set(documented.get(name, {})), (name, keys - commented)


def _section_text(text: str, name: str) -> str:
    match = re.search(rf"^\[{name}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert match, f"[{name}] missing from the example"
    return match.group(1)


def test_effective_masks_secrets() -> None:
    config = c.load(
        None, {"MONGODB_URI": "mongodb://user:hunter2@db.example/x", "BAMBID_AI_API_KEY": "sk-1"}
    )
    shown = c.effective(config)
    assert "hunter2" not in str(shown)
    assert "sk-1" not in str(shown)
    assert shown["storage"]["uri"] == "mongodb://***@db.example/x"


@pytest.mark.parametrize(
    ("url", "masked", "dropped"),
    [
        ("http://127.0.0.1:1234/v1", "http://127.0.0.1:1234/v1", "http://127.0.0.1:1234/v1"),
        ("https://u:p@h:1/v1?key=k#f", "https://***@h:1/v1?***#***", "https://h:1/v1"),
        ("http://token@h/", "http://***@h/", "http://h/"),
        ("http://[::1]:8/x?k=1", "http://[::1]:8/x?***", "http://[::1]:8/x"),
        (
            "mongodb://u:p@db1:27017,db2:27017/b?authSource=admin",
            "mongodb://***@db1:27017,db2:27017/b?***",
            "mongodb://db1:27017,db2:27017/b",
        ),
        ("sqlite:///var/bambid.sqlite3", "sqlite:///var/bambid.sqlite3", None),
        ("http://u:pa#ss@h/", "http://***", "http://"),  # a password with a "#"
        ("http://u:pa/ss@h/", "http://***", "http://"),
        ("http://[::1", "***", ""),
        ("", "", ""),
    ],
)
def test_redact_url(url: str, masked: str, dropped: str | None) -> None:
    assert redact_url(url) == masked
    assert redact_url(url, mask="") == (url if dropped is None else dropped)


def test_the_read_cap_is_lowered_to_fit_in_one_message() -> None:
    assert c.load(environ={}).triggers.read_max_bytes == 30720
    small = c.load(environ={"BAMBID_SERVER_MAX_MESSAGE_SIZE": "8192"})
    assert small.triggers.read_max_bytes == 3584
    big = c.load(
        environ={
            "BAMBID_TRIGGERS_READ_MAX_BYTES": "40000",
            "BAMBID_SERVER_MAX_MESSAGE_SIZE": "100000",
        }
    )
    assert big.triggers.read_max_bytes == 40000
