"""Profile styles: a fixed set of themes a person picks for their profile page.

Each style has a label and four colours, given to the page as CSS custom
properties (``--profile-background``, ``--profile-surface``, ``--profile-text``,
``--profile-accent``). Every style meets WCAG 2 AA for normal text: the text
colour, and the accent (used for links), each have a contrast ratio of at
least 4.5:1 against both the background and the surface; so the surface
colour is also readable on an accent fill (a button, the level bar).

The page's Content-Security-Policy allows no inline styles, so a style is
applied by class (``profile-style-<name>``) from the rules ``stylesheet()``
writes. A stored name that is not (or no longer) in the set shows as
``DEFAULT_STYLE``; ``models.Profile`` stores ``"default"`` for new profiles,
which is such a name.
"""

from __future__ import annotations

import re

import attrs

_HEX = re.compile(r"#[0-9a-f]{6}")


def _colour(value: str) -> str:
    if not _HEX.fullmatch(value):
        raise ValueError(f"not a #rrggbb colour: {value!r}")
    return value


@attrs.frozen
class ProfileStyle:
    """One theme: its name (as stored), its label (as shown) and its colours
    as lower-case ``#rrggbb``."""

    name: str
    label: str
    background: str = attrs.field(converter=_colour)
    surface: str = attrs.field(converter=_colour)
    text: str = attrs.field(converter=_colour)
    accent: str = attrs.field(converter=_colour)

    @property
    def css_class(self) -> str:
        return f"profile-style-{self.name}"

    @property
    def dark(self) -> bool:
        """Whether the background is dark (for ``color-scheme`` and the
        like): darker than mid-grey by luminance."""
        return relative_luminance(self.background) < 0.18

    def variables(self) -> dict[str, str]:
        """The CSS custom properties and their values."""
        return {
            "--profile-background": self.background,
            "--profile-surface": self.surface,
            "--profile-text": self.text,
            "--profile-accent": self.accent,
        }


PROFILE_STYLES: dict[str, ProfileStyle] = {
    style.name: style
    for style in (
        ProfileStyle("classic", "Classic", "#f4f5f7", "#ffffff", "#1f2328", "#0a58ca"),
        ProfileStyle("midnight", "Midnight", "#0d1117", "#1b2230", "#e6edf3", "#8ab4f8"),
        ProfileStyle("lavender", "Lavender", "#f5f0ff", "#ffffff", "#2e1a47", "#6b3fa0"),
        ProfileStyle("forest", "Forest", "#12261b", "#1c3527", "#e4f2e7", "#8fd19e"),
        ProfileStyle("ocean", "Ocean", "#e8f4f8", "#ffffff", "#0b2e3d", "#005f80"),
        ProfileStyle("sunrise", "Sunrise", "#fff4e8", "#ffffff", "#3b1f0b", "#a63c06"),
    )
}

DEFAULT_STYLE = "classic"


def validate_style(name: object) -> str | None:
    """Why ``name`` cannot be chosen as a profile style, or None when it can
    (it is a key of ``PROFILE_STYLES``). The message lists the choices."""
    if isinstance(name, str) and name in PROFILE_STYLES:
        return None
    return f"must be one of {', '.join(PROFILE_STYLES)}"


def style_for(name: str) -> ProfileStyle:
    """The style to show for a stored ``name``: ``DEFAULT_STYLE``'s when it
    is not a known style."""
    return PROFILE_STYLES.get(name, PROFILE_STYLES[DEFAULT_STYLE])


def stylesheet() -> str:
    """CSS rules giving each style's class its custom properties (and its
    ``color-scheme``), in the order of ``PROFILE_STYLES``; same every call."""
    rules = []
    for style in PROFILE_STYLES.values():
        lines = [f"  {name}: {value};" for name, value in style.variables().items()]
        lines.append(f"  color-scheme: {'dark' if style.dark else 'light'};")
        rules.append(f".{style.css_class} {{\n" + "\n".join(lines) + "\n}\n")
    return "\n".join(rules)


def relative_luminance(colour: str) -> float:
    """WCAG 2 relative luminance of a ``#rrggbb`` colour (0 black, 1 white)."""
    channels = []
    for i in (1, 3, 5):
        c = int(colour[i : i + 2], 16) / 255
        channels.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    red, green, blue = channels
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2 contrast ratio of two ``#rrggbb`` colours, from 1 to 21."""
    lighter, darker = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)
