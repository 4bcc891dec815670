"""How the report writes a value in a table cell or a sentence: short, and saying so where the
run did not record it (an older run's ``run.json`` may lack a field)."""

from __future__ import annotations

import math
from typing import Any

NOT_RECORDED = "not recorded"


def short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell(value: Any) -> str:
    """A feature value for a table cell: short, whatever its type."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bytes):
        return f"<{len(value):,} bytes>"
    if isinstance(value, list):
        return f"[{len(value)} values]"
    return short(str(value), 60)


def integer(value: Any) -> str:
    """A count with thousands separators, or "not recorded"."""
    return NOT_RECORDED if value is None else f"{int(value):,}"


def decimal(value: Any, digits: int) -> str:
    """A float to ``digits`` places, or "not recorded" (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_RECORDED
    return f"{float(value):.{digits}f}"


def number(value: Any, digits: int) -> str:
    """A table cell: an integer (``digits`` 0) or a float to ``digits`` places; text as is;
    a dash for None (a round or annotator without the figure)."""
    if value is None:
        return "–"
    if isinstance(value, bool | str):
        return str(value)
    return f"{value:,}" if digits == 0 else f"{float(value):.{digits}f}"


def plain(value: Any) -> str:
    """``value`` as text, or "not recorded"."""
    return NOT_RECORDED if value is None else str(value)


def ece_pair(calibration: dict[str, Any]) -> str:
    """run.json calibration's ECE before / after temperature scaling."""
    if "ece_before" not in calibration:
        return NOT_RECORDED
    before, after = calibration.get("ece_before"), calibration.get("ece_after")
    if before is None or after is None:
        return "no labels to measure"
    return f"{before:.3f} / {after:.3f}"
