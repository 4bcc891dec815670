"""Which decision settings refine should default to: variants side by side on the bench recipes.

Each variant is a set of ``refine.run`` options (``relabel_threshold``, ``seeds``, ...). Every
variant runs on the same recipes, seeds and rows, and is scored as ``refine bench`` scores
refine (the same helpers): F1 and AUPRC of the flags, accuracy of ``label_refined``, and the
share of the noisy->clean test-accuracy gap recovered by a LogisticRegression trained on the
refined labels. The seeds default to 10-12, the dev seeds: choices are made here, and the
bench's seeds (0 and 1) only measure them.

    python benchmarks/decisions.py [--seeds 10,11,12] [--recipes a,b] \
        [--variant 'default={}' --variant 'relabel 0.3={"relabel_threshold": 0.3}']

Writes ``reports/decisions.md``: means over seeds per recipe and variant, then means over
recipes (and the gap pooled over cases, as the bench reports it).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import refine
from refine.bench.recipes import build_dataset, load_recipe
from refine.bench.suite import TRUTH_COLUMNS, _downstream, _flags, truth_arrays, yardstick_inputs
from refine.report.metrics import label_codes

RECIPES = (
    "breast_cancer-instance20,breast_cancer-sym20,digits-instance30,digits-pair30,digits-sym20,"
    "digits-sym40,digits-unlabelled50,iris-onedir,make_classification-pair30,"
    "make_classification-sym20,text-sym20,wine-pair30,wine-sym20,wrench-youtube,wrench-sms"
)
VARIANTS = (
    "default={}",
    'relabel 0.5={"relabel_threshold": 0.5}',
    'relabel 0.3={"relabel_threshold": 0.3}',
    'seeds 3={"seeds": 3}',
)
METRICS = ("label_accuracy", "f1", "auprc", "gap_recovered")


@dataclass
class Case:
    """A recipe at a seed, refined: the truth and given labels (``truth_arrays``), the
    yardstick's inputs, and refine's labels and weights, each ``(N,)`` per training row."""

    truth: np.ndarray
    given: np.ndarray
    labelled: np.ndarray
    is_noisy: np.ndarray
    X: Any
    X_test: Any
    y_test: np.ndarray
    refined: Any  # refined.parquet's table
    labels: np.ndarray  # label_refined, -1 where null
    weight: np.ndarray
    seconds: float  # refine's wall time


def run_case(name: str, seed: int, options: dict) -> Case:
    """Build recipe ``name`` at ``seed`` and run refine on it with ``options``."""
    built = build_dataset(name, seed=seed)
    train, test = built.train, built.test
    X, X_test = yardstick_inputs(train, test)
    started = time.perf_counter()
    refined = refine.run(train, ignore=TRUTH_COLUMNS, seed=seed, **options).refined
    seconds = time.perf_counter() - started
    return Case(
        *truth_arrays(train),
        X,
        X_test,
        test.column("label").to_numpy(),
        refined,
        label_codes(refined),
        refined.column("sample_weight").to_numpy(),
        seconds,
    )


def score(name: str, seed: int, options: dict) -> dict:
    case = run_case(name, seed, options)
    truth, given, labelled, is_noisy = case.truth, case.given, case.labelled, case.is_noisy
    X, X_test, y_test, refined = case.X, case.X_test, case.y_test, case.refined
    labels, weight = case.labels, case.weight
    flags = _flags(
        refined.column("is_label_issue").to_numpy(zero_copy_only=False)[labelled],
        is_noisy[labelled],
        refined.column("label_quality").to_numpy(zero_copy_only=False)[labelled],
    )
    test_acc = _downstream(X, labels, weight, X_test, y_test)
    noisy_acc = _downstream(X[labelled], given[labelled], np.ones(labelled.sum()), X_test, y_test)
    clean_acc = _downstream(X, truth, np.ones(len(truth)), X_test, y_test)
    gap = clean_acc - noisy_acc
    return {
        "label_accuracy": float((labels[labelled] == truth[labelled]).mean()),
        "f1": flags["f1"],
        "auprc": flags["auprc"],
        "gap_recovered": (test_acc - noisy_acc) / gap if gap > 0.005 else None,
        "recovered": test_acc - noisy_acc,
        "gap": gap,
        "seconds": case.seconds,
    }


def _mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="10,11,12")
    parser.add_argument("--recipes", default=RECIPES)
    parser.add_argument("--variant", action="append", help="NAME=JSON options for refine.run")
    parser.add_argument("--out", type=Path, default=Path("reports/decisions.md"))
    args = parser.parse_args()
    variants = {}
    for text in args.variant or VARIANTS:
        name, _, options = text.partition("=")
        variants[name] = json.loads(options or "{}")
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = []
    for name in args.recipes.split(","):
        if load_recipe(name).missing_files():
            print(f"skipped {name}: its files are not on this machine")
        else:
            recipes.append(name)

    results: dict[tuple[str, str], list[dict]] = {}
    for name in recipes:
        for variant, options in variants.items():
            runs = [score(name, seed, options) for seed in seeds]
            results[name, variant] = runs
            print(name, variant, {m: round(_mean([r[m] for r in runs]), 3) for m in METRICS})

    recipes_flag = f" --recipes {args.recipes}" if args.recipes != RECIPES else ""
    header = "| recipe | variant | label accuracy | F1 | AUPRC | gap recovered | seconds |"
    lines = [
        "# Decision settings, side by side",
        "",
        f"`python benchmarks/decisions.py --seeds {args.seeds}{recipes_flag}` with variants "
        + ", ".join(f"`{n}` = `{json.dumps(o)}`" for n, o in variants.items())
        + ". Means over the seeds; a gap is left out where the noisy and clean test "
        "accuracies are within 0.005.",
        "",
        header,
        "|---|---|---|---|---|---|---|",
    ]
    for (name, variant), runs in results.items():
        cells = " | ".join(f"{_mean([r[m] for r in runs]):.3f}" for m in METRICS)
        lines.append(
            f"| {name} | {variant} | {cells} | {_mean([r['seconds'] for r in runs]):.1f} |"
        )
    lines += [
        "",
        "Means over every case (recipe and seed), as `refine bench` averages; the gap also "
        "pooled over cases (recovered accuracy summed, over the gaps summed):",
        "",
        "| variant | label accuracy | F1 | AUPRC | gap recovered, mean (pooled) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for variant in variants:
        runs = [r for (_, v), rs in results.items() if v == variant for r in rs]
        means = " | ".join(f"{_mean([r[m] for r in runs]):.3f}" for m in METRICS)
        pooled = sum(r["recovered"] for r in runs) / sum(r["gap"] for r in runs)
        seconds = sum(r["seconds"] for r in runs)
        lines.append(f"| {variant} | {means} ({pooled:.3f}) | {seconds:.0f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
