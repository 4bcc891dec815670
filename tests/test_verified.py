"""Verified labels (--verified, --verified-file), the trust policy's measurements and its
do-no-harm guard, and the review queue (refine review) that feeds verified labels back."""

from __future__ import annotations

import csv
import io
import json
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
from refine.bench.noise import flip_symmetric
from refine.cli import cli
from refine.judge import evidence
from refine.review import pick
from tests.conftest import FAST, noisy_table

FAST_FLAGS = ["--max-epochs", "10", "--folds", "3", "--rounds", "1"]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


# --- verified rows in a run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def verified_run():
    """noisy_table with a 'checked' column: verified rows of every kind, and the run on it."""
    table, truth = noisy_table()
    given = np.asarray(column(table, "label"), dtype=object)
    wrong = np.flatnonzero(given != truth)[:5]  # given label wrong, verified right
    right = np.flatnonzero(given == truth)[:5]  # given label right, verified right
    contrary = int(np.flatnonzero(given == truth)[10])  # a person overrules the model
    unlabelled = int(np.flatnonzero(given == truth)[11])  # no given label, verified
    checked = np.full(len(truth), None, dtype=object)
    checked[wrong], checked[right] = truth[wrong], truth[right]
    checked[contrary] = (truth[contrary] + 1) % 3
    checked[unlabelled] = truth[unlabelled]
    given[unlabelled] = None
    table = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array(list(given), pa.int64())
    ).append_column("checked", pa.array(list(checked), pa.int64()))
    result = refine.run(table, None, verified="checked", ignore=("id",), seed=0, **FAST)
    rows = {"wrong": wrong, "right": right, "contrary": contrary, "unlabelled": unlabelled}
    return result, table, truth, rows


def test_verified_rows_are_never_changed(verified_run):
    result, table, truth, rows = verified_run
    refined = result.refined
    checked = np.asarray(column(table, "checked"), dtype=object)
    verified = np.flatnonzero(checked != None)  # noqa: E711 (element-wise)
    assert len(verified) == 12 and result.summary["verified"] == 12
    assert [column(refined, "label_refined")[i] for i in verified] == list(checked[verified])
    assert {column(refined, "label_source")[i] for i in verified} == {"verified"}
    assert {column(refined, "sample_weight")[i] for i in verified} == {1.0}
    # Whatever the model says: it predicts the true class of the row a person overruled, and
    # the true class of the wrongly labelled rows, yet the verified labels stand.
    contrary = rows["contrary"]
    assert column(refined, "label_predicted")[contrary] == truth[contrary]
    assert column(refined, "label_refined")[contrary] == (truth[contrary] + 1) % 3
    unverified = np.setdiff1d(np.arange(len(truth)), verified)
    assert "verified" not in {column(refined, "label_source")[i] for i in unverified}


def test_verified_flags_are_given_against_verified(verified_run):
    result, table, _, rows = verified_run
    refined = result.refined
    issue, quality = column(refined, "is_label_issue"), column(refined, "label_quality")
    for i in rows["wrong"]:
        assert issue[i] is True and quality[i] == 0.0
    for i in rows["right"]:
        assert issue[i] is False and quality[i] == 1.0
    # The person's label differs from the given one: the given label is an issue, surely.
    assert issue[rows["contrary"]] is True and quality[rows["contrary"]] == 0.0
    # No given label: nothing to flag, no quality.
    assert issue[rows["unlabelled"]] is False and quality[rows["unlabelled"]] is None
    assert result.summary["trust"]["verified_rows"] == 12
    # The measurements count the 11 verified rows that have a given label; by the verified
    # labels, 5 given labels are right (the overruled row's is not).
    measured = result.summary["trust"]["measured"]
    assert measured["rows"] == 11
    assert measured["given_accuracy"]["value"] == pytest.approx(5 / 11, abs=1e-6)


# --- the measurements, worked by hand -------------------------------------------------------


def test_measure_on_a_hand_made_case(monkeypatch):
    monkeypatch.setattr(evidence, "MIN_CLASS_ROWS", 3)
    given = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    truth = np.array([0, 1, 1, 0, 2, 2, 0, 1, 1, 0])
    refined = np.array([0, 1, 1, -1, 2, -1, 2, 1, 1, -1])
    m = evidence.measure(given, truth, refined, ["cat", "dog", "eel"])
    value = lambda interval: (interval["value"], interval["n"])  # noqa: E731
    assert m["rows"] == 10
    assert value(m["given_accuracy"]) == (0.7, 10)  # wrong at rows 1, 3, 8
    assert value(m["refined_accuracy"]) == (0.6, 10)  # wrong at 3, 5, 6, 9 (exclusions count)
    # Changed labels at rows 1, 6, 8: right at 1 and 8.
    assert m["corrections"]["rows"] == 3
    assert m["corrections"]["precision"]["value"] == pytest.approx(2 / 3, abs=1e-6)
    # Excluded rows 3, 5, 9: only row 3's given label was wrong.
    assert m["exclusions"]["rows"] == 3
    assert m["exclusions"]["precision"]["value"] == pytest.approx(1 / 3, abs=1e-6)
    # By verified class; "eel" has 2 verified rows, under the 3 needed.
    assert [(c["class"], c["rows"]) for c in m["per_class"]] == [("cat", 4), ("dog", 4)]
    cat, dog = m["per_class"]
    assert value(cat["given_accuracy"]) == (0.75, 4) and value(cat["refined_accuracy"]) == (0.25, 4)
    assert value(dog["given_accuracy"]) == (0.5, 4) and value(dog["refined_accuracy"]) == (1.0, 4)


def test_wilson_interval_worked_by_hand():
    # 8 of 10, z = 1.959964, z^2 = 3.841459: centre (0.8 + 0.192073) / 1.384146 = 0.716740,
    # half-width 1.959964 * sqrt(0.016 + 0.009604) / 1.384146 = 0.226578.
    assert evidence._interval(8, 10) == {
        "value": 0.8,
        "low": pytest.approx(0.490162, abs=1e-6),
        "high": pytest.approx(0.943318, abs=1e-6),
        "n": 10,
    }
    # All right: the low end is n / (n + z^2) = 10 / 13.841459; none right: z^2 / (n + z^2).
    assert evidence._interval(10, 10)["low"] == pytest.approx(0.722467, abs=1e-6)
    assert evidence._interval(10, 10)["high"] == 1.0
    assert evidence._interval(0, 10)["low"] == 0.0
    assert evidence._interval(0, 10)["high"] == pytest.approx(0.277533, abs=1e-6)
    assert evidence._interval(0, 0) == {"value": None, "low": None, "high": None, "n": 0}


# --- do no harm without verified rows ------------------------------------------------------


def rule_labelled(seed: int, n: int = 360):
    """Three overlapping classes in (x0, x1). The labels come from a rule that is right except
    that it files every row with a high score ``z`` (the top fifth) under class 1, a mistake
    the model learns as easily as the rest; plus 2% random flips. Where the model disagrees
    with the labels it is mostly wrong: in the overlap, where the labels are right."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 3
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 2.6]])
    xy = centres[truth] + rng.normal(0.0, 0.9, (n, 2))
    z = rng.permutation(n) / n
    given = np.where(z >= 0.8, 1, truth)
    flipped = rng.choice(n, round(0.02 * n), replace=False)
    given[flipped] = (given[flipped] + rng.integers(1, 3, len(flipped))) % 3
    table = pa.table({"x0": xy[:, 0], "x1": xy[:, 1], "z": z, "label": given})
    return table, truth


@pytest.mark.parametrize("seed", [1, 3])
def test_guard_keeps_labels_when_the_model_learned_the_rule(seed):
    table, truth = rule_labelled(seed)
    given = np.asarray(column(table, "label"))
    result = refine.run(table, None, seed=0, **FAST)
    refined = result.refined
    predicted = np.asarray(column(refined, "label_predicted"))
    # The case is what it claims: the model files most of the rule's wrong rows as the rule
    # does, and most of its disagreements with the labels are its own mistakes.
    rule_wrong = (np.asarray(column(table, "z")) >= 0.8) & (truth != 1)
    assert (predicted[rule_wrong] == given[rule_wrong]).mean() > 0.6
    disagree = predicted != given
    assert (predicted[disagree] == truth[disagree]).mean() < 0.4
    # So refine keeps every given label, and says why.
    summary = result.summary
    assert summary["trust"]["policy"] == "keep"
    assert summary["trust"]["reason"].startswith("labels kept: no verified rows")
    assert summary["corrected"] == 0 and summary["excluded"] == 0
    assert column(refined, "label_refined") == column(table, "label")
    assert set(column(refined, "label_source")) == {"given"}


@pytest.mark.parametrize("seed", [1, 3])
def test_guard_corrects_random_noise_on_the_same_rows(seed):
    # The same rows with 20% of labels flipped at random: the same code corrects them.
    table, truth = rule_labelled(seed)
    noisy = flip_symmetric(truth, 0.2, 3, seed=seed + 1)
    table = table.set_column(3, "label", pa.array(noisy))
    result = refine.run(table, None, seed=0, **FAST)
    assert result.summary["trust"]["policy"] == "rules"
    assert result.summary["corrected"] > 40
    refined = np.asarray(column(result.refined, "label_refined"), dtype=object)
    assert (refined == truth).mean() > (noisy == truth).mean() + 0.05


# --- the key join and its errors, from the command line ------------------------------------


@pytest.fixture
def small_data(tmp_path):
    table, _ = noisy_table(n=60)
    table = table.append_column("checked", pa.array([None] * 4 + [7] + [None] * 55, pa.int64()))
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    return path, column(table, "id")


def run_fails(tmp_path, data, message, *options):
    before = data.read_bytes()
    out = tmp_path / "out"
    result = invoke("run", data, "--out", out, "--ignore", "id", *options)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {message}"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert data.read_bytes() == before


def write_text(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


CLASSES = "the classes are 0, 1, 2). Fix the value, or leave the row unverified"


def test_verified_column_value_not_a_class(tmp_path, small_data):
    data, _ = small_data
    run_fails(
        tmp_path,
        data,
        "column 'checked': verified label 7 for row 4 is not a class of the label column "
        f"'label' (1 row like it; {CLASSES}",
        "--verified",
        "checked",
    )


def test_verified_file_value_not_a_class(tmp_path, small_data):
    data, ids = small_data
    path = write_text(tmp_path, "v.csv", "row,verified_label\n3,1\n4,cat\n")
    run_fails(
        tmp_path,
        data,
        f'verified file {str(path)!r}: verified label "cat" for input row 4 is not a class '
        f"of the label column 'label' (1 row like it; {CLASSES}",
        "--verified-file",
        path,
    )
    keyed = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": [ids[3], ids[4]], "verified_label": [1, 9]}), keyed)
    run_fails(
        tmp_path,
        data,
        f"verified file {str(keyed)!r}: verified label 9 for the row with id {ids[4]} is not a "
        f"class of the label column 'label' (1 row like it; {CLASSES}",
        "--verified-file",
        keyed,
        "--key",
        "id",
    )


@pytest.mark.parametrize(
    "name, text, key, message",
    [
        (
            "no_key.csv",
            "code,verified_label\n1,1\n",
            "code",
            "--key names 'code', which is not a column of the input; its columns are: 'id', "
            "'x0', 'x1', 'colour', 'emb', 'label', 'checked'. Name a column of unique values "
            "that the input and the verified file share",
        ),
        (
            "twice.csv",
            "id,verified_label\n24,1\n024,2\n",  # the same id once read as the input's int
            "id",
            "{path}: column 'id' holds 24 more than once (1 value repeated); keep one row per key",
        ),
        (
            "stranger.csv",
            "id,verified_label\n24,1\n999999,2\n",
            "id",
            "{path}: id 999999 is not in the input's column 'id' (1 key not found); check that "
            "the file belongs to this data",
        ),
        (
            "no_label.csv",
            "id,label\n24,1\n",
            "id",
            "verified file {path!r} has no column 'verified_label'; its columns are: 'id', "
            "'label'. It needs the key column 'id' (named by --key) and a verified_label column",
        ),
        (
            "no_id.csv",
            "row,verified_label\n3,1\n",
            "id",
            "verified file {path!r} has no column 'id'; its columns are: 'row', "
            "'verified_label'. It needs the key column 'id' (named by --key) and a "
            "verified_label column",
        ),
        (
            "no_row.csv",
            "id,verified_label\n24,1\n",
            None,
            "verified file {path!r} has no column 'row'; its columns are: 'id', "
            "'verified_label'. It needs a 'row' column (each row's position in the input; or "
            "name a key column with --key) and a verified_label column",
        ),
        (
            "outside.csv",
            "row,verified_label\n3,1\n60,2\n",
            None,
            "{path}: row position 60 is outside the input, whose rows are 0 to 59 (1 position "
            "outside); the 'row' column must hold positions in the input (as refine review "
            "writes them)",
        ),
        (
            "not_a_row.csv",
            "row,verified_label\n3,1\nthird,2\n",
            None,
            "{path}: 'row' value \"third\" in row 1 (counting from 0, not counting a CSV header) "
            "is not a row position (a whole number from 0) (1 row like it); the 'row' column "
            "must hold positions in the input (as refine review writes them)",
        ),
        (
            "no_key_value.csv",
            "row,verified_label\n3,1\n,2\n",
            None,
            "{path}: row 1 (counting from 0, not counting a CSV header) has no 'row' value; "
            "give every row its row value, or delete the row",
        ),
    ],
)
def test_verified_file_errors(tmp_path, small_data, name, text, key, message):
    data, _ = small_data
    path = write_text(tmp_path, name, text)
    where = f"verified file {str(path)!r}"
    expected = message.replace("{path!r}", repr(str(path))).replace("{path}", where)
    options = ["--verified-file", path] + (["--key", key] if key else [])
    run_fails(tmp_path, data, expected, *options)


def test_key_duplicated_in_the_data(tmp_path, small_data):
    data, _ = small_data
    table = pq.read_table(data)
    twice = tmp_path / "twice.parquet"
    pq.write_table(table.set_column(0, "id", pa.array([5, 5] + list(range(58)))), twice)
    path = write_text(tmp_path, "v.csv", "id,verified_label\n5,1\n")
    run_fails(
        tmp_path,
        twice,
        "the input's key column 'id' holds 5 more than once (1 value repeated); --key must "
        "name a column of unique values",
        "--verified-file",
        path,
        "--key",
        "id",
    )


def test_verified_option_conflicts(tmp_path, small_data):
    data, _ = small_data
    path = write_text(tmp_path, "v.csv", "row,verified_label\n3,1\n")
    run_fails(
        tmp_path,
        data,
        "--verified and --verified-file both give verified labels; pass one",
        "--verified",
        "checked",
        "--verified-file",
        path,
    )
    run_fails(
        tmp_path,
        data,
        "the input's key column 'colour' holds \"red\" more than once; --key must name a "
        "column of unique values (or leave it out)",
        "--key",
        "colour",
    )
    run_fails(
        tmp_path,
        data,
        "--verified names the label column 'label'; verified labels go in a column of their "
        "own (null where nobody checked the row)",
        "--verified",
        "label",
    )


# --- refine review, and its file back through --verified-file ------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A CLI run on noisy_table (ids 3, 10, 17, ...), and the table's true labels."""
    folder = tmp_path_factory.mktemp("review")
    table, truth = noisy_table()
    data = folder / "data.parquet"
    pq.write_table(table, data)
    out = folder / "first"
    result = invoke("run", data, "--out", out, "--ignore", "id", "--quiet", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    return data, out, truth


def next_command(output: str) -> list[str]:
    """The command refine review prints last, as arguments to the CLI."""
    words = shlex.split(output.strip().splitlines()[-1])
    assert words[:2] == ["refine", "run"]
    return words[1:]


def test_review_parquet_round_trip(tmp_path, first_run):
    data, run_dir, truth = first_run
    out = tmp_path / "review.parquet"
    result = invoke("review", run_dir, "--budget", 12, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"wrote 12 rows to review in {out}\n"
        "next: fill in verified_label (leave a cell empty to skip a row), then\n"
        f"  refine run {data} --config {run_dir / 'run.json'} --verified-file {out} "
        f"--out {run_dir}-verified\n"
    )
    picked = pq.read_table(out)
    assert picked.column_names[:9] == [
        "row",
        "id",  # the run's key (its --ignore'd column): how a person finds the row
        "label",
        "label_predicted",
        "label_refined",
        "label_quality",
        "label_source",
        "review_doubt",
        "verified_label",
    ]
    assert "label_true" not in picked.column_names and "id" in picked.column_names
    rows = column(picked, "row")
    assert len(set(rows)) == 12 and column(picked, "verified_label") == [None] * 12
    # A person fills in the true labels, and the printed command reads them back.
    filled = picked.set_column(8, "verified_label", pa.array(truth[rows]))
    pq.write_table(filled, out)
    again = invoke(*next_command(result.output), "--quiet", "--overwrite")
    assert again.exit_code == 0, again.output
    refined = pq.read_table(f"{run_dir}-verified/refined.parquet")
    source = column(refined, "label_source")
    assert [source[r] for r in rows] == ["verified"] * 12
    assert source.count("verified") == 12
    assert [column(refined, "label_refined")[r] for r in rows] == truth[rows].tolist()
    summary = json.loads((run_dir.parent / "first-verified" / "run.json").read_text())
    assert summary["config"]["verified_file"] == str(out)
    assert summary["config"]["ignore"] == ["id"]  # the first run's options came along
    # The next review never picks a verified row.
    second = tmp_path / "second.parquet"
    assert invoke("review", f"{run_dir}-verified", "--budget", 20, "--out", second).exit_code == 0
    assert not set(column(pq.read_table(second), "row")) & set(rows)


def test_review_csv_round_trip_by_key(tmp_path, first_run):
    data, run_dir, truth = first_run
    out = tmp_path / "review.csv"
    result = invoke("review", run_dir, "--budget", 8, "--out", out, "--key", "id")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == [
        f"wrote 8 rows to review in {out}",
        "binary, list and struct columns (image bytes, embeddings) are left out of CSV: emb; "
        "write .parquet to keep them",
    ]
    # A person types the true labels into a spreadsheet, and leaves the last two rows blank.
    lines = list(csv.DictReader(io.StringIO(out.read_text())))
    ids = [int(line["id"]) for line in lines]
    rows = [(i - 3) // 7 for i in ids]  # noisy_table's ids are 7 * row + 3
    for line, row in zip(lines[:6], rows[:6], strict=True):
        line["verified_label"] = str(truth[row])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(lines[0]))
    writer.writeheader()
    writer.writerows(lines)
    out.write_text(text.getvalue())
    rerun = tmp_path / "rerun"
    again = invoke(
        "run", data, "--out", rerun, "--ignore", "id", "--verified-file", out, "--key", "id",
        "--quiet", *FAST_FLAGS,
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    refined = pq.read_table(rerun / "refined.parquet")
    source, label = column(refined, "label_source"), column(refined, "label_refined")
    assert [source[r] for r in rows[:6]] == ["verified"] * 6
    assert [label[r] for r in rows[:6]] == truth[rows[:6]].tolist()
    assert "verified" not in {source[r] for r in rows[6:]}
    assert source.count("verified") == 6


def test_string_labels_survive_the_csv_round_trip(tmp_path):
    # Labels a spreadsheet or a CSV reader could mangle: a leading zero, a comma, a boolean.
    names = np.array(["007", "x, y", "true"])
    table, truth = noisy_table(n=150)
    table = table.set_column(5, "label", pa.array(names[column(table, "label")]))
    data = tmp_path / "data.parquet"
    pq.write_table(table, data)
    first = tmp_path / "first"
    flags = ["--ignore", "id", "--quiet", *FAST_FLAGS]
    assert invoke("run", data, "--out", first, *flags).exit_code == 0
    out = tmp_path / "review.csv"
    assert invoke("review", first, "--budget", 12, "--out", out).exit_code == 0
    lines = list(csv.DictReader(io.StringIO(out.read_text())))
    rows = [int(line["row"]) for line in lines]
    assert set(names[truth[rows]]) == set(names)  # every class goes through the file
    assert [line["label"] for line in lines] == [column(table, "label")[r] for r in rows]
    for line, row in zip(lines, rows, strict=True):
        line["verified_label"] = names[truth[row]]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(lines[0]))
    writer.writeheader()
    writer.writerows(lines)
    out.write_text(text.getvalue())
    again = tmp_path / "again"
    result = invoke("run", data, "--out", again, "--verified-file", out, *flags)
    assert result.exit_code == 0, result.output
    refined = pq.read_table(again / "refined.parquet")
    assert [column(refined, "label_refined")[r] for r in rows] == names[truth[rows]].tolist()
    assert {column(refined, "label_source")[r] for r in rows} == {"verified"}


def test_review_random_is_reproducible_by_seed(tmp_path, first_run):
    _, run_dir, _ = first_run

    def rows(seed, name):
        out = tmp_path / name
        options = ["--strategy", "random", "--seed", seed]
        assert invoke("review", run_dir, "--budget", 30, "--out", out, *options).exit_code == 0
        return column(pq.read_table(out), "row")

    first, again, other = rows(3, "a.parquet"), rows(3, "b.parquet"), rows(4, "c.parquet")
    assert len(first) == 30 and first == again and first != other


def test_pick_returns_the_budget_or_every_eligible_row():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    # Refine is sure of most rows of easy data: doubt 0 must not shrink the sample.
    doubts = np.zeros(50)
    doubts[:3] = [0.4, 0.3, 0.2]
    for strategy in ("value", "random"):
        assert len(pick(doubts, X, 10, strategy)) == 10
        eligible = np.zeros(50, bool)
        eligible[[1, 7, 9, 20]] = True
        assert sorted(pick(doubts, X, 10, strategy, eligible=eligible)) == [1, 7, 9, 20]
    # The value strategy starts with the most doubtful row.
    assert pick(doubts, X, 10)[0] == 0


def test_review_errors(tmp_path, first_run):
    _, run_dir, _ = first_run

    def fails(message, *options):
        result = invoke("review", run_dir, *options)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"Error: {message}"

    bad = tmp_path / "review.xlsx"
    fails(
        f"--out {str(bad)!r}: name a .csv file (to fill in a spreadsheet) or a .parquet file",
        "--budget",
        5,
        "--out",
        bad,
    )
    out = tmp_path / "review.csv"
    fails("--budget must be a whole number of rows >= 1, got 0", "--budget", 0, "--out", out)
    fails(
        "--key 'nope' is not an input column of the run; its columns are: 'id', 'x0', 'x1', "
        "'colour', 'emb', 'label'",
        "--budget",
        5,
        "--out",
        out,
        "--key",
        "nope",
    )
    fails(
        "--key names the label column 'label'; a key is a column of unique values that "
        "identifies each row, such as an id",
        "--budget",
        5,
        "--out",
        out,
        "--key",
        "label",
    )
    assert not out.exists()
    out.write_text("row,verified_label\n3,1\n")  # a person's answers
    fails(
        f"review file {str(out)!r} already exists (it may hold answers); pass --overwrite to "
        "replace it, or choose another --out",
        "--budget",
        5,
        "--out",
        out,
    )
    assert out.read_text() == "row,verified_label\n3,1\n"
    missing = invoke("review", tmp_path / "nowhere", "--budget", 5, "--out", tmp_path / "r.csv")
    assert missing.exit_code == 2
    assert missing.output.strip() == (
        f"Error: {str(tmp_path / 'nowhere')!r} is not a refine run: it has no run.json. "
        "Pass a directory written by refine run or refine update"
    )


def test_review_keeps_positions_when_the_input_has_a_row_column(tmp_path):
    # An input column named "row" would take the place of the positions, and the file would
    # then verify the wrong rows: it is left out, and the user told.
    table, _ = noisy_table(n=90)
    table = table.rename_columns(["row", *table.column_names[1:]])
    run_dir = tmp_path / "run"
    refine.run(table, run_dir, ignore=("row",), seed=0, **FAST)
    out = tmp_path / "review.parquet"
    result = invoke("review", run_dir, "--budget", 5, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == (
        "input columns named like the review file's own columns are left out: row"
    )
    written = pq.read_table(out)
    assert written.column_names.count("row") == 1
    assert all(0 <= r < 90 for r in column(written, "row"))
    # With --key, the row column is an ordinary input column again.
    keyed = tmp_path / "keyed.parquet"
    assert invoke("review", run_dir, "--budget", 5, "--out", keyed, "--key", "row").exit_code == 0
    assert column(pq.read_table(keyed), "row") == [
        column(table, "row")[r] for r in column(written, "row")
    ]
