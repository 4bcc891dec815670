"""Read the input: a Parquet file or a directory of Parquet files, and its label column.

The input Arrow table is kept exactly as read; refine only ever appends columns to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from refine.errors import InputError

# Columns refine appends to the input; an input column of the same name would be ambiguous.
OUTPUT_COLUMNS = (
    "label_refined",
    "label_soft",
    "label_quality",
    "is_label_issue",
    "label_predicted",
    "label_source",
    "sample_weight",
    "label_vote",  # with votes, before label_refined: the majority vote refine starts from
)


@dataclass(frozen=True)
class LabelledTable:
    """The input table and its labels encoded as class indices.

    ``labels`` has shape ``(N,)``: the index into ``classes`` of each row's given label, or -1
    where the label is null (an unlabelled row). ``classes`` holds the distinct label values in
    sorted order, with the label column's value type.
    """

    table: pa.Table
    label: str
    labels: np.ndarray
    classes: pa.Array

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def labelled(self) -> np.ndarray:
        return self.labels >= 0

    def class_values(self) -> list:
        """Class values as plain Python objects, for JSON."""
        return self.classes.to_pylist()


def read_table(path: str | Path) -> pa.Table:
    """Read a Parquet file, or every Parquet file under a directory (hive partitions allowed)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {str(path)!r} does not exist; pass a Parquet file or a directory")
    try:
        dataset = ds.dataset(path, format="parquet", partitioning="hive")
        if path.is_dir() and not dataset.files:
            raise InputError(
                f"input directory {str(path)!r} holds no Parquet files; "
                "pass a .parquet file or a directory of them"
            )
        return dataset.to_table()
    except InputError:
        raise
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        _check_unique_names(path)
        raise InputError(
            f"cannot read {str(path)!r} as Parquet: {exc}. "
            "Check that the file is a complete Parquet file (not CSV, not truncated)"
        ) from None


def _check_unique_names(path: Path) -> None:
    """Parquet allows two columns of one name, Arrow datasets do not: say so, not "cannot read"."""
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    try:
        names = pq.read_schema(files[0]).names if files else []
    except (pa.ArrowInvalid, OSError):
        return
    duplicated = [n for n in names if names.count(n) > 1]
    if duplicated:
        raise InputError(
            f"input has {names.count(duplicated[0])} columns named {duplicated[0]!r}; Parquet "
            "allows that but refine needs distinct column names: rename all but one"
        )


def check_no_clashes(table: pa.Table) -> None:
    clashes = [name for name in table.column_names if name in OUTPUT_COLUMNS]
    if clashes:
        raise InputError(
            f"input column {clashes[0]!r} has the name of a column refine writes "
            f"({', '.join(OUTPUT_COLUMNS)}); rename or drop it before running refine"
        )


def encode_labels(
    table: pa.Table, label: str, folds: int, classes: pa.Array | None = None
) -> LabelledTable:
    """Check the label column and turn it into class indices (see ``LabelledTable``).

    With ``classes`` (a new batch for an earlier run's classes), every label must be one of them
    and a class may have any number of rows here: the batch is folded together with the rows
    replayed from the run.
    """
    names = table.column_names
    if label not in names:
        shown = ", ".join(repr(n) for n in names[:30]) + (" ..." if len(names) > 30 else "")
        raise InputError(
            f"input has no label column {label!r}; its columns are: {shown}. "
            "Name the label column with --label"
        )
    if names.count(label) > 1:
        raise InputError(
            f"input has {names.count(label)} columns named {label!r}; rename all but one"
        )
    column = table.column(label)
    value_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (
        pa.types.is_integer(value_type)
        or pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_string_view(value_type)
        or pa.types.is_boolean(value_type)
    ):
        if pa.types.is_floating(value_type) or pa.types.is_decimal(value_type):
            _refuse_numeric_labels(plain_values(column), label)
        hint = "; this column holds only nulls" if pa.types.is_null(value_type) else ""
        raise InputError(
            f"label column {label!r} has type {column.type}; refine needs class labels of "
            f"integer, string or boolean type{hint}"
        )
    column = plain_values(column)
    bad = invalid_utf8_row(column)
    if bad is not None:
        raise InputError(
            f"label column {label!r} holds bytes that are not valid UTF-8 in row {bad}; "
            "refine reads strings as UTF-8: fix the encoding of that column"
        )
    if classes is not None:
        return _encode_with_classes(table, label, column, plain_values(classes))
    if table.num_rows == 0:
        raise InputError(
            "the input has no rows; refine needs labelled rows of at least two classes"
        )
    classes = pc.unique(column).drop_null()
    classes = classes.take(pc.sort_indices(classes))
    if len(classes) < 2:
        found = f"only {classes.to_pylist()!r}" if len(classes) else "only nulls"
        raise InputError(
            f"label column {label!r} has fewer than 2 classes ({found}); "
            "refine needs at least two classes to tell labels apart"
        )
    codes = pc.index_in(column, value_set=classes)
    labels = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    if counts.min() < folds:
        small = int(np.argmin(counts))
        value = classes[small].as_py()
        raise InputError(
            f"class {json.dumps(value)} of label column {label!r} has {counts[small]} labelled "
            f"row{'s' if counts[small] != 1 else ''}, fewer than the {folds} folds; "
            f"use --folds {max(2, int(counts[small]))} or fewer, or drop or merge that class"
            if counts[small] >= 2
            else f"class {json.dumps(value)} of label column {label!r} has {counts[small]} labelled "
            f"row, fewer than the {folds} folds; drop or merge that class "
            "(cross-fitting needs at least 2 rows per class)"
        )
    return LabelledTable(table=table, label=label, labels=labels, classes=classes)


def _refuse_numeric_labels(column: pa.ChunkedArray, label: str) -> None:
    """Say whether a float or decimal label holds whole numbers, and if so how to cast it."""
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # null -> NaN
    present = ~np.isnan(values)
    fractional = present & ~(np.isfinite(values) & (values == np.floor(values)))
    kind = f"label column {label!r} has type {column.type}"
    classes = "refine needs class labels of integer, string or boolean type"
    if not present.any():
        raise InputError(f"{kind}; {classes}; this column holds only nulls")
    if fractional.any():
        row = int(np.argmax(fractional))
        raise InputError(
            f"{kind} and values that are not whole numbers ({column[row].as_py()} in row {row}); "
            f"{classes}, not scores or measurements: name the column of classes with --label"
        )
    quoted = '"' + label.replace('"', '""') + '"'
    raise InputError(
        f"{kind} but holds only whole numbers: integer classes stored as floats, usually because "
        "pandas makes an integer column with missing values (NaN) float. Cast it to integers: "
        f'in pandas df[{label!r}] = df[{label!r}].astype("Int64") (nullable integers, missing '
        f"labels stay null), in DuckDB CAST({quoted} AS BIGINT)"
    )


def _encode_with_classes(
    table: pa.Table, label: str, column: pa.ChunkedArray, classes: pa.Array
) -> LabelledTable:
    try:
        column = column.cast(classes.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(
            f"label column {label!r} has type {column.type}; the run's labels are {classes.type}"
        ) from None
    codes = pc.index_in(column, value_set=classes)
    unknown = np.flatnonzero(pc.and_(pc.is_null(codes), pc.is_valid(column)).to_numpy(False))
    if len(unknown):
        row = int(unknown[0])
        raise InputError(
            f"label {json.dumps(column[row].as_py())} in row {row} of column {label!r} is not a "
            f"class of the run ({len(unknown)} rows have unknown labels; the classes are "
            f"{json.dumps(classes.to_pylist()[:20])}). Start a new run with refine run to add a class"
        )
    labels = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return LabelledTable(table=table, label=label, labels=labels, classes=classes)


def plain_values(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``values`` without dictionary encoding, and with ``string_view`` as ``string``: the
    types Arrow's compute functions (unique, sort, index_in) all take."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_string_view(values.type):
        values = values.cast(pa.string())
    return values


def invalid_utf8_row(column: pa.ChunkedArray) -> int | None:
    """The first row of a string ``column`` whose bytes are not valid UTF-8, or None.

    Parquet readers do not check, and Python fails on such a value later, far from the cause.
    """
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return None
    try:
        column.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    binary = column.cast(pa.large_binary())  # a cast, not a decode: any bytes pass
    for row, value in enumerate(binary.to_pylist()):
        try:
            if value is not None:
                value.decode("utf-8")
        except UnicodeDecodeError:
            return row
    return None
