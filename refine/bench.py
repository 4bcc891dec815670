"""``refine bench``: refine against cleanlab baselines, side by side, on the dataset recipes.

For each recipe of a suite and each seed, in one process: build the noisy dataset, run refine,
run the baselines on the same rows, and score everything against the truth. Baselines:

* ``cleanlab+LR``: cleanlab's ``find_label_issues`` on 5-fold out-of-fold probabilities of a
  standardised ``LogisticRegression`` (on text recipes: TF-IDF of word 1-2-grams of the raw
  text into ``LogisticRegression``; on image recipes, the decoded, standardised pixels);
* ``cleanlab+HGB``: the same on ``HistGradientBoostingClassifier``;
* ``CleanLearning``: cleanlab's ``CleanLearning(LogisticRegression)``, for downstream accuracy.

Downstream accuracy is that of one learner (the same ``LogisticRegression``) on the clean
test split, trained on the noisy labels, on refine's ``label_refined`` with ``sample_weight``,
and on the true labels (the ceiling). Cost is wall time and peak memory (resident set growth
while the method runs), as ratios to ``cleanlab+LR``.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refine.progress import NULL_PROGRESS, Progress

TRUTH_COLUMNS = ("label_true", "is_noisy")
TEXT_COLUMN = "text"  # the text column of text recipes (refine.recipes.TEXT_COLUMN)
IMAGE_COLUMN = "image"  # the image column of image recipes (refine.recipes.IMAGE_COLUMN)
METHODS = ("refine", "cleanlab+LR", "cleanlab+HGB")


@dataclass
class BenchReport:
    rows: list[dict[str, Any]]  # one per recipe x seed x method
    summary: dict[str, Any]
    header: dict[str, Any]


def run_bench(
    suite: str = "quick",
    seeds: int = 1,
    recipes: tuple[str, ...] | None = None,
    progress: Progress = NULL_PROGRESS,
    **refine_options: Any,
) -> BenchReport:
    """Run every recipe of ``suite`` (or the named ``recipes``) for ``seeds`` seeds."""
    from refine.recipes import list_recipes, load_recipe

    chosen = [load_recipe(n) for n in recipes] if recipes else list_recipes(suite)
    for recipe in [r for r in chosen if r.missing_files()]:
        # the real text sets live outside the repository (../shared/data); not everyone has them
        progress.note(f"skipped {recipe.name}: {recipe.missing_files()[0]} is not on this machine")
        chosen.remove(recipe)
    rows: list[dict[str, Any]] = []
    task = progress.start("bench", "datasets", total=len(chosen) * seeds)
    for recipe in chosen:
        for offset in range(seeds):
            progress.note(f"{recipe.name}, seed {recipe.seed + offset}")
            rows.extend(_bench_one(recipe, recipe.seed + offset, refine_options))
            progress.advance(task)
    progress.finish(task)
    return BenchReport(rows=rows, summary=summarise(rows), header=_header(suite, seeds))


def _bench_one(recipe: Any, seed: int, refine_options: dict[str, Any]) -> list[dict[str, Any]]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    import refine
    from refine.baselines import cleanlab_baseline
    from refine.features import fit_features
    from refine.metrics import label_codes
    from refine.recipes import build_dataset

    built = build_dataset(recipe, seed=seed)
    train, test = built.train, built.test
    truth, given, labelled, is_noisy = truth_arrays(train)

    encoder = fit_features(train, "label", ignore=TRUTH_COLUMNS)
    X, X_test = encoder.transform(train), encoder.transform(test)
    y_test = test.column("label").to_numpy()
    text = TEXT_COLUMN in train.column_names
    X_lr, X_lr_test = yardstick_inputs(train, test, lambda: (X, X_test))
    base = {
        "dataset": recipe.name,
        "seed": seed,
        "rows": train.num_rows,
        "noise_rate": float(is_noisy[labelled].mean()),
    }

    result, seconds, memory = measure(
        lambda: refine.run(train, ignore=TRUTH_COLUMNS, seed=seed, **refine_options)
    )
    refined = result.refined
    refined_labels = label_codes(refined)
    weight = refined.column("sample_weight").to_numpy()
    rows = [
        {
            **base,
            "method": "refine",
            **_flags(
                refined.column("is_label_issue").to_numpy(zero_copy_only=False)[labelled],
                is_noisy[labelled],
                refined.column("label_quality").to_numpy(zero_copy_only=False)[labelled],
            ),
            **_labels(refined_labels[labelled], truth[labelled], given[labelled]),
            **_pseudo(refined, refined_labels, labelled, truth, X_lr, weight, X_lr_test, y_test),
            "test_accuracy": _downstream(X_lr, refined_labels, weight, X_lr_test, y_test),
            "seconds": seconds,
            "memory_mb": memory,
        }
    ]
    X_l, y_l = X[labelled], given[labelled]
    X_lr_l = X_lr[labelled]
    for name, model, features in (
        ("cleanlab+LR", _lr_model(text), X_lr_l),
        ("cleanlab+HGB", HistGradientBoostingClassifier(random_state=seed), X_l),
    ):
        (issues, quality, _), seconds, memory = measure(
            lambda model=model, features=features: cleanlab_baseline(
                features, y_l, folds=5, seed=seed, model=model
            )
        )
        rows.append(
            {
                **base,
                "method": name,
                **_flags(issues, is_noisy[labelled], quality),
                **_labels(y_l, truth[labelled], y_l),
                "seconds": seconds,
                "memory_mb": memory,
            }
        )
    noisy_acc = _downstream(X_lr_l, y_l, np.ones(len(y_l)), X_lr_test, y_test)
    clean_acc = _downstream(X_lr, truth, np.ones(len(truth)), X_lr_test, y_test)
    cleanlearning_acc = _clean_learning(X_lr_l, y_l, X_lr_test, y_test, seed)
    for row in rows:
        row.update(
            noisy_test_accuracy=noisy_acc,
            clean_test_accuracy=clean_acc,
            cleanlearning_test_accuracy=cleanlearning_acc,
        )
        if row["method"] == "refine":
            gap = clean_acc - noisy_acc
            row["gap_recovered"] = (row["test_accuracy"] - noisy_acc) / gap if gap > 0.005 else None
    return rows


def yardstick_inputs(
    train: Any, test: Any, encoded: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """What the LogisticRegression baselines and the test-accuracy yardstick read, for a built
    recipe's ``train`` and ``test`` tables: ``(X, X_test)``.

    Text recipes give their raw text (an object array, which ``_lr_model`` reads through TF-IDF,
    as a practitioner would) rather than refine's own encoding of it. Other recipes give
    refine's encoding: ``encoded()`` where the caller has it (called only then: encoding text
    is the slow part), else features fitted here on ``train``.

    Image recipes get it in float64. In float32 the solver's result on 256 pixels moves with
    the BLAS thread count; float64 narrows it, but cleanlab+LR still flags a few rows
    differently with 1 and 2 threads (digits_png-instance30 seed 0: F1 0.745 against 0.747).
    Refine's scores do not move.
    """
    if TEXT_COLUMN in train.column_names:
        return (
            np.asarray(train.column(TEXT_COLUMN).to_pylist(), dtype=object),
            np.asarray(test.column(TEXT_COLUMN).to_pylist(), dtype=object),
        )
    if encoded is None:
        from refine.features import fit_features

        encoder = fit_features(train, "label", ignore=TRUTH_COLUMNS)
        X, X_test = encoder.transform(train), encoder.transform(test)
    else:
        X, X_test = encoded()
    if IMAGE_COLUMN in train.column_names:
        return X.astype(np.float64), X_test.astype(np.float64)
    return X, X_test


def truth_arrays(train: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A built recipe's training table as arrays: ``truth``, ``given`` (-1 where unlabelled),
    ``labelled`` and ``is_noisy``, each ``(N,)``."""
    truth = train.column("label_true").to_numpy()
    given = train.column("label").to_numpy(zero_copy_only=False)
    labelled = ~np.isnan(given.astype(float))
    given = np.where(labelled, given, -1).astype(np.int64)
    is_noisy = train.column("is_noisy").to_numpy(zero_copy_only=False)
    return truth, given, labelled, is_noisy


def _flags(is_issue: np.ndarray, is_noisy: np.ndarray, quality: np.ndarray) -> dict[str, float]:
    from refine.metrics import flag_scores

    return flag_scores(np.asarray(is_issue, bool), np.asarray(is_noisy, bool), np.asarray(quality))


def _labels(refined: np.ndarray, truth: np.ndarray, given: np.ndarray) -> dict[str, float]:
    from refine.metrics import label_accuracy

    scores = label_accuracy(refined, truth)
    return {
        "label_accuracy": scores["accuracy"],
        "kept": scores["kept"],
        "given_accuracy": float((given == truth).mean()),
    }


def _pseudo(refined, refined_labels, labelled, truth, X, weight, X_test, y_test) -> dict[str, Any]:
    """Pseudo-labels on the unlabelled rows, where the recipe has any: their share, their
    accuracy, the accuracy on the same rows of a model trained on the true labels of the
    labelled rows (the yardstick) and on every unlabelled row, and downstream test accuracy
    with the pseudo-labelled rows left out."""
    if labelled.all():
        return {}
    pseudo = np.asarray(refined.column("label_source").to_pylist(), dtype=object) == "pseudo"
    clean_predicted = _lr_model(X.dtype == object).fit(X[labelled], truth[labelled]).predict(X)
    any_pseudo = bool(pseudo.any())
    return {
        "pseudo_share": float(pseudo[~labelled].mean()),
        "pseudo_accuracy": float((refined_labels[pseudo] == truth[pseudo]).mean())
        if any_pseudo
        else None,
        "clean_model_accuracy_on_pseudo": float((clean_predicted[pseudo] == truth[pseudo]).mean())
        if any_pseudo
        else None,
        "clean_model_accuracy_on_unlabelled": float(
            (clean_predicted[~labelled] == truth[~labelled]).mean()
        ),
        "test_accuracy_without_pseudo": _downstream(
            X, np.where(pseudo, -1, refined_labels), weight, X_test, y_test
        ),
    }


def _lr_model(text: bool) -> Any:
    from refine.baselines import logistic_regression, text_logistic_regression

    return text_logistic_regression() if text else logistic_regression()


def _downstream(X, labels, weight, X_test, y_test) -> float:
    """Test accuracy of a LogisticRegression trained on ``labels`` (-1 = skip): standardised
    on numeric features, over TF-IDF on a text array (``X`` of dtype object)."""
    keep = (labels >= 0) & (weight > 0)
    model = _lr_model(X.dtype == object)
    model.fit(X[keep], labels[keep], logisticregression__sample_weight=weight[keep])
    return float((model.predict(X_test) == y_test).mean())


def _clean_learning(X, labels, X_test, y_test, seed: int) -> float:
    from cleanlab.classification import CleanLearning

    model = CleanLearning(
        _lr_model(X.dtype == object), seed=seed, find_label_issues_kwargs={"n_jobs": 1}
    ).fit(X, labels)
    return float((model.predict(X_test) == y_test).mean())


def measure(function: Callable[[], Any]) -> tuple[Any, float, float]:
    """Call ``function``; return its result, wall seconds and peak resident-set growth in MB.

    Memory is sampled from /proc every 20 ms in a thread (Linux); elsewhere it is NaN.
    """
    statm = Path("/proc/self/statm")
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss() -> float:
        return int(statm.read_text().split()[1]) * page / 2**20

    if not statm.exists():
        started = time.perf_counter()
        return function(), time.perf_counter() - started, float("nan")
    start_rss = peak = rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        result = function()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return result, seconds, max(peak, rss()) - start_rss


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
            "seconds",
            "memory_mb",
        )
        if c in df
    ]
    per = df.groupby(["dataset", "method"])[metrics].agg(["mean", "std"])
    by_dataset = {}
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
        "time_ratio_to_cleanlab_lr": _num((refine_rows["seconds"] / lr["seconds"]).median()),
        "memory_ratio_to_cleanlab_lr": _num(
            (refine_rows["memory_mb"] / lr["memory_mb"].clip(lower=1.0)).median()
        ),
    }
    return {"targets": shared, "by_dataset": by_dataset}


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


def _header(suite: str, seeds: int) -> dict[str, Any]:
    import torch

    from refine.pipeline import _versions

    return {
        "command": " ".join(["refine", *sys.argv[1:]])
        if sys.argv[0].endswith("refine")
        else f"refine bench --suite {suite} --seeds {seeds}",
        "suite": suite,
        "seeds": seeds,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # Threads speed refine and the baselines unequally, so the time ratios depend on them.
        "machine": f"{platform.machine()}, {os.cpu_count()} cores "
        f"(threads: {torch.get_num_threads()}), {platform.platform()}",
        "versions": _versions(),
    }


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
        "",
        "## Targets",
        "",
        "| target | goal | measured |",
        "|---|---|---|",
        f"| F1 margin over the better cleanlab baseline | ≥ 0.05 | {_fmt(t['f1_margin_over_best_baseline'], sign=True)} |",
        f"| AUPRC margin over the better cleanlab baseline | ≥ 0.03 | {_fmt(t['auprc_margin_over_best_baseline'], sign=True)} |",
        f"| cases where refined labels beat the given ones | all | {t['cases_refined_labels_beat_given']} of {t['cases']} |",
        f"| noisy→clean test-accuracy gap recovered, mean of cases ± its standard error | ≥ 80% | {_pct(t['mean_gap_recovered'])}{_se(t.get('mean_gap_recovered_se'))} |",
        f"| noisy→clean test-accuracy gap recovered, pooled over cases | | {_pct(t.get('pooled_gap_recovered'))} |",
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
            f"{any_row['rows']:,} training rows, {any_row['noise_rate']:.1%} of labels wrong. "
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
        lines.append("")
    return "\n".join(lines)


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
                {"header": report.header, "summary": report.summary, "rows": report.rows},
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
