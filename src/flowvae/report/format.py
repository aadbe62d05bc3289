"""Numbers and text as the tables print them, in Markdown and LaTeX."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MISSING_MD = "—"
MISSING_TEX = "--"


def num(value: float, digits: int) -> str:
    """A number with fixed decimals (thousands separators for integers)."""
    return f"{value:,.0f}" if digits == 0 else f"{value:.{digits}f}"


def pm(value: float, err: float | None, digits: int, tex: bool) -> str:
    """`value ± err`, or the value alone where there is no error."""
    if err is None or (isinstance(err, float) and math.isnan(err)):
        return num(value, digits)
    sep = r" $\pm$ " if tex else " ± "
    return f"{num(value, digits)}{sep}{num(err, digits or 1)}"


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in plain text."""
    table = {
        "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "†": r"$^\dagger$", "▲": r"$^\blacktriangle$", "≈": r"$\approx$", "−": "$-$", "Δ": r"$\Delta$", "—": "--", "–": "--",
    }
    return "".join(table.get(ch, ch) for ch in text)


def md_escape(text: str) -> str:
    """Escape the pipes that would otherwise split a markdown table cell."""
    return text.replace("|", r"\|")


def describe(values: Iterable[Any]) -> str:
    """Distinct values joined for a caption (e.g. '30' or '10, 30')."""
    distinct = sorted({v for v in values if v is not None}, key=lambda v: (str(type(v)), v))
    return ", ".join(str(v) for v in distinct) if distinct else "unknown"
