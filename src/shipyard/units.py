"""Figures as a person reads them: money with its significant digits (a request's cost is often a
few millionths of a dollar: never `4.9e-05 $` nor `$0.0000`)."""

from __future__ import annotations

import math


def usd(value: float | None) -> str:
    """$1,234.50, $0.25, $0.000049 (three significant figures below a dollar), $0."""
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= 1:
        return f"{sign}${value:,.2f}"
    decimals = min(15, max(2, 2 - math.floor(math.log10(value))))
    text = f"{value:.{decimals}f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{sign}${whole}.{fraction.ljust(2, '0')}"
