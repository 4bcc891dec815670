"""The report's "Columns" section: which columns name the rows (the key), which were features
and how each was read (numbers, categories, free text, images, embeddings), which were
ignored, and which were skipped and why, from ``run.json``; and ``run_key``, the key columns
the report shows by each row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from refine.errors import InputError
from refine.io.keys import FROM_IGNORE, FROM_KEY, FROM_NAME, looks_like_id, recorded_key, row_key
from refine.report.page import escape, note, table

# How each encoder kind (run.json's "features") reads its columns, in the order shown.
KINDS = {
    "numeric": "numbers",
    "one-hot": "categories (one-hot)",
    "text": "free text",
    "image": "images",
    "image-model": "images (a pretrained model's embeddings)",
    "embedding": "embeddings (lists of numbers)",
}
LISTED = 40  # column names listed per line before "and N more"
_WHY_KEY = {
    FROM_KEY: "--key",
    FROM_IGNORE: "the --ignore'd columns",
    FROM_NAME: "named like an id, with unique values",
}


def columns_section(summary: dict[str, Any], key: tuple[str, ...], key_source: str | None) -> str:
    """The section's HTML for a run's ``summary`` (run.json) and its ``key`` columns, found as
    ``key_source`` says (``refine.io.keys``)."""
    config = summary.get("config") or {}
    described = summary.get("features")
    rows: list[tuple[str, str]] = []
    if key:
        why = _WHY_KEY.get(key_source or "")
        rows.append(("key (shown by each row)", _names(key) + (f" ({why})" if why else "")))
    else:
        rows.append(("key (shown by each row)", "none: name an id column with --key"))
    if config.get("label"):
        rows.append(("label", str(config["label"])))
    if config.get("verified"):
        rows.append(("verified labels (--verified)", str(config["verified"])))
    if not isinstance(described, dict):
        return _keyvalue(rows) + note("Feature columns: not recorded (an older run).")
    used = [c for c in described.get("columns") or [] if isinstance(c, dict)]
    by_kind: dict[str, list[str]] = {}
    for column in used:
        by_kind.setdefault(str(column.get("kind")), []).append(str(column.get("column")))
    for kind in sorted(by_kind, key=lambda k: list(KINDS).index(k) if k in KINDS else len(KINDS)):
        names = by_kind[kind]
        rows.append((f"features read as {KINDS.get(kind, kind)} ({len(names):,})", _names(names)))
    ignored = [str(c) for c in config.get("ignore") or []]
    rows.append(("ignored (--ignore)", _names(ignored) if ignored else "none"))
    html = _keyvalue(rows)
    features = {str(c.get("column")) for c in used}
    also = [c for c in key if c in features]
    if also:
        html += note(
            f"{_names(also)} names the rows and is a feature too; if it is an id, rerun with "
            f"--ignore {','.join(also)} so that the model does not learn from it."
        )
    skipped = described.get("skipped") or {}
    if isinstance(skipped, dict) and skipped:
        html += table(
            ["skipped column", "why"],
            [[str(name), str(why)] for name, why in skipped.items()],
            caption="Columns refine could not use as features; name one with --text, --image "
            "or --features to read it another way.",
        )
    else:
        html += note("No column was skipped.")
    return html


def run_key(
    path: Path, summary: dict[str, Any], label: str, names: list[str]
) -> tuple[tuple[str, ...], str | None]:
    """The key columns among ``names`` and where they came from, as run.json records them; for
    a run from before refine recorded them, found again from its options and refined.parquet."""
    recorded = recorded_key(summary, names)
    if recorded is not None:
        return recorded, (summary.get("key") or {}).get("from") if recorded else None
    config = summary.get("config") or {}
    given, ignore = config.get("key"), tuple(config.get("ignore") or ())
    wanted = [n for n in names if n == given or n in ignore or looks_like_id(n)]
    try:
        found = row_key(
            pq.read_table(path / "refined.parquet", columns=wanted), label, given, ignore
        )
    except (InputError, ValueError, OSError, pa.ArrowInvalid):
        return (), None
    return found.columns, found.source


def _keyvalue(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="keyvalue">{cells}</table>'


def _names(names: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" and {len(names) - LISTED:,} more" if len(names) > LISTED else "")
