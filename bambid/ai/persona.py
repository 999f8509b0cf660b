"""The companion's system prompt: the operator's Jinja2 template.

The template is ``ai.persona_file``, or the packaged ``etc/persona.md.j2``
(installed as ``bambid.etc``) when that setting is empty. It is rendered for
every reply with:

- ``username``: the person's name;
- ``level``: their level (0 for guests and newcomers);
- ``triggers``: the trigger words they have switched on, each with ``name``
  and ``description`` (an empty list until the trigger feature lands);
- ``collar``: their collar text ("" when none).

The template is loaded and checked when the service is built: a file
that cannot be read, a syntax error (named with the file and line) or a
variable the template uses but is not given (any render with sample values,
with and without triggers and collar, must succeed) raises ``ConfigError``
for ``ai.persona_file``, so the daemon refuses to start rather than answer
every prompt with an error. SIGHUP loads and checks it again
(``bambid.reload``): a broken file is logged and the old template stays.
Templates run in Jinja2's sandbox with autoescape off: the output is plain
text for a model, not HTML. Leading and trailing whitespace of the result is
removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import attrs
import jinja2
from jinja2.sandbox import SandboxedEnvironment

from bambid.config import ConfigError

PACKAGED_NAME = "persona.md.j2"
SETTING = "ai.persona_file"


@attrs.frozen
class PersonaTrigger:
    """A trigger as the template sees it."""

    name: str
    description: str


class PersonaError(Exception):
    """Rendering failed for one person (logged; the reply fails)."""


class Persona:
    """A compiled persona template (see the module doc)."""

    def __init__(self, source: str, origin: str) -> None:
        """Compile ``source``; ``origin`` names it in errors (a path, or
        ``"packaged persona.md.j2"``). ``ConfigError`` on any problem."""
        self.origin = origin
        self.source = source
        environment = SandboxedEnvironment(
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(SETTING, f"{origin}, line {e.lineno}: {e.message}") from None
        samples: list[tuple[Sequence[PersonaTrigger], str]] = [
            ((), ""),
            ((PersonaTrigger("calm", "slow down and breathe"),), "sample collar"),
        ]
        for triggers, collar in samples:
            try:
                self.render("Sample", 1, triggers, collar)
            except PersonaError as e:
                raise ConfigError(SETTING, f"{origin}: {e}") from None

    @classmethod
    def load(cls, path: str = "") -> Persona:
        """From ``path``, or the packaged template when ``path`` is empty."""
        if not path:
            source = (files("bambid.etc") / PACKAGED_NAME).read_text(encoding="utf-8")
            return cls(source, f"packaged {PACKAGED_NAME}")
        try:
            source = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(SETTING, f"cannot read {path}: {e}") from None
        return cls(source, path)

    def render(
        self,
        username: str,
        level: int,
        triggers: Sequence[PersonaTrigger] = (),
        collar: str = "",
    ) -> str:
        """The system prompt for one person; ``PersonaError`` if the template
        fails (an undefined name, an exception inside it, or the sandbox
        refusing an operation), with the line when Jinja2 knows it."""
        try:
            text = self._template.render(
                username=username, level=level, triggers=list(triggers), collar=collar
            )
        except jinja2.TemplateError as e:
            line = getattr(e, "lineno", None)
            where = f"line {line}: " if line else ""
            raise PersonaError(f"{where}{type(e).__name__}: {e}") from None
        except Exception as e:  # an operator's template may raise anything
            raise PersonaError(f"{type(e).__name__}: {e}") from None
        return text.strip()
