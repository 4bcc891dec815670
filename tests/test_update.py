"""``refine update``: a new batch judged by an earlier run's model, retrained with replay."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
from refine.cli import cli
from refine.io.query import query
from refine.progress import NullProgress
from refine.update import load_run, update
from tests.conftest import FAST, noisy_table

UPDATE_FAST = dict(max_epochs=30)  # the run's hidden=(64,), folds=3, rounds=2 carry over


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A run on 360 rows of three classes with 15% of labels flipped."""
    table, truth = noisy_table(n=720, rate=0.15, seed=11)
    out = tmp_path_factory.mktemp("update") / "first"
    refine.run(table.slice(0, 360), out, ignore=("id",), seed=0, **FAST)
    return out, table, truth


def test_updating_with_the_same_rows_changes_little(first_run, tmp_path):
    out, table, _ = first_run
    again = update(out, table.slice(0, 360), tmp_path / "again", **UPDATE_FAST)
    before = pq.read_table(out / "refined.parquet").column("label_refined")
    after = again.refined.column("label_refined")
    same = pc.sum(pc.fill_null(pc.equal(before, after), False)).as_py()
    assert same / 360 >= 0.97
    summary = json.loads((tmp_path / "again" / "run.json").read_text())
    assert summary["parent"]["run"] == str(out.resolve())
    assert summary["replayed_rows"] == 360


def test_a_new_batch_is_refined_and_written_with_the_run_contract(first_run, tmp_path, caplog):
    out, table, truth = first_run
    batch = table.slice(360)
    caplog.set_level(logging.INFO, logger="refine")
    result = update(out, batch, tmp_path / "next", **UPDATE_FAST)
    said = [r.getMessage() for r in caplog.records if r.name == "refine"]
    assert said[0].startswith("round 1 (the earlier run judges the batch): ")
    assert said[1].startswith("round 2: ")
    assert result.refined.num_rows == 360
    assert result.refined.select(batch.column_names).equals(batch)
    given = np.asarray(batch.column("label"))
    wrong = given != truth[360:]
    flagged = np.asarray(result.refined.column("is_label_issue"))
    assert (flagged & wrong).sum() / flagged.sum() >= 0.9  # precision
    assert (flagged & wrong).sum() / wrong.sum() >= 0.8  # recall
    rounds = result.rounds.column("round").to_pylist()
    assert rounds[0] == 1 and len(rounds) >= 2  # the teacher's round, then retraining
    assert result.summary["replayed_rows"] == 360


def test_replay_keeps_what_the_first_batch_taught(first_run, tmp_path):
    """The second batch holds no row of true class 2. Trained on it alone the model forgets class 2
    (a third of the first batch); with replay its accuracy on the first batch stays within
    0.03 of the first run's model. Measured: 1.000 before, 1.000 with replay, 0.753 without;
    0.03 is one row in a hundred of slack for seeds and platforms."""
    out, table, truth = first_run
    batch = table.slice(360).filter(pa.array(truth[360:] != 2))
    first_batch, first_truth = table.slice(0, 360), truth[:360]
    before = load_run(out).predict(first_batch)[0].argmax(1)
    with_replay = update(out, batch, tmp_path / "replay", **UPDATE_FAST)
    without = update(out, batch, tmp_path / "alone", replay=0.0, **UPDATE_FAST)
    accuracy = {
        name: float((load_run(path).predict(first_batch)[0].argmax(1) == first_truth).mean())
        for name, path in (("replay", with_replay.out), ("alone", without.out))
    }
    assert accuracy["replay"] >= (before == first_truth).mean() - 0.03
    assert accuracy["alone"] < accuracy["replay"] - 0.2


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def update_fails(first_run, tmp_path, batch, message, *extra):
    out, _, _ = first_run
    path = tmp_path / "batch.parquet"
    if isinstance(batch, pa.Table):
        pq.write_table(batch, path)
    else:
        path = batch
    result = invoke("update", str(out), str(path), "--out", str(tmp_path / "new"), *extra)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {message}"
    assert not (tmp_path / "new").exists()


MISMATCH = (
    "the new batch does not fit the run's input ({}); refine casts a column itself only where "
    "no value changes (string and large_string, int32 to int64, int to float, a dictionary to "
    "its values). Fix the batch and update again:\n"
)


def test_a_batch_without_a_column_of_the_run(first_run, tmp_path):
    batch = first_run[1].slice(360).drop_columns(["colour"])
    update_fails(
        first_run,
        tmp_path,
        batch,
        MISMATCH.format("1 problem")
        + "  column 'colour': not in the batch, dictionary<values=string, indices=int32, "
        "ordered=0> in the run's input; add it, with nulls where the values are unknown: "
        'CAST(NULL AS VARCHAR) AS "colour" in DuckDB, pa.nulls(batch.num_rows, '
        "pa.dictionary(pa.int32(), pa.string())) in pyarrow",
    )


def test_every_mismatch_is_listed_at_once_with_the_cast_that_fixes_it(first_run, tmp_path):
    """A feature written as text and a label written as float (pandas' int64 column with a
    missing value) are both refused, in one message."""
    batch = first_run[1].slice(360)
    batch = batch.set_column(1, "x0", batch.column("x0").cast(pa.string()))
    batch = batch.set_column(5, "label", batch.column("label").cast(pa.float64()))
    update_fails(
        first_run,
        tmp_path,
        batch,
        "the new batch does not fit the run's input (2 problems); refine casts a column itself "
        "only where no value changes (string and large_string, int32 to int64, int to float, a "
        "dictionary to its values). Fix the batch and update again:\n"
        "  column 'x0': string in the batch, float in the run's input; cast it: "
        "CAST(\"x0\" AS FLOAT) in DuckDB, batch['x0'].cast(pa.float32()) in pyarrow\n"
        "  column 'label': double in the batch, int64 in the run's input; cast it: "
        "CAST(\"label\" AS BIGINT) in DuckDB, batch['label'].cast(pa.int64()) in pyarrow",
    )


def test_a_batch_with_an_extra_column(first_run, tmp_path):
    batch = first_run[1].slice(360)
    batch = batch.append_column("extra", pa.array(np.zeros(batch.num_rows)))
    update_fails(
        first_run,
        tmp_path,
        batch,
        MISMATCH.format("1 problem")
        + "  column 'extra': in the batch, not in the run's input; drop it (SELECT * EXCLUDE "
        "(\"extra\") in DuckDB, batch.drop_columns(['extra']) in pyarrow), or start a new run "
        "with refine run",
    )


def test_a_batch_with_an_unknown_class(first_run, tmp_path):
    batch = first_run[1].slice(360, 10)
    labels = np.asarray(batch.column("label")).copy()
    labels[3] = 7
    batch = batch.set_column(batch.column_names.index("label"), "label", pa.array(labels))
    update_fails(
        first_run,
        tmp_path,
        batch,
        "label 7 in row 3 of column 'label' is not a class of the run (1 rows have unknown "
        "labels; the classes are [0, 1, 2]). Start a new run with refine run to add a class",
    )


def test_update_from_a_directory_that_is_not_a_run(first_run, tmp_path):
    (tmp_path / "notarun").mkdir()
    batch = first_run[1].slice(360, 10)
    pq.write_table(batch, tmp_path / "b.parquet")
    result = invoke(
        "update",
        str(tmp_path / "notarun"),
        str(tmp_path / "b.parquet"),
        "--out",
        str(tmp_path / "x"),
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {str(tmp_path / 'notarun')!r} is not a refine run: it has no run.json. "
        "Pass a directory written by refine run or refine update"
    )


def test_history_reaches_back_to_the_first_batch(first_run, tmp_path):
    """A chain of updates replays from every earlier batch, not only the latest: each update
    run keeps a uniform sample of all rows before its batch in history.parquet."""
    out, table, _ = first_run
    second = update(out, table.slice(360, 180), tmp_path / "second", **UPDATE_FAST)
    third = update(second.out, table.slice(540, 180), tmp_path / "third", **UPDATE_FAST)
    history = pq.read_table(tmp_path / "third" / "history.parquet")
    ids = set(history.column("id").to_pylist())
    first_ids = set(table.slice(0, 360).column("id").to_pylist())
    second_ids = set(table.slice(360, 180).column("id").to_pylist())
    assert ids <= first_ids | second_ids
    assert len(ids & first_ids) > 0 and len(ids & second_ids) > 0
    trained_first = pc.sum(pc.greater(pq.read_table(out / "refined.parquet")["sample_weight"], 0))
    trained_second = pc.sum(pc.greater(second.refined["sample_weight"], 0))
    seen = trained_first.as_py() + trained_second.as_py()
    assert third.summary["history"] == {"rows_seen": seen, "rows_kept": history.num_rows}
    assert history.schema.names == pq.read_table(out / "refined.parquet").schema.names
    rows = query(tmp_path / "third", "SELECT count(*) AS n FROM history").column("n").to_pylist()
    assert rows == [history.num_rows]


def test_batches_without_labels_or_with_one_class_are_refined(first_run, tmp_path):
    """Streams bring batches the run's own checks would refuse: no labels at all (to be
    pseudo-labelled), or one class only. The earlier run's calibration and reliability stand
    in where the batch cannot measure them."""
    out, table, truth = first_run
    batch = table.slice(360, 120)
    unlabelled = batch.set_column(
        batch.column_names.index("label"), "label", pa.nulls(120, pa.int64())
    )
    result = update(out, unlabelled, tmp_path / "unlabelled", **UPDATE_FAST)
    assert result.refined.num_rows == 120
    pseudo = result.rounds.column("pseudo_labelled").to_pylist()
    assert pseudo[0] > 60  # the teacher's round
    # the batch is topped up with replayed rows, so retraining keeps what the teacher found
    # (without the top-up: 60 pseudo-labels in round 1, none after retraining)
    assert result.summary["pseudo_labelled"] >= 0.8 * pseudo[0]
    assert result.summary["calibration"]["ece_before"] is None
    one_class = batch.filter(pa.array(np.asarray(batch.column("label")) == 1))
    result = update(out, one_class, tmp_path / "one", **UPDATE_FAST)
    flagged = np.asarray(result.refined.column("is_label_issue"))
    wrong = truth[360:480][np.asarray(batch.column("label")) == 1] != 1
    assert (flagged == wrong).mean() >= 0.95


def test_an_empty_batch(first_run, tmp_path):
    update_fails(
        first_run,
        tmp_path,
        first_run[1].slice(0, 0),
        "the new batch has no rows; pass a Parquet file with rows to update",
    )


def test_a_batch_takes_verified_labels_from_a_file(first_run, tmp_path):
    out, table, truth = first_run
    batch = table.slice(360, 120)
    checked = pa.table({"id": batch.column("id").slice(0, 10), "verified_label": truth[360:370]})
    pq.write_table(checked, tmp_path / "checked.parquet")
    result = update(
        out,
        batch,
        tmp_path / "next",
        verified_file=str(tmp_path / "checked.parquet"),
        key="id",
        **UPDATE_FAST,
    )
    source = result.refined.column("label_source").to_pylist()
    refined = result.refined.column("label_refined").to_numpy(zero_copy_only=False)
    assert source[:10] == ["verified"] * 10 and "verified" not in source[10:]
    assert refined[:10].tolist() == truth[360:370].tolist()
    # The file belonged to that batch: the next update does not read it again.
    following = update(tmp_path / "next", table.slice(480, 120), tmp_path / "after", **UPDATE_FAST)
    assert "verified" not in following.refined.column("label_source").to_pylist()
    assert following.summary["config"]["verified_file"] is None


def test_the_summary_counts_the_rounds_asked_for(first_run, tmp_path):
    """The earlier model's judgement is round 1 of rounds.parquet but not one of --rounds."""
    out, table, _ = first_run
    pq.write_table(table.slice(360, 120), tmp_path / "batch.parquet")
    new = tmp_path / "new"
    result = invoke("update", str(out), str(tmp_path / "batch.parquet"), "--out", str(new),
                    "--rounds", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:3] for line in result.output.splitlines() if "│" in line]
    assert ["rounds", "1 after the earlier run's judgement"] in [
        [cell.strip() for cell in row] for row in rows
    ]
    summary = json.loads((new / "run.json").read_text())
    assert (summary["rounds_run"], summary["teacher_round"]) == (1, True)
    assert pq.read_table(new / "rounds.parquet").column("round").to_pylist() == [1, 2]
    report = (new / "report.html").read_text()
    assert (
        "<th>rounds run</th><td>1 after the earlier run&#x27;s judgement (round 1 under " in report
    )


@pytest.fixture(scope="module")
def pandas_run(tmp_path_factory):
    """A run on a table written by pandas (string columns as large_string, a whole-number
    column as float64 since one value is missing), with string classes and an ignored id;
    the rows it did not see, for batches; and the true classes."""
    pd = pytest.importorskip("pandas")
    table, truth = noisy_table(n=720, rate=0.15, seed=5)
    names = np.array(["merlot", "riesling", "syrah"])
    age = (truth * 4 + np.arange(720) % 3).astype(np.float64)
    age[7] = np.nan
    frame = pd.DataFrame(
        {
            "wine_id": [f"w{i:04d}" for i in range(720)],
            "x0": table.column("x0").to_numpy().astype(np.float64),
            "x1": table.column("x1").to_pandas(),
            "age": age,
            "colour": table.column("colour").cast(pa.string()).to_pylist(),
            "label": names[np.asarray(table.column("label"))],
        }
    )
    folder = tmp_path_factory.mktemp("pandas")
    frame.iloc[:360].to_parquet(folder / "first.parquet")
    schema = pq.read_schema(folder / "first.parquet")
    assert [schema.field(n).type for n in ("wine_id", "age", "label")] == [
        pa.large_string(), pa.float64(), pa.large_string(),
    ]  # fmt: skip
    refine.run(folder / "first.parquet", folder / "run", ignore=("wine_id",), seed=0, **FAST)
    return folder / "run", frame, names[truth]


def test_a_run_written_by_pandas_takes_a_batch_written_by_duckdb(pandas_run, tmp_path):
    """The new user's path: DuckDB writes string (not large_string) columns, BIGINT for
    whole numbers and a key as "not null". The batch is accepted, its columns cast to the run's
    types with their values kept, and the chain goes on with a batch from pandas again."""
    import duckdb

    out, frame, truth = pandas_run
    path = tmp_path / "tuesday.parquet"
    with duckdb.connect() as con:
        con.register("rows", pa.Table.from_pandas(frame.iloc[360:600], preserve_index=False))
        con.execute(
            "CREATE TABLE wines (wine_id VARCHAR PRIMARY KEY, x0 DOUBLE, x1 DOUBLE, age BIGINT, "
            "colour VARCHAR, label VARCHAR); INSERT INTO wines SELECT * FROM rows"
        )
        con.execute(f"COPY wines TO '{path}'")
    written = pq.read_schema(path)
    assert [written.field(n).type for n in ("wine_id", "age", "colour", "label")] == [
        pa.string(), pa.int64(), pa.string(), pa.string(),
    ]  # fmt: skip
    assert not written.field("wine_id").nullable
    result = invoke("update", str(out), str(path), "--out", str(tmp_path / "tuesday"))
    assert result.exit_code == 0, result.output
    refined = pq.read_table(tmp_path / "tuesday" / "refined.parquet")
    run_input = load_run(out).input_schema
    assert refined.select(run_input.names).schema.types == run_input.types
    batch = pq.read_table(path)
    for name in batch.column_names:
        assert refined.column(name).to_pylist() == batch.column(name).to_pylist(), name
    given = np.asarray(batch.column("label").to_pylist())
    wrong = given != truth[360:600]
    flagged = np.asarray(refined.column("is_label_issue"))
    assert (flagged & wrong).sum() >= 0.8 * wrong.sum()
    assert (flagged & wrong).sum() >= 0.8 * flagged.sum()
    # The next batch comes from pandas again; the history merges batches written both ways.
    frame.iloc[600:].to_parquet(tmp_path / "wednesday.parquet")
    after = update(tmp_path / "tuesday", tmp_path / "wednesday.parquet", tmp_path / "wednesday")
    assert after.refined.num_rows == 120
    history = pq.read_table(tmp_path / "wednesday" / "history.parquet")
    assert history.schema.field("age").type == pa.float64()


class Notes(NullProgress):
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)


def test_an_ignored_column_may_change_type(first_run, tmp_path):
    """The run ignored its int64 ids; a batch with string ids is accepted and keeps them, the
    user hears so, and the next update merges both kinds of id into its history."""
    out, table, _ = first_run
    batch = table.slice(360, 120)
    ids = pa.array([f"w-{i}" for i in batch.column("id").to_pylist()])
    notes = Notes()
    second = update(
        out, batch.set_column(0, "id", ids), tmp_path / "second", progress=notes, **UPDATE_FAST
    )
    assert second.refined.column("id").equals(pa.chunked_array([ids]))
    assert notes.notes == [
        "column 'id' is string in the batch, int64 in the run's input; refine does not read "
        "it, so it is kept as it is"
    ]
    third = update(second.out, table.slice(480, 120), tmp_path / "third", **UPDATE_FAST)
    assert third.refined.column("id").type == pa.int64()
    history = pq.read_table(tmp_path / "third" / "history.parquet").column("id").to_pylist()
    assert {"3", "w-2523"} <= set(history)  # the first run's ids as text, and the second's


def test_load_run_predicts_probabilities_of_the_true_class(first_run):
    from refine.learn.calibrate import apply_temperature, expected_calibration_error

    out, table, truth = first_run
    previous = load_run(out)
    rows = table.slice(360, 360)  # rows the run never saw, scored against their true class
    proba, agreement = previous.predict(rows)
    given, same_agreement = previous.predict(rows, given=True)
    np.testing.assert_array_equal(agreement, same_agreement)
    found = previous.summary["trust"]["calibration"]
    assert found["method"] == "noise"  # 15% flipped labels: the judgement trusts the model
    np.testing.assert_allclose(proba, apply_temperature(given, found["temperature"]), atol=1e-6)
    np.testing.assert_array_equal(proba.argmax(1), given.argmax(1))  # a temperature keeps ranks
    true = np.asarray(truth[360:])
    # Calibrated against labels 15% wrong, the given-label probabilities are too timid for the
    # true class; turned to it, they say how often the prediction is right.
    assert expected_calibration_error(proba, true) < expected_calibration_error(given, true)
