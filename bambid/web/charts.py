"""Server-rendered SVG charts: the geometry is computed here, the markup is
written by the macros of ``web/templates/analytics.html`` (autoescaped, no
inline styles: colours and fonts come from classes in ``analytics.css``).

Two shapes: ``column_chart`` (one column per category along the bottom, e.g.
per day, with an optional line over the same categories) and ``bar_chart``
(one horizontal bar per category, for names). Both scale the value axis in
round steps (1, 2 or 5 times a power of ten) with a tick at each, and
carry every value for the ``<title>`` tooltips and the table that screen
readers get instead of the picture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs

#: Size of a column chart (SVG user units; the picture scales to its box).
COLUMN_WIDTH = 640.0
COLUMN_HEIGHT = 260.0
#: Height of one bar of a bar chart, and its width.
BAR_ROW = 26.0
BAR_WIDTH = 640.0
#: At most this many category labels along the bottom; the others are skipped.
MAX_AXIS_LABELS = 12
#: Column values are written above their columns when there are this few.
MAX_VALUE_LABELS = 16
#: Longer bar labels are cut (the full name stays in the tooltip and table).
MAX_LABEL_CHARS = 22
TICKS = 4


def format_value(value: float) -> str:
    """Whole numbers without decimals, others with up to two."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _shorten(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


@attrs.frozen
class Box:
    """The plotting area inside the axes."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


@attrs.frozen
class Tick:
    """A gridline of the value axis at ``pos`` (y for columns, x for bars)."""

    pos: float
    label: str


@attrs.frozen
class Mark:
    """A value on a chart: its category, the value, and where it is drawn."""

    label: str
    value: float
    x: float
    y: float

    @property
    def text(self) -> str:
        """The value as written (``format_value``)."""
        return format_value(self.value)


@attrs.frozen
class Bar(Mark):
    """One column or bar (``x``, ``y``: its top left corner): its rectangle
    and visible labels (``short_label`` is cut to ``MAX_LABEL_CHARS``)."""

    short_label: str = attrs.field(converter=_shorten)
    width: float
    height: float
    #: Where the category label goes and whether it is drawn.
    label_x: float
    label_y: float
    show_label: bool
    #: Where the value is written and whether it is.
    value_x: float
    value_y: float
    show_value: bool


@attrs.frozen
class Point(Mark):
    """One point of the line of a column chart."""


@attrs.frozen
class Chart:
    """Everything the template needs to draw a chart and its table."""

    id: str
    kind: str  # "columns" | "bars"
    title: str
    x_label: str
    y_label: str
    width: float
    height: float
    plot: Box
    ticks: tuple[Tick, ...]
    bars: tuple[Bar, ...]
    line: tuple[Point, ...] = ()
    line_label: str = ""

    @property
    def category_label(self) -> str:
        """What the categories are (the table's first column)."""
        return self.x_label if self.kind == "columns" else self.y_label

    @property
    def value_label(self) -> str:
        """What the values are (the table's second column)."""
        return self.y_label if self.kind == "columns" else self.x_label

    @property
    def line_points(self) -> str:
        """The ``points`` attribute of the line's ``<polyline>``."""
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.line)

    @property
    def empty(self) -> bool:
        return not any(bar.value for bar in self.bars) and not any(p.value for p in self.line)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50, … that is at least ``value`` (1
    for nothing): a round top for the value axis."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if value <= step * power:
            return step * power
    raise AssertionError("unreachable")


def value_axis(largest: float) -> tuple[float, list[tuple[float, str]]]:
    """The top of the value axis and its ticks ``(value, label)`` for values
    up to ``largest``: about ``TICKS`` steps of a round size, whole numbers
    (the charts count things), the top a whole number of steps."""
    step = nice_ceiling(largest / TICKS)
    steps = max(1, math.ceil(largest / step))
    return step * steps, [(step * i, format_value(step * i)) for i in range(steps + 1)]


def column_chart(
    id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    x_label: str,
    y_label: str,
    line: Sequence[float] | None = None,
    line_label: str = "",
    short_labels: Sequence[str] | None = None,
) -> Chart:
    """Columns for ``values`` over ``labels`` (e.g. one per day), and a line
    for ``line`` (same length) when given, on one value axis. ``short_labels``
    are written under the columns instead of ``labels`` (which stay in the
    tooltips and the table)."""
    shown = short_labels if short_labels is not None else labels
    if not len(labels) == len(values) == len(shown) or (
        line is not None and len(line) != len(values)
    ):
        raise ValueError("labels, short labels, values and line must have the same length")
    plot = Box(left=52.0, top=16.0, right=COLUMN_WIDTH - 12.0, bottom=COLUMN_HEIGHT - 52.0)
    top, axis = value_axis(max([*values, *(line or [])], default=0))
    count = max(1, len(values))
    slot = plot.width / count
    every = math.ceil(count / MAX_AXIS_LABELS)

    def y_of(value: float) -> float:
        return plot.bottom - plot.height * value / top

    bars = []
    for i, (label, short, value) in enumerate(zip(labels, shown, values, strict=True)):
        x = plot.left + slot * i + slot * 0.15
        y = y_of(value)
        bars.append(
            Bar(
                label=label,
                short_label=short,
                value=value,
                x=x,
                y=y,
                width=slot * 0.7,
                height=plot.bottom - y,
                label_x=plot.left + slot * (i + 0.5),
                label_y=plot.bottom + 16.0,
                show_label=i % every == 0,
                value_x=plot.left + slot * (i + 0.5),
                value_y=y - 4.0,
                show_value=count <= MAX_VALUE_LABELS and value > 0,
            )
        )
    points = tuple(
        Point(label=label, value=value, x=plot.left + slot * (i + 0.5), y=y_of(value))
        for i, (label, value) in enumerate(zip(labels, line or (), strict=False))
    )
    size = (COLUMN_WIDTH, COLUMN_HEIGHT)
    chart = _chart("columns", id, title, x_label, y_label, size, plot, axis, y_of, bars)
    return attrs.evolve(chart, line=points, line_label=line_label)


def bar_chart(
    id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    x_label: str,
    y_label: str,
) -> Chart:
    """One horizontal bar per label, longest values furthest right;
    ``x_label`` names the values, ``y_label`` the categories."""
    if len(labels) != len(values):
        raise ValueError("labels and values must have the same length")
    rows = max(1, len(values))
    plot = Box(left=168.0, top=8.0, right=BAR_WIDTH - 40.0, bottom=8.0 + BAR_ROW * rows)
    top, axis = value_axis(max(values, default=0))

    def x_of(value: float) -> float:
        return plot.left + plot.width * value / top

    bars = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = plot.top + BAR_ROW * i + BAR_ROW * 0.15
        right = x_of(value)
        middle = plot.top + BAR_ROW * (i + 0.5)
        bars.append(
            Bar(
                label=label,
                short_label=label,
                value=value,
                x=plot.left,
                y=y,
                width=right - plot.left,
                height=BAR_ROW * 0.7,
                label_x=plot.left - 6.0,
                label_y=middle,
                show_label=True,
                value_x=right + 4.0,
                value_y=middle,
                show_value=True,
            )
        )
    size = (BAR_WIDTH, plot.bottom + 44.0)
    return _chart("bars", id, title, x_label, y_label, size, plot, axis, x_of, bars)


def _chart(
    kind: str,
    id: str,
    title: str,
    x_label: str,
    y_label: str,
    size: tuple[float, float],
    plot: Box,
    axis: Sequence[tuple[float, str]],
    position: Callable[[float], float],
    bars: Sequence[Bar],
) -> Chart:
    """The ``Chart`` (without a line) of a picture of ``size`` (width,
    height) with ``bars`` drawn in ``plot`` and a tick at each ``axis`` value
    ``(value, label)``, placed by ``position`` (value to y for columns, to x
    for bars)."""
    width, height = size
    return Chart(
        id=id,
        kind=kind,
        title=title,
        x_label=x_label,
        y_label=y_label,
        width=width,
        height=height,
        plot=plot,
        ticks=tuple(Tick(pos=position(value), label=text) for value, text in axis),
        bars=tuple(bars),
    )
