"""The deployable student against the teacher ensemble it was distilled from, side by side.

For each bench recipe and seed: ``refine.run`` on the noisy training rows (defaults but
``--rounds 2``: K=5 folds x 1 seed x 3 snapshots = 15 networks in ``model.pt``), then

- ensemble: the run's fold models (``refine.load_run(...).predict``), calibrated;
- student: ``refine.deploy.distill`` (one network of the teacher's widths, ``--student-size
  auto``: 1/15 of the ensemble's parameters), trained on ``label_soft`` and ``sample_weight``;
- given: the same student (same code, size, folds, seed) trained on the given noisy labels
  one-hot, every labelled row weight 1.

Scored on the recipe's clean test split: accuracy, top-label ECE, parameters, bytes on disk,
rows/s of the network forward pass on CPU (the encoded features are shared, so encoding is left
out; one torch thread; the median of 5 timings over the test rows tiled to 50k rows), and the
student's selective accuracy: at exactly 80% coverage (the test rows' own confidence quantile)
and at the threshold ``refine predict --coverage 0.8`` takes from the out-of-fold confidences
(with the coverage it reaches on test). On the real text sets (WRENCH youtube, sms, semeval:
labelling-function majority votes, gold test split) the student on refined labels is compared
with the student on the given labels.

With ``--predict-rows N``: ``refine.predict`` end to end (read Parquet in batches, encode,
predict, write Parquet) on N generated rows of 4 numeric columns, with the student of a run
on 3,000 rows of the same columns (default settings, one round); the median of 3 timings.

    python benchmarks/student.py [--seeds 0,1,2] [--recipes digits-sym20,...] [--real youtube,...]
        [--data ../shared/data/text] [--predict-rows 0] [--out reports/student.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import refine
from refine.bench.recipes import build_dataset
from refine.deploy import distill
from refine.learn.calibrate import expected_calibration_error
from refine.learn.modeldir import train_student
from refine.learn.student import coverage_threshold

RECIPES = ("digits-sym20", "digits-pair30", "make_classification-sym20", "wine-sym20")
REAL = ("youtube", "sms", "semeval")
RUN = dict(rounds=2, report=False)
TIMED_ROWS = 50_000
COVERAGE = 0.8


def forward_rows_per_second(predict, X: np.ndarray) -> float:
    """Rows per second of ``predict(X)`` on ``X`` tiled to ``TIMED_ROWS`` rows (median of 5)."""
    big = np.ascontiguousarray(np.resize(X, (TIMED_ROWS, X.shape[1])), dtype=np.float32)
    predict(big[:1000])  # warm up
    times = []
    for _ in range(5):
        started = time.perf_counter()
        predict(big)
        times.append(time.perf_counter() - started)
    return TIMED_ROWS / statistics.median(times)


def scores(proba: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float((proba.argmax(1) == truth).mean()),
        "ece": float(expected_calibration_error(proba, truth)),
    }


def selective(proba: np.ndarray, truth: np.ndarray, quantiles: list[float]) -> dict[str, float]:
    """Accuracy on the most confident 80% of test rows, and at the out-of-fold threshold."""
    confidence = proba.max(1)
    right = proba.argmax(1) == truth
    top = np.argsort(-confidence, kind="stable")[: int(np.ceil(COVERAGE * len(truth)))]
    threshold = coverage_threshold(quantiles, COVERAGE)
    answered = confidence >= threshold
    return {
        "acc_at_80": float(right[top].mean()),
        "oof_threshold_acc": float(right[answered].mean()) if answered.any() else float("nan"),
        "oof_threshold_coverage": float(answered.mean()),
    }


def given_student(previous, X: np.ndarray, given: np.ndarray, seed: int):
    """The student of the same size, folds and seed, trained on the given labels one-hot."""
    k = len(previous.classes)
    labelled = given >= 0
    onehot = np.zeros((len(given), k), np.float32)
    onehot[np.flatnonzero(labelled), given[labelled]] = 1.0
    return train_student(
        X,
        onehot,
        labelled.astype(np.float32),
        previous.encoder,
        previous.refined.schema,
        previous.refined.schema.field(previous.config.label),
        previous.classes,
        previous.config,
        "auto",
        1.0,
        seed,
        1,
        {},
        {},
    )


def measure(train: pa.Table, test: pa.Table, truth: np.ndarray, seed: int, work: Path) -> dict:
    """Every figure of one dataset and seed; ``truth`` is the test split's true labels."""
    run_dir, model_dir = work / f"run-{seed}", work / f"model-{seed}"
    refine.run(train, run_dir, seed=seed, **RUN)
    previous = refine.load_run(run_dir, device="cpu")
    started = time.perf_counter()
    student = distill(run_dir, model_dir, device="cpu")
    distill_seconds = time.perf_counter() - started
    given = given_student(
        previous,
        previous.encoder.transform(previous.refined),
        _given_codes(previous, train),
        seed,
    )
    X_test = previous.encoder.transform(test)
    ensemble_proba, _ = previous.predict(test)
    student_proba = student.net.predict_proba(X_test)
    given_proba = given.net.predict_proba(X_test)

    def ensemble_forward(X: np.ndarray) -> np.ndarray:
        return previous.member_proba(X).mean(0)

    return {
        "ensemble": {
            **scores(ensemble_proba, truth),
            "parameters": student.manifest["teacher_parameters"],
            "bytes": (run_dir / "model.pt").stat().st_size,
            "rows_per_s": forward_rows_per_second(ensemble_forward, X_test),
        },
        "student": {
            **scores(student_proba, truth),
            **selective(student_proba, truth, student.manifest["confidence_quantiles"]),
            "parameters": student.net.parameters,
            "bytes": (model_dir / "student.pt").stat().st_size,
            "rows_per_s": forward_rows_per_second(student.net.predict_proba, X_test),
            "distill_seconds": distill_seconds,
        },
        "given": scores(given_proba, truth),
    }


def _given_codes(previous, train: pa.Table) -> np.ndarray:
    """The given labels as class indices of the run's classes (-1: none)."""
    index = {c: i for i, c in enumerate(previous.classes.to_pylist())}
    return np.array([index.get(v, -1) for v in train.column("label").to_pylist()])


def recipe_case(name: str, seed: int, work: Path) -> dict:
    built = build_dataset(name, seed=seed)
    train = built.train.drop_columns(["label_true", "is_noisy"])
    test = built.test
    truth = test.column("label").to_numpy()
    return measure(train, test.drop_columns(["label"]), truth, seed, work)


def real_case(name: str, seed: int, data: Path, work: Path) -> dict:
    inputs = ["text", "entity1", "entity2"] if name == "semeval" else ["text"]
    train = pq.read_table(data / f"wrench_{name}_train.parquet")
    test = pq.read_table(data / f"wrench_{name}_test.parquet")
    return measure(
        train.select([*inputs, "label"]),
        test.select(inputs),
        test.column("label").to_numpy(),
        seed,
        work,
    )


def numeric_table(rows: int, seed: int) -> pa.Table:
    """``rows`` rows of 4 Gaussian columns ``x0..x3`` and a 3-class ``label`` read off them."""
    X = np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)
    label = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    return pa.table({**{f"x{i}": X[:, i] for i in range(4)}, "label": label})


def predict_throughput(rows: int, work: Path) -> dict[str, float]:
    """Rows per second of ``refine.predict`` from a Parquet file to a Parquet file."""
    pq.write_table(numeric_table(3_000, 0), work / "small.parquet")
    pq.write_table(numeric_table(rows, 1).drop_columns(["label"]), work / "big.parquet")
    refine.run(work / "small.parquet", work / "run", rounds=1, report=False, student=True)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        refine.predict(work / "run", work / "big.parquet", work / "pred.parquet", overwrite=True)
        times.append(time.perf_counter() - started)
    return {"rows": rows, "seconds": median(times), "rows_per_s": rows / median(times)}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def table_rows(name: str, cases: list[dict], k: int) -> tuple[str, str]:
    """The summary line of a dataset (medians) and its per-seed lines."""
    get = lambda arm, key: median([c[arm][key] for c in cases])  # noqa: E731
    ens, stu = get("ensemble", "accuracy"), get("student", "accuracy")
    speed = median([c["student"]["rows_per_s"] / c["ensemble"]["rows_per_s"] for c in cases])
    share = median([c["student"]["parameters"] / c["ensemble"]["parameters"] for c in cases])
    summary = (
        f"| {name} | {ens:.4f} | {stu:.4f} | {stu / ens:.1%} | {get('given', 'accuracy'):.4f} | "
        f"{get('ensemble', 'ece'):.4f} | {get('student', 'ece'):.4f} | {get('given', 'ece'):.4f} | "
        f"{share:.3f} | {speed:.1f}x | {get('student', 'acc_at_80'):.4f} | "
        f"{get('student', 'oof_threshold_acc'):.4f} ({get('student', 'oof_threshold_coverage'):.2f}) |"
    )
    seeds = [
        f"| {name} | {c['seed']} | {c['ensemble']['accuracy']:.4f} | {c['student']['accuracy']:.4f} "
        f"| {c['given']['accuracy']:.4f} | {c['ensemble']['ece']:.4f} | {c['student']['ece']:.4f} "
        f"| {c['given']['ece']:.4f} | {c['ensemble']['parameters']:,} / {c['student']['parameters']:,} "
        f"| {c['ensemble']['bytes']:,} / {c['student']['bytes']:,} "
        f"| {c['ensemble']['rows_per_s']:,.0f} / {c['student']['rows_per_s']:,.0f} "
        f"| {c['student']['acc_at_80']:.4f} | {c['student']['distill_seconds']:.1f} |"
        for c in cases
    ]
    return summary, "\n".join(seeds)


def report(results: dict[str, list[dict]], command: str, k: int) -> str:
    head = (
        "| set | ensemble acc | student acc | student/ensemble | given-label student acc | "
        "ECE ensemble | ECE student | ECE given | params student/ensemble | student speed-up | "
        "student acc @80% | acc at OOF threshold (coverage) |\n|" + "---|" * 12
    )
    seed_head = (
        "| set | seed | ensemble acc | student acc | given acc | ECE ens | ECE stu | ECE given | "
        "params ens / stu | bytes ens / stu | rows/s ens / stu | stu acc @80% | distill s |\n|"
        + "---|"
        * 13
    )
    lines, seeds = [], []
    for name, cases in results.items():
        summary, per_seed = table_rows(name, cases, k)
        lines.append(summary)
        seeds.append(per_seed)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        "# The deployable student against its teacher ensemble\n\n"
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, refine "
        f"at `{commit}`. Machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}. How each figure is made: the docstring of "
        "`benchmarks/student.py`. Medians over seeds; accuracy and ECE on the clean test split.\n\n"
        f"{head}\n"
        + "\n".join(lines)
        + "\n\n## Per seed\n\n"
        + seed_head
        + "\n"
        + "\n".join(seeds)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--real", default=",".join(REAL), help="'' for none")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/text"))
    parser.add_argument("--predict-rows", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [r for r in args.recipes.split(",") if r]:
            for seed in seeds:
                case = recipe_case(name, seed, Path(tmp) / name)
                results.setdefault(name, []).append({"seed": seed, **case})
                print(name, seed, json.dumps({a: case[a]["accuracy"] for a in case}), flush=True)
        for name in [r for r in args.real.split(",") if r]:
            for seed in seeds:
                case = real_case(name, seed, args.data, Path(tmp) / name)
                results.setdefault(f"wrench-{name}", []).append({"seed": seed, **case})
                print(name, seed, json.dumps({a: case[a]["accuracy"] for a in case}), flush=True)
    options = [("seeds", args.seeds), ("recipes", args.recipes), ("real", args.real)]
    options += [("data", str(args.data))] if args.real else []
    options += [("predict-rows", str(args.predict_rows))] if args.predict_rows else []
    command = "python benchmarks/student.py " + " ".join(f"--{k} {v}" for k, v in options)
    text = report(results, command, 5)
    if args.predict_rows:
        with tempfile.TemporaryDirectory() as tmp:
            speed = predict_throughput(args.predict_rows, Path(tmp))
        text += (
            f"\nrefine.predict end to end: {speed['rows']:,} rows of 4 numeric columns in "
            f"{speed['seconds']:.1f} s, {speed['rows_per_s']:,.0f} rows/s (median of 3).\n"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
