"""The run as the report reads it: ``run.json``, ``rounds.parquet`` and the columns of
``refined.parquet`` it shows, checked, with the labels as class indices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from refine.config import check_summary
from refine.errors import InputError
from refine.io.read import plain_values
from refine.report.columns import run_key

FEATURE_COLUMNS = 4  # feature values shown per likely wrong row
TRUTH_COLUMNS = ("label_true", "is_noisy")  # written by `refine datasets build`
_REFINED_COLUMNS = (
    "label_refined",
    "label_quality",
    "is_label_issue",
    "label_predicted",
    "label_source",
)


@dataclass
class ReportRun:
    """What the report reads: ``run.json``, ``rounds.parquet`` and columns of ``refined.parquet``
    with the labels as class indices ``(N,)`` (-1: none)."""

    summary: dict[str, Any]
    rounds: pa.Table
    refined: pa.Table  # the columns the report shows
    classes: list[Any]
    label: str
    given: np.ndarray
    refined_codes: np.ndarray
    predicted: np.ndarray
    quality: np.ndarray  # NaN for unlabelled rows
    is_issue: np.ndarray
    source: np.ndarray
    features: list[str]  # input columns shown beside the likely wrong rows
    key: tuple[str, ...]  # the columns that name the rows (refine.io.keys)
    key_source: str | None
    synthetic_rows: int | None
    annotators: pa.Table | None = None  # annotators.parquet, in a run with votes

    @property
    def names(self) -> list[str]:
        return [str(c) for c in self.classes]

    @property
    def labelled(self) -> np.ndarray:
        return self.given >= 0

    @property
    def counts(self) -> dict[str, int]:
        """The summary's counts, from refined.parquet itself (run.json holds the same numbers,
        but an older or hand-made run may lack some)."""
        labelled = int(self.labelled.sum())
        return {
            "rows": len(self.given),
            "labelled": labelled,
            "unlabelled": len(self.given) - labelled,
            "flagged": int(self.is_issue.sum()),
            "corrected": int((self.source == "corrected").sum()),
            "excluded": int((self.source == "excluded").sum()),
            "pseudo_labelled": int((self.source == "pseudo").sum()),
            "verified": int((self.source == "verified").sum()),
        }


def load_run_dir(path: Path) -> ReportRun:
    if not path.is_dir():
        raise InputError(
            f"run directory {str(path)!r} does not exist; pass the --out of a refine run"
        )
    for name in ("run.json", "refined.parquet", "rounds.parquet"):
        if not (path / name).is_file():
            raise InputError(
                f"{str(path)!r} is not a refine run: it has no {name}. "
                "Pass a directory written by refine run or refine update"
            )
    try:
        summary = json.loads((path / "run.json").read_text(encoding="utf-8"))
        schema = pq.read_schema(path / "refined.parquet")
        rounds = pq.read_table(path / "rounds.parquet")
    except (ValueError, OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read the run {str(path)!r}: {exc}") from None
    if not isinstance(summary, dict):
        raise InputError(f"{str(path / 'run.json')!r} does not hold a refine run summary")
    metadata = schema.metadata or {}
    recorded = json.loads(metadata[b"refine.classes"]) if b"refine.classes" in metadata else None
    check_summary(summary, path / "run.json", recorded)
    config = summary.get("config") or {}
    label = config.get("label") or json.loads(metadata.get(b"refine.run", b"{}")).get(
        "config", {}
    ).get("label", "label")
    classes = summary.get("classes")
    if classes is None and b"refine.classes" in metadata:
        classes = json.loads(metadata[b"refine.classes"])
    missing = [c for c in (label, *_REFINED_COLUMNS) if c not in schema.names]
    if missing or classes is None:
        raise InputError(
            f"{str(path / 'refined.parquet')!r} is not a refine output: "
            + (f"it has no column {missing[0]!r}" if missing else "its classes are not recorded")
            + ". Rerun refine run to rewrite the run"
        )
    outputs = {label, *_REFINED_COLUMNS, "label_soft", "sample_weight", *TRUTH_COLUMNS}
    used = [c["column"] for c in (summary.get("features") or {}).get("columns", [])]
    inputs = [n for n in schema.names if n not in outputs]
    key, key_source = run_key(path, summary, label, [n for n in schema.names if n != label])
    shown = [n for n in inputs if n not in key]
    features = ([n for n in used if n in shown] or shown)[:FEATURE_COLUMNS]
    truth = [c for c in TRUTH_COLUMNS if c in schema.names]
    extra = [c for c in key if c not in truth]
    try:
        refined = pq.read_table(
            path / "refined.parquet",
            columns=[label, *_REFINED_COLUMNS, *truth, *extra, *features],
        )
        synthetic = path / "synthetic.parquet"
        synthetic_rows = pq.read_metadata(synthetic).num_rows if synthetic.is_file() else None
        voters = path / "annotators.parquet"
        annotators = pq.read_table(voters) if voters.is_file() else None
    except (ValueError, OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read the run {str(path)!r}: {exc}") from None
    quality = refined.column("label_quality").to_numpy(zero_copy_only=False)
    return ReportRun(
        summary=summary,
        rounds=rounds,
        refined=refined,
        classes=classes,
        label=label,
        given=class_codes(refined.column(label), classes),
        refined_codes=class_codes(refined.column("label_refined"), classes),
        predicted=class_codes(refined.column("label_predicted"), classes),
        quality=np.asarray(quality, dtype=np.float64),
        is_issue=refined.column("is_label_issue").fill_null(False).to_numpy(zero_copy_only=False),
        source=np.asarray(refined.column("label_source").to_pylist(), dtype=object),
        features=features,
        key=key,
        key_source=key_source,
        synthetic_rows=synthetic_rows,
        annotators=annotators,
    )


def class_codes(column: pa.ChunkedArray, classes: Sequence[Any]) -> np.ndarray:
    """Class indices ``(N,)`` of a column of class values; -1 for null or an unknown value."""
    column = plain_values(column)  # no dictionary, no string_view: index_in takes it
    try:
        values = pa.array(list(classes), type=column.type)
        found = pc.index_in(column, value_set=values).fill_null(-1)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        # A type index_in has no kernel for, or classes that do not fit it: look up in Python.
        lookup = {value: code for code, value in enumerate(classes)}
        return np.array([lookup.get(v, -1) for v in column.to_pylist()], dtype=np.int64)
    return found.to_numpy(zero_copy_only=False).astype(np.int64)
