"""What ``refine bench`` writes: means over seeds, the targets, the Markdown report a person
reads and the JSON beside it. ``refine.bench.suite`` runs the methods and scores them; this module
only summarises and renders their rows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("refine", "cleanlab+LR", "cleanlab+HGB")
REVIEW_RUNS = ("first", "random", "review")  # the review loop's runs, in the order shown
REVIEW_METRICS = (
    "verified_rows",
    "label_accuracy",
    "given_accuracy",
    "f1",
    "auprc",
    "test_accuracy",
    "gap_recovered",
)


@dataclass
class BenchReport:
    rows: list[dict[str, Any]]  # one per recipe x seed x method
    summary: dict[str, Any]
    header: dict[str, Any]
    # With --review: {"summary": summarise_review(...), "rows": one per recipe x seed x run}.
    review_loop: dict[str, Any] | None = None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and standard deviations over seeds per dataset and method; targets over everything."""
    import pandas as pd

    df = pd.DataFrame(rows)
    metrics = [
        c
        for c in (
            "precision",
            "recall",
            "f1",
            "auprc",
            "auroc",
            "label_accuracy",
            "given_accuracy",
            "kept",
            "test_accuracy",
            "gap_recovered",
            "pseudo_share",
            "pseudo_accuracy",
            "clean_model_accuracy_on_pseudo",
            "clean_model_accuracy_on_unlabelled",
            "test_accuracy_without_pseudo",
            "ece_true_before",
            "ece_true_after",
            "annotator_error",
            "dawid_skene_annotator_error",
            "majority_accuracy",
            "dawid_skene_accuracy",
            "seconds",
            "memory_mb",
        )
        if c in df
    ]
    per = df.groupby(["dataset", "method"])[metrics].agg(["mean", "std"])
    by_dataset: dict[str, dict[str, Any]] = {}
    for (dataset, method), values in per.iterrows():
        by_dataset.setdefault(dataset, {})[method] = {
            f"{m}_{stat}": _num(values[(m, stat)]) for m in metrics for stat in ("mean", "std")
        }
    refine_rows = df[df.method == "refine"].set_index(["dataset", "seed"])
    best = df[df.method != "refine"].groupby(["dataset", "seed"])[["f1", "auprc"]].max()
    lr = df[df.method == "cleanlab+LR"].set_index(["dataset", "seed"])
    shared = {
        "f1_margin_over_best_baseline": _num((refine_rows["f1"] - best["f1"]).mean()),
        "auprc_margin_over_best_baseline": _num((refine_rows["auprc"] - best["auprc"]).mean()),
        "cases_refined_labels_beat_given": int(
            (refine_rows["label_accuracy"] > refine_rows["given_accuracy"]).sum()
        ),
        "cases": int(len(refine_rows)),
        "mean_gap_recovered": _num(refine_rows["gap_recovered"].dropna().mean()),
        "mean_gap_recovered_se": _num(refine_rows["gap_recovered"].dropna().sem()),
        "pooled_gap_recovered": _pooled_gap(refine_rows),
        **{
            f"mean_{c}": _num(refine_rows[c].mean())
            for c in ("ece_true_before", "ece_true_after")
            if c in refine_rows
        },
        "time_ratio_to_cleanlab_lr": _num((refine_rows["seconds"] / lr["seconds"]).median()),
        "memory_ratio_to_cleanlab_lr": _num(
            (refine_rows["memory_mb"] / lr["memory_mb"].clip(lower=1.0)).median()
        ),
    }
    return {"targets": shared, "by_dataset": by_dataset}


def summarise_review(rows: list[dict[str, Any]], share: float) -> dict[str, Any]:
    """The review loop's figures from its rows (one per case and run: ``first``, ``random``,
    ``review``): for each run, mean label accuracy and the gap recovered (mean of cases and
    pooled); the cases where the reviewed rows did better than the random ones; and per
    dataset and run, means and standard deviations over seeds and the policies refine chose."""
    import pandas as pd

    df = pd.DataFrame(rows)
    metrics = [m for m in REVIEW_METRICS if m in df]
    df[metrics] = df[metrics].astype(float)  # a column of None (no gap anywhere) stays numeric
    runs = {
        run: {
            "mean_label_accuracy": _num(part["label_accuracy"].mean()),
            "mean_gap_recovered": _num(part["gap_recovered"].dropna().mean()),
            "pooled_gap_recovered": _pooled_gap(part),
        }
        for run, part in ((run, df[df.run == run]) for run in REVIEW_RUNS)
    }
    by_case = df.set_index(["dataset", "seed", "run"])
    label = by_case["label_accuracy"].unstack("run")
    test = by_case["test_accuracy"].unstack("run")
    by_dataset: dict[str, dict[str, Any]] = {}
    for (dataset, run), part in df.groupby(["dataset", "run"]):
        values = part[metrics].agg(["mean", "std"])
        by_dataset.setdefault(dataset, {})[run] = {
            **{f"{m}_{stat}": _num(values.loc[stat, m]) for m in metrics for stat in values.index},
            "policies": part.sort_values("seed")["policy"].tolist(),
        }
    return {
        "share": share,
        "runs": runs,
        "cases_review_beat_random": int((label["review"] > label["random"]).sum()),
        "cases_review_beat_random_test_accuracy": int((test["review"] > test["random"]).sum()),
        "cases": int(len(label)),
        "by_dataset": by_dataset,
    }


def _pooled_gap(rows: Any) -> float | None:
    """Test accuracy recovered over the noisy->clean gap, summed over all cases before dividing.

    The mean of per-case ratios is dominated by the small test splits (45 rows for wine, where
    one test row moves a case's ratio by a third of its gap); pooling weighs each case by the
    accuracy at stake in it.
    """
    gap = (rows["clean_test_accuracy"] - rows["noisy_test_accuracy"]).sum()
    recovered = (rows["test_accuracy"] - rows["noisy_test_accuracy"]).sum()
    return _num(recovered / gap) if gap > 0 else None


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(value) else round(value, 4)


def render_markdown(report: BenchReport) -> str:
    """The report a person reads: header, targets, then one table per dataset."""
    h, s = report.header, report.summary
    t = s["targets"]
    lines = [
        "# refine benchmarks",
        "",
        f"Generated by `{h['command']}` on {h['date']}.",
        f"Machine: {h['machine']}.",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in h["versions"].items() if k != "platform")
        + ".",
        "",
        "All methods run on the same rows in the same process. Flags are scored against the "
        "injected noise on labelled rows; `label acc` is the accuracy of refine's `label_refined` "
        "(excluded rows count as wrong) or, for the baselines, of the given labels; test accuracy "
        "is a standardised LogisticRegression on the clean test split. On text datasets, "
        "`cleanlab+LR` and the test-accuracy model read the raw text through TF-IDF (word "
        "1-2-grams). Means ± standard deviations over seeds.",
        *_verified_note(h.get("verified", 0.0)),
        "",
        "## Targets",
        "",
        "| target | goal | measured |",
        "|---|---|---|",
        f"| F1 margin over the better cleanlab baseline | ≥ 0.05 | {_fmt(t['f1_margin_over_best_baseline'], sign=True)} |",
        f"| AUPRC margin over the better cleanlab baseline | ≥ 0.03 | {_fmt(t['auprc_margin_over_best_baseline'], sign=True)} |",
        f"| cases where refined labels beat the given ones{' (revealed rows fixed)' if h.get('verified') else ''} | all | {t['cases_refined_labels_beat_given']} of {t['cases']} |",
        f"| noisy→clean test-accuracy gap recovered, mean of cases ± its standard error | ≥ 80% | {_pct(t['mean_gap_recovered'])}{_se(t.get('mean_gap_recovered_se'))} |",
        f"| noisy→clean test-accuracy gap recovered, pooled over cases | | {_pct(t.get('pooled_gap_recovered'))} |",
        f"| ECE against the true labels, calibrated to the given labels → towards the true class (mean) | | {_fmt(t.get('mean_ece_true_before'))} → {_fmt(t.get('mean_ece_true_after'))} |",
        f"| wall time, refine / cleanlab+LR (median) | | {_fmt(t['time_ratio_to_cleanlab_lr'], 1)}× |",
        f"| peak memory growth, refine / cleanlab+LR (median) | | {_fmt(t['memory_ratio_to_cleanlab_lr'], 1)}× |",
        "",
        "## Per dataset",
        "",
    ]
    columns = [
        ("precision", 3),
        ("recall", 3),
        ("f1", 3),
        ("auprc", 3),
        ("auroc", 3),
        ("label_accuracy", 3),
        ("test_accuracy", 3),
        ("seconds", 1),
        ("memory_mb", 0),
    ]
    for dataset, methods in s["by_dataset"].items():
        any_row = next(r for r in report.rows if r["dataset"] == dataset)
        lines += [
            f"### {dataset}",
            "",
            f"{any_row['rows']:,} training rows, {any_row['noise_rate']:.1%} of labels wrong"
            f"{_revealed(any_row.get('verified_rows', 0))}. "
            f"Test accuracy trained on noisy labels {any_row['noisy_test_accuracy']:.3f}, "
            f"on clean labels {any_row['clean_test_accuracy']:.3f}, "
            f"CleanLearning {any_row['cleanlearning_test_accuracy']:.3f}.",
            "",
            "| method | " + " | ".join(c.replace("_", " ") for c, _ in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for method in METHODS:
            if method not in methods:
                continue
            m = methods[method]
            cells = [_pm(m.get(f"{c}_mean"), m.get(f"{c}_std"), d) for c, d in columns]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        r = methods.get("refine", {})
        if r.get("pseudo_share_mean") is not None:
            lines += [
                "",
                f"Pseudo-labels: {_pct(r['pseudo_share_mean'])} of the unlabelled rows, "
                f"accuracy {_fmt(r['pseudo_accuracy_mean'])} (a LogisticRegression trained on "
                f"the true labels of the labelled rows: {_fmt(r['clean_model_accuracy_on_pseudo_mean'])} "
                f"on the same rows, {_fmt(r['clean_model_accuracy_on_unlabelled_mean'])} on every "
                f"unlabelled row). Test accuracy with pseudo-labels {_fmt(r['test_accuracy_mean'])}, "
                f"without {_fmt(r['test_accuracy_without_pseudo_mean'])}.",
            ]
        if r.get("annotator_error_mean") is not None:
            lines += [
                "",
                f"Crowd: consensus accuracy refine {_fmt(r['label_accuracy_mean'])}, "
                f"Dawid-Skene {_fmt(r['dawid_skene_accuracy_mean'])}, majority vote "
                f"{_fmt(r['majority_accuracy_mean'])}. Mean absolute error of the estimated "
                f"annotator accuracies: refine {_fmt(r['annotator_error_mean'])}, Dawid-Skene "
                f"{_fmt(r['dawid_skene_annotator_error_mean'])}.",
            ]
        lines.append("")
    if report.review_loop is not None:
        lines += _review_section(report.review_loop["summary"])
    return "\n".join(lines)


def _review_section(s: dict[str, Any]) -> list[str]:
    """The review loop in the Markdown report: the runs side by side, then a table a dataset."""
    more = _share(s["share"])
    names = {"first": "first run", "random": f"+{more} random", "review": f"+{more} review"}
    lines = [
        "## Review loop",
        "",
        f"A simulated reviewer: after refine's first run, the true label of {more} more of the "
        "training rows is revealed and refine runs again with them verified: the rows "
        "`refine.review.pick` chooses from the first run (`review`), or as many drawn at random "
        "(`random`), each on top of the rows revealed before. Every run is scored as refine is "
        "above, against the same noisy- and clean-label test accuracies; `given accuracy` counts "
        "the run's revealed rows as fixed.",
        "",
        "| run | label acc (mean) | gap recovered (mean) | gap recovered (pooled) |",
        "|---|---|---|---|",
        *(
            f"| {names[run]} | {_fmt(r['mean_label_accuracy'])} | "
            f"{_pct(r['mean_gap_recovered'])} | {_pct(r['pooled_gap_recovered'])} |"
            for run, r in s["runs"].items()
        ),
        "",
        f"The reviewed rows gave more accurate labels than the random ones in "
        f"{s['cases_review_beat_random']} of {s['cases']} cases, and a higher test accuracy in "
        f"{s['cases_review_beat_random_test_accuracy']}.",
        "",
    ]
    columns = [
        ("verified_rows", 0),
        ("given_accuracy", 3),
        ("label_accuracy", 3),
        ("f1", 3),
        ("auprc", 3),
        ("test_accuracy", 3),
        ("gap_recovered", 2),
    ]
    for dataset, runs in s["by_dataset"].items():
        lines += [
            f"### {dataset}, review loop",
            "",
            "| run | " + " | ".join(c.replace("_", " ") for c, _ in columns) + " | policy |",
            "|---|" + "---|" * (len(columns) + 1),
        ]
        for run in (r for r in REVIEW_RUNS if r in runs):
            m = runs[run]
            cells = [_pm(m.get(f"{c}_mean"), m.get(f"{c}_std"), d) for c, d in columns]
            policies = ", ".join(m["policies"])
            lines.append(f"| {names[run]} | " + " | ".join(cells) + f" | {policies} |")
        lines.append("")
    return lines


def _verified_note(share: float) -> list[str]:
    if not share:
        return []
    return [
        "",
        f"The true label of {_share(share)} of each case's labelled training rows, drawn at "
        "random, is revealed to every method (`--verified`): refine reads it as verified "
        "labels; the cleanlab baselines train on the given labels with those rows fixed and flag "
        "exactly the revealed rows whose given label was wrong, as refine does. The baselines' "
        "`label acc`, the noisy-label test accuracy, CleanLearning and the given labels that "
        "refine's must beat all count the revealed rows as fixed.",
    ]


def _revealed(rows: int) -> str:
    return f", {rows:,} labels revealed" if rows else ""


def _share(share: float) -> str:
    """``0.02`` -> ``2%``, ``0.025`` -> ``2.5%``."""
    return f"{round(share * 100, 6):g}%"


def _fmt(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _se(se: float | None) -> str:
    """`` ± 7%`` after a share, or nothing where the standard error is unknown (one case, or a
    report from before it was kept)."""
    return "" if se is None else f" ± {_pct(se)}"


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def write_report(report: BenchReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``benchmarks.md`` and ``benchmarks.json`` to ``out_dir``, each atomically."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "benchmarks.md", out_dir / "benchmarks.json"
    for path, text in (
        (md, render_markdown(report) + "\n"),
        (
            js,
            json.dumps(
                {"header": report.header, "summary": report.summary, "rows": report.rows}
                | ({"review_loop": report.review_loop} if report.review_loop else {}),
                indent=2,
                default=_num,
            )
            + "\n",
        ),
    ):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md, js
