"""Verified labels: labels a person checked, read from a column of the data (``--verified``) or
from a file joined to the data by a key (``--verified-file FILE --key COL``).

Out: ``(N,)`` class indices into the run's classes, -1 where nobody verified the row. A verified
row trains with its verified label, is never changed, and is the evidence ``refine.judge.trust``
measures and decides by.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine.errors import InputError
from refine.io.read import LabelledTable, plain_values

# The column of a verified-labels file that holds the labels (refine review writes it empty).
VERIFIED_LABEL = "verified_label"
# A file without --key joins by this column: the row's position in the input (0-based), which
# is also its position in refined.parquet.
ROW_KEY = "row"
_POSITIONS = (
    f"the {ROW_KEY!r} column must hold positions in the input (as refine review writes them)"
)


def verified_labels(
    data: LabelledTable, column: str | None, file: str | Path | None, key: str | None
) -> np.ndarray:
    """Every row's verified class index ``(N,)`` (-1 = not verified) from ``column`` of the
    data, or from ``file`` joined by ``key`` (a column of the data and of the file; None joins
    the file's ``row`` column to row positions). Neither: nothing is verified.

    Raises ``InputError`` naming the column, row or value for a verified value that is not a
    class of the label column, a key that is missing, null, duplicated or not in the data, and
    a file without the columns it needs.
    """
    n = data.table.num_rows
    if column is not None:
        if column not in data.table.column_names:
            raise InputError(
                f"input has no verified-label column {column!r}; its columns are: "
                f"{_shown(data.table.column_names)}. Name the column with --verified"
            )
        return _encode(data.table.column(column), data, f"column {column!r}", lambda r: f"row {r}")
    if file is None:
        return np.full(n, -1, np.int64)
    table = read_verified_file(file, key or ROW_KEY)
    where = f"verified file {str(file)!r}"
    positions, keys = _join(table.column(key or ROW_KEY), data, key, where)
    found = np.full(n, -1, np.int64)
    named = (
        (lambda row: f"input row {keys[row].as_py()}")
        if key is None
        else (lambda row: f"the row with {key} {_value(keys[row])}")
    )
    codes = _encode(table.column(VERIFIED_LABEL), data, where, named)
    chosen = codes >= 0
    found[positions[chosen]] = codes[chosen]
    return found


def read_verified_file(path: str | Path, key: str) -> pa.Table:
    """A verified-labels file, Parquet or CSV, with its ``key`` and ``verified_label`` columns.

    CSV cells are read as text (a spreadsheet's "007" stays "007") and cast to the data's types
    when joined; an empty cell is null, so a row left blank is simply not verified.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"verified file {str(path)!r} does not exist; pass a Parquet or CSV file with a "
            f"{VERIFIED_LABEL} column (refine review writes one)"
        )
    try:
        table = read_side_file(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        kind = "CSV" if is_csv(path) else "Parquet"
        raise InputError(
            f"cannot read verified file {str(path)!r} as {kind}: {exc}. A verified file is "
            "Parquet, or CSV with a header row (name it .csv)"
        ) from None
    missing = [c for c in (key, VERIFIED_LABEL) if c not in table.column_names]
    if missing:
        need = (
            f"the key column {key!r} (named by --key)"
            if key != ROW_KEY
            else f"a {ROW_KEY!r} column (each row's position in the input; or name a key column "
            "with --key)"
        )
        raise InputError(
            f"verified file {str(path)!r} has no column {missing[0]!r}; its columns are: "
            f"{_shown(table.column_names)}. It needs {need} and a {VERIFIED_LABEL} column"
        )
    return table


def is_csv(path: Path) -> bool:
    """Whether a side file (verified labels, annotations) is read as CSV rather than Parquet."""
    return path.suffix.lower() in (".csv", ".tsv", ".txt")


def read_side_file(path: Path) -> pa.Table:
    """A side file a person may have filled in a spreadsheet: CSV by its suffix (cells as
    text), else Parquet. Read errors propagate for the caller to word."""
    if is_csv(path):
        return _read_csv(path)
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _read_csv(path: Path) -> pa.Table:
    import csv as std_csv

    import pyarrow.csv as csv

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # Every column as text: the header alone names them, without parsing the file twice.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        names = next(std_csv.reader(handle, delimiter=delimiter), [])
    return csv.read_csv(
        path,
        parse_options=csv.ParseOptions(delimiter=delimiter),
        convert_options=csv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            strings_can_be_null=True,
            null_values=[""],
        ),
    )


def _join(
    keys: pa.ChunkedArray, data: LabelledTable, key: str | None, where: str
) -> tuple[np.ndarray, pa.ChunkedArray]:
    """Each file row's position in the data ``(M,)``, by ``key`` (None: the positions), and
    the file's keys cast to the data's type (for messages)."""
    n = data.table.num_rows
    name = key or ROW_KEY
    null = pc.is_null(keys).to_numpy(zero_copy_only=False)
    if null.any():
        raise InputError(
            f"{where}: {_file_row(int(np.argmax(null)))} has no {name!r} value; give every row "
            f"its {name} value, or delete the row"
        )
    if key is None:
        positions = _cast_keys(
            keys, pa.int64(), where, name, "a row position (a whole number from 0)", _POSITIONS
        )
        # After the cast, so "3" and "03" count as the same row.
        _check_unique(positions, f"{where}: column {name!r}", "keep one row per key")
        values = positions.to_numpy(zero_copy_only=False)
        outside = np.flatnonzero((values < 0) | (values >= n))
        if len(outside):
            raise InputError(
                f"{where}: row position {int(values[outside[0]])} is outside the input, whose "
                f"rows are 0 to {n - 1} ({_count(len(outside), 'position')} outside); {_POSITIONS}"
            )
        return values.astype(np.int64), positions
    if key not in data.table.column_names:
        raise InputError(
            f"--key names {key!r}, which is not a column of the input; its columns are: "
            f"{_shown(data.table.column_names)}. Name a column of unique values that the input "
            "and the verified file share"
        )
    column = plain_values(data.table.column(key))
    if not _plain_key(column.type):
        raise InputError(
            f"--key names {key!r}, a column of type {column.type}; a key must hold single "
            "values, such as the integers or strings of an id column"
        )
    _check_unique(
        column, f"the input's key column {key!r}", "--key must name a column of unique values"
    )
    keys = _cast_keys(
        plain_values(keys),
        column.type,
        where,
        key,
        f"of the input's type {column.type}",
        "check that the file belongs to this data",
    )
    _check_unique(keys, f"{where}: column {name!r}", "keep one row per key")
    positions = pc.index_in(keys, value_set=pc.drop_null(column).combine_chunks())
    if positions.null_count:
        missing = np.flatnonzero(pc.is_null(positions).to_numpy(zero_copy_only=False))
        raise InputError(
            f"{where}: {key} {_value(keys[int(missing[0])])} is not in the input's column "
            f"{key!r} ({_count(len(missing), 'key')} not found); check that the file belongs "
            "to this data"
        )
    # index_in counts positions among the non-null keys of the data: map back to rows.
    valid = np.flatnonzero(pc.is_valid(column).to_numpy(zero_copy_only=False))
    return valid[positions.to_numpy(zero_copy_only=False).astype(np.int64)], keys


def _encode(
    values: pa.ChunkedArray, data: LabelledTable, where: str, named: Callable[[int], str]
) -> np.ndarray:
    """Class indices ``(M,)`` of verified values (-1 = null); a value outside the classes (or
    not of their type) is an error naming it, its row (``named(i)`` says which) and the
    classes."""
    values = plain_values(values)
    classes = plain_values(data.classes)
    cast, unreadable = _try_cast(values, classes.type)
    if cast is None:
        unknown = np.asarray(unreadable)
    else:
        values = cast
        codes = pc.index_in(values, value_set=classes)
        unknown = np.flatnonzero(
            pc.and_(pc.is_null(codes), pc.is_valid(values)).to_numpy(zero_copy_only=False)
        )
    if len(unknown):
        row = int(unknown[0])
        raise InputError(
            f"{where}: verified label {_value(values[row])} for {named(row)} is not a class of "
            f"the label column {data.label!r} ({_count(len(unknown), 'row')} like it; the "
            f"classes are {_shown(classes.to_pylist(), json_values=True)}). Fix the value, or "
            "leave the row unverified"
        )
    return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _try_cast(values: Any, to: pa.DataType) -> tuple[Any, list[int]]:
    """``values`` cast to ``to``, or None and the positions of the values that do not cast."""
    if values.type == to:
        return values, []
    try:
        return values.cast(to), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Only on failure: find which values fail, one by one, to name them.
    failed = []
    for i, value in enumerate(values):
        try:
            pa.array([value.as_py()], values.type).cast(to)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            failed.append(i)
    return None, failed or list(range(len(values)))


def _cast_keys(keys: Any, to: pa.DataType, where: str, name: str, expected: str, fix: str) -> Any:
    cast, failed = _try_cast(keys, to)
    if cast is None:
        raise InputError(
            f"{where}: {name!r} value {_value(keys[failed[0]])} in {_file_row(failed[0])} is "
            f"not {expected} ({_count(len(failed), 'row')} like it); {fix}"
        )
    return cast


def _check_unique(values: Any, what: str, fix: str) -> None:
    counts = pc.value_counts(pc.drop_null(values))
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        raise InputError(
            f"{what} holds {_value(repeated[0])} more than once "
            f"({_count(len(repeated), 'value')} repeated); {fix}"
        )


def _plain_key(kind: pa.DataType) -> bool:
    return not (pa.types.is_nested(kind) or pa.types.is_null(kind))


def _file_row(row: int) -> str:
    return f"row {row} (counting from 0, not counting a CSV header)"


def _value(scalar: pa.Scalar) -> str:
    return json.dumps(scalar.as_py(), default=str)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _shown(values: list[Any], json_values: bool = False) -> str:
    shown = [json.dumps(v, default=str) if json_values else repr(v) for v in values[:20]]
    return ", ".join(shown) + (" ..." if len(values) > 20 else "")
