"""Rows you can find: the run's key (--key, else the --ignore'd columns, else id-like names),
the views' row_number, the query printed after a run, the report's columns section and row
table, and the review file's key columns."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
from refine.cli import cli
from refine.errors import InputError
from refine.io.keys import RowKey, looks_like_id, row_key
from tests.conftest import FAST, blobs

FAST_FLAGS = ["--max-epochs", "10", "--folds", "3", "--rounds", "1"]
GRAPES = np.array(["merlot", "riesling", "syrah"])


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def rows_of(output: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(output)))


# --- which columns are the key -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("id", True),
        ("ID", True),
        ("Key", True),
        ("uuid", True),
        ("wine_id", True),
        ("USER_ID", True),
        ("order-id", True),
        ("wineId", True),
        ("customerID", True),
        ("paid", False),
        ("valid", False),
        ("VALID", False),
        ("idea", False),
        ("_id", False),
        ("monkey", False),
    ],
)
def test_looks_like_id(name, expected):
    assert looks_like_id(name) is expected


def key_table() -> pa.Table:
    return pa.table(
        {
            "x": [0.5, 1.5, 2.5, 3.5],
            "note": ["a", "b", "b", "c"],
            "user_id": [10, 11, None, 13],
            "sku": ["s1", "s2", "s3", "s4"],
            "emb": [[1.0], [2.0], [3.0], [4.0]],
            "id": [1, 2, 3, 4],
            "label": [0, 1, 0, 1],
        }
    )


def test_the_key_is_the_explicit_column_then_the_ignored_ones_then_the_id_like_ones():
    table = key_table()
    assert row_key(table, "label", "sku", ("note",)) == RowKey(("sku",), "--key")
    # Table order; an ignored column of lists names no row.
    assert row_key(table, "label", None, ("sku", "emb", "note")) == RowKey(
        ("note", "sku"), "--ignore"
    )
    # Id-like names with unique values where not null, in table order.
    assert row_key(table, "label") == RowKey(("user_id", "id"), "id-like name")
    assert row_key(table, "label").describe() == {
        "columns": ["user_id", "id"],
        "from": "id-like name",
    }


def test_an_id_like_column_with_a_repeated_value_is_no_key():
    table = key_table()
    twice = table.set_column(2, "user_id", pa.array([10, 11, 10, 13]))
    assert row_key(twice, "label") == RowKey(("id",), "id-like name")
    none = twice.drop_columns(["id"])
    assert row_key(none, "label") == RowKey()
    assert row_key(none, "label").describe() == {"columns": [], "from": None}
    # The label is never the key, whatever its name.
    assert row_key(pa.table({"x": [1.0, 2.0], "id": [0, 1]}), "id") == RowKey()


@pytest.mark.parametrize(
    "key, message",
    [
        (
            "nope",
            "--key names 'nope', which is not a column of the input; its columns are: 'x', "
            "'note', 'user_id', 'sku', 'emb', 'id', 'label'. Name a column of unique values, "
            "such as an id",
        ),
        (
            "note",
            "the input's key column 'note' holds \"b\" more than once; --key must name a column "
            "of unique values (or leave it out)",
        ),
        (
            "emb",
            "--key names 'emb', a column of type list<item: double>; a key must hold single "
            "values, such as the integers or strings of an id column",
        ),
        (
            "label",
            "--key names the label column 'label'; a key is a column of unique values that "
            "names each row, such as an id",
        ),
    ],
)
def test_a_bad_explicit_key_is_refused(key, message):
    with pytest.raises(InputError) as caught:
        row_key(key_table(), "label", key)
    assert str(caught.value) == message


def test_a_bad_key_fails_before_training_from_the_command_line(tmp_path):
    data = tmp_path / "data.parquet"
    pq.write_table(key_table(), data)
    result = invoke("run", data, "--out", tmp_path / "out", "--key", "note", "--folds", 2)
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: the input's key column 'note' holds \"b\" more than once; --key must name a "
        "column of unique values (or leave it out)"
    )
    assert not (tmp_path / "out").exists()


# --- a run with an id column, a text column and a skipped column ----------------------------


def wine_table(n: int = 150) -> pa.Table:
    """String grapes, 15% flipped; the id is a string column refine skips as a feature."""
    X, truth = blobs(n=n, k=3, dim=3, seed=11)
    rng = np.random.default_rng(12)
    noisy = truth.copy()
    flip = rng.choice(n, size=n * 15 // 100, replace=False)
    noisy[flip] = (noisy[flip] + 1) % 3
    words = np.array(["dry", "oaky", "fresh", "jammy", "crisp", "smoky"])
    return pa.table(
        {
            "x0": X[:, 0],
            "notes": [f"{words[i % 6]} and {words[(i * 5) % 6]} bottle {i}" for i in range(n)],
            "wine_id": [f"W-{i:04d}" for i in range(n)],
            "cellar": ["north"] * n,
            "x1": X[:, 1],
            "x2": X[:, 2],
            "grape": GRAPES[noisy].tolist(),
        }
    )


# --- an explicit --key alone, the review file and an update -------------------------------


@pytest.fixture(scope="module")
def sku_run(tmp_path_factory):
    table = wine_table(120).drop_columns(["wine_id", "notes"])
    table = table.append_column("sku", pa.array([f"S{i * 3}" for i in range(120)]))
    out = tmp_path_factory.mktemp("sku") / "run"
    refine.run(table, out, label="grape", key="sku", seed=0, **FAST)
    return table, out


def test_key_alone_names_the_rows_and_is_no_feature(sku_run):
    _, out = sku_run
    summary = json.loads((out / "run.json").read_text())
    assert summary["key"] == {"columns": ["sku"], "from": "--key"}
    assert summary["config"]["key"] == "sku" and summary["config"]["verified_file"] is None
    assert "sku" not in [c["column"] for c in summary["features"]["columns"]]
    assert "sku" not in summary["features"]["skipped"]


def test_an_update_keeps_the_runs_key(sku_run, tmp_path):
    table, out = sku_run
    batch = table.slice(0, 60)
    result = refine.update(out, batch, tmp_path / "next", replay=0, rounds=1, max_epochs=5)
    assert result.summary["key"] == {"columns": ["sku"], "from": "--key"}
