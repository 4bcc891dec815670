"""A new user's path, end to end through the command line: a wine table with an id column, a
free-text notes column and string class names, some labels flipped; `refine run`; the query it
suggests shows the ids; `refine export` gives a Parquet pandas reads with the original types; an
update batch written by DuckDB (string ids, int64 numbers) is accepted; the chain export holds
every row once; and the report names the id, the features and the skipped columns."""

from __future__ import annotations

import csv
import io
import re
import shlex

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from refine.cli import cli

FAST_FLAGS = ["--max-epochs", "10", "--folds", "3", "--rounds", "1", "--seed", "0"]
CLASSES = np.array(["barbera", "barolo", "grignolino"])
NOTES = {
    "barbera": "bright acidity, red cherry, easy drinking",
    "barolo": "firm tannins, tar and roses, long finish",
    "grignolino": "pale ruby, peppery, light body",
}
BATCH_ROWS = 40


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def wine_tables(tmp_path):
    """The first table as pandas writes it (ids and notes as large_string, every number float64)
    and a later batch as DuckDB writes it (ids as string, magnesium as BIGINT)."""
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True)
    frame = wine.data.copy()
    rng = np.random.default_rng(0)
    truth = CLASSES[wine.target.to_numpy()]
    label = truth.copy()
    flip = rng.random(len(label)) < 0.15
    label[flip] = [rng.choice(CLASSES[CLASSES != t]) for t in truth[flip]]
    frame.insert(0, "wine_id", [f"w{i:04d}" for i in range(len(frame))])
    frame["notes"] = [NOTES[t] + f", bottle {i}" for i, t in enumerate(truth)]
    frame["cellar"] = None  # nobody filled it in: refine skips it and says why
    frame["label"] = label
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    first, batch = frame.iloc[:-BATCH_ROWS], frame.iloc[-BATCH_ROWS:]
    strings = {c: pd.ArrowDtype(pa.large_string()) for c in ("wine_id", "notes", "label")}
    data = tmp_path / "wine.parquet"
    first.astype(strings).to_parquet(data, index=False)
    staged = tmp_path / "staged.parquet"
    batch.to_parquet(staged, index=False)
    batch_path = tmp_path / "batch.parquet"
    duckdb.sql(
        f"COPY (SELECT * REPLACE (CAST(magnesium AS BIGINT) AS magnesium) "
        f"FROM read_parquet('{staged}')) TO '{batch_path}' (FORMAT parquet)"
    )
    return data, batch_path


@pytest.mark.slow
@pytest.mark.browser
def test_a_new_users_path_from_run_to_chain_export(tmp_path):
    data, batch = wine_tables(tmp_path)
    assert pq.read_schema(data).field("wine_id").type == pa.large_string()
    batch_schema = pq.read_schema(batch)
    assert batch_schema.field("wine_id").type == pa.string()
    assert batch_schema.field("magnesium").type == pa.int64()

    run = tmp_path / "run"
    result = invoke("run", data, "--out", run, "--ignore", "wine_id", *FAST_FLAGS)
    assert result.exit_code == 0, result.output

    # The query refine suggests, run as printed, shows the ids by the flagged rows.
    printed = " ".join(result.output.split())
    suggested = re.search(r"refine query (\S+) (\"SELECT .*?\"|'SELECT .*?')", printed)
    assert suggested, result.output
    sql = shlex.split(suggested.group(2))[0]
    assert sql.startswith("SELECT row_number, wine_id, label, label_predicted, label_quality ")
    shown = invoke("query", run, sql, "--format", "csv")
    assert shown.exit_code == 0, shown.output
    header, *rows = list(csv.reader(io.StringIO(shown.output)))
    assert header == ["row_number", "wine_id", "label", "label_predicted", "label_quality"]
    flagged = pq.read_table(run / "refined.parquet").to_pandas()
    for row_number, wine_id, *_ in rows:
        assert flagged["wine_id"][int(row_number)] == wine_id  # back to the user's own record
    assert len(rows) == 10

    # A clean Parquet for the next job, with the input's types.
    clean = tmp_path / "clean.parquet"
    exported = invoke("export", run, "--out", clean)
    assert exported.exit_code == 0, exported.output
    frame = pd.read_parquet(clean)
    original = pd.read_parquet(data)
    assert list(frame.columns[: len(original.columns)]) == list(original.columns)
    for column in original.columns:
        assert frame[column].dtype == original[column].dtype, column
    assert {"label_refined", "sample_weight"} <= set(frame.columns)
    assert frame["wine_id"].tolist() == original["wine_id"].tolist()

    # A batch written by DuckDB is accepted, then the chain exports every row once.
    second = tmp_path / "second"
    updated = invoke("update", run, batch, "--out", second)
    assert updated.exit_code == 0, updated.output
    chain = tmp_path / "chain.parquet"
    assert invoke("export", second, "--out", chain, "--chain").exit_code == 0
    ids = pq.read_table(chain, columns=["wine_id"]).column("wine_id").to_pylist()
    assert len(ids) == len(set(ids)) == 178

    # The report names the id column, the features and the skipped column with its reason,
    # and shows them in a browser.
    page = (run / "report.html").read_text()
    for shown_text in ("wine_id", "notes", "magnesium", "cellar", "all values are null"):
        assert shown_text in page, shown_text
    visible = _visible_in_chromium(
        run / "report.html", ["wine_id", "cellar", "all values are null"]
    )
    assert visible == [True, True, True]


def _visible_in_chromium(report, texts):
    """Whether each text is shown on the report's page in headless Chromium."""
    from tests.test_report import BROWSER_ARGS, CHROMIUM, _playwright

    sync_playwright = _playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(report.resolve().as_uri(), wait_until="load")
            return [page.get_by_text(t).first.is_visible() for t in texts]
        finally:
            browser.close()
