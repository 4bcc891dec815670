"""Build the output tables with their declared schemas, and write a run directory atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from refine.errors import OutputError
from refine.read import LabelledTable
from refine.relabel import SOURCES, Decisions

ROUNDS_SCHEMA = pa.schema(
    [
        ("round", pa.int32()),
        ("flagged", pa.int64()),
        ("corrected", pa.int64()),
        ("excluded", pa.int64()),
        ("pseudo_labelled", pa.int64()),
        ("changed", pa.int64()),
        ("oof_accuracy", pa.float64()),
        ("ece_before", pa.float64()),
        ("ece_after", pa.float64()),
        ("temperature", pa.float64()),
        ("reliable", pa.bool_()),
        ("seconds", pa.float64()),
    ]
)


def output_schema(data: LabelledTable) -> pa.Schema:
    """The input schema followed by refine's columns (see DESIGN.md's output contract)."""
    label_type = data.table.schema.field(data.label).type
    return (
        data.table.schema.append(pa.field("label_refined", label_type))
        .append(pa.field("label_soft", pa.list_(pa.float32())))
        .append(pa.field("label_quality", pa.float32()))
        .append(pa.field("is_label_issue", pa.bool_()))
        .append(pa.field("label_predicted", label_type))
        .append(pa.field("label_source", pa.string()))
        .append(pa.field("sample_weight", pa.float32()))
    )


def refined_table(
    data: LabelledTable,
    decisions: Decisions,
    proba: np.ndarray,
    is_issue: np.ndarray,
    quality: np.ndarray,
    metadata: dict[str, Any],
) -> pa.Table:
    """The input table, unchanged, with refine's columns appended."""
    n, k = proba.shape
    labelled = data.labels >= 0
    label_type = data.table.schema.field(data.label).type
    soft = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), pa.array(decisions.soft.reshape(-1))
    )
    columns = [
        _class_column(data, decisions.refined, label_type),
        soft,
        pa.array(quality.astype(np.float32), mask=~labelled),
        pa.array(labelled & is_issue),
        _class_column(data, proba.argmax(1), label_type),
        pa.array(np.asarray(SOURCES, dtype=object)[decisions.source], type=pa.string()),
        pa.array(decisions.weight.astype(np.float32)),
    ]
    table = data.table
    schema = output_schema(data)
    for field, column in zip(list(schema)[len(table.schema) :], columns, strict=True):
        table = table.append_column(field, column)
    existing = dict(data.table.schema.metadata or {})
    existing.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
    return table.replace_schema_metadata(existing)


def _class_column(data: LabelledTable, index: np.ndarray, label_type: pa.DataType) -> pa.Array:
    """Class values for class indices ``(N,)``; -1 gives null. Keeps the label's Arrow type."""
    column = data.classes.take(pa.array(index, mask=index < 0))
    if pa.types.is_dictionary(label_type):
        column = column.dictionary_encode().cast(label_type)
    return column


@contextlib.contextmanager
def atomic_directory(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success rename it to ``out``.

    Nothing appears at ``out`` until every file is written. With ``overwrite``, an existing run
    directory is replaced only after the new one is complete.
    """
    out = Path(out)
    check_output(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise OutputError(
            f"cannot create the output directory {str(out)!r}: {exc.strerror}"
        ) from None
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless ``overwrite``, and never overwrite a non-run directory."""
    out = Path(out)
    if not out.exists():
        return
    if not overwrite:
        raise OutputError(
            f"output {str(out)!r} already exists; pass --overwrite to replace it, "
            "or choose another --out"
        )
    if not out.is_dir():
        raise OutputError(
            f"output {str(out)!r} exists and is not a directory; remove it or choose another --out"
        )
    if any(out.iterdir()) and not (out / "run.json").exists():
        raise OutputError(
            f"output {str(out)!r} is a non-empty directory that is not a refine run (no run.json); "
            "refine will not replace it. Choose another --out"
        )


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
