"""Configuration: a TOML file, then environment variables, into frozen sections.

Precedence, lowest first: the defaults below, ``--config FILE`` (TOML), the
original app's variables (``SERVER_PORT``, ``MONGODB_URI``, ``KOKORO_*``,
``LMS_*``), then ``BAMBID_<SECTION>_<KEY>``. Every problem is raised as
``ConfigError`` whose message starts with the dotted key, e.g.
``server.max_message_size: must be an integer >= 1024, got 'big'``.
``etc/bambid.toml.example`` documents every key; a test keeps the two in step.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import attrs

from bambid.models import username_key
from bambid.urls import redact_url


class ConfigError(Exception):
    """A configuration value is missing or wrong; ``str()`` names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# --- validators --------------------------------------------------------------
#
# A check takes the value and returns a problem description, or None if fine.

Check = Callable[[Any], "str | None"]


def _at_least(minimum: float) -> Check:
    return lambda v: None if v >= minimum else f"must be >= {minimum}, got {v!r}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _http_url(v: str) -> str | None:
    if v == "":
        return None
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
        return f"must be an http(s) URL, got {v!r}"
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return f"has a bad port number: {v!r}"
    return None


def _http_urls(v: list[str]) -> str | None:
    for url in v:
        problem = _http_url(url) if url else f"must be an http(s) URL, got {url!r}"
        if problem:
            return problem
    return None


def _between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {v!r}"


def _storage_uri(v: str) -> str | None:
    if v.startswith(("sqlite:///", "mongodb://", "mongodb+srv://")):
        return None
    return f"must start with sqlite:/// or mongodb://, got {v!r}"


def _origins(v: list[str]) -> str | None:
    for origin in v:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            return f"each origin must look like https://host[:port], got {origin!r}"
    return None


def _networks(v: list[str]) -> str | None:
    for network in v:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            return f"each entry must be an address or network (CIDR), got {network!r}"
    return None


def setting(default: Any, check: Check | None = None, secret: bool = False) -> Any:
    """Declare one configuration key with its default and validation."""
    return attrs.field(default=default, metadata={"check": check, "secret": secret})


# --- sections ----------------------------------------------------------------


@attrs.frozen
class ServerConfig:
    """[server]: the listening endpoint and the limits of every connection."""

    endpoint: str = setting("tcp:6969:interface=127.0.0.1")
    public_url: str = setting("", _http_url)
    allowed_origins: list[str] = setting(attrs.Factory(list), _origins)
    trusted_proxies: list[str] = setting(
        attrs.Factory(lambda: ["127.0.0.1/32", "::1/128"]), _networks
    )
    max_message_size: int = setting(65536, _at_least(1024))
    max_body_size: int = setting(1048576, _at_least(1024))
    ping_interval: float = setting(30.0, _at_least(0))
    ping_timeout: float = setting(60.0, _at_least(1))
    shutdown_timeout: float = setting(10.0, _at_least(0.1))


@attrs.frozen
class StorageConfig:
    """[storage]: where data lives. SQLite by default, MongoDB by URI."""

    uri: str = setting("sqlite:///var/bambid.sqlite3", _storage_uri, secret=True)
    write_concern: str = setting("majority")
    journal: bool = setting(True)
    pool_size: int = setting(10, _at_least(1))
    timeout: float = setting(10.0, _at_least(0.1))
    batch_max: int = setting(256, _at_least(1))


@attrs.frozen
class AIConfig:
    """[ai]: the OpenAI-compatible LLM server (used from issue 4 on)."""

    url: str = setting("http://127.0.0.1:1234/v1", _http_url)
    api_key: str = setting("", secret=True)
    model: str = setting("")
    fallback_urls: list[str] = setting(attrs.Factory(list), _http_urls)
    temperature: float = setting(0.8, _between(0, 2))
    top_p: float = setting(0.95, _between(0, 1))
    top_k: int = setting(0, _at_least(0))
    max_tokens: int = setting(512, _at_least(1))
    frequency_penalty: float = setting(0.0, _between(-2, 2))
    presence_penalty: float = setting(0.0, _between(-2, 2))
    stop: list[str] = setting(attrs.Factory(list))
    context_tokens: int = setting(4096, _at_least(256))
    connect_timeout: float = setting(5.0, _at_least(0.1))
    first_byte_timeout: float = setting(120.0, _at_least(0.1))
    idle_timeout: float = setting(60.0, _at_least(0.1))
    total_timeout: float = setting(600.0, _at_least(1))
    max_reply_bytes: int = setting(4194304, _at_least(1024))
    concurrency: int = setting(2, _at_least(1))
    max_queue: int = setting(20, _at_least(0))
    grace_seconds: float = setting(30.0, _at_least(0))
    max_prompt_length: int = setting(4000, _at_least(1))
    persona_file: str = setting("")
    health_interval: float = setting(30.0, _at_least(1))


@attrs.frozen
class VoiceConfig:
    """[voice]: text to speech (docs/voice.md)."""

    backend: str = setting("", _one_of("", "espeak", "kokoro"))
    url: str = setting("", _http_url)
    default_voice: str = setting("")
    api_key: str = setting("", secret=True)
    format: str = setting("mp3", _one_of("mp3", "opus", "aac", "flac", "wav"))
    speed: float = setting(1.0, _between(0.25, 4.0))
    fallback: bool = setting(True)
    speak_replies: bool = setting(True)
    connect_timeout: float = setting(5.0, _at_least(0.1))
    first_byte_timeout: float = setting(30.0, _at_least(0.1))
    idle_timeout: float = setting(15.0, _at_least(0.1))
    total_timeout: float = setting(60.0, _at_least(1))
    max_audio_bytes: int = setting(16777216, _at_least(65536))
    concurrency: int = setting(2, _at_least(1))
    max_text_length: int = setting(500, _at_least(20))
    max_sentence_length: int = setting(250, _at_least(20))
    cache_dir: str = setting("var/tts-cache")
    cache_max_mb: int = setting(256, _at_least(1))
    espeak_command: str = setting("espeak-ng")
    ffmpeg_command: str = setting("ffmpeg")
    api_burst: int = setting(10, _at_least(1))
    api_per_minute: float = setting(30.0, _at_least(0.1))

    @property
    def effective_backend(self) -> str:
        """Kokoro when a URL is configured, else espeak-ng, unless set explicitly."""
        return self.backend or ("kokoro" if self.url else "espeak")


def _room_names(v: list[str]) -> str | None:
    if not v:
        return "needs at least one room"
    for name in v:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
            return f"room names are 1-32 of a-z, 0-9, _ and -, got {name!r}"
    if len(set(v)) != len(v):
        return "room names must be unique"
    return None


def _usernames(v: list[str]) -> str | None:
    for name in v:
        if not re.fullmatch(r"[A-Za-z0-9_-]{3,32}", name):
            return f"not a valid username: {name!r}"
    return None


def _ascending(v: list[int]) -> str | None:
    if not v or any(b <= a for a, b in zip(v, v[1:], strict=False)) or v[0] <= 0:
        return f"must be positive and strictly increasing, got {v!r}"
    return None


@attrs.frozen
class ChatConfig:
    """[chat]: public rooms and what a message may be."""

    rooms: list[str] = setting(attrs.Factory(lambda: ["lobby"]), _room_names)
    allow_guests: bool = setting(True)
    history_limit: int = setting(50, _at_least(1))
    max_message_length: int = setting(2000, _at_least(1))
    resume_cap: int = setting(500, _at_least(1))
    typing_interval: float = setting(3.0, _at_least(0))
    filtered_words_file: str = setting("")
    link_denylist_file: str = setting("")


@attrs.frozen
class AuthConfig:
    """[auth]: accounts, sessions and who administers."""

    admins: list[str] = setting(attrs.Factory(list), _usernames)
    session_days: float = setting(30.0, _at_least(0.01))
    guest_session_days: float = setting(1.0, _at_least(0.01))
    login_burst: int = setting(5, _at_least(1))
    login_per_minute: float = setting(5.0, _at_least(0.01))

    @property
    def admin_keys(self) -> frozenset[str]:
        """The configured admins as username keys (case-insensitive identity)."""
        return frozenset(username_key(name) for name in self.admins)


@attrs.frozen
class LimitsConfig:
    """[limits]: rate limits (token buckets) and flow control."""

    connection_burst: int = setting(30, _at_least(1))
    connection_per_second: float = setting(10.0, _at_least(0.01))
    chat_burst: int = setting(5, _at_least(1))
    chat_per_second: float = setting(1.0, _at_least(0.01))
    abuse_strikes: int = setting(10, _at_least(1))
    abuse_mute_seconds: float = setting(300.0, _at_least(1))
    send_buffer_bytes: int = setting(4194304, _at_least(65536))


@attrs.frozen
class XPConfig:
    """[xp]: the one XP table; awards are decided by the server only."""

    levels: list[int] = setting(
        attrs.Factory(lambda: [1000, 2500, 4500, 7000, 12000, 36000, 112000, 332000]), _ascending
    )
    unlocks: list[str] = setting(
        attrs.Factory(
            lambda: [
                "triggers",
                "collar",
                "session_history",
                "spirals",
                "hypnosis",
                "audio_playlist",
                "binaural",
                "advanced_binaural",
            ]
        )
    )
    chat_message: int = setting(2, _at_least(0))
    chat_awards_per_minute: int = setting(10, _at_least(0))
    trigger_selection: int = setting(2, _at_least(0))
    collar: int = setting(2, _at_least(0))
    trigger_fired: int = setting(1, _at_least(0))


@attrs.frozen
class TriggersConfig:
    """[triggers]: the trigger catalog, the engine's actions and the effects (docs/triggers.md)."""

    catalog_file: str = setting("")
    actions: list[str] = setting(attrs.Factory(lambda: ["audio", "flash", "xp", "record"]))
    fire_cooldown_seconds: float = setting(60.0, _at_least(0))
    collar_max_length: int = setting(500, _at_least(10))
    read_max_bytes: int = setting(30720, _at_least(1024))


@attrs.frozen
class ProfilesConfig:
    """[profiles]: profile pages, the community list, usage stats (docs/profiles.md)."""

    page_size: int = setting(24, _between(1, 100))
    leaderboard_size: int = setting(10, _between(1, 100))
    #: A reconnect within this many seconds continues the same session.
    session_grace_seconds: float = setting(60.0, _at_least(0))
    #: Time online is written at least this often while a person stays connected.
    usage_flush_seconds: float = setting(300.0, _at_least(1))


@attrs.frozen
class ManholeConfig:
    """[manhole]: a Python shell into the running daemon (docs/operations.md)."""

    endpoint: str = setting("tcp:6023:interface=127.0.0.1")
    #: "user:password" lines; the telnet manhole is off while this is empty.
    credentials_file: str = setting("")
    ssh_endpoint: str = setting("")
    ssh_authorized_keys_file: str = setting("")
    ssh_host_key_file: str = setting("var/manhole_host_key")


@attrs.frozen
class MetricsConfig:
    """[metrics]: the Prometheus endpoint ``/metrics`` (docs/operations.md)."""

    enabled: bool = setting(True)
    allow: list[str] = setting(attrs.Factory(lambda: ["127.0.0.1/32", "::1/128"]), _networks)
    token: str = setting("", secret=True)


@attrs.frozen
class MaintenanceConfig:
    """[maintenance]: what maintenance mode answers (docs/operations.md)."""

    retry_after_seconds: int = setting(300, _at_least(1))
    message: str = setting("bambid is down for maintenance and will be back shortly.")
    #: How often an instance looks at the shared maintenance switch.
    poll_seconds: float = setting(5.0, _at_least(0.5))
    #: How long connected people can read the notice before they are disconnected.
    close_grace_seconds: float = setting(5.0, _between(0, 300))


MAX_FOOTER_LINKS = 20
MAX_FOOTER_LABEL = 60
MAX_FOOTER_URL = 500


def parse_footer_link(entry: str) -> tuple[str, str]:
    """``"Label | URL"`` as ``(label, url)``. The URL is http(s) with a host,
    ``mailto:`` with an address, or a local path (``/...``, not ``//``).
    ``ValueError`` saying what is wrong otherwise."""
    label, bar, url = (part.strip() for part in entry.partition("|"))
    if not bar or not label or not url:
        raise ValueError(f'each entry is "Label | URL", got {entry!r}')
    if len(label) > MAX_FOOTER_LABEL or len(url) > MAX_FOOTER_URL:
        raise ValueError(
            f"labels are at most {MAX_FOOTER_LABEL} characters and URLs {MAX_FOOTER_URL}, "
            f"got {entry!r}"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in entry) or any(c.isspace() for c in url):
        raise ValueError(f"control characters or spaces in the URL of {entry!r}")
    if url.startswith("/"):
        if url.startswith(("//", "/\\")):
            raise ValueError(f"a local path starts with one /, got {url!r}")
        return label, url
    if url.lower().startswith("mailto:"):
        if "@" not in url:
            raise ValueError(f"a mailto: link needs an address, got {url!r}")
        return label, url
    if url.lower().startswith(("http:", "https:")) and _http_url(url) is None:
        return label, url
    raise ValueError(f"the URL must be http(s), mailto: or a local /path, got {url!r}")


def _footer_links(v: list[str]) -> str | None:
    if len(v) > MAX_FOOTER_LINKS:
        return f"at most {MAX_FOOTER_LINKS} links, got {len(v)}"
    for entry in v:
        try:
            parse_footer_link(entry)
        except ValueError as e:
            return str(e)
    return None


@attrs.frozen
class HelpConfig:
    """[help]: the help center ``/help`` and the footer links (docs/operations.md)."""

    pages_dir: str = setting("")
    #: "Label | URL" entries (``parse_footer_link``), shown in every page's footer.
    footer_links: list[str] = setting(attrs.Factory(list), _footer_links)

    @property
    def footer(self) -> list[tuple[str, str]]:
        """``footer_links`` as ``(label, url)`` pairs, in order."""
        return [parse_footer_link(entry) for entry in self.footer_links]


@attrs.frozen
class Config:
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    ai: AIConfig = AIConfig()
    voice: VoiceConfig = VoiceConfig()
    chat: ChatConfig = ChatConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    xp: XPConfig = XPConfig()
    triggers: TriggersConfig = TriggersConfig()
    profiles: ProfilesConfig = ProfilesConfig()
    manhole: ManholeConfig = ManholeConfig()
    metrics: MetricsConfig = MetricsConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    help: HelpConfig = HelpConfig()


SECTIONS: dict[str, type[Any]] = get_type_hints(Config)


# --- loading -----------------------------------------------------------------


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from defaults, an optional TOML file and the
    environment. Raises ``ConfigError`` naming the first bad key."""
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    if path is not None:
        _merge_file(raw, Path(path))
    _apply_legacy_environment(raw, environ)
    _apply_environment(raw, environ)
    config = Config(**{name: _build_section(name, SECTIONS[name], raw[name]) for name in SECTIONS})
    if len(config.xp.unlocks) != len(config.xp.levels):
        raise ConfigError("xp.unlocks", "needs exactly one feature per level in xp.levels")
    read_cap = max(1024, (config.server.max_message_size - 1024) // 2)
    if config.triggers.read_max_bytes > read_cap:
        # voice.read sends the text in one WebSocket message, and JSON escaping
        # can double it: never promise more than fits (documented with the key).
        triggers = attrs.evolve(config.triggers, read_max_bytes=read_cap)
        config = attrs.evolve(config, triggers=triggers)
    return config


def _merge_file(raw: dict[str, dict[str, Any]], path: Path) -> None:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("--config", f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("--config", f"cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{path} is not valid TOML: {e}") from None
    for name, values in document.items():
        if name not in SECTIONS:
            raise ConfigError(name, f"unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(name, "must be a table ([" + name + "])")
        raw[name].update(values)


def _apply_legacy_environment(raw: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    """Honour the variables of the original Node.js app."""
    if "SERVER_PORT" in env:
        port = env["SERVER_PORT"]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("SERVER_PORT", f"must be a port number, got {port!r}")
        raw["server"]["endpoint"] = f"tcp:{port}:interface=127.0.0.1"
    if "MONGODB_URI" in env:
        raw["storage"]["uri"] = env["MONGODB_URI"]
    if "KOKORO_API_URL" in env:
        raw["voice"]["url"] = env["KOKORO_API_URL"]
    elif "KOKORO_HOST" in env or "KOKORO_PORT" in env:
        host = env.get("KOKORO_HOST", "localhost")
        port = env.get("KOKORO_PORT", "8880")
        raw["voice"]["url"] = f"http://{host}:{port}/v1"
    if "KOKORO_DEFAULT_VOICE" in env:
        raw["voice"]["default_voice"] = env["KOKORO_DEFAULT_VOICE"]
    if "KOKORO_API_KEY" in env and env["KOKORO_API_KEY"] != "not-needed":
        raw["voice"]["api_key"] = env["KOKORO_API_KEY"]
    if "LMS_HOST" in env or "LMS_PORT" in env:
        host = env.get("LMS_HOST", "127.0.0.1")
        port = env.get("LMS_PORT", "1234")
        raw["ai"]["url"] = f"http://{host}:{port}/v1"


def _apply_environment(raw: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    for name, cls in SECTIONS.items():
        for field in attrs.fields(cls):
            variable = f"BAMBID_{name}_{field.name}".upper()
            if variable in env:
                raw[name][field.name] = _EnvText(variable, env[variable])


@attrs.frozen
class _EnvText:
    """A value still in environment-variable text form, to convert by type."""

    variable: str
    text: str


def _build_section(name: str, cls: type[Any], values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{name}.{key}"
        if key not in fields:
            raise ConfigError(dotted, f"unknown key (known: {', '.join(fields)})")
        converted = _convert(dotted, hints[key], value)
        check = fields[key].metadata.get("check")
        problem = check(converted) if check else None
        if problem:
            raise ConfigError(dotted, problem)
        kwargs[key] = converted
    return cls(**kwargs)


def _convert(dotted: str, kind: Any, value: Any) -> Any:
    if isinstance(value, _EnvText):
        value = _parse_env_text(dotted, kind, value)
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
        origin = get_origin(kind)
    if origin is list:
        (item,) = get_args(kind)
        if isinstance(value, list) and item is int and all(isinstance(v, str) for v in value):
            value = [_parse_env_text(dotted, int, _EnvText(dotted, v)) for v in value]
        if not isinstance(value, list) or not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            noun = "integers" if item is int else "strings"
            raise ConfigError(dotted, f"must be a list of {noun}, got {value!r}")
        return list(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(dotted, f"must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(dotted, f"must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(dotted, f"must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(dotted, f"must be a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported setting type {kind!r} for {dotted}")


def _parse_env_text(dotted: str, kind: Any, value: _EnvText) -> Any:
    text = value.text.strip()
    where = f"{dotted} (from {value.variable})"
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(where, f"must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(where, f"must be an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(where, f"must be a number, got {text!r}") from None
    if get_origin(kind) is list:
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ConfigError(
                    where, f"must be a JSON list or comma-separated, got {text!r}"
                ) from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value.text


def effective(config: Config) -> dict[str, dict[str, Any]]:
    """The configuration as plain data with secrets masked, for display: in
    every URL setting (``storage.uri``, ``ai.url``, ``ai.fallback_urls``,
    ``voice.url``, ...) the userinfo, query and fragment are ``***``
    (``bambid.urls.redact_url``); every other secret is ``***``, or empty
    when it is not set."""
    result: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = getattr(config, name)
        shown: dict[str, Any] = {}
        for field in attrs.fields(type(section)):
            shown[field.name] = _mask(field, getattr(section, field.name))
        result[name] = shown
    return result


#: The checks of the settings that hold URLs (or lists of them).
_URL_CHECKS: tuple[Check, ...] = (_http_url, _http_urls, _storage_uri)


def _mask(field: attrs.Attribute[Any], value: Any) -> Any:
    if field.metadata.get("check") in _URL_CHECKS:
        if isinstance(value, list):
            return [redact_url(url) for url in value]
        return redact_url(value)
    if field.metadata.get("secret") and value:
        return "***"
    return value


def with_endpoint(config: Config, endpoint: str) -> Config:
    """``config`` listening on ``endpoint`` instead (the ``--port`` option)."""
    return attrs.evolve(config, server=attrs.evolve(config.server, endpoint=endpoint))
