"""Data where users hold it: every kind of input gives the same refined.parquet."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import blobs

import refine
from refine.cli import cli
from refine.io.read import ACCEPTED, read_input

TINY = dict(folds=3, rounds=1, max_epochs=3, hidden=(16,), report=False, seed=0)
FAST_FLAGS = ["--max-epochs", "3", "--folds", "3", "--rounds", "1", "--no-report"]


def tiny_table(n: int = 90) -> pa.Table:
    X, truth = blobs(n, k=3, dim=2, seed=3)
    labels = truth.copy()
    labels[::10] = (labels[::10] + 1) % 3  # a few wrong labels to find
    return pa.table(
        {"x0": X[:, 0].astype(np.float64), "x1": X[:, 1].astype(np.float64), "label": labels}
    )


class Stream:
    """Nothing but the Arrow PyCapsule stream interface, as another library would offer."""

    def __init__(self, table: pa.Table):
        self._table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self._table.__arrow_c_stream__(requested_schema)


def refined_bytes(data, out) -> bytes:
    refine.run(data, out, **TINY)
    return (out / "refined.parquet").read_bytes()


def test_every_kind_of_table_gives_the_same_refined_parquet(tmp_path):
    table = tiny_table()
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    expected = refined_bytes(path, tmp_path / "from-path")
    inputs = {
        "table": table,
        "dataset": ds.dataset(path),
        "duckdb": duckdb.from_arrow(table),
        "stream": Stream(table),
        "batches": pa.RecordBatchReader.from_batches(table.schema, table.to_batches()),
    }
    for name, data in inputs.items():
        assert refined_bytes(data, tmp_path / name) == expected, name


def test_a_pandas_frame_gives_the_bytes_of_its_parquet_file(tmp_path):
    frame = tiny_table().to_pandas()
    frame.index = frame.index + 100  # an unnamed index is positions: dropped
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, index=False)
    expected = refined_bytes(path, tmp_path / "from-path")
    assert refined_bytes(frame, tmp_path / "frame") == expected
    # The pandas metadata aside (pandas reads its dtypes back), the same as from Arrow.
    refined = pq.read_table(tmp_path / "frame" / "refined.parquet")
    from_arrow = refine.run(tiny_table(), **TINY).refined
    assert (
        refined.drop_columns([])
        .replace_schema_metadata(None)
        .equals(from_arrow.replace_schema_metadata(None))
    )
    summary = json.loads((tmp_path / "frame" / "run.json").read_text())
    assert summary["input"] == "pandas.DataFrame (90 rows)"
    assert summary["input_reader"] == "pandas.DataFrame"
    assert summary["input_in_memory"] is True


def test_a_named_pandas_index_becomes_a_column_and_an_unnamed_one_is_dropped():
    frame = pd.DataFrame({"x": [1.0, 2.0], "label": [0, 1]})
    assert read_input(frame.set_index("x")).table.column_names == ["x", "label"]
    assert read_input(frame[frame.x > 1]).table.column_names == ["x", "label"]


def test_a_polars_frame_gives_the_same_refined_parquet(tmp_path):
    pl = pytest.importorskip("polars")
    table = tiny_table()
    expected = refined_bytes(table, tmp_path / "table")
    frame = pl.from_arrow(table)
    assert refined_bytes(frame, tmp_path / "polars") == expected
    summary = json.loads((tmp_path / "polars" / "run.json").read_text())
    assert summary["input"] == "polars.DataFrame (90 rows)"


def test_a_csv_file_gives_the_same_labels_and_whole_numbers_stay_integers(tmp_path):
    table = tiny_table()
    csv = tmp_path / "data.csv"
    pacsv.write_csv(table, csv)
    read = read_input(csv)
    assert read.reader == "CSV (pyarrow.csv)"
    assert read.table.schema == table.schema  # int64 labels, not doubles
    expected = refine.run(table, **TINY).refined
    from_csv = refine.run(csv, **TINY).refined
    # CSV carries no types, so in general only the labels and flags can be compared; here the
    # floats survive the text round trip, and the whole table is the same.
    for column in ("label_refined", "is_label_issue", "label_soft"):
        assert from_csv.column(column).equals(expected.column(column)), column


def test_a_json_lines_file_is_read_by_its_suffix(tmp_path):
    table = tiny_table()
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    read = read_input(path)
    assert read.reader == "JSON Lines (pyarrow.json)"
    assert read.table.schema == table.schema


def test_anything_else_is_refused_by_its_type():
    with pytest.raises(refine.InputError) as error:
        refine.run([[1.0, 0], [2.0, 1]], **TINY)
    assert str(error.value) == f"refine cannot read input of type builtins.list; pass {ACCEPTED}"
    with pytest.raises(refine.InputError, match="of type numpy.ndarray; pass a path"):
        refine.run(np.zeros((4, 2)), **TINY)


def test_an_update_takes_a_pandas_batch(tmp_path):
    table = tiny_table()
    refine.run(table, tmp_path / "first", **TINY)
    batch = table.slice(0, 30).to_pandas()
    result = refine.update(tmp_path / "first", batch, tmp_path / "second", rounds=1)
    assert result.summary["input"] == "pandas.DataFrame (30 rows)"
    assert result.refined.num_rows == 30
    run = refine.load_run(tmp_path / "first")
    from_pandas, _ = run.predict(batch)
    from_arrow, _ = run.predict(table.slice(0, 30))
    np.testing.assert_array_equal(from_pandas, from_arrow)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("name", "reader"),
    [("data.csv", "CSV (pyarrow.csv)"), ("data.jsonl", "JSON Lines (pyarrow.json)")],
)
def test_the_cli_reads_csv_and_json_lines_and_says_so(tmp_path, name, reader):
    table = tiny_table()
    path = tmp_path / name
    if name.endswith(".csv"):
        pacsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    out = tmp_path / "run"
    result = invoke("run", str(path), "--out", str(out), *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert f"read {str(path)!r} as {reader}: 90 rows, 3 columns\n" in result.output
    summary = json.loads((out / "run.json").read_text())
    assert (summary["input"], summary["input_reader"]) == (str(path), reader)
    assert summary["input_in_memory"] is False
    refined = pq.read_table(out / "refined.parquet")
    assert refined.schema.field("label_refined").type == pa.int64()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "input {path!r} is empty; a CSV file needs a header and rows"),
        (b"x0,label\n1,\n2,\n", "label column 'label' has type null; refine needs class"),
        (b"x0,x1,label\n", "input {path!r} has no rows; refine needs labelled rows"),
        (
            b"x0,label\n1,2\n3,4,5,6\n",
            "cannot read {path!r} as CSV: CSV parse error: Expected 2 columns, got 4: 3,4,5,6. "
            "refine reads it as comma-separated with a header row (.tsv: tab-separated)",
        ),
    ],
)
def test_the_cli_refuses_an_unreadable_csv_naming_it(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    out = tmp_path / "run"
    result = invoke("run", str(path), "--out", str(out), *FAST_FLAGS)
    assert result.exit_code == 2
    # A file that was read is said to be, before the error.
    assert result.output.splitlines()[-1].startswith("Error: " + message.format(path=str(path)))
    assert not out.exists()
