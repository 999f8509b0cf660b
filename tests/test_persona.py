"""The persona template: the packaged one, an operator's, and broken ones."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from twisted.internet import reactor

from bambid.ai.persona import Persona, PersonaError, PersonaTrigger
from bambid.config import ConfigError
from bambid.service import BambidService
from tests.conftest import make_config


def test_packaged_persona_names_the_person_and_their_level() -> None:
    persona = Persona.load("")
    newcomer = persona.render("Ada", 0)
    assert "Ada" in newcomer
    assert "breathing" in newcomer
    assert "new here" in newcomer
    veteran = persona.render("Ada", 3)
    assert "level 3" in veteran
    assert "cue words" not in veteran and "note Ada wrote" not in veteran
    assert veteran == veteran.strip()


def test_packaged_persona_lists_triggers_and_the_collar() -> None:
    text = Persona.load("").render(
        "Bo",
        2,
        [PersonaTrigger("calm", "slow the breath"), PersonaTrigger("focus", "one task")],
        "Remind me to drink water.",
    )
    assert "- calm: slow the breath" in text
    assert "- focus: one task" in text
    assert "A note Bo wrote for you: Remind me to drink water." in text


def test_operator_template(tmp_path: Path) -> None:
    path = tmp_path / "persona.md.j2"
    path.write_text(
        "Hello {{ username }} at {{ level }}{% for t in triggers %}, {{ t.name }}{% endfor %}"
    )
    persona = Persona.load(str(path))
    assert persona.render("Ada", 4, [PersonaTrigger("x", "y")]) == "Hello Ada at 4, x"


def test_output_is_not_html_escaped(tmp_path: Path) -> None:
    path = tmp_path / "p.j2"
    path.write_text("{{ username }} {{ collar }}")
    assert Persona.load(str(path)).render("<Ada>", 0, [], "a & b") == "<Ada> a & b"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.j2"
    path.write_text("line one\nline two\nHello {{ username ) }}\nline four\n")
    with pytest.raises(ConfigError) as e:
        Persona.load(str(path))
    assert e.value.key == "ai.persona_file"
    assert str(path) in str(e.value)
    assert ", line 3: " in str(e.value)


def test_unknown_variable_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "typo.j2"
    path.write_text("Hi {{ usrname }}")
    with pytest.raises(ConfigError, match="usrname"):
        Persona.load(str(path))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Persona.load(str(tmp_path / "nope.j2"))


def test_sandbox_refuses_unsafe_access(tmp_path: Path) -> None:
    path = tmp_path / "evil.j2"
    path.write_text("{{ username.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ConfigError):
        Persona.load(str(path))


def test_render_failure_is_a_persona_error(tmp_path: Path) -> None:
    path = tmp_path / "late.j2"
    path.write_text("{% if username == 'Zed' %}{{ 1 / 0 }}{% endif %}ok")
    persona = Persona.load(str(path))
    assert persona.render("Ada", 0) == "ok"
    with pytest.raises(PersonaError, match="ZeroDivisionError"):
        persona.render("Zed", 0)


def test_the_service_refuses_to_start_with_a_broken_persona(tmp_path: Path) -> None:
    path = tmp_path / "broken.j2"
    path.write_text("{% for %}")
    config = make_config(tmp_path)
    config = attrs.evolve(config, ai=attrs.evolve(config.ai, persona_file=str(path)))
    with pytest.raises(ConfigError, match=r"ai\.persona_file: .*broken\.j2, line 1"):
        BambidService(config, reactor, base_dir=tmp_path)
