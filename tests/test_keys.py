"""Rows you can find: the run's key (--key, else the --ignore'd columns, else id-like names),
the views' row_number, the query printed after a run, the report's columns section and row
table, and the review file's key columns."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
from refine.cli import cli
from refine.cli.summary import look_at_flagged
from refine.errors import InputError
from refine.io.keys import RowKey, looks_like_id, row_key
from refine.io.query import flagged_query
from refine.io.read import OUTPUT_COLUMNS
from refine.io.write import ROUNDS_SCHEMA
from tests.conftest import FAST, blobs

# The columns every run appends; label_vote and label_consensus come only with votes.
ALWAYS = tuple(c for c in OUTPUT_COLUMNS if c not in ("label_vote", "label_consensus"))

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


def test_an_extension_column_counts_by_its_storage():
    # pyarrow's uuid type (pyarrow >= 18) has no kernel to count values; its 16 bytes do.
    if not hasattr(pa, "uuid"):
        pytest.skip("this pyarrow has no uuid type")
    ids = [bytes([i]) * 16 for i in range(3)]
    table = pa.table({"uuid": pa.array(ids, pa.uuid()), "label": [0, 1, 0]})
    assert row_key(table, "label") == RowKey(("uuid",), "id-like name")
    twice = pa.table({"uuid": pa.array(ids[:1] * 3, pa.uuid()), "label": [0, 1, 0]})
    assert row_key(twice, "label") == RowKey()
    with pytest.raises(InputError, match="holds .* more than once"):
        row_key(twice, "label", "uuid")


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


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wine")
    data = folder / "wine.parquet"
    table = wine_table()
    pq.write_table(table, data)
    out = folder / "run"
    result = invoke("run", data, "--out", out, "--label", "grape", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    return table, out, result.output


def test_run_json_records_the_key(wine_run):
    _, out, _ = wine_run
    summary = json.loads((out / "run.json").read_text())
    assert summary["key"] == {"columns": ["wine_id"], "from": "id-like name"}


def test_the_printed_query_shows_the_flagged_rows_by_their_key(wine_run):
    table, out, output = wine_run
    line = [x for x in output.splitlines() if x.startswith("Look at the flagged rows:")]
    assert line == [
        f"Look at the flagged rows: refine query {shlex.quote(str(out))} "
        '"SELECT row_number, wine_id, grape, label_predicted, label_quality FROM flagged '
        'ORDER BY label_quality LIMIT 10"'
    ]
    words = shlex.split(line[0].split(": ", 1)[1])
    assert words[:3] == ["refine", "query", str(out)]
    shown = invoke(*words[1:], "--format", "csv")
    assert shown.exit_code == 0, shown.output
    rows = rows_of(shown.output)
    assert rows[0] == ["row_number", "wine_id", "grape", "label_predicted", "label_quality"]
    assert len(rows) == 11
    ids = table.column("wine_id").to_pylist()
    given = table.column("grape").to_pylist()
    assert [r[1] for r in rows[1:]] == [ids[int(r[0])] for r in rows[1:]]
    assert [r[2] for r in rows[1:]] == [given[int(r[0])] for r in rows[1:]]
    quality = [float(r[4]) for r in rows[1:]]
    assert quality == sorted(quality)


def test_the_suggestion_quotes_names_for_duckdb_and_the_shell(tmp_path):
    sql = flagged_query("class", ["Wine ID", "order", "it's", "lot"])
    assert sql == (
        'SELECT row_number, "Wine ID", "order", "it\'s", class, label_predicted, label_quality '
        "FROM flagged ORDER BY label_quality LIMIT 10"
    )
    summary = {"config": {"label": "class"}, "key": {"columns": ["Wine ID"]}}
    line = look_at_flagged(tmp_path / "my runs" / "a", summary)
    words = shlex.split(line.split(": ", 1)[1])
    assert words == [
        "refine",
        "query",
        str(tmp_path / "my runs" / "a"),
        'SELECT row_number, "Wine ID", class, label_predicted, label_quality FROM flagged '
        "ORDER BY label_quality LIMIT 10",
    ]
    # Without a key: the row number, the label, the prediction and the quality.
    assert flagged_query("label") == (
        "SELECT row_number, label, label_predicted, label_quality FROM flagged "
        "ORDER BY label_quality LIMIT 10"
    )


def test_the_views_start_with_row_number_then_the_key(wine_run):
    table, out, _ = wine_run
    inputs = ["x0", "notes", "cellar", "x1", "x2", "grape"]
    outputs = list(ALWAYS)
    for view in ("refined", "flagged", "verified"):
        described = invoke("query", out, f"DESCRIBE {view}", "--format", "csv")
        names = [r[0] for r in rows_of(described.output)[1:]]
        assert names == ["row_number", "wine_id", *inputs, *outputs], view
    every = rows_of(
        invoke("query", out, "SELECT row_number, wine_id FROM refined", "--format", "csv").output
    )
    assert [int(r[0]) for r in every[1:]] == list(range(table.num_rows))
    assert [r[1] for r in every[1:]] == table.column("wine_id").to_pylist()
    flagged = rows_of(
        invoke("query", out, "SELECT row_number FROM flagged", "--format", "csv").output
    )
    issues = pq.read_table(out / "refined.parquet").column("is_label_issue").to_numpy()
    assert [int(r[0]) for r in flagged[1:]] == np.flatnonzero(issues).tolist()
    rounds = rows_of(invoke("query", out, "DESCRIBE rounds", "--format", "csv").output)
    assert "row_number" not in [r[0] for r in rounds[1:]]


def hand_made_run(path, table: pa.Table, summary: dict) -> None:
    """A run directory without training: refined.parquet is ``table`` with made-up outputs."""
    n = table.num_rows
    outputs = {
        "label_refined": table.column("label"),
        "label_soft": pa.array([[0.5, 0.5]] * n, pa.list_(pa.float32())),
        "label_quality": pa.array([0.9] * n, pa.float32()),
        "is_label_issue": pa.array([i % 2 == 1 for i in range(n)]),
        "label_predicted": table.column("label"),
        "label_source": pa.array(["given"] * n),
        "sample_weight": pa.array([1.0] * n, pa.float32()),
    }
    for name, values in outputs.items():
        table = table.append_column(name, values)
    path.mkdir()
    pq.write_table(table, path / "refined.parquet")
    pq.write_table(pa.Table.from_pylist([], schema=ROUNDS_SCHEMA), path / "rounds.parquet")
    (path / "run.json").write_text(json.dumps(summary))


def test_views_of_a_run_without_a_key_or_with_its_own_row_number(tmp_path):
    plain = tmp_path / "plain"
    hand_made_run(plain, pa.table({"x": [3.0, 4.0, 5.0], "label": [0, 1, 0]}), {})
    result = invoke("query", plain, "SELECT row_number, x FROM flagged", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert rows_of(result.output) == [["row_number", "x"], ["1", "4"]]
    # An input column named row_number keeps its place and values; the key still comes first.
    own = tmp_path / "own"
    table = pa.table({"x": [3.0, 4.0], "row_number": [7, 9], "code": ["a", "b"], "label": [0, 1]})
    hand_made_run(own, table, {"key": {"columns": ["code", "gone"], "from": "--key"}})
    result = invoke("query", own, "SELECT * EXCLUDE (label_soft) FROM refined", "--format", "csv")
    assert rows_of(result.output)[:2] == [
        ["code", "x", "row_number", "label", ALWAYS[0], *ALWAYS[2:]],
        ["a", "3", "7", "0", "0", "0.9", "False", "0", "given", "1"],
    ]


def section(page: str, key: str) -> str:
    match = re.search(f'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"no section {key!r}"
    return match.group(1)


def test_the_report_names_the_key_the_features_and_the_skipped_columns(wine_run):
    table, out, _ = wine_run
    page = (out / "report.html").read_text()
    columns = section(page, "columns")
    assert (
        "<tr><th>key (shown by each row)</th><td>wine_id (named like an id, with unique "
        "values)</td></tr>"
    ) in columns
    assert "<tr><th>label</th><td>grape</td></tr>" in columns
    assert "<tr><th>features read as numbers (3)</th><td>x0, x1, x2</td></tr>" in columns
    assert "<tr><th>features read as free text (1)</th><td>notes</td></tr>" in columns
    assert "<tr><th>ignored (--ignore)</th><td>none</td></tr>" in columns
    skipped = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", columns))
    assert sorted(skipped) == ["cellar", "wine_id"]
    assert skipped["cellar"] == "constant (one distinct value)"
    assert skipped["wine_id"].startswith("150 distinct values, more than --max-categories 64")
    # The row table: row_number and the key first, then the labels, then features.
    rows = section(page, "rows")
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", rows)
    assert heads[:7] == [
        "row_number",
        "wine_id",
        "given",
        "predicted",
        "refined",
        "source",
        "quality",
    ]
    first = re.findall(r"<td[^>]*>([^<]*)</td>", rows.split("<tbody>")[1].split("</tr>")[0])
    assert first[1] == table.column("wine_id")[int(first[0])].as_py()
    assert first[2] == table.column("grape")[int(first[0])].as_py()


def test_the_noise_matrix_counts_are_a_table_too(wine_run):
    _, out, _ = wine_run
    joint = json.loads((out / "run.json").read_text())["noise_matrix"]["confident_joint"]
    noise = section((out / "report.html").read_text(), "noise")
    body = noise.split("<tbody>")[1]
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in body.split("</tr>")[:-1]]
    assert cells == [
        [grape, *(str(n) for n in row)] for grape, row in zip(GRAPES, joint, strict=True)
    ]


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


def test_the_review_file_carries_the_key_after_the_row(sku_run, tmp_path):
    table, out = sku_run
    review = tmp_path / "review.parquet"
    assert invoke("review", out, "--budget", 5, "--out", review).exit_code == 0
    written = pq.read_table(review)
    assert written.column_names[:3] == ["row", "sku", "grape"]
    assert written.column_names.count("sku") == 1
    skus = table.column("sku").to_pylist()
    assert written.column("sku").to_pylist() == [skus[r] for r in written.column("row").to_pylist()]


def test_an_update_keeps_the_runs_key(sku_run, tmp_path):
    table, out = sku_run
    batch = table.slice(0, 60)
    result = refine.update(out, batch, tmp_path / "next", replay=0, rounds=1, max_epochs=5)
    assert result.summary["key"] == {"columns": ["sku"], "from": "--key"}
