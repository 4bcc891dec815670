"""Read the input, and its label column: a Parquet file or directory of them, a CSV or JSON
Lines file, or a table already in memory (pandas, polars, DuckDB, Arrow).

The input Arrow table is kept exactly as read; refine only ever appends columns to it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    "label_vote",  # with votes, before label_refined: the majority vote
    "label_consensus",  # written by runs before the annotator model moved into the rounds
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


# What read_input takes, for the message that refuses anything else.
ACCEPTED = (
    "a path (a Parquet file or directory, .csv, .tsv, .jsonl, .ndjson or .json), a pyarrow "
    "Table or Dataset, a pandas or polars DataFrame, a DuckDB relation, or an object with the "
    "Arrow PyCapsule stream interface (__arrow_c_stream__)"
)
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")


@dataclass(frozen=True)
class Input:
    """The input as an Arrow table, and where it came from.

    ``path`` is the file or directory read, or None for a table handed over in memory;
    ``reader`` says what read it ("CSV (DuckDB read_csv)", "pandas.DataFrame").
    """

    table: pa.Table
    reader: str
    path: Path | None = None

    @property
    def described(self) -> str:
        """run.json's ``input``: the path, or what the table was, with its rows."""
        if self.path is not None:
            return str(self.path)
        rows = self.table.num_rows
        return f"{self.reader} ({rows:,} row{'s' if rows != 1 else ''})"

    @property
    def record(self) -> dict[str, Any]:
        """What run.json records of the input: ``input``, ``input_reader``, ``input_in_memory``."""
        return {
            "input": self.described,
            "input_reader": self.reader,
            "input_in_memory": self.path is None,
        }


def as_table(data: Any) -> pa.Table:
    """``data`` as an Arrow table; see ``read_input`` for what it may be."""
    return read_input(data).table


def read_input(data: Any) -> Input:
    """Read ``data``, the input of a run or an update, into an Arrow table.

    Parameters
    ----------
    data
        A path: a Parquet file or a directory of them, or by its suffix a CSV (``.csv``,
        ``.tsv``) or JSON Lines (``.jsonl``, ``.ndjson``, ``.json``) file, read by pyarrow;
        ``.gz`` after the suffix is decompressed. Or a table
        in memory: a pyarrow Table or Dataset, a pandas DataFrame (a named index becomes a
        column, an unnamed one is dropped), a polars DataFrame, a DuckDB relation, or any
        object with ``__arrow_c_stream__``. Nothing is imported for a library the caller did
        not load: polars is never a dependency.

    Raises
    ------
    InputError
        For anything else, naming its type and what is accepted; for a file that cannot be read.
    """
    if isinstance(data, (str, os.PathLike)):
        source = _read_file(Path(data))
        # Decoding leaves the pool holding about twice the table's bytes, freed but resident,
        # for the whole run: 0.5 GB at a million rows of 64 floats (reports/scale.md).
        pa.default_memory_pool().release_unused()
        return source
    if isinstance(data, pa.Table):
        return Input(data, "pyarrow.Table")
    if isinstance(data, pa.RecordBatch):
        return Input(pa.Table.from_batches([data]), "pyarrow.RecordBatch")
    if isinstance(data, ds.Dataset):
        return Input(data.to_table(), "pyarrow.dataset.Dataset")
    pandas, polars, duckdb = (sys.modules.get(m) for m in ("pandas", "polars", "duckdb"))
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return Input(_from_pandas(data), "pandas.DataFrame")
    if polars is not None and isinstance(data, polars.DataFrame):
        return Input(data.to_arrow(), "polars.DataFrame")
    if duckdb is not None and isinstance(data, duckdb.DuckDBPyRelation):
        return Input(_from_duckdb(data), "DuckDB relation")
    if hasattr(data, "__arrow_c_stream__"):
        kind = type(data)
        return Input(
            pa.RecordBatchReader.from_stream(data).read_all(),
            f"Arrow stream ({kind.__module__}.{kind.__qualname__})",
        )
    kind = type(data)
    raise InputError(
        f"refine cannot read input of type {kind.__module__}.{kind.__qualname__}; pass {ACCEPTED}"
    )


def _from_pandas(frame: Any) -> pa.Table:
    # A named index (df.set_index("id")) is data the user named, often the row key: keep it as
    # a column. An unnamed one is positions, which would otherwise become a feature.
    named = [name for name in frame.index.names if name is not None]
    if named:
        frame = frame.reset_index(level=named)
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(
            f"cannot turn the pandas DataFrame into an Arrow table: {exc}. Give each column one "
            "type (an object column of mixed strings and numbers cannot be stored)"
        ) from None


def _from_duckdb(relation: Any) -> pa.Table:
    arrow = relation.arrow()  # a table before DuckDB 1.4, a RecordBatchReader since
    return arrow.read_all() if isinstance(arrow, pa.RecordBatchReader) else arrow


def _read_file(path: Path) -> Input:
    name = path.name.lower()
    if path.is_file() and name.endswith(CSV_SUFFIXES):
        return Input(_read_text(path, "CSV"), "CSV (pyarrow.csv)", path)
    if path.is_file() and name.endswith(JSON_SUFFIXES):
        return Input(_read_text(path, "JSON Lines"), "JSON Lines (pyarrow.json)", path)
    return Input(read_table(path), "Parquet (pyarrow.dataset)", path)


def _read_text(path: Path, kind: str) -> pa.Table:
    """A CSV or JSON Lines file, each column's type inferred (whole numbers as int64, also with
    empty cells; dates as date32). pyarrow, not DuckDB's sniffer: that skips leading lines and
    guesses the header, so a ragged file silently loses rows; pyarrow refuses it."""
    import pyarrow.csv as csv
    import pyarrow.json as pajson

    if path.stat().st_size == 0:
        raise InputError(f"input {str(path)!r} is empty; a {kind} file needs a header and rows")
    try:
        if kind == "CSV":
            table = csv.read_csv(
                path,
                parse_options=csv.ParseOptions(delimiter="\t" if ".tsv" in path.suffixes else ","),
                # An empty cell is null in every column, so an empty label is an unlabelled row.
                convert_options=csv.ConvertOptions(strings_can_be_null=True),
            )
        else:
            table = pajson.read_json(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        form = (
            "comma-separated with a header row (.tsv: tab-separated)"
            if kind == "CSV"
            else "one JSON object per line"
        )
        raise InputError(
            f"cannot read {str(path)!r} as {kind}: {exc}. refine reads it as {form}"
        ) from None
    if table.num_rows == 0:
        raise InputError(f"input {str(path)!r} has no rows; refine needs labelled rows")
    return table


def read_table(path: str | Path) -> pa.Table:
    """Read a Parquet file, or every Parquet file under a directory (hive partitions allowed)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {str(path)!r} does not exist; pass a Parquet file or a directory")
    try:
        if path.is_file():
            _check_unique_names(path)
            parquet = _parquet_file(path)
            batches = list(_file_batches(parquet))
            return pa.Table.from_batches(batches, schema=parquet.schema_arrow)
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
            "Check that the file is a complete Parquet file (not truncated); a CSV or JSON Lines "
            "file is read by its suffix: name it .csv, .tsv or .jsonl"
        ) from None


def read_batches(path: str | Path) -> Iterator[pa.RecordBatch]:
    """The batches of ``read_table(path)``, in order and cut where its chunks are cut, read one
    at a time: for reading an input again without holding it."""
    path = Path(path)
    if path.is_dir():
        yield from ds.dataset(path, format="parquet", partitioning="hive").to_batches()
        return
    yield from _file_batches(_parquet_file(path))


def _parquet_file(path: Path) -> pq.ParquetFile:
    """A Parquet file whose pages stream through a small buffer, not pre-buffered: either way
    a whole row group's column chunks sit in memory at once. The dataset reader held +1.3 GiB
    for a moment reading a 2M-row file of 0.52 GB, this +0.26; re-reading a 1M-row row group
    in batches, +0.46 GiB against +0.01 (reports/scale.md)."""
    return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)


def _file_batches(parquet: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    return parquet.iter_batches(batch_size=READ_BATCH_ROWS, use_threads=False)


# pyarrow.dataset's batch length: a file's table comes in chunks of it, as a directory's does.
READ_BATCH_ROWS = 1 << 17


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
