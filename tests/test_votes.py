"""Votes as input (--votes, --annotations): the join and its errors, the majority vote and its
ties, the annotator model on crowds with known answers, annotators.parquet and its view."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from refine.cli import cli
from refine.io.query import connect
from refine.io.write import ANNOTATORS_SCHEMA
from refine.judge.annotators import (
    annotator_accuracy,
    choose_prior,
    consensus,
    fit_annotators,
    majority_vote,
)

FAST_FLAGS = ["--max-epochs", "10", "--folds", "3", "--rounds", "1", "--no-report"]


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def crowd(n: int, accuracies: list[float], k: int = 3, seed: int = 0):
    """True labels ``(n,)`` and votes ``(n, A)``: annotator ``a`` votes the true class with
    probability ``accuracies[a]``, else a wrong class at random."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    votes = np.empty((n, len(accuracies)), np.int64)
    for a, accuracy in enumerate(accuracies):
        wrong = (truth + rng.integers(1, k, n)) % k
        votes[:, a] = np.where(rng.random(n) < accuracy, truth, wrong)
    return truth, votes


# --- the majority vote ---------------------------------------------------------------------


def test_majority_vote_draws_ties_with_the_seed_and_only_among_the_tied():
    votes = np.array([[0, 1, -1]] * 200 + [[2, 2, 1], [-1, -1, -1]])
    first = majority_vote(votes, 3, seed=0)
    assert np.array_equal(first, majority_vote(votes, 3, seed=0))
    assert set(first[:200].tolist()) == {0, 1}  # both tied classes drawn, never class 2
    assert not np.array_equal(first, majority_vote(votes, 3, seed=1))
    assert first[200] == 2 and first[201] == -1  # a clear majority; no vote at all


# --- the annotator model -------------------------------------------------------------------


def test_a_reliable_annotator_outweighs_two_unreliable_ones():
    truth, votes = crowd(900, [0.95, 0.45, 0.45])
    majority = majority_vote(votes, 3, seed=0)
    model = fit_annotators(votes)
    consensus = model.posterior.argmax(1)
    # Where the two unreliable annotators agree against the reliable one, the majority follows
    # them and the model follows the reliable one.
    outvoted = (votes[:, 1] == votes[:, 2]) & (votes[:, 0] != votes[:, 1])
    assert outvoted.sum() > 20
    assert (consensus[outvoted] == votes[outvoted, 0]).mean() > 0.9
    assert (consensus == truth).mean() > (majority == truth).mean() + 0.05
    _, accuracy, low, high = annotator_accuracy(votes, model.posterior)
    assert np.abs(accuracy - [0.95, 0.45, 0.45]).max() < 0.06
    assert np.all((low < accuracy) & (accuracy < high))


def test_the_model_prior_decides_what_the_votes_leave_open():
    votes = np.array([[0, 1]] * 40 + [[0, 0]] * 40 + [[1, 1]] * 40)
    prior = np.full((120, 2), 0.5)
    prior[:20] = [0.9, 0.1]
    prior[20:40] = [0.1, 0.9]
    consensus = fit_annotators(votes, prior).posterior.argmax(1)
    assert consensus[:20].tolist() == [0] * 20 and consensus[20:40].tolist() == [1] * 20
    assert consensus[40:80].tolist() == [0] * 40 and consensus[80:].tolist() == [1] * 40


def noisy_prior(truth: np.ndarray, k: int, sharpness: float, seed: int = 1) -> np.ndarray:
    """A model's probabilities ``(n, k)``: Dirichlet noise with ``sharpness`` added on the true
    class (0: a model that knows nothing)."""
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.ones(k), len(truth))
    prior[np.arange(len(truth)), truth] += sharpness
    return prior / prior.sum(1, keepdims=True)


def test_held_out_votes_choose_an_informative_model_over_noisy_votes():
    truth, votes = crowd(600, [0.5, 0.5, 0.5], k=4)
    prior = noisy_prior(truth, 4, sharpness=2.0)
    found, choice = consensus(votes, prior, seed=0)
    assert choice.temper is not None and choice.temper > 0
    assert choice.scores[str(choice.temper)] > choice.scores["majority"]
    assert (found == truth).mean() > (majority_vote(votes, 4, seed=0) == truth).mean() + 0.1


def test_held_out_votes_keep_a_model_that_knows_nothing_out():
    truth, votes = crowd(600, [0.85, 0.8, 0.8], k=4)
    prior = noisy_prior(truth, 4, sharpness=0.0)
    found, choice = consensus(votes, prior, seed=0)
    assert choice.temper in (None, 0.0)
    assert choice.scores["1.0"] < max(choice.scores["majority"], choice.scores["0.0"])
    assert (found == truth).mean() >= (majority_vote(votes, 4, seed=0) == truth).mean()


def test_one_class_labelling_functions_and_a_weak_model_fall_back_to_the_majority():
    truth, _ = crowd(400, [], k=2)
    rng = np.random.default_rng(2)
    # Function c votes class c, on 60% of its class's rows and 10% of the others; else abstains.
    fires = rng.random((400, 2)) < np.where(truth[:, None] == [0, 1], 0.6, 0.1)
    votes = np.where(fires, [0, 1], -1)
    prior = noisy_prior(truth, 2, sharpness=0.5)
    found, choice = consensus(votes, prior, seed=0)
    assert choice.temper is None
    assert np.array_equal(found, majority_vote(votes, 2, seed=0))


def test_the_held_out_choice_is_the_same_with_the_same_seed():
    truth, votes = crowd(300, [0.6, 0.6, 0.6], k=3)
    prior = noisy_prior(truth, 3, sharpness=1.0)
    first = choose_prior(votes, prior, seed=0)
    assert first == choose_prior(votes, prior, seed=0)
    assert first.scores != choose_prior(votes, prior, seed=1).scores  # other folds


def test_an_annotator_with_one_label_stays_near_the_crowd():
    truth, votes = crowd(300, [0.85, 0.85, 0.85])
    lone = np.full((300, 1), -1)
    votes[0] = truth[0]  # the crowd agrees on row 0 ...
    lone[0] = (truth[0] + 1) % 3  # ... and the lone annotator's only vote is wrong
    votes = np.hstack([votes, lone])
    model = fit_annotators(votes)
    given, accuracy, low, high = annotator_accuracy(votes, model.posterior)
    assert given.tolist() == [300, 300, 300, 1]
    assert accuracy[3] < 0.2 and high[3] - low[3] > 0.5  # one vote: a wide interval
    # Its confusion stays near the pool's, not a one-hot collapse onto its single vote.
    voted = model.confusion[3, :, :3] / model.confusion[3, :, :3].sum(1, keepdims=True)
    assert voted.diagonal().min() > 0.6
    assert (model.posterior.argmax(1) == truth).mean() > 0.9


# --- refine run with votes -----------------------------------------------------------------


def voted_table(n: int = 150, seed: int = 0):
    """Blobs of 3 classes with an id, and votes of 3 annotators (one weak) in a list column."""
    rng = np.random.default_rng(seed)
    truth, votes = crowd(n, [0.9, 0.85, 0.5], seed=seed)
    centres = rng.normal(0, 3, (3, 4))
    X = centres[truth] + rng.normal(0, 0.6, (n, 4))
    table = pa.table(
        {
            "item": pa.array(np.arange(n) * 10 + 7),
            **{f"x{j}": X[:, j] for j in range(4)},
            "votes": pa.array(votes.tolist(), pa.list_(pa.int64())),
        }
    )
    return table, truth, votes


@pytest.fixture(scope="module")
def voted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("votes")
    table, truth, votes = voted_table()
    # Row 5 abstains entirely: it has no vote and is unlabelled.
    lists = table.column("votes").to_pylist()
    lists[5] = [-1, None, -1]
    table = table.set_column(table.schema.get_field_index("votes"), "votes", pa.array(lists))
    pq.write_table(table, tmp / "data.parquet")
    out = tmp / "run"
    flags = [*FAST_FLAGS, "--rounds", "2"]
    result = invoke(
        "run", tmp / "data.parquet", "--votes", "votes", "--key", "item", "--out", out, *flags
    )
    return result, out, table, votes


def test_a_crowd_run_refines_with_the_annotator_model_every_round(voted_run):
    result, out, table, votes = voted_run
    assert result.exit_code == 0, result.output
    assert "1 row has no vote: unlabelled" in result.output
    summary = json.loads((out / "run.json").read_text())
    assert summary["annotators"]["annotators"] == 3 and summary["annotators"]["votes"] == 447
    assert summary["annotators"]["least_accurate"][0]["annotator"] == "vote_2"
    # Held-out votes are predicted better with the model than by the majority: a crowd.
    chosen = summary["annotators"]["consensus"]
    assert chosen["given"] == "annotators" and chosen["prior_temper"] > 0
    scores = chosen["heldout_log_likelihood"]
    assert scores[str(chosen["prior_temper"])] > scores["majority"]
    assert summary["config"]["label"] == "label_vote"
    assert "votes" in summary["config"]["ignore"]
    # Each round re-estimates the annotators on its own model and takes the posterior.
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for row in summary["rounds"]:
        assert row["policy"] == "annotators" and row["votes_temper"] > 0
        assert len(row["annotators"]["accuracy"]) == 3
        assert row["annotators"]["accuracy"][2] < min(row["annotators"]["accuracy"][:2])
    rounds = pq.read_table(out / "rounds.parquet")
    assert rounds.column("votes_temper").null_count == 0
    assert rounds.column("annotator_accuracy").null_count == 0
    assert "held-out votes chose the annotator model" in summary["trust"]["reason"]
    refined = pq.read_table(out / "refined.parquet")
    assert refined.column_names[: table.num_columns] == table.column_names
    assert refined.column_names[table.num_columns] == "label_vote"
    assert "label_consensus" not in refined.column_names
    expected = majority_vote(np.where(np.arange(len(votes))[:, None] == 5, -1, votes), 3, 0)
    assert refined.column("label_vote").to_pylist() == [None if v < 0 else int(v) for v in expected]
    found = refined.column("label_refined").to_numpy(zero_copy_only=False)
    _, truth, _ = voted_table()
    voted = np.arange(len(truth)) != 5
    assert (found[voted] == truth[voted]).mean() > (expected[voted] == truth[voted]).mean() + 0.05
    # label_soft is the posterior: its class is the refined label, and it sums to 1.
    soft = np.array(refined.column("label_soft").to_pylist())
    assert (soft[voted].argmax(1) == found[voted]).all()
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-5)
    # sample_weight is the chance the refined label is right: the posterior's top probability.
    weight = refined.column("sample_weight").to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(weight[voted], soft[voted].max(1), rtol=1e-5)
    assert (weight[voted] < 0.99).any()
    changed = found[voted] != expected[voted]
    sources = np.array(refined.column("label_source").to_pylist())[voted]
    assert set(sources[changed]) == {"corrected"} and set(sources[~changed]) == {"given"}
    assert refined.column("label_source")[5].as_py() in ("unlabelled", "pseudo")
    annotators = pq.read_table(out / "annotators.parquet")
    assert annotators.schema.equals(ANNOTATORS_SCHEMA)
    assert annotators.column("annotator").to_pylist() == ["vote_0", "vote_1", "vote_2"]
    assert annotators.column("labels_given").to_pylist() == [149, 149, 149]
    accuracy = annotators.column("accuracy").to_pylist()
    assert accuracy[2] < min(accuracy[:2])  # the weak annotator is found
    assert len(annotators.column("confusion")[0].as_py()) == 3
    with connect(out) as con:
        rows = con.execute("SELECT annotator FROM annotators ORDER BY accuracy LIMIT 1").fetchall()
    assert rows == [("vote_2",)]


def test_labelling_functions_and_a_blind_model_keep_the_majority_vote(tmp_path):
    table, truth, _ = voted_table()
    rng = np.random.default_rng(3)
    for j in range(4):  # features that say nothing of the class: the model cannot help
        table = table.set_column(j + 1, f"x{j}", pa.array(rng.normal(size=len(truth))))
    # Function c votes class c on half of its class's rows and a tenth of the others.
    fires = rng.random((len(truth), 3)) < np.where(truth[:, None] == [0, 1, 2], 0.5, 0.1)
    votes = np.where(fires, [0, 1, 2], -1)
    votes[~fires.any(1), truth[~fires.any(1)]] = truth[~fires.any(1)]  # every row voted
    table = table.set_column(
        table.schema.get_field_index("votes"),
        "votes",
        pa.array(votes.tolist(), pa.list_(pa.int64())),
    )
    pq.write_table(table, tmp_path / "data.parquet")
    out = tmp_path / "run"
    result = invoke("run", tmp_path / "data.parquet", "--votes", "votes", "--out", out, *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "run.json").read_text())
    chosen = summary["annotators"]["consensus"]
    assert chosen["given"] == "label_vote" and chosen["prior_temper"] is None
    assert summary["config"]["label"] == "label_vote"
    # Every round kept the majority vote, and still estimated the functions' accuracies.
    for row in summary["rounds"]:
        assert row["votes_temper"] is None and row["policy"] != "annotators"
        assert len(row["annotators"]["accuracy"]) == 3
    refined = pq.read_table(out / "refined.parquet")
    assert "label_consensus" not in refined.column_names
    # The judge keeps the majority on labels the model cannot tell apart.
    assert refined.column("label_refined").to_pylist() == refined.column("label_vote").to_pylist()


def test_annotations_joined_by_key_give_the_same_majority(voted_run, tmp_path):
    _, out, table, votes = voted_run
    items = table.column("item").to_pylist()
    lines = ["item,annotator,label"] + [
        f"{items[i]},ann{a},{votes[i, a]}" for i in range(len(items)) if i != 5 for a in range(3)
    ]
    (tmp_path / "crowd.csv").write_text("\n".join(lines) + "\n")
    data = tmp_path / "data.parquet"
    pq.write_table(table.drop_columns(["votes"]), data)
    result = invoke(
        "run",
        data,
        "--annotations",
        tmp_path / "crowd.csv",
        "--key",
        "item",
        "--out",
        tmp_path / "run",
        *FAST_FLAGS,
    )
    assert result.exit_code == 0, result.output
    joined = pq.read_table(tmp_path / "run" / "refined.parquet").column("label_vote")
    by_list = pq.read_table(out / "refined.parquet").column("label_vote")
    # CSV labels are text; with no label column, the classes are the votes' own values.
    assert joined.to_pylist() == [None if v is None else str(v) for v in by_list.to_pylist()]
    names = pq.read_table(tmp_path / "run" / "annotators.parquet").column("annotator")
    assert names.to_pylist() == ["ann0", "ann1", "ann2"]


def run_fails(tmp_path, data, message, *options):
    before = data.read_bytes()
    out = tmp_path / "out"
    result = invoke("run", data, "--out", out, *options, *FAST_FLAGS)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {message}"
    assert not out.exists()
    assert data.read_bytes() == before


@pytest.fixture
def small(tmp_path):
    table, _, _ = voted_table(30)
    data = tmp_path / "data.parquet"
    pq.write_table(table, data)
    return data, table


def test_annotations_errors_name_the_value_and_the_fix(tmp_path, small):
    data, _ = small
    csv = tmp_path / "crowd.csv"
    csv.write_text("item,annotator,label\n7,a,0\n99,a,1\n")
    run_fails(
        tmp_path,
        data,
        f"annotations file {str(csv)!r}: item 99 in row 1 (counting from 0, not counting a CSV "
        "header) is not in the input's column 'item' (1 key not found); check that the file "
        "belongs to this data",
        "--annotations",
        csv,
        "--key",
        "item",
    )
    csv.write_text("item,annotator,label\n7,a,0\n17,b,1\n7,a,2\n")
    run_fails(
        tmp_path,
        data,
        f'annotations file {str(csv)!r}: annotator "a" labels item 7 twice (row 0 (counting '
        "from 0, not counting a CSV header) and row 2); keep one label per item and annotator",
        "--annotations",
        csv,
        "--key",
        "item",
    )
    run_fails(
        tmp_path,
        data,
        "--annotations needs --key: name the column of the input that the annotations file's "
        "rows refer to",
        "--annotations",
        csv,
    )


def test_a_vote_outside_the_label_classes_is_refused(tmp_path):
    table, truth, _ = voted_table(30)
    lists = table.column("votes").to_pylist()
    lists[4][1] = 7
    table = table.set_column(table.schema.get_field_index("votes"), "votes", pa.array(lists))
    table = table.append_column("label", pa.array(truth))
    data = tmp_path / "data.parquet"
    pq.write_table(table, data)
    run_fails(
        tmp_path,
        data,
        "votes column 'votes': vote 7 in row 4 is not a class of the label column 'label' "
        "(1 vote like it; the classes are 0, 1, 2). Fix the vote, or make it null (an "
        "abstention)",
        "--votes",
        "votes",
    )
    run_fails(
        tmp_path,
        data,
        "votes column 'x0' has type double; --votes needs a list column, one vote per annotator "
        "or labelling function in each row (null or -1 = abstain)",
        "--votes",
        "x0",
    )


def test_update_refuses_a_run_refined_from_votes(voted_run, tmp_path):
    _, out, table, _ = voted_run
    batch = tmp_path / "batch.parquet"
    pq.write_table(table, batch)
    result = invoke("update", out, batch, "--out", tmp_path / "next")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"Error: {str(out)!r} was refined from votes (--votes or --annotations), which refine "
        "update does not take yet; rerun refine run on all the rows and their votes"
    )
    assert not (tmp_path / "next").exists()


def test_the_report_lists_the_annotators_least_accurate_first(voted_run):
    from refine.report.html import build_report

    _, out, _, _ = voted_run
    page = build_report(out)
    section = page[page.index("Annotators") :]
    assert section.index("vote_2") < section.index("vote_0")
    assert '<th class="num">95% interval</th>' in section
    # The section says which labels the rounds refined, and the held-out scores that chose.
    chosen = json.loads((out / "run.json").read_text())["annotators"]["consensus"]
    temper = chosen["prior_temper"]
    assert f"raised to t = {temper:.2f}, which predicted held-out votes best" in section
    assert "Each round refine took the annotator model" in section
    majority = chosen["heldout_log_likelihood"]["majority"]
    assert f"majority {majority:.3f}" in section


def test_the_report_round_table_shows_the_annotator_model_each_round(voted_run, tmp_path):
    from refine.report.html import build_report

    _, out, _, _ = voted_run
    rounds = pq.read_table(out / "rounds.parquet").to_pylist()
    page = build_report(out)
    section = page[page.index('id="rounds"') : page.index('id="classes"')]
    assert '<th class="num">votes t</th>' in section
    for r in rounds:
        assert f'<td class="num">{r["votes_temper"]:.2f}</td>' in section
        assert f'<td class="num">{r["annotator_accuracy"]:.3f}</td>' in section
    # A run without votes has the columns null, and the table leaves them out.
    table, truth, _ = voted_table()
    data = table.drop_columns(["votes"]).append_column("label", pa.array(truth))
    pq.write_table(data, tmp_path / "plain.parquet")
    result = invoke("run", tmp_path / "plain.parquet", "--out", tmp_path / "plain", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "plain" / "rounds.parquet").column("votes_temper").null_count
    assert "votes t" not in build_report(tmp_path / "plain")


def test_the_report_says_when_the_majority_vote_was_kept():
    from refine.report.trust import consensus_note

    kept = {
        "given": "label_vote",
        "prior_temper": None,
        "heldout_log_likelihood": {"majority": -0.5, "0.0": -0.75, "1.0": -0.625},
    }
    text = consensus_note(kept)
    assert "Refine refined the majority vote (label_vote)" in text
    assert "majority -0.500, t = 0.0 -0.750, t = 1.0 -0.625" in text
    assert consensus_note(None) == "" and consensus_note({"given": "label_vote"}) == ""


# --- the annotator model inside the rounds: resume and determinism --------------------------


def test_a_voted_run_stopped_between_rounds_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    import refine
    from tests.test_resume import interrupted_run, refined_bytes, stable_run_json

    table, _, _ = voted_table()
    data = tmp_path / "data.parquet"
    pq.write_table(table, data)
    options = dict(votes="votes", ignore=("item",), rounds=2, folds=3, max_epochs=6)
    reference = tmp_path / "reference"
    refine.run(data, reference, report=False, seed=0, **options)
    out = tmp_path / "run"
    interrupted_run(data, out, monkeypatch, "round:1", **options)
    refine.run(data, out, report=False, seed=0, resume=True, **options)
    assert refined_bytes(out) == refined_bytes(reference)
    assert stable_run_json(out) == stable_run_json(reference)
    for name in ("annotators.parquet",):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    rounds = [pq.read_table(o / "rounds.parquet").drop(["seconds"]) for o in (out, reference)]
    assert rounds[0].equals(rounds[1]) and rounds[0].num_rows == 2
    summary = json.loads((out / "run.json").read_text())
    assert all(r["policy"] == "annotators" for r in summary["rounds"])


def test_a_voted_run_gives_the_same_bytes_twice(tmp_path):
    import refine

    table, _, _ = voted_table()
    options = dict(votes="votes", ignore=("item",), rounds=2, folds=3, max_epochs=6, report=False)
    outs = [tmp_path / name for name in ("a", "b")]
    for out in outs:
        refine.run(table, out, seed=0, **options)
    for name in ("refined.parquet", "annotators.parquet", "rounds.parquet"):
        if name == "rounds.parquet":  # its seconds differ
            first, second = (pq.read_table(o / name).drop(["seconds"]) for o in outs)
            assert first.equals(second)
        else:
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_verified_rows_keep_their_label_when_the_posterior_takes_the_others(tmp_path):
    import refine

    table, truth, votes = voted_table()
    majority = majority_vote(votes, 3, 0)
    # Five rows whose majority is wrong, verified with a class that is neither the truth nor
    # the majority: only the verification can put it there.
    rows = np.flatnonzero(majority != truth)[:5]
    checked = np.full(len(truth), None, object)
    checked[rows] = [int(({0, 1, 2} - {truth[r], majority[r]}).pop()) for r in rows]
    table = table.append_column("checked", pa.array(list(checked), pa.int64()))
    options = dict(votes="votes", ignore=("item",), rounds=2, folds=3, max_epochs=6, report=False)
    result = refine.run(table, tmp_path / "run", seed=0, verified="checked", **options)
    assert result.summary["annotators"]["consensus"]["given"] == "annotators"
    refined = result.refined
    assert refined.column("label_refined").take(rows).to_pylist() == checked[rows].tolist()
    assert set(refined.column("label_source").take(rows).to_pylist()) == {"verified"}
