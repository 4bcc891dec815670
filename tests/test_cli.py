"""The command line: exit codes, exact error messages, and what it writes."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from refine.cli import cli
from tests.conftest import noisy_table

FAST_FLAGS = ["--max-epochs", "10", "--folds", "3", "--rounds", "1"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def write(tmp_path, table, name="data.parquet"):
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def run_fails(tmp_path, data, message, *extra):
    out = tmp_path / "out"
    result = invoke("run", str(data), "--out", str(out), *extra)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {message}"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_max_rows_seen_bounds_each_fit_and_must_be_positive(tmp_path, noisy_parquet):
    out = tmp_path / "run"
    flags = ["--ignore", "id", *FAST_FLAGS, "--no-report", "--max-rows-seen", "100"]
    result = invoke("run", str(noisy_parquet), "--out", str(out), *flags)
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["config"]["model"]["max_rows_seen"] == 100
    # Each fold trains on more than 100 rows, so one epoch is all the cap allows.
    assert recorded["epochs_per_fit"] and set(recorded["epochs_per_fit"]) == {1}
    run_fails(
        tmp_path, noisy_parquet, "--max-rows-seen must be >= 1, got 0", "--max-rows-seen", "0"
    )


def test_run_writes_a_run_and_prints_a_summary(tmp_path, noisy_parquet):
    out = tmp_path / "run"
    result = invoke("run", str(noisy_parquet), "--out", str(out), "--ignore", "id", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert "flagged" in result.output and "corrected" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "model.pt",
        "refined.parquet",
        "report.html",
        "rounds.parquet",
        "run.json",
    ]
    assert json.loads((out / "run.json").read_text())["config"]["rounds"] == 1
    # An existing run is refused, then replaced with --overwrite.
    again = invoke("run", str(noisy_parquet), "--out", str(out), *FAST_FLAGS)
    assert again.exit_code == 2
    assert again.output.strip() == (
        f"Error: output {str(out)!r} already exists; pass --overwrite to replace it, "
        "or choose another --out"
    )
    replaced = invoke(
        "run",
        str(noisy_parquet),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
        "--ignore",
        "id",
        *FAST_FLAGS,
    )
    assert replaced.exit_code == 0 and replaced.output == ""


def test_query_formats(finished_run):
    _, out = finished_run
    sql = "SELECT label, count(*) AS n FROM refined GROUP BY label ORDER BY label"
    as_csv = invoke("query", str(out), sql, "--format", "csv")
    assert as_csv.exit_code == 0
    rows = list(csv.reader(io.StringIO(as_csv.output)))
    assert rows[0] == ["label", "n"] and [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert sum(int(r[1]) for r in rows[1:]) == 360
    as_json = json.loads(invoke("query", str(out), sql, "--format", "json").output)
    assert [r["label"] for r in as_json] == [0, 1, 2]
    flagged = json.loads(
        invoke("query", str(out), "SELECT count(*) AS n FROM flagged", "--format", "json").output
    )[0]["n"]
    total = (
        pq.read_table(out / "refined.parquet")
        .column("is_label_issue")
        .to_numpy(zero_copy_only=False)
        .sum()
    )
    assert flagged == total
    rounds = json.loads(
        invoke("query", str(out), "SELECT * FROM rounds", "--format", "json").output
    )
    assert rounds[0]["round"] == 1
    table = invoke("query", str(out), "SELECT label, label_soft FROM refined LIMIT 2")
    assert table.exit_code == 0 and "label_soft" in table.output


def test_query_errors(tmp_path, finished_run):
    _, out = finished_run
    bad = invoke("query", str(out), "SELECT nope FROM refined")
    assert bad.exit_code == 2 and bad.output.startswith("Error: query failed: Binder Error")
    missing = invoke("query", str(tmp_path / "nowhere"), "SELECT 1")
    assert missing.exit_code == 2
    assert missing.output.strip() == (
        f"Error: run directory {str(tmp_path / 'nowhere')!r} does not exist; "
        "pass the --out of a refine run"
    )


def test_missing_path(tmp_path):
    run_fails(
        tmp_path,
        tmp_path / "nope.parquet",
        f"input {str(tmp_path / 'nope.parquet')!r} does not exist; "
        "pass a Parquet file or a directory",
    )


def test_not_parquet(tmp_path):
    path = tmp_path / "data.txt"  # CSV text, but only .csv, .tsv and .jsonl are read as text
    path.write_text("a,b\n1,2\n")
    out = tmp_path / "out"
    result = invoke("run", str(path), "--out", str(out))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: cannot read {str(path)!r} as Parquet: ")
    assert result.output.strip().endswith(
        "Check that the file is a complete Parquet file (not truncated); a CSV or JSON Lines "
        "file is read by its suffix: name it .csv, .tsv or .jsonl"
    )
    assert not out.exists()


def test_truncated_parquet(tmp_path, noisy_parquet):
    path = tmp_path / "cut.parquet"
    path.write_bytes(noisy_parquet.read_bytes()[:500])
    result = invoke("run", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "as Parquet" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_label_column(tmp_path):
    data = write(tmp_path, pa.table({"a": [1.0, 2.0], "b": [3, 4]}))
    run_fails(
        tmp_path,
        data,
        "input has no label column 'label'; its columns are: 'a', 'b'. "
        "Name the label column with --label",
    )


def test_float_label_of_whole_numbers_says_how_to_cast(tmp_path):
    """Integers plus NaN in pandas become float: the usual cause, so the message says so."""
    data = write(tmp_path, pa.table({"a": [1.0, 2.0, 3.0], "y": [0.0, None, 1.0]}))
    run_fails(
        tmp_path,
        data,
        "label column 'y' has type double but holds only whole numbers: integer classes stored "
        "as floats, usually because pandas makes an integer column with missing values (NaN) "
        "float. Cast it to integers: in pandas df['y'] = df['y'].astype(\"Int64\") (nullable "
        'integers, missing labels stay null), in DuckDB CAST("y" AS BIGINT)',
        "--label",
        "y",
    )


@pytest.mark.parametrize(
    ("values", "kind", "shown"),
    [
        ([0.0, 0.5, 1.0], pa.float64(), "0.5 in row 1"),
        ([0.0, None, float("inf")], pa.float32(), "inf in row 2"),
        ([Decimal("1"), Decimal("2.5")], pa.decimal128(3, 1), "2.5 in row 1"),
    ],
)
def test_float_label_that_is_not_whole_must_be_classes(tmp_path, values, kind, shown):
    data = write(
        tmp_path, pa.table({"a": np.arange(len(values), dtype=float), "y": pa.array(values, kind)})
    )
    run_fails(
        tmp_path,
        data,
        f"label column 'y' has type {kind} and values that are not whole numbers ({shown}); "
        "refine needs class labels of integer, string or boolean type, not scores or "
        "measurements: name the column of classes with --label",
        "--label",
        "y",
    )


def test_float_label_of_nulls_only(tmp_path):
    data = write(tmp_path, pa.table({"a": [1.0, 2.0], "y": pa.array([None, None], pa.float64())}))
    run_fails(
        tmp_path,
        data,
        "label column 'y' has type double; refine needs class labels of integer, string or "
        "boolean type; this column holds only nulls",
        "--label",
        "y",
    )


def test_nested_label(tmp_path):
    data = write(tmp_path, pa.table({"a": [1.0, 2.0], "y": [[1], [2]]}))
    stored = pq.read_schema(data).field("y").type  # list<element: int64> after a Parquet round trip
    run_fails(
        tmp_path,
        data,
        f"label column 'y' has type {stored}; refine needs class "
        "labels of integer, string or boolean type",
        "--label",
        "y",
    )


def test_one_class(tmp_path):
    data = write(tmp_path, pa.table({"a": [1.0, 2.0, 3.0], "label": ["x", "x", None]}))
    run_fails(
        tmp_path,
        data,
        "label column 'label' has fewer than 2 classes (only ['x']); "
        "refine needs at least two classes to tell labels apart",
    )


def test_class_smaller_than_folds(tmp_path):
    labels = ["a"] * 20 + ["b"] * 20 + ["rare"] * 3
    data = write(tmp_path, pa.table({"x": np.arange(43.0), "label": labels}))
    run_fails(
        tmp_path,
        data,
        "class \"rare\" of label column 'label' has 3 labelled rows, fewer "
        "than the 5 folds; use --folds 3 or fewer, or drop or merge that class",
    )


def test_no_usable_feature(tmp_path):
    data = write(tmp_path, pa.table({"const": [1.0] * 10, "label": [0, 1] * 5}))
    run_fails(
        tmp_path,
        data,
        "no usable feature column (const: constant (one distinct value)). "
        "refine needs numeric, categorical, free-text, image or list<float> embedding "
        "columns besides the label",
        "--folds",
        "2",
    )


def test_unknown_feature_column(tmp_path):
    data = write(tmp_path, pa.table({"a": [1.0, 2.0], "label": [0, 1]}))
    run_fails(
        tmp_path,
        data,
        "--features names column 'b', which the input does not have; its columns are: 'a', 'label'",
        "--features",
        "b",
    )


def test_output_column_clash(tmp_path):
    data = write(tmp_path, pa.table({"a": [1.0, 2.0], "label_soft": [1, 2], "label": [0, 1]}))
    run_fails(
        tmp_path,
        data,
        "input column 'label_soft' has the name of a column refine writes "
        "(label_refined, label_soft, label_quality, is_label_issue, label_predicted, "
        "label_source, sample_weight, label_vote, label_consensus); rename or drop it before "
        "running refine",
    )


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_existing_non_run_directory_is_never_replaced(tmp_path, noisy_parquet, extra):
    """--overwrite cannot replace such a folder, so the message does not suggest it."""
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    result = invoke("run", str(noisy_parquet), "--out", str(out), *extra)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: output {str(out)!r} is a folder that is not a refine run (no run.json), and "
        "refine never replaces one; choose another --out, or remove the folder yourself"
    )
    assert (out / "thesis.tex").read_text() == "keep me"
    (out / "thesis.tex").unlink()
    out.rmdir()
    out.write_text("a file")
    result = invoke("run", str(noisy_parquet), "--out", str(out), *extra)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: output {str(out)!r} exists and is not a directory; remove it or choose "
        "another --out"
    )
    assert out.read_text() == "a file"


@pytest.mark.parametrize("command", ["run", "update", "demo"])
def test_an_out_named_like_a_parquet_file_is_refused(
    tmp_path, noisy_parquet, finished_run, command
):
    """--out wine_refined.parquet made a directory that pandas then failed to read."""
    out = tmp_path / "wine_refined.parquet"
    before = {
        "run": ["run", str(noisy_parquet)],
        "update": ["update", str(finished_run[1]), str(noisy_parquet)],
        "demo": ["demo"],
    }[command]
    result = invoke(*before, "--out", str(out))
    assert result.exit_code == 2
    name = tmp_path / "wine_refined"
    assert result.output == (
        f"Error: --out {str(out)!r} ends in .parquet, but --out names a run directory (the "
        f"cleaned data is refined.parquet inside it): pass --out {name} and read "
        f"{name / 'refined.parquet'}\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_bad_option_value(tmp_path, noisy_parquet):
    run_fails(tmp_path, noisy_parquet, "--rounds must be at least 1, got 0", "--rounds", "0")
    run_fails(
        tmp_path,
        noisy_parquet,
        "--mixup must be a number >= 0 (0 = off), got -0.5",
        "--mixup",
        "-0.5",
    )
    run_fails(
        tmp_path,
        noisy_parquet,
        "--relabel-odds must be 0 (off) or a number >= 1, got 0.5",
        "--relabel-odds",
        "0.5",
    )


def test_unknown_augmentation_method(tmp_path, noisy_parquet):
    out = tmp_path / "out"
    result = invoke("run", str(noisy_parquet), "--out", str(out), "--augment", "smote")
    assert result.exit_code == 2
    assert (
        "Invalid value for '--augment': 'smote' is not one of 'interpolate', 'mixup', 'noise'"
        in (result.output)
    )
    assert not out.exists()


def test_bad_augment_ratio(tmp_path, noisy_parquet):
    run_fails(
        tmp_path,
        noisy_parquet,
        "--augment-ratio must be in (0, 10] synthetic rows per trusted row, got 0.0",
        "--augment",
        "mixup",
        "--augment-ratio",
        "0",
    )


def test_input_is_never_modified(tmp_path):
    table, _ = noisy_table(n=120)
    data = write(tmp_path, table)
    before = data.read_bytes()
    result = invoke(
        "run", str(data), "--out", str(tmp_path / "out"), "--ignore", "id", "--quiet", *FAST_FLAGS
    )
    assert result.exit_code == 0
    assert data.read_bytes() == before


@pytest.mark.parametrize("command", ["run", "update", "review", "query", "report", "demo"])
def test_every_command_has_help_with_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output
    if command != "demo":
        assert "Examples:" in result.output
