"""refine bench: metric code against scikit-learn on hand-made cases, and a real small run."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

import refine.bench.baselines
from refine.bench.baselines import logistic_regression
from refine.bench.recipes import build_dataset, load_recipe
from refine.bench.suite import (
    baseline_flags,
    measure,
    refine_input,
    reveal,
    run_bench,
    truth_arrays,
)
from refine.bench.summary import render_markdown, summarise, summarise_review, write_report
from refine.cli import cli
from refine.report.metrics import flag_scores, label_accuracy, label_codes
from tests.conftest import FAST, blobs


def test_flag_scores_agree_with_sklearn_by_hand():
    is_noisy = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    is_issue = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    quality = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.7, 0.95])
    scores = flag_scores(is_issue, is_noisy, quality)
    # By hand: 2 true positives, 1 false positive, 1 false negative.
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["precision"] == precision_score(is_noisy, is_issue)
    assert scores["recall"] == recall_score(is_noisy, is_issue)
    assert scores["f1"] == f1_score(is_noisy, is_issue)
    assert scores["auprc"] == pytest.approx(average_precision_score(is_noisy, -quality))
    # Ranking by quality: the noisy rows sit at ranks 1, 2 and 4 -> AP = (1 + 1 + 3/4) / 3.
    assert scores["auprc"] == pytest.approx((1 + 1 + 0.75) / 3)


def test_label_accuracy_counts_excluded_rows_as_wrong():
    scores = label_accuracy(np.array([0, 1, -1, 2]), np.array([0, 1, 1, 0]))
    assert scores == {"accuracy": 0.5, "accuracy_kept": pytest.approx(2 / 3), "kept": 0.75}


def test_label_codes_reads_null_refined_labels_as_minus_one():
    refined = pa.table({"label_refined": pa.array([2, None, 0, None], pa.int64())})
    codes = label_codes(refined)
    assert codes.dtype == np.int64
    assert codes.tolist() == [2, -1, 0, -1]
    assert label_accuracy(codes, np.array([2, 1, 0, 0]))["kept"] == 0.5


def test_measure_reports_time_and_memory_growth():
    def hold_50_mb():
        block = np.ones(50_000_000, np.uint8)
        time.sleep(0.2)  # several 20 ms samples while the block is resident
        return int(block.sum())

    result, seconds, memory = measure(hold_50_mb)
    assert result == 50_000_000
    assert seconds >= 0.2
    assert memory > 30  # MB


def test_summary_targets_from_hand_made_rows():
    def row(method, seed, f1, auprc, **extra):
        return {
            "dataset": "d",
            "seed": seed,
            "method": method,
            "f1": f1,
            "auprc": auprc,
            "seconds": 2.0 if method == "refine" else 1.0,
            "memory_mb": 10.0,
            **extra,
        }

    rows = [
        row(
            "refine",
            0,
            0.9,
            0.95,
            label_accuracy=0.9,
            given_accuracy=0.8,
            gap_recovered=0.5,
            test_accuracy=0.85,
            noisy_test_accuracy=0.8,
            clean_test_accuracy=0.9,
        ),
        row("cleanlab+LR", 0, 0.8, 0.90),
        row("cleanlab+HGB", 0, 0.85, 0.80),
        row(
            "refine",
            1,
            0.7,
            0.85,
            label_accuracy=0.7,
            given_accuracy=0.8,
            gap_recovered=1.0,
            test_accuracy=0.9,
            noisy_test_accuracy=0.6,
            clean_test_accuracy=0.9,
        ),
        row("cleanlab+LR", 1, 0.6, 0.80),
        row("cleanlab+HGB", 1, 0.65, 0.90),
    ]
    targets = summarise(rows)["targets"]
    assert targets["f1_margin_over_best_baseline"] == pytest.approx(0.05)  # (0.05 + 0.05) / 2
    assert targets["auprc_margin_over_best_baseline"] == pytest.approx(0.0)  # (0.05 - 0.05) / 2
    assert targets["cases_refined_labels_beat_given"] == 1 and targets["cases"] == 2
    assert targets["mean_gap_recovered"] == pytest.approx(0.75)
    # the sample standard deviation of 0.5 and 1.0 over the square root of the two cases
    assert targets["mean_gap_recovered_se"] == pytest.approx(0.25)
    assert targets["pooled_gap_recovered"] == pytest.approx(0.875)  # (0.05 + 0.3) / (0.1 + 0.3)
    assert targets["time_ratio_to_cleanlab_lr"] == pytest.approx(2.0)


@pytest.mark.slow
def test_bench_runs_side_by_side_on_a_small_recipe(tmp_path):
    report = run_bench(recipes=("iris-onedir",), seeds=1)
    methods = [r["method"] for r in report.rows]
    assert methods == ["refine", "cleanlab+LR", "cleanlab+HGB"]
    for r in report.rows:
        assert 0 <= r["f1"] <= 1 and 0 <= r["auprc"] <= 1 and r["seconds"] > 0
        assert r["clean_test_accuracy"] > 0.8
    md, js = write_report(report, tmp_path)
    data = json.loads(js.read_text())
    assert data["header"]["suite"] == "quick" and len(data["rows"]) == 3
    text = md.read_text()
    assert text == render_markdown(report) + "\n"
    assert "### iris-onedir" in text and "| refine |" in text and "| cleanlab+HGB |" in text


@pytest.mark.slow
def test_bench_command_writes_the_report(tmp_path):
    result = CliRunner().invoke(
        cli, ["bench", "--dataset", "iris-onedir", "--out", str(tmp_path), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"wrote {tmp_path / 'benchmarks.md'} and {tmp_path / 'benchmarks.json'}"
    )
    unknown = CliRunner().invoke(cli, ["bench", "--dataset", "nope", "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "nope" in unknown.output


def test_reveal_draws_a_seeded_share_of_the_labelled_rows():
    labelled = np.arange(60) % 5 != 0  # 48 labelled rows
    revealed = reveal(labelled, 0.1, seed=3)
    assert revealed.sum() == 5  # round(4.8)
    assert not (revealed & ~labelled).any()
    assert (reveal(labelled, 0.1, seed=3) == revealed).all()
    assert (reveal(labelled, 0.1, seed=4) != revealed).any()
    assert reveal(labelled, 0.5, seed=3).sum() == 24
    assert not reveal(labelled, 0.0, seed=3).any()


def test_refine_reads_the_revealed_truth_as_verified_labels():
    train = pa.table({"x": [0.1, 0.2, 0.3, 0.4], "label": pa.array([1, 0, None, 2], pa.int64())})
    truth = np.array([0, 0, 1, 2])
    table, options = refine_input(train, truth, np.array([True, False, True, False]))
    assert options == {"verified": "label_verified"}
    assert table.column_names == ["x", "label", "label_verified"]
    assert table.column("label_verified").to_pylist() == [0, None, 1, None]
    assert table.schema.field("label_verified").type == pa.int64()
    # nothing revealed: the table as built, and refine runs as it would without --verified
    same, none = refine_input(train, truth, np.zeros(4, bool))
    assert same is train and none == {}


def test_baselines_train_on_revealed_labels_and_flag_exactly_the_wrong_ones(monkeypatch):
    X, truth = blobs(60, k=3)
    given = truth.copy()
    given[:6] = (truth[:6] + 1) % 3  # rows 0-5 mislabelled
    revealed = np.zeros(60, bool)
    revealed[[0, 1, 2, 10, 11]] = True  # three wrong labels, two right ones
    issues, quality = baseline_flags(X, given, truth, revealed, logistic_regression(), seed=0)
    assert issues[revealed].tolist() == [True, True, True, False, False]
    assert quality[revealed].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]

    seen = {}

    def record(features, labels, folds, seed, model):
        seen["labels"] = labels
        return np.zeros(len(labels), bool), np.ones(len(labels)), None

    monkeypatch.setattr(refine.bench.baselines, "cleanlab_baseline", record)
    baseline_flags(X, given, truth, revealed, logistic_regression(), seed=0)
    fixed = given.copy()
    fixed[[0, 1, 2]] = truth[[0, 1, 2]]
    assert (seen["labels"] == fixed).all()  # rows 3-5 stay wrong: nobody revealed them


def test_bench_scores_refines_annotator_estimates_on_a_crowd_recipe():
    report = run_bench(recipes=("wine-crowd",), seeds=1, **FAST)
    row = next(r for r in report.rows if r["method"] == "refine")
    assert row["given_accuracy"] == pytest.approx(row["majority_accuracy"])
    assert 0 <= row["annotator_error"] < 0.15 and 0 <= row["dawid_skene_annotator_error"] < 0.3
    assert row["label_accuracy"] > row["majority_accuracy"]
    assert row["majority_accuracy"] < row["dawid_skene_accuracy"] <= 1
    baselines = [r for r in report.rows if r["method"] != "refine"]
    assert baselines and not any("annotator_error" in r for r in baselines)
    assert "Mean absolute error of the estimated annotator accuracies: refine" in (
        render_markdown(report)
    )


@pytest.fixture(scope="module")
def verified_report():
    """iris-onedir (112 training rows, all labelled) with 11 labels revealed, then the review
    loop's 6 more (round(0.05 * 112)): one small run serves the tests of both."""
    return run_bench(recipes=("iris-onedir",), verified=0.1, review=0.05, **FAST)


@pytest.mark.slow
def test_bench_reveals_the_same_rows_to_every_method(verified_report):
    recipe = load_recipe("iris-onedir")
    truth, given, labelled, _ = truth_arrays(build_dataset(recipe, seed=recipe.seed).train)
    revealed = reveal(labelled, 0.1, recipe.seed)
    assert revealed.sum() == 11  # round(0.1 * 112)
    # One of the 11 revealed labels was wrong: 97 of 112 given labels are right, 98 once fixed.
    assert (given[labelled] == truth[labelled]).sum() == 97
    rows = {r["method"]: r for r in verified_report.rows}
    assert list(rows) == ["refine", "cleanlab+LR", "cleanlab+HGB"]
    assert all(r["verified_rows"] == 11 for r in rows.values())
    assert rows["refine"]["given_accuracy"] == pytest.approx(98 / 112)
    assert rows["refine"]["policy"] in ("keep", "rules", "posterior")
    for name in ("cleanlab+LR", "cleanlab+HGB"):
        assert (
            rows[name]["label_accuracy"] == rows[name]["given_accuracy"] == pytest.approx(98 / 112)
        )
    assert verified_report.header["verified"] == 0.1
    text = render_markdown(verified_report)
    assert "11 labels revealed" in text and "(revealed rows fixed)" in text


def test_bench_command_refuses_a_share_outside_0_to_1(tmp_path):
    for option, value, of in (
        ("--verified", "1", "of the labelled training rows"),
        ("--verified", "-0.1", "of the labelled training rows"),
        ("--review", "1.5", "of the training rows (0.02 verifies 2% more)"),
    ):
        result = CliRunner().invoke(
            cli, ["bench", "--dataset", "iris-onedir", option, value, "--out", str(tmp_path)]
        )
        assert result.exit_code == 2
        assert result.output == (
            f"Error: {option} must be a share in [0, 1) {of}, got {float(value)}\n"
        )
    assert not (tmp_path / "benchmarks.md").exists()


@pytest.mark.slow
def test_review_loop_reruns_refine_with_reviewed_and_random_rows(verified_report, tmp_path):
    refine_row = verified_report.rows[0]
    loop = verified_report.review_loop
    rows = loop["rows"]
    assert [r["run"] for r in rows] == ["first", "random", "review"]
    assert [r["picked"] for r in rows] == [0, 6, 6]  # round(0.05 * 112)
    assert [r["verified_rows"] for r in rows] == [11, 17, 17]  # never a row verified twice
    first = rows[0]
    for key in ("label_accuracy", "given_accuracy", "f1", "test_accuracy", "policy"):
        assert first[key] == refine_row[key]
    for r in rows:  # every run against the first run's yardsticks
        assert r["noisy_test_accuracy"] == refine_row["noisy_test_accuracy"]
        assert r["clean_test_accuracy"] == refine_row["clean_test_accuracy"]
        assert r["given_accuracy"] >= first["given_accuracy"]  # more rows fixed, never fewer
    summary = loop["summary"]
    assert summary["share"] == 0.05 and summary["cases"] == 1
    assert list(summary["runs"]) == ["first", "random", "review"]
    assert summary["runs"]["first"]["mean_label_accuracy"] == pytest.approx(
        first["label_accuracy"], abs=1e-4
    )
    md, js = write_report(verified_report, tmp_path)
    assert json.loads(js.read_text())["review_loop"]["summary"]["cases"] == 1
    text = md.read_text()
    assert "## Review loop" in text and "| +5% random |" in text and "| +5% review |" in text
    assert "### iris-onedir, review loop" in text


def test_review_summary_from_hand_made_rows():
    def row(seed, run, label_accuracy, test_accuracy, gap=None):
        return {
            "dataset": "d",
            "seed": seed,
            "run": run,
            "verified_rows": 10.0,
            "label_accuracy": label_accuracy,
            "test_accuracy": test_accuracy,
            "noisy_test_accuracy": 0.6,
            "clean_test_accuracy": 1.0,
            "gap_recovered": gap,
            "policy": "keep" if run == "first" else "posterior",
        }

    rows = [
        row(0, "first", 0.80, 0.70, 0.25),
        row(0, "random", 0.82, 0.80, 0.50),
        row(0, "review", 0.90, 0.80, 0.50),
        row(1, "first", 0.70, 0.60, 0.0),
        row(1, "random", 0.75, 0.90, 0.75),
        row(1, "review", 0.75, 1.00, 1.0),
    ]
    s = summarise_review(rows, 0.02)
    assert s["runs"]["review"]["mean_label_accuracy"] == pytest.approx(0.825)
    assert s["runs"]["random"]["mean_gap_recovered"] == pytest.approx(0.625)
    # pooled: (0.2 + 0.4) / (0.4 + 0.4)
    assert s["runs"]["review"]["pooled_gap_recovered"] == pytest.approx(0.75)
    # review beat random on labels in case 0 only (a tie in case 1), on test accuracy in case 1
    assert s["cases_review_beat_random"] == 1
    assert s["cases_review_beat_random_test_accuracy"] == 1
    assert s["cases"] == 2
    assert s["by_dataset"]["d"]["first"]["policies"] == ["keep", "keep"]
    assert s["by_dataset"]["d"]["review"]["label_accuracy_mean"] == pytest.approx(0.825)


def test_the_report_header_names_the_recipes_run(monkeypatch):
    from refine.bench.suite import _header

    monkeypatch.setattr(sys, "argv", ["/x/refine/__main__.py", "bench"])  # python -m refine
    header = _header("quick", 2, 0.05, 0.0, ("iris-sym20", "wine-sym20"))
    assert header["command"] == (
        "refine bench --dataset iris-sym20 --dataset wine-sym20 --seeds 2 --verified 0.05"
    )
    assert _header("full", 1, 0.0, 0.0)["command"] == "refine bench --suite full --seeds 1"
