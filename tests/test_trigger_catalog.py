"""The trigger catalog: the shipped file, and every validation rule with its message."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bambid.triggers import catalog as catalog_module
from bambid.triggers.catalog import (
    Catalog,
    CatalogError,
    Trigger,
    load_catalog,
    parse_catalog,
    slug,
)
from bambid.triggers.detect import Matcher

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "etc" / "triggers.json"
TRIGGER_AUDIO = REPO / "web" / "static" / "audio" / "triggers"


def document(*entries: Any) -> dict[str, Any]:
    return {"version": 1, "triggers": list(entries)}


def entry(name: Any = "Deep Breath", **fields: Any) -> dict[str, Any]:
    result = {"name": name, "description": "A slow breath.", "category": "breathing"}
    result.update(fields)
    return result


def error_of(doc: Any) -> str:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(doc)
    return str(caught.value)


# --- the shipped catalog -----------------------------------------------------------


def test_the_shipped_catalog_loads() -> None:
    catalog = load_catalog(SHIPPED)
    assert 10 <= len(catalog) <= 16
    assert set(catalog.categories()) == {"relaxation", "breathing", "focus", "posture"}
    assert catalog.get("deep-breath") == Trigger(
        key="deep-breath",
        name="Deep Breath",
        aliases=("breathe deeply", "deep breaths"),
        description="A slow, full breath in through the nose and out through the mouth.",
        category="breathing",
        audio="deep-breath.mp3",
    )
    assert all(t.key == slug(t.name) for t in catalog.triggers)
    # A matcher builds from it, and finds its names and aliases.
    matcher = Matcher(catalog.phrases())
    found = matcher.scan("Sit up straight, take a DEEP BREATH and let it go.")
    assert [m.key for m in found] == ["sit-tall", "deep-breath", "let-go"]


def test_the_shipped_audio_files_exist_and_two_triggers_rely_on_speech() -> None:
    catalog = load_catalog(SHIPPED)
    without = [t.key for t in catalog.triggers if not t.audio]
    assert len(without) == 2
    for trigger in catalog.triggers:
        if trigger.audio:
            assert (TRIGGER_AUDIO / trigger.audio).is_file(), trigger.audio


def test_the_shipped_catalog_is_neutral_wording() -> None:
    text = SHIPPED.read_text(encoding="utf-8").lower()
    for word in ("hypno", "obey", "submit", "trance", "sleep", "bimbo", "slave", "good girl"):
        assert word not in text


# --- the Catalog object ------------------------------------------------------------


def test_catalog_lookups_and_phrases() -> None:
    catalog = parse_catalog(
        document(
            entry("Deep Breath", aliases=["breathe deeply"], audio="deep-breath.mp3"),
            entry("Sit Tall", category="posture"),
            entry("Box Breathing"),
        )
    )
    assert [t.key for t in catalog.triggers] == ["deep-breath", "sit-tall", "box-breathing"]
    assert catalog.keys() == ("deep-breath", "sit-tall", "box-breathing")
    assert catalog.categories() == ("breathing", "posture")
    assert catalog.get("sit-tall") is catalog.triggers[1]
    assert catalog.get("nope") is None
    assert "sit-tall" in catalog and "nope" not in catalog
    assert catalog.triggers[1].audio == ""
    assert catalog.triggers[0].phrases == ("Deep Breath", "breathe deeply")
    assert catalog.phrases() == {
        "Deep Breath": "deep-breath",
        "breathe deeply": "deep-breath",
        "Sit Tall": "sit-tall",
        "Box Breathing": "box-breathing",
    }


def test_as_json_gives_each_trigger_its_audio_url() -> None:
    catalog = parse_catalog(
        document(entry("Deep Breath", audio="deep-breath.mp3"), entry("Reset", category="focus"))
    )

    def url(trigger: Trigger) -> str:
        if trigger.audio:
            return f"/static/audio/triggers/{trigger.audio}"
        return f"/api/triggers/{trigger.key}/audio"

    assert catalog.as_json(url) == {
        "version": 1,
        "categories": ["breathing", "focus"],
        "triggers": [
            {
                "key": "deep-breath",
                "name": "Deep Breath",
                "aliases": [],
                "description": "A slow breath.",
                "category": "breathing",
                "audio_url": "/static/audio/triggers/deep-breath.mp3",
            },
            {
                "key": "reset",
                "name": "Reset",
                "aliases": [],
                "description": "A slow breath.",
                "category": "focus",
                "audio_url": "/api/triggers/reset/audio",
            },
        ],
    }
    json.dumps(catalog.as_json(url))


def test_an_empty_catalog_is_allowed_and_version_is_optional() -> None:
    assert parse_catalog({"triggers": []}) == Catalog(())
    assert Matcher(parse_catalog({"triggers": []}).phrases()).scan("let go") == []


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Deep Breath", "deep-breath"),
        ("Let's Relax", "lets-relax"),
        ("Self-Care  Now", "self-care-now"),
        ("Café Calme", "café-calme"),
        ("Focus 2", "focus-2"),
    ],
)
def test_slug(name: str, key: str) -> None:
    assert slug(name) == key


# --- validation rules --------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "(top level): must be an object, got a list"),
        (
            {"triggers": [], "extra": 1},
            "(top level): unknown key 'extra' (known: triggers, version)",
        ),
        ({"version": 2, "triggers": []}, "version: must be 1, got 2"),
        ({"version": True, "triggers": []}, "version: must be 1, got True"),
        ({}, "triggers: must be a list, got null"),
        ({"triggers": {}}, "triggers: must be a list, got an object"),
        (document("Deep Breath"), "triggers[0]: must be an object, got a string"),
        (
            document(entry(colour="red")),
            "triggers[0]: unknown key 'colour' "
            "(known: aliases, audio, category, description, name)",
        ),
        (document({"description": "", "category": "x"}), "triggers[0].name: missing"),
        (document({"name": "A", "category": "x"}), "triggers[0].description: missing"),
        (document({"name": "A", "description": ""}), "triggers[0].category: missing"),
        (document(entry(7)), "triggers[0].name: must be a string, got a number"),
        (document(entry("")), "triggers[0].name: must be 1-40 characters, got ''"),
        (
            document(entry("x" * 41)),
            f"triggers[0].name: must be 1-40 characters, got {'x' * 41!r}",
        ),
        (
            document(entry("Breathe!")),
            "triggers[0].name: must be letters, digits, spaces, ' and - "
            "with at least one letter, got 'Breathe!'",
        ),
        (
            document(entry("1 2 3")),
            "triggers[0].name: must be letters, digits, spaces, ' and - "
            "with at least one letter, got '1 2 3'",
        ),
        (
            document(entry("Deep\tBreath")),
            "triggers[0].name: must be letters, digits, spaces, ' and - "
            "with at least one letter, got 'Deep\\tBreath'",
        ),
        (
            document(entry(" Deep Breath")),
            "triggers[0].name: must not have leading, trailing or double spaces: ' Deep Breath'",
        ),
        (
            document(entry("Deep  Breath")),
            "triggers[0].name: must not have leading, trailing or double spaces: 'Deep  Breath'",
        ),
        (
            document(entry("Let - Go")),
            "triggers[0].name: '-' is not a whole word (letters and digits, "
            "joined inside by single ' or -) in 'Let - Go'",
        ),
        (
            document(entry("Let''s Go")),
            "triggers[0].name: \"let''s\" is not a whole word (letters and digits, "
            "joined inside by single ' or -) in \"Let''s Go\"",
        ),
        (document(entry(aliases="x")), "triggers[0].aliases: must be a list, got a string"),
        (
            document(entry(aliases=[f"a{i}" for i in range(21)])),
            "triggers[0].aliases: at most 20, got 21",
        ),
        (document(entry(aliases=[None])), "triggers[0].aliases[0]: must be a string, got null"),
        (
            document(entry(aliases=["ok", "-x"])),
            "triggers[0].aliases[1]: '-x' is not a whole word (letters and digits, "
            "joined inside by single ' or -) in '-x'",
        ),
        (document(entry(description=None)), "triggers[0].description: must be a string, got null"),
        (
            document(entry(description="x" * 301)),
            "triggers[0].description: must be at most 300 characters, got 301",
        ),
        (
            document(entry(description="two\nlines")),
            "triggers[0].description: must not contain control characters",
        ),
        (
            document(entry(category="Breathing")),
            "triggers[0].category: must match [a-z0-9-]{1,32}, got 'Breathing'",
        ),
        (document(entry(category="")), "triggers[0].category: must match [a-z0-9-]{1,32}, got ''"),
        (
            document(entry(category="c" * 33)),
            f"triggers[0].category: must match [a-z0-9-]{{1,32}}, got {'c' * 33!r}",
        ),
        (document(entry(audio=1)), "triggers[0].audio: must be a string, got a number"),
    ],
)
def test_validation_errors_name_the_entry_and_field(doc: Any, message: str) -> None:
    assert error_of(doc) == message


@pytest.mark.parametrize(
    "audio",
    [
        "",
        "../secret.mp3",
        "sub/dir.mp3",
        "sub\\dir.mp3",
        ".hidden.mp3",
        "breath.flac",
        "breath",
        "bre ath.mp3",
        "x" * 77 + ".mp3",
        "dеep.mp3",  # a Cyrillic е
    ],
)
def test_audio_must_be_a_plain_sound_file_name(audio: str) -> None:
    assert error_of(document(entry(audio=audio))).startswith(
        "triggers[0].audio: must be a file name of letters, digits, '_', '-' and '.' "
        "ending in .mp3, .ogg, .opus, .wav, got "
    )


@pytest.mark.parametrize(
    "audio", ["deep-breath.mp3", "a.ogg", "b_2.opus", "C.WAV", "v1.2.wav", "x" * 76 + ".mp3"]
)
def test_good_audio_file_names(audio: str) -> None:
    assert parse_catalog(document(entry(audio=audio))).triggers[0].audio == audio


def test_names_and_aliases_are_unique_across_the_catalog_naming_both_entries() -> None:
    assert error_of(document(entry("Let Go"), entry("let go"))) == (
        "triggers[1].name: 'let go' is already triggers[0].name ('Let Go')"
    )
    assert error_of(
        document(entry("Let Go", aliases=["release"]), entry("Calm", aliases=["RELEASE"]))
    ) == ("triggers[1].aliases[0]: 'RELEASE' is already triggers[0].aliases[0] ('release')")
    assert error_of(document(entry("Let Go", aliases=["Let Go"]))) == (
        "triggers[0].aliases[0]: 'Let Go' is already triggers[0].name ('Let Go')"
    )
    # Compared as the detector compares: whatever the case.
    assert error_of(document(entry("Don't Worry"), entry("Calm", aliases=["DON'T WORRY"]))) == (
        'triggers[1].aliases[0]: "DON\'T WORRY" is already triggers[0].name ("Don\'t Worry")'
    )


def test_two_names_with_the_same_key_are_refused() -> None:
    assert error_of(document(entry("Deep Breath"), entry("Deep-Breath"))) == (
        "triggers[1].name: 'Deep-Breath' has the same key 'deep-breath' "
        "as triggers[0].name ('Deep Breath')"
    )


def test_at_most_1000_triggers() -> None:
    entries = [entry(f"Trigger {i}") for i in range(1000)]
    assert len(parse_catalog(document(*entries))) == 1000
    assert error_of(document(*entries, entry("One More"))) == (
        "triggers: at most 1000 triggers, got 1001"
    )


def test_unicode_names() -> None:
    catalog = parse_catalog(document(entry("Café Calme"), entry("Спокойно", category="focus")))
    assert catalog.keys() == ("café-calme", "спокойно")


def test_parse_does_not_change_its_input() -> None:
    doc = document(entry(aliases=["breathe deeply"]))
    before = copy.deepcopy(doc)
    parse_catalog(doc)
    assert doc == before


# --- the file ----------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "triggers.json"
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


def test_bad_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "triggers.json"
    path.write_text('{"triggers": [\n  {"name": "A",}\n]}\n', encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == (
        f"{path}: not valid JSON: Expecting property name enclosed in double quotes "
        "at line 2 column 16"
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "triggers.json"
    path.write_bytes(b'{"triggers": ["\xff"]}')
    with pytest.raises(CatalogError, match=r": not UTF-8 \(byte 15\)$"):
        load_catalog(path)


def test_a_key_twice_in_one_object(tmp_path: Path) -> None:
    path = tmp_path / "triggers.json"
    path.write_text('{"triggers": [], "triggers": []}', encoding="utf-8")
    with pytest.raises(CatalogError, match=r": key 'triggers' appears twice in one object$"):
        load_catalog(path)


def test_a_file_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "MAX_FILE_BYTES", 100)
    path = tmp_path / "triggers.json"
    path.write_text(json.dumps(document(*[entry(f"T {i}") for i in range(5)])), encoding="utf-8")
    with pytest.raises(CatalogError, match=r": larger than 100 bytes$"):
        load_catalog(path)


def test_rule_errors_from_a_file_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "triggers.json"
    path.write_text(json.dumps(document(entry(), entry("", category="x"))), encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == "triggers[1].name: must be 1-40 characters, got ''"
    assert caught.value.where == "triggers[1].name"
    assert isinstance(caught.value, ValueError)
