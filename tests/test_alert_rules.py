"""``etc/prometheus/alerts.yml`` holds together: promtool is not installable
here and neither is PyYAML, so the file is read by a strict reader of the
YAML subset it is written in (block mappings and sequences, plain and quoted
scalars, folded ``>-`` blocks; anything else fails the test), then checked:
the standard rules-file shape, every rule with ``alert``, ``expr``, ``for``,
``labels.severity`` and ``annotations``, and every metric named in an
expression either exported by bambid (taken from a live ``/metrics``
scrape) or a standard one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Running

RULES = Path(__file__).resolve().parent.parent / "etc" / "prometheus" / "alerts.yml"
#: Metrics every Prometheus target has, or that come from the scrape itself.
STANDARD = {"up", "process_resident_memory_bytes"}
#: Suffixes of the series of each metric type in the text format.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "untyped": ("",),
}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


# -- a strict reader for the YAML subset of the rules file -----------------------------------


class NotInSubset(Exception):
    pass


@attrs.frozen
class Line:
    number: int
    indent: int
    text: str


def read_yaml(source: str) -> Any:
    lines = []
    for number, raw in enumerate(source.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise NotInSubset(f"line {number}: tab in indentation")
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(Line(number, -1, ""))  # kept for folded blocks
            continue
        lines.append(Line(number, len(raw) - len(raw.lstrip(" ")), raw.strip()))
    reader = _Reader(lines)
    value = reader.block(reader.next_indent())
    if reader.peek() is not None:
        raise NotInSubset(f"line {reader.peek().number}: unexpected indentation")  # type: ignore[union-attr]
    return value


class _Reader:
    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines
        self.at = 0

    def skip_blank(self) -> None:
        while self.at < len(self.lines) and self.lines[self.at].indent < 0:
            self.at += 1

    def peek(self) -> Line | None:
        self.skip_blank()
        return self.lines[self.at] if self.at < len(self.lines) else None

    def next_indent(self) -> int:
        line = self.peek()
        if line is None:
            raise NotInSubset("empty document")
        return line.indent

    def block(self, indent: int) -> Any:
        line = self.peek()
        assert line is not None
        if line.text == "-" or line.text.startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (line := self.peek()) is not None and line.indent == indent:
            if not line.text.startswith("- "):
                raise NotInSubset(f"line {line.number}: expected a '- ' item")
            # "- key: value" opens a mapping indented two more columns.
            self.lines[self.at] = Line(line.number, indent + 2, line.text[2:].lstrip())
            items.append(self.mapping(indent + 2))
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while (line := self.peek()) is not None and line.indent == indent:
            if line.text.startswith("- "):
                break
            match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*):(?:\s+(.*))?", line.text)
            if match is None:
                raise NotInSubset(f"line {line.number}: not 'key: value': {line.text!r}")
            key, rest = match.group(1), match.group(2)
            if key in result:
                raise NotInSubset(f"line {line.number}: duplicate key {key!r}")
            self.at += 1
            if rest is None:
                nested = self.peek()
                if nested is None or nested.indent <= indent:
                    raise NotInSubset(f"line {line.number}: {key!r} has no value")
                result[key] = self.block(nested.indent)
            elif rest in (">", ">-"):
                result[key] = self.folded(indent, line.number)
            else:
                result[key] = scalar(rest, line.number)
        line = self.peek()
        if line is not None and line.indent > indent:
            raise NotInSubset(f"line {line.number}: unexpected indentation")
        return result

    def folded(self, indent: int, number: int) -> str:
        parts: list[str] = []
        while self.at < len(self.lines):
            line = self.lines[self.at]
            if line.indent >= 0 and line.indent <= indent:
                break
            if line.indent < 0:
                raise NotInSubset(f"line {line.number}: blank line inside a folded block")
            parts.append(line.text)
            self.at += 1
        if not parts:
            raise NotInSubset(f"line {number}: empty folded block")
        return " ".join(parts)


def scalar(text: str, number: int) -> str:
    if text.startswith('"'):
        match = re.fullmatch(r'"((?:[^"\\]|\\["\\])*)"', text)
        if match is None:
            raise NotInSubset(f"line {number}: bad double-quoted string")
        return re.sub(r"\\([\"\\])", r"\1", match.group(1))
    if text.startswith("'"):
        match = re.fullmatch(r"'((?:[^']|'')*)'", text)
        if match is None:
            raise NotInSubset(f"line {number}: bad single-quoted string")
        return match.group(1).replace("''", "'")
    if text[0] in "[]{}&*!|>%@`" or " #" in text or ": " in text:
        raise NotInSubset(f"line {number}: plain scalar outside the subset: {text!r}")
    return text


def test_the_reader_is_strict() -> None:
    assert read_yaml("a:\n  - b: 1\n    c: 'x''y'\n  - b: \"q\\\"\"\nd: >-\n  one\n  two\n") == {
        "a": [{"b": "1", "c": "x'y"}, {"b": 'q"'}],
        "d": "one two",
    }
    for bad in ("a: 1\na: 2\n", "a: [1, 2]\n", "a:\n  b: 1\n   c: 2\n", "a: {x}\n", "a: 1 # c\n"):
        with pytest.raises(NotInSubset):
            read_yaml(bad)


# -- the checks -------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside label
    matchers, ranges and grouping lists that are not functions or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


async def exported(running: Running) -> set[str]:
    """Every series name a live ``/metrics`` can show (a labelled metric
    with no sample yet still announces its family and type)."""
    response = await treq.get(running.http + "/metrics")
    assert response.code == 200
    text = (await response.content()).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def rules() -> list[dict[str, Any]]:
    document = read_yaml(RULES.read_text())
    assert set(document) == {"groups"}
    found: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["name"]
        assert isinstance(group["rules"], list) and group["rules"]
        found.extend(group["rules"])
    return found


def test_every_rule_is_complete() -> None:
    found = rules()
    names = [rule.get("alert") for rule in found]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in found:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]), rule["alert"]
        assert rule["expr"].strip(), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert DURATION.match(rule["for"]), (rule["alert"], rule["for"])
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    # What the operators asked to be told about.
    exprs = " ".join(rule["expr"] for rule in found)
    for needle in (
        "up{",
        "bambid_errors_total",
        "bambid_ai_backend_up",
        "bambid_tts_backend_up",
        "bambid_ai_queue_depth",
        "process_resident_memory_bytes",
    ):
        assert needle in exprs, needle


@pytest_twisted.ensureDeferred
async def test_every_metric_in_the_rules_is_exported(running: Running) -> None:
    known = await exported(running) | STANDARD
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, (rule["alert"], names - known)


def test_metric_names_are_found_in_expressions() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, instance) (rate(x_bucket{a="b(c)"}[5m]))) > 1.5e9'
        " and on (instance) up == 0"
    )
    assert metric_names(expr) == {"x_bucket", "up"}
