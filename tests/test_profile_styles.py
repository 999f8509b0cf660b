"""Profile styles: the fixed set, its contrast, validation and the stylesheet."""

from __future__ import annotations

import re

import pytest

from bambid.models import Profile
from bambid.profiles.styles import (
    DEFAULT_STYLE,
    PROFILE_STYLES,
    ProfileStyle,
    contrast_ratio,
    style_for,
    stylesheet,
    validate_style,
)

AA_NORMAL_TEXT = 4.5


def wcag_contrast(first: str, second: str) -> float:
    """The WCAG 2.x contrast ratio, written out from the definition (not the
    module's code): sRGB channels linearised, luminance weighted 0.2126,
    0.7152, 0.0722, then (L1 + 0.05) / (L2 + 0.05) with L1 the lighter."""

    def luminance(colour: str) -> float:
        r, g, b = (int(colour.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4))
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    a, b = luminance(first), luminance(second)
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


def test_the_contrast_formula() -> None:
    assert wcag_contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert wcag_contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    assert contrast_ratio("#ffffff", "#000000") == pytest.approx(21.0)
    assert contrast_ratio("#123456", "#123456") == pytest.approx(1.0)
    for style in PROFILE_STYLES.values():
        assert contrast_ratio(style.text, style.background) == pytest.approx(
            wcag_contrast(style.text, style.background)
        )


def test_the_set() -> None:
    assert list(PROFILE_STYLES) == ["classic", "midnight", "lavender", "forest", "ocean", "sunrise"]
    assert DEFAULT_STYLE in PROFILE_STYLES
    for name, style in PROFILE_STYLES.items():
        assert style.name == name
        assert re.fullmatch(r"[a-z]+", name)
        assert style.label and style.label == style.label.strip()
    assert len({style.label for style in PROFILE_STYLES.values()}) == len(PROFILE_STYLES)
    assert any(style.dark for style in PROFILE_STYLES.values())
    assert not all(style.dark for style in PROFILE_STYLES.values())


@pytest.mark.parametrize("name", list(PROFILE_STYLES))
def test_text_and_accent_meet_aa_on_background_and_surface(name: str) -> None:
    style = PROFILE_STYLES[name]
    for foreground in (style.text, style.accent):
        for ground in (style.background, style.surface):
            ratio = wcag_contrast(foreground, ground)
            assert ratio >= AA_NORMAL_TEXT, (name, foreground, ground, round(ratio, 2))


def test_validation() -> None:
    for name in PROFILE_STYLES:
        assert validate_style(name) is None
    message = "must be one of classic, midnight, lavender, forest, ocean, sunrise"
    for bad in ("", "Classic", " classic", "default", "neon", None, 3, ["classic"]):
        assert validate_style(bad) == message


def test_unknown_stored_names_show_the_default() -> None:
    assert style_for("midnight") is PROFILE_STYLES["midnight"]
    assert style_for(Profile("someone", 0.0, 0.0).profile_style) is PROFILE_STYLES[DEFAULT_STYLE]
    assert style_for("removed-theme") is PROFILE_STYLES[DEFAULT_STYLE]


def test_colours_are_checked() -> None:
    with pytest.raises(ValueError):
        ProfileStyle("x", "X", "#FFFFFF", "#ffffff", "#000000", "#000000")
    with pytest.raises(ValueError):
        ProfileStyle("x", "X", "white", "#ffffff", "#000000", "#000000")


def test_the_stylesheet_has_a_rule_per_style() -> None:
    css = stylesheet()
    assert css == stylesheet()
    rules = dict(re.findall(r"\.profile-style-([a-z]+) \{([^}]*)\}", css))
    assert list(rules) == list(PROFILE_STYLES)
    for name, body in rules.items():
        style = PROFILE_STYLES[name]
        declarations = dict(re.findall(r"\s*([-\w]+): ([^;]+);", body))
        assert declarations == {
            **style.variables(),
            "color-scheme": "dark" if style.dark else "light",
        }
        assert style.css_class == f"profile-style-{name}"
