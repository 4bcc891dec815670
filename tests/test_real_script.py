"""benchmarks/real.py: its label variants, verified-label modes and scoring, on hand-made cases.

The full run reads the WRENCH files in ../shared/data and takes an hour; these checks need
neither.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

# benchmarks/ is a folder of scripts, not a package: it joins the import path for the import.
_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, _BENCHMARKS)
try:
    import real
finally:
    sys.path.remove(_BENCHMARKS)

# Six rows, four labelling functions (-1 = abstain). Function 2 votes on five rows, more than
# any other, so -notop drops it.
VOTES = np.array(
    [
        [0, -1, 1, -1],  # without function 2: 0
        [-1, -1, 1, -1],  # only function 2 voted: dropped by -notop
        [1, 1, 1, -1],  # every vote 1
        [-1, -1, -1, -1],  # nobody voted
        [0, 1, 1, 0],  # without function 2: 0 against 1, two to one
        [1, -1, 0, 0],  # without function 2: a tie, 1 against 0
    ]
)


def test_top_function_is_the_one_voting_on_most_rows():
    assert real.top_function(VOTES) == 2


def test_majority_without_the_top_function():
    labels, note = real.variant_labels("notop", np.zeros(6, int), VOTES, 2, seed=0)
    assert labels[:5].tolist() == [0, -1, 1, -1, 0]
    assert labels[5] in (0, 1)
    assert note == (
        "majority vote without labelling function 2 (votes on 5 of 6 rows); "
        "2 rows left without a vote dropped"
    )


def test_majority_vote_breaks_ties_at_random_and_by_seed():
    tie = np.array([[1, 0, -1]] * 4000)
    labels = real.majority_vote(tie, 2, np.random.default_rng(0))
    assert 0.47 < labels.mean() < 0.53
    again = real.majority_vote(tie, 2, np.random.default_rng(0))
    assert (labels == again).all()


def test_single_annotator_draws_among_the_functions_that_voted():
    rows = np.tile(VOTES, (3000, 1))
    labels = real.single_annotator(rows, np.random.default_rng(0)).reshape(3000, 6)
    assert set(labels[:, 0]) == {0, 1}
    assert (labels[:, 1] == 1).all() and (labels[:, 2] == 1).all()
    assert (labels[:, 3] == -1).all()
    # Row 4: two of four functions say 0. Row 5: one of three says 1 (a draw among classes
    # rather than functions would give 1/2).
    assert abs((labels[:, 4] == 0).mean() - 1 / 2) < 0.03
    assert abs((labels[:, 5] == 1).mean() - 1 / 3) < 0.03


def test_variants_are_seeded_and_the_plain_set_keeps_its_labels():
    rows = np.tile(VOTES, (50, 1))
    first, _ = real.variant_labels("single", np.zeros(300, int), rows, 2, seed=3)
    second, _ = real.variant_labels("single", np.zeros(300, int), rows, 2, seed=3)
    other, _ = real.variant_labels("single", np.zeros(300, int), rows, 2, seed=4)
    assert (first == second).all() and (first != other).any()
    given = np.arange(6) % 2
    assert (real.variant_labels("", given, VOTES, 2, seed=0)[0] == given).all()


def test_set_names():
    assert real.parse_name("sms-notop-emb") == ("sms", "notop", True)
    assert real.parse_name("youtube") == ("youtube", "", False)
    assert len(real.set_names(embeddings=True)) == 18
    with pytest.raises(SystemExit, match="unknown set 'sms-double'"):
        real.parse_name("sms-double")


def test_reveal_truth_gives_five_percent_of_rows_their_true_label():
    table = pa.table({"text": [f"t{i}" for i in range(40)], "label": [0] * 40})
    truth = np.arange(40) % 3
    revealed, chosen = real.reveal_truth(table, truth, 0.05, seed=0)
    gold = revealed.column("gold").to_numpy(zero_copy_only=False)
    assert chosen.sum() == 2
    assert np.isnan(gold[~chosen].astype(float)).all()
    assert (gold[chosen] == truth[chosen]).all()
    assert (real.reveal_truth(table, truth, 0.05, seed=0)[1] == chosen).all()
    assert real.reveal_truth(table.slice(0, 3), truth[:3], 0.05, seed=0)[1].sum() == 1


def test_append_verified_moves_the_valid_labels_to_gold():
    train = pa.table({"text": ["a", "b", "c"], "label": pa.array([1, 0, 1], pa.int64())})
    valid = pa.table({"text": ["d", "e"], "label": pa.array([0, 1], pa.int64())})
    joined = real.append_verified(train, valid)
    assert joined.column_names == ["text", "label", "gold"]
    assert joined.column("text").to_pylist() == ["a", "b", "c", "d", "e"]
    assert joined.column("label").to_pylist() == [1, 0, 1, None, None]
    assert joined.column("gold").to_pylist() == [None, None, None, 0, 1]


def test_label_scores():
    truth = np.array([0, 1, 1, 1])
    given = np.array([0, 1, 1, 0])
    refined = np.array([0, -1, 1, 0])  # -1: excluded, counted wrong
    verified = np.array([False, False, True, False])
    scores = real.label_scores(given, refined, truth, verified)
    assert (scores["given_correct"], scores["refined_correct"]) == (3, 2)
    assert (scores["given_accuracy"], scores["refined_accuracy"]) == (0.75, 0.5)
    assert scores["unverified_rows"] == 3
    assert (scores["unverified_given_correct"], scores["unverified_refined_correct"]) == (2, 1)
    assert scores["unverified_refined_accuracy"] == pytest.approx(1 / 3)


def _case(mode: str, given: int, refined: int, given_test: float, refined_test: float) -> dict:
    return {
        "set": "s",
        "seed": 0,
        "mode": mode,
        "policy": "keep",
        "given_correct": given,
        "refined_correct": refined,
        "unverified_given_correct": given,
        "unverified_refined_correct": refined,
        "given_test": given_test,
        "refined_test": refined_test,
    }


def test_summary_counts_the_cases_refine_did_worse():
    rows = [
        _case("none", 90, 90, 0.8, 0.8),
        _case("none", 90, 89, 0.8, 0.81),
        _case("valid", 90, 95, 0.8, 0.79),
    ]
    table = real.summary_table(rows, before=False)
    assert table[2:] == [  # verified 5% did not run: no row of zeros for it
        "| none | 2 | 1 | 1 | 0 |",
        "| valid | 1 | 0 | 0 | 1 |",
        "| all | 3 | 1 | 1 | 1 |",
    ]


def test_policies_are_named_once_where_the_seeds_agree():
    assert real.policies([{"policy": "keep"}, {"policy": "keep"}]) == "keep"
    assert real.policies([{"policy": "keep"}, {"policy": None}]) == "keep, -"


def test_modes_choose_which_inputs_run(tmp_path, monkeypatch):
    # --modes "verified 5%" runs refine on that mode's input alone; the report's mode tables
    # name only the modes run.
    train = pa.table({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
    s = real.RealSet(
        name="tiny",
        train=train,
        truth=np.array([0, 1, 1, 1]),
        valid=train,
        X=np.array(["a", "b", "c", "d"], dtype=object),
        X_test=np.array(["a", "b"], dtype=object),
        y_test=np.array([0, 1]),
        note="hand-made",
    )
    monkeypatch.setattr(real, "load_set", lambda *a: s)
    ran = []

    def run_here(table, seed):
        ran.append(table.column_names)
        labels = table.column("label").to_numpy(zero_copy_only=False)
        return real.Outcome(labels, np.ones(len(labels)), None, 0.0)

    monkeypatch.setattr(real, "run_here", run_here)
    monkeypatch.setattr(real, "downstream", lambda *a, **k: 0.5)
    args = type(
        "Args", (), {"modes": ["verified 5%"], "before": None, "data": tmp_path, "embeddings": None}
    )
    rows = real.measure_set("tiny", 0, args, before_verified=False)
    assert [r["mode"] for r in rows] == ["verified 5%"]
    assert ran == [["text", "label", real.GOLD]]
    args.seeds, args.before = "0", None
    text = real.render(rows, real.make_header(args, None))
    assert "## Mode: verified 5%" in text and "## Mode: none" not in text


@pytest.mark.parametrize("reads_verified", [True, False])
def test_modes_with_a_checkout_before(tmp_path, monkeypatch, reads_verified):
    # The checkout before runs the chosen modes; one that cannot read verified labels runs the
    # none input in their place.
    train = pa.table({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
    s = real.RealSet("tiny", train, np.array([0, 1, 1, 1]), train, None, None, None, "hand-made")
    monkeypatch.setattr(real, "load_set", lambda *a: s)
    labels = np.array([0, 1, 0, 1])
    outcome = real.Outcome(labels, np.ones(4), None, 0.0)
    monkeypatch.setattr(real, "run_here", lambda table, seed: outcome)
    monkeypatch.setattr(real, "downstream", lambda *a, **k: 0.5)
    asked = []

    def run_before(checkout, tables, seed):
        asked.append(sorted(tables))
        return {m: outcome for m in tables}

    monkeypatch.setattr(real, "run_before", run_before)
    args = type("Args", (), {"modes": ["verified 5%"], "before": tmp_path, "data": tmp_path})
    args.embeddings = None
    rows = real.measure_set("tiny", 0, args, before_verified=reads_verified)
    assert asked == [["verified 5%"] if reads_verified else ["none"]]
    assert [r["mode"] for r in rows] == ["verified 5%"]
    assert rows[0]["before_accuracy"] == 0.75


def test_review_mode_reveals_the_picked_rows_and_as_many_random_ones(tmp_path, monkeypatch):
    # The review mode runs none with a run directory, asks refine review for 2% of the rows
    # (here one of 20), reruns with their true label as gold, and beside it the same number
    # of random rows; both are reported, and so is none only when asked for.
    n = 20
    train = pa.table({"text": [f"t{i}" for i in range(n)], "label": [0] * n})
    truth = np.array([0] * 10 + [1] * 10)
    s = real.RealSet("tiny", train, truth, train, None, None, None, "hand-made")
    monkeypatch.setattr(real, "load_set", lambda *a: s)
    runs = []

    def run_here(table, seed, out=None):
        runs.append((table.column_names, out))
        labels = table.column("label").to_numpy(zero_copy_only=False)
        if real.GOLD in table.column_names:
            gold = table.column(real.GOLD)
            labels = np.where(
                gold.is_valid().to_numpy(zero_copy_only=False), gold.fill_null(0), labels
            )
        return real.Outcome(labels, np.ones(n), {"policy": "keep"}, 0.0)

    asked = []

    def reviewed_rows(run_dir, budget):
        asked.append((run_dir, budget))
        return np.array([15])

    monkeypatch.setattr(real, "run_here", run_here)
    monkeypatch.setattr(real, "reviewed_rows", reviewed_rows)
    monkeypatch.setattr(real, "downstream", lambda s, labels, weight=None: (labels == truth).mean())
    args = type("Args", (), {"modes": [real.REVIEW], "before": None, "data": tmp_path})
    args.embeddings = None
    rows = real.measure_set("tiny", 0, args, before_verified=False)
    assert [r["mode"] for r in rows] == [real.REVIEW, real.RANDOM]
    assert runs[0] == (["text", "label"], asked[0][0]) and asked[0][1] == 1
    assert [r[0] for r in runs[1:]] == [["text", "label", real.GOLD]] * 2
    review, random = rows
    assert review["verified_rows"] == random["verified_rows"] == 1
    assert review["picked_wrong"] == 1 and review["refined_correct"] == 11
    drawn = np.random.default_rng([0, 3]).choice(n, 1, replace=False)
    assert random["picked_wrong"] == int(truth[drawn][0] != 0)
    summary = real.review_summary(rows)
    assert summary["cases"] == 1
    assert summary["review_given_wrong"] == 1
    text = "\n".join(real.review_lines(rows))
    assert "| tiny | 0.5500 |" in text
    args.seeds = "0"
    report = real.render(rows, real.make_header(args, None))
    assert "## Mode: review 2%" in report and "## Mode: random 2%" in report
    assert "## Mode: none" not in report
    table = real.summary_table(rows, before=False)
    assert table[-3:] == [
        "| review 2% | 1 | 0 | 0 | 0 |",
        "| random 2% | 1 | 0 | 0 | 0 |",
        "| all | 2 | 0 | 0 | 0 |",
    ]
