"""Continuous updates: a stream of 5 batches whose class balance shifts, refined batch by batch
with ``refine update`` (replay 1) and, side by side, by rerunning ``refine run`` from scratch on
every row so far.

Data: scikit-learn's bundled digits, 20% of labels flipped symmetrically, 300 rows held out as
a clean test set, the rest dealt into 5 batches whose class mix moves from the low digits to the
high ones. For every batch and both ways: precision/recall/F1 of the new batch's flags against
the injected noise, accuracy of its ``label_refined``, the accuracy of the latest model on the
first batch's true labels (forgetting) and on the test set, and wall time. Medians over seeds.

    python benchmarks/stream.py [--seeds 3] [--out reports/stream.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.datasets import load_digits

import refine
from refine.bench.noise import flip_symmetric
from refine.report.metrics import flag_scores

BATCHES = 5
TEST_ROWS = 300


def make_stream(seed: int) -> tuple[list[pa.Table], list[np.ndarray], pa.Table, np.ndarray]:
    """Batches with a shifting class balance: batch b draws class c with weight
    exp(0.5 * (c - 4.5) * (b - 2)), so batch 0 is mostly low digits and batch 4 high ones."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, rest = order[:TEST_ROWS], order[TEST_ROWS:]
    noisy = flip_symmetric(y, 0.2, 10, seed=seed + 100)

    batch_of = np.empty(len(rest), np.int64)
    for c in range(10):
        rows = np.flatnonzero(y[rest] == c)
        weight = np.exp(0.5 * (c - 4.5) * (np.arange(BATCHES) - 2))
        batch_of[rows] = rng.choice(BATCHES, size=len(rows), p=weight / weight.sum())

    def table(rows: np.ndarray, labels: np.ndarray) -> pa.Table:
        columns = {f"px{i}": X[rows, i].astype(np.float32) for i in range(X.shape[1])}
        return pa.table({**columns, "label": labels[rows]})

    batches = [rest[batch_of == b] for b in range(BATCHES)]
    return (
        [table(rows, noisy) for rows in batches],
        [(noisy[rows] != y[rows], y[rows]) for rows in batches],
        table(test, y),
        y[batches[0]],
    )


def score(result: refine.RunResult, is_noisy: np.ndarray, truth: np.ndarray, rows: slice):
    refined = result.refined.slice(rows.start, rows.stop - rows.start)
    flags = np.asarray(refined.column("is_label_issue"))
    quality = np.asarray(refined.column("label_quality").to_numpy(zero_copy_only=False))
    labels = refined.column("label_refined").to_numpy(zero_copy_only=False).astype(float)
    return {
        **flag_scores(flags, is_noisy, quality),
        "label_accuracy": float((labels == truth).mean()),
    }


def accuracy(run_dir: Path, table: pa.Table, truth: np.ndarray) -> float:
    proba, _ = refine.load_run(run_dir).predict(table)
    return float((proba.argmax(1) == truth).mean())


def one_seed(seed: int, workdir: Path) -> list[dict]:
    batches, truths, test, first_truth = make_stream(seed)
    test_truth = np.asarray(test.column("label"))
    rows: list[dict] = []
    previous = None
    for b, (batch, (is_noisy, truth)) in enumerate(zip(batches, truths, strict=True)):
        # update: the first batch is a plain run, later ones update the previous run
        out = workdir / f"update-{seed}-{b}"
        started = time.perf_counter()
        if previous is None:
            result = refine.run(batch, out, seed=seed)
        else:
            result = refine.update(previous, batch, out, seed=seed)
        seconds = time.perf_counter() - started
        previous = out
        rows.append(
            {
                "seed": seed,
                "batch": b,
                "method": "update",
                "seconds": seconds,
                **score(result, is_noisy, truth, slice(0, batch.num_rows)),
                "first_batch_accuracy": accuracy(out, batches[0], first_truth),
                "test_accuracy": accuracy(out, test, test_truth),
            }
        )
        # scratch: one run on every batch so far; score the newest batch's rows
        everything = pa.concat_tables(batches[: b + 1])
        out = workdir / f"scratch-{seed}-{b}"
        started = time.perf_counter()
        result = refine.run(everything, out, seed=seed)
        seconds = time.perf_counter() - started
        start = everything.num_rows - batch.num_rows
        rows.append(
            {
                "seed": seed,
                "batch": b,
                "method": "scratch",
                "seconds": seconds,
                **score(result, is_noisy, truth, slice(start, everything.num_rows)),
                "first_batch_accuracy": accuracy(out, batches[0], first_truth),
                "test_accuracy": accuracy(out, test, test_truth),
            }
        )
        print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def render(rows: list[dict], seeds: int) -> str:
    metrics = (
        "f1",
        "precision",
        "recall",
        "label_accuracy",
        "first_batch_accuracy",
        "test_accuracy",
        "seconds",
    )
    lines = [
        "# Continuous updates: refine update against rerunning from scratch",
        "",
        f"Generated by `python benchmarks/stream.py --seeds {seeds}`. Digits, 20% symmetric "
        "noise, 5 batches with a shifting class balance, 300 clean test rows. `update`: "
        "`refine run` on batch 0, then `refine update` (replay 1) on each batch; `scratch`: "
        "`refine run` on all batches so far. Flags and label accuracy on the newest batch's "
        "rows; `first batch acc` is the latest model's accuracy on batch 0's true labels "
        f"(forgetting). Medians over {seeds} seeds.",
        "",
        "| batch | method | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for b in range(BATCHES):
        for method in ("update", "scratch"):
            chosen = [r for r in rows if r["batch"] == b and r["method"] == method]
            cells = [
                f"{statistics.median(r[m] for r in chosen):.{1 if m == 'seconds' else 3}f}"
                for m in metrics
            ]
            lines.append(f"| {b} | {method} | " + " | ".join(cells) + " |")
    later = [r for r in rows if r["batch"] > 0]
    up = sum(r["seconds"] for r in later if r["method"] == "update")
    sc = sum(r["seconds"] for r in later if r["method"] == "scratch")
    lines += ["", f"Batches 1-4 in all: update {up:.0f} s, scratch {sc:.0f} s ({sc / up:.1f}x)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/stream.md"))
    args = parser.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in range(args.seeds):
            rows += one_seed(seed, Path(workdir))
    args.out.write_text(render(rows, args.seeds))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
