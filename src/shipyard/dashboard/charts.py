"""Inline SVG charts: a line chart of time series and a horizontal bar chart. Pure functions of
their data, every label escaped (names come from clients: tenants, users, models).

The y axis spans the data and zero, negative values included (a logprob is below zero: the higher
line is the better one, as read). Charts scale down to the page's width (phones)."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP, PAD_RIGHT = 580, 220, 56, 28, 12, 12


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 0.01:
        return f"{value:.2f}"
    return f"{value:.1e}"


def _svg(height: int, title: str) -> str:
    return (f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="100%" '
            f'style="max-width:{WIDTH}px;height:auto" preserveAspectRatio="xMinYMin meet" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>')


def line_chart(title: str, series: dict[str, list[tuple[float, float | None]]], unit: str = "",
               x_labels: tuple[str, str] = ("", ""), fmt: Callable[[float], str] | None = None) -> str:
    """`series`: name → [(x, y)], x ascending (y None: a gap). One chart with a legend; `x_labels`
    name the first and last x (clock times); `fmt` writes the y values (default: short numbers)."""
    fmt = fmt or (lambda value: _fmt(value) + unit)
    points = [(x, y) for values in series.values() for x, y in values if y is not None]
    body = [_svg(HEIGHT, title)]
    inner_w, inner_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    body.append(f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{inner_w}" height="{inner_h}" fill="#fafafa" '
                'stroke="#e5e7eb"/>')
    if not points:
        body.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#6b7280">no data</text></svg>')
        return _figure(title, "".join(body), {})
    xs = [x for values in series.values() for x, _ in values]  # the whole span, gaps included
    x_min, x_max = min(xs), max(xs)
    y_low, y_high = min(0.0, *(p[1] for p in points)), max(0.0, *(p[1] for p in points))
    y_span = (y_high - y_low) or 1.0
    x_span = (x_max - x_min) or 1.0

    def sx(x: float) -> float:
        return PAD_LEFT + (x - x_min) / x_span * inner_w

    def sy(y: float) -> float:  # higher values higher up, whatever their sign
        return PAD_TOP + inner_h - (y - y_low) / y_span * inner_h

    for fraction in (0.0, 0.5, 1.0):
        value = y_low + fraction * y_span
        y = sy(value)
        body.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        body.append(f'<text class="tick" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                    f'fill="#374151">{escape(fmt(value))}</text>')
    body.append(f'<text x="{PAD_LEFT}" y="{HEIGHT - 8}" font-size="11" fill="#374151">{escape(x_labels[0])}</text>')
    body.append(f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 8}" text-anchor="end" font-size="11" fill="#374151">'
                f'{escape(x_labels[1])}</text>')
    colours = {}
    for i, (name, values) in enumerate(series.items()):
        colour = colours[name] = PALETTE[i % len(PALETTE)]
        segments, current = [], []
        for x, y in values:
            if y is None:
                if current:
                    segments.append(current)
                current = []
            else:
                current.append(f"{sx(x):.1f},{sy(y):.1f}")
        if current:
            segments.append(current)
        for segment in segments:
            if len(segment) == 1:
                cx, cy = segment[0].split(",")
                body.append(f'<circle class="series" cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
            else:
                body.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                            f'points="{" ".join(segment)}"/>')
    body.append("</svg>")
    return _figure(title, "".join(body), colours)


def bar_chart(title: str, bars: list[tuple[str, float]], unit: str = "", limit: int = 15,
              fmt: Callable[[float], str] | None = None) -> str:
    fmt = fmt or (lambda value: _fmt(value) + unit)
    bars = sorted(bars, key=lambda b: -b[1])[:limit]
    row, label_w = 22, 180
    height = max(1, len(bars)) * row + 16
    body = [_svg(height, title)]
    top = max((value for _, value in bars), default=0.0) or 1.0
    if not bars:
        body.append(f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" fill="#6b7280">no data</text>')
    for i, (label, value) in enumerate(bars):
        y = 8 + i * row
        width = max(1.0, value / top * (WIDTH - label_w - 90))
        short = label if len(label) <= 28 else label[:27] + "…"
        body.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="12" fill="#111827">'
                    f'{escape(short)}</text>')
        body.append(f'<rect class="series" x="{label_w}" y="{y + 2}" width="{width:.1f}" height="{row - 6}" '
                    f'fill="{PALETTE[0]}"/>')
        body.append(f'<text class="value" x="{label_w + width + 6:.1f}" y="{y + 14}" font-size="12" '
                    f'fill="#374151">{escape(fmt(value))}</text>')
    body.append("</svg>")
    return _figure(title, "".join(body), {})


def _figure(title: str, svg: str, legend: dict[str, str]) -> str:
    keys = "".join(f'<span class="key"><i style="background:{c}"></i>{escape(n)}</span>' for n, c in legend.items())
    return f'<figure><figcaption>{escape(title)}</figcaption>{svg}<div class="legend">{keys}</div></figure>'
