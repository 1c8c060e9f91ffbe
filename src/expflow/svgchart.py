"""Small self-contained SVG charts (line and scatter) for the HTML report: no JavaScript
library, no network, and every curve an element a test or a script can find
(`<polyline class="curve" data-run="...">`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

# matplotlib's tab10: up to ten runs; more get evenly spaced hues (see palette).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MAX_POINTS = 600  # per curve: more points than pixels only make the page heavy


def palette(n: int) -> list[str]:
    """``n`` colours, each distinct from every other: tab10 for up to ten; beyond, hues spread
    evenly around the wheel, with three lightness levels taking turns so that neighbouring
    hues also differ in lightness."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    levels = (0.40, 0.56, 0.30)
    return [_hsl_hex(i / n, 0.70, levels[i % len(levels)]) for i in range(n)]


def shade(hex_color: str, k: int) -> str:
    """The ``k``-th variant of a colour (a rerun of a run): the same hue, lighter each time."""
    import colorsys

    r, g, b = (int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, light, sat = colorsys.rgb_to_hls(r, g, b)
    light = min(0.85, light + (1 - light) * (1 - 0.6 ** k))
    return _hsl_hex(h, sat, light)


def _hsl_hex(h: float, s: float, light: float) -> str:
    import colorsys

    r, g, b = colorsys.hls_to_rgb(h % 1.0, light, s)
    return "#" + "".join(f"{round(c * 255):02x}" for c in (r, g, b))


def fmt(v: float) -> str:
    """A compact tick label."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.4g}"


@dataclass
class Scale:
    """Maps data values to [0, 1]; linear or log10."""

    lo: float
    hi: float
    log: bool = False
    integer: bool = False  # integer data (seeds, epochs, steps): ticks only at whole numbers

    @classmethod
    def fit(cls, values: Sequence[float], log: bool = False) -> Scale:
        vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
        if not vals:
            return cls(0.0, 1.0)
        lo, hi = min(vals), max(vals)
        integer = all(float(v).is_integer() for v in vals)
        if log:
            return cls(10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi)), True)
        if lo == hi:
            pad = 1.0 if integer else abs(lo) * 0.05 or 1.0
            return cls(lo - pad, hi + pad, integer=integer)
        ticks = nice_ticks(lo, hi, integer=integer)
        return cls(min(lo, ticks[0]), max(hi, ticks[-1]), integer=integer)

    def padded(self, frac: float = 0.06) -> Scale:
        """The same scale with room at both ends (dots on the edge would be cut in half)."""
        if self.log:
            a, b = math.log10(self.lo), math.log10(self.hi)
            pad = (b - a) * frac or 0.5
            return Scale(10 ** (a - pad), 10 ** (b + pad), True)
        pad = (self.hi - self.lo) * frac
        return Scale(self.lo - pad, self.hi + pad, integer=self.integer)

    def __call__(self, v: float) -> float:
        if self.log:
            a, b, v = math.log10(self.lo), math.log10(self.hi), math.log10(v)
        else:
            a, b = self.lo, self.hi
        return 0.5 if b == a else (v - a) / (b - a)

    def ticks(self) -> list[float]:
        if self.log:
            lo, hi = math.ceil(math.log10(self.lo) - 1e-9), math.floor(math.log10(self.hi) + 1e-9)
            step = max(1, math.ceil((hi - lo) / 6))
            mantissas = (1, 2, 5) if hi - lo <= 2 else (1,)  # few decades: 1-2-5 ticks between
            return [m * 10.0 ** e for e in range(lo - 1, hi + 1, step) for m in mantissas
                    if self.lo * (1 - 1e-9) <= m * 10.0 ** e <= self.hi * (1 + 1e-9)]
        return [t for t in nice_ticks(self.lo, self.hi, integer=self.integer)
                if self.lo - 1e-12 <= t <= self.hi + 1e-12]


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart); with
    ``integer``, whole numbers only (a seed axis: 0, 1, 2, never 0.25)."""
    if hi <= lo:
        return [float(round(lo))] if integer else [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    steps = [m * mag for m in (1, 2, 2.5, 5, 10)]
    if integer:
        steps = [st for st in steps if st >= 1 and float(st).is_integer()] or [1.0]
    step = next((st for st in steps if st >= raw), steps[-1])
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 0.5:
        ticks.append(round(t, 12))
        t += step
    return ticks


@dataclass
class Series:
    key: str  # the run id: data-run of its element
    points: list[tuple[float, float]]
    color: str
    label: str = ""
    rerun: bool = False  # a rerun of another series' run: drawn dashed, in a shade of its colour


@dataclass
class Frame:
    """The plot area of a chart: margins, scales and the axes' markup."""

    title: str
    xlabel: str
    ylabel: str
    x: Scale
    y: Scale
    width: int = 520
    height: int = 300
    margin: tuple[int, int, int, int] = (28, 16, 42, 62)  # top, right, bottom, left
    x_labels: dict[float, str] = field(default_factory=dict)  # categorical ticks

    def px(self, x: float) -> float:
        top, right, bottom, left = self.margin
        return left + self.x(x) * (self.width - left - right)

    def py(self, y: float) -> float:
        top, right, bottom, left = self.margin
        return top + (1 - self.y(y)) * (self.height - top - bottom)

    def axes(self) -> list[str]:
        top, right, bottom, left = self.margin
        x0, x1, y0, y1 = left, self.width - right, self.height - bottom, top
        out = [f'<text class="title" x="{self.width / 2:.0f}" y="16" text-anchor="middle">{escape(self.title)}</text>']
        for t in self.y.ticks():
            y = self.py(t)
            out.append(f'<line class="gridline" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(f'<text class="tick" x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
        xticks = self.x_labels or {t: fmt(t) for t in self.x.ticks()}
        for t, label in xticks.items():
            x = self.px(t)
            out.append(f'<line class="gridline" x1="{x:.1f}" x2="{x:.1f}" y1="{y1}" y2="{y0}"/>')
            out.append(f'<text class="tick" x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{escape(label)}</text>')
        out.append(f'<rect class="frame" x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}"/>')
        out.append(f'<text class="label" x="{(x0 + x1) / 2:.0f}" y="{self.height - 6}" text-anchor="middle">'
                   f'{escape(self.xlabel)}</text>')
        out.append(f'<text class="label" transform="translate(14 {(y0 + y1) / 2:.0f}) rotate(-90)" '
                   f'text-anchor="middle">{escape(self.ylabel)}</text>')
        return out

    def svg(self, body: list[str], kind: str) -> str:
        inner = "\n".join(self.axes() + body)
        # Inline in HTML: no xmlns needed, so the page names no URL at all.
        return (f'<svg class="chart {kind}" viewBox="0 0 {self.width} {self.height}" '
                f'width="{self.width}" height="{self.height}" role="img" aria-label="{escape(self.title)}">\n{inner}\n</svg>')


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def wants_log(values: Sequence[float]) -> bool:
    """A log axis when every value is positive and they span more than two decades."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100


def line_chart(series: Sequence[Series], *, title: str, xlabel: str = "step", ylabel: str = "",
               metric: str = "") -> str:
    """One polyline per series, all on the same axes (log y when the values span decades)."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    log_y = wants_log(ys)
    frame = Frame(title, xlabel, ylabel or metric, Scale.fit(xs), Scale.fit(ys, log=log_y))
    body = []
    for s in series:
        pts = [(x, y) for x, y in _thin(s.points) if math.isfinite(y) and (y > 0 or not log_y)]
        if not pts:
            continue
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in pts)
        tip = escape(f"{s.label or s.key}: last {fmt(pts[-1][1])} at {xlabel} {fmt(pts[-1][0])}")
        single = len(pts) == 1  # a single value: a dot, still one element per run
        kind = "curve" + (" single" if single else "") + (" rerun" if s.rerun else "")
        attrs = (f'class="{kind}" data-run="{escape(s.key)}" '
                 f'data-metric="{escape(metric)}" stroke="{s.color}"')
        if single:
            x, y = frame.px(pts[0][0]), frame.py(pts[0][1])
            coords = f"{x - 0.01:.2f},{y:.1f} {x:.2f},{y:.1f}"
        body.append(f'<polyline {attrs} points="{coords}"><title>{tip}</title></polyline>')
    return frame.svg(body, "line")


def scatter_chart(points: Sequence[tuple[object, float, str, str]], *, title: str, xlabel: str,
                  ylabel: str) -> str:
    """One dot per (x, y, run, color): numeric x on a linear or log axis, anything else
    as categories in first-seen order."""
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, *_ in points)
    ys = [y for _, y, *_ in points]
    if numeric:
        xs = [float(x) for x, *_ in points]  # type: ignore[arg-type]
        # Rates spanning a decade or more (learning rates) read best on a log axis; counts do not.
        log_x = all(x > 0 for x in xs) and max(xs) >= 10 * min(xs) and not all(float(x).is_integer() for x in xs)
        frame = Frame(title, xlabel, ylabel, Scale.fit(xs, log=log_x).padded(), Scale.fit(ys).padded())
        position = {x: float(x) for x, *_ in points}  # type: ignore[arg-type]
    else:
        cats = list(dict.fromkeys(str(x) for x, *_ in points))
        frame = Frame(title, xlabel, ylabel, Scale(-0.5, len(cats) - 0.5), Scale.fit(ys).padded(),
                      x_labels={float(i): c for i, c in enumerate(cats)})
        position = {x: float(cats.index(str(x))) for x, *_ in points}
    body = []
    for x, y, key, col in points:
        if not math.isfinite(y):
            continue
        tip = escape(f"{key}: {xlabel}={x} -> {fmt(y)}")
        body.append(f'<circle class="point" data-run="{escape(key)}" cx="{frame.px(position[x]):.1f}" '
                    f'cy="{frame.py(y):.1f}" r="5" fill="{col}"><title>{tip}</title></circle>')
    return frame.svg(body, "scatter")
