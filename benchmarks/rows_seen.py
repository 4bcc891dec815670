"""How many rows a fit should see on large data: label and test quality at several
``max_rows_seen`` caps, on embedding tables hard enough for the cap to matter.

``max_rows_seen`` bounds a fit's epochs on large data (``ModelConfig``): at 1M rows the default
decides whether a fit trains six epochs or three, and so most of the run's time. The scale
bench's table (``scale.make_embeddings``) is too easy to say anything about quality (every
setting finds every wrong label), so this script draws overlapping classes: the same mixture of
3 Gaussian centres a class, with a wider spread (``--spread``, 2.5 against the scale bench's
0.9), so that even the known mixture's own posterior (the Bayes classifier) gets only part of
the rows right (83% at 2.5). Noise, per case:

- ``sym20``: 20% of labels flipped uniformly to another class;
- ``pair30``: 30% of labels flipped to the next class (a systematic error);
- ``instance25``: 25% of rows flipped, hard rows more often, each to the class the Bayes
  posterior rates second (``flip_instance_dependent`` with the exact posterior).

Each case runs ``refine.run`` (5 folds, 2 rounds, the issue 29 scale setting; everything else
default) once per setting (a cap, and a batch size where given) on the same table, and scores
``label_refined`` against the true labels, the flags (``is_label_issue``) against the flipped
rows, and the run's ensemble (``load_run(...).predict``) on a clean test table of
``--test-rows`` rows drawn from the same mixture. The Bayes accuracy on that test table is printed as the ceiling.

    python benchmarks/rows_seen.py --cases 1000000:sym20,300000:pair30 \
        --caps 4000000,2000000,2000000:1024 [--spread 2.5] [--seed 10] \
        [--workdir /tmp/rows-seen] [--out rows-seen.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import logsumexp, softmax

import refine
from refine.bench.noise import flip_instance_dependent, flip_pair, flip_symmetric

NOISES = ("sym20", "pair30", "instance25")
DIM = 64
CLASSES = 10
CENTRES = 3  # Gaussian centres a class


def mixture(seed: int) -> np.ndarray:
    """The ``(CLASSES * CENTRES, DIM)`` centres of the mixture, class ``c`` owning rows
    ``c * CENTRES .. c * CENTRES + CENTRES - 1``."""
    return np.random.default_rng(seed).normal(0.0, 1.0, size=(CLASSES * CENTRES, DIM))


def draw(rows: int, centres: np.ndarray, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` vectors ``(rows, DIM)`` float32 and their true classes ``(rows,)``."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, CLASSES, size=rows)
    which = truth * CENTRES + rng.integers(0, CENTRES, size=rows)
    noise = rng.normal(0.0, spread, size=(rows, DIM)).astype(np.float32)
    return (centres[which].astype(np.float32) + noise), truth


def posterior(vectors: np.ndarray, centres: np.ndarray, spread: float) -> np.ndarray:
    """The mixture's exact class posterior ``(N, CLASSES)``: the Bayes classifier."""
    out = np.empty((len(vectors), CLASSES), np.float64)
    for start in range(0, len(vectors), 65536):
        x = vectors[start : start + 65536].astype(np.float64)
        squared = (x**2).sum(1, keepdims=True) - 2 * x @ centres.T + (centres**2).sum(1)
        log_density = (-squared / (2 * spread**2)).reshape(len(x), CLASSES, CENTRES)
        out[start : start + len(x)] = softmax(logsumexp(log_density, axis=2), axis=1)
    return out


def noisy_labels(noise: str, truth: np.ndarray, proba: np.ndarray, seed: int) -> np.ndarray:
    if noise == "sym20":
        return flip_symmetric(truth, 0.2, CLASSES, seed=seed)
    if noise == "pair30":
        return flip_pair(truth, 0.3, CLASSES, seed=seed)
    if noise == "instance25":
        return flip_instance_dependent(truth, proba, 0.25, seed=seed)
    raise SystemExit(f"unknown noise {noise!r}: one of {', '.join(NOISES)}")


def table_of(vectors: np.ndarray, labels: np.ndarray | None) -> pa.Table:
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)
    columns: dict[str, Any] = {"id": np.arange(len(vectors)), "embedding": embedding}
    if labels is not None:
        columns["label"] = labels
    return pa.table(columns)


def run_case(
    rows: int, noise: str, settings: list[tuple[int, int]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One table, one refine run per ``(max_rows_seen, batch_size)`` setting (batch size 0:
    refine's choice); a result dict per setting."""
    centres = mixture(args.seed)
    vectors, truth = draw(rows, centres, args.spread, args.seed + 1)
    noisy = noisy_labels(noise, truth, posterior(vectors, centres, args.spread), args.seed + 2)
    test_x, test_y = draw(args.test_rows, centres, args.spread, args.seed + 3)
    bayes = float((posterior(test_x, centres, args.spread).argmax(1) == test_y).mean())
    case_dir = args.workdir / f"{rows}-{noise}"
    case_dir.mkdir(parents=True, exist_ok=True)
    data = case_dir / "data.parquet"
    pq.write_table(table_of(vectors, noisy), data, row_group_size=131072)
    del vectors
    test = table_of(test_x, None)
    wrong = noisy != truth
    results = []
    for cap, batch in settings:
        config = refine.RunConfig(
            ignore=("id",),
            folds=args.folds,
            rounds=args.rounds,
            model=refine.ModelConfig(max_rows_seen=cap, batch_size=batch),
        )
        out = case_dir / f"cap-{cap}-batch-{batch}"
        started = time.perf_counter()
        refine.run(str(data), out, config=config, overwrite=True, workers=args.workers)
        seconds = time.perf_counter() - started
        refined = pq.read_table(
            out / "refined.parquet", columns=["label_refined", "is_label_issue"]
        )
        label_refined = refined["label_refined"].to_numpy()
        flagged = refined["is_label_issue"].to_numpy(zero_copy_only=False)
        proba, _ = refine.load_run(out).predict(test)
        hit = (flagged & wrong).sum()
        precision = hit / max(flagged.sum(), 1)
        recall = hit / max(wrong.sum(), 1)
        result = {
            "rows": rows,
            "noise": noise,
            "cap": cap,
            "batch": batch,
            "epochs": json.loads((out / "run.json").read_text()).get("epochs_per_fit"),
            "seconds": round(seconds, 1),
            "given_acc": round(float((noisy == truth).mean()), 4),
            "refined_acc": round(float((label_refined == truth).mean()), 4),
            "flag_f1": round(float(2 * precision * recall / max(precision + recall, 1e-12)), 4),
            "test_acc": round(float((proba.argmax(1) == test_y).mean()), 4),
            "bayes_test_acc": round(bayes, 4),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "| rows | noise | max_rows_seen | batch | epochs a fit | wall s | given labels right | "
        "label_refined right | flag F1 | ensemble test acc (Bayes) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        epochs = r["epochs"]
        shown = f"{min(epochs)}-{max(epochs)}" if isinstance(epochs, list) and epochs else "?"
        lines.append(
            f"| {r['rows']:,} | {r['noise']} | {r['cap']:,} | {r['batch'] or 'auto'} | {shown} | "
            f"{r['seconds']:.0f} | "
            f"{r['given_acc']:.4f} | {r['refined_acc']:.4f} | {r['flag_f1']:.4f} | "
            f"{r['test_acc']:.4f} ({r['bayes_test_acc']:.4f}) |"
        )
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/rows_seen.py " + " ".join(sys.argv[1:])
    return (
        "\n".join(lines)
        + f"\n\nGenerated by `{command}` on {stamp}, refine {refine.__version__}. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores. Spread {args.spread}, data seed "
        f"{args.seed}, {args.folds} folds x {args.rounds} rounds, --workers {args.workers}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        default="1000000:sym20",
        help="ROWS:NOISE,... (noises: " + ", ".join(NOISES) + ")",
    )
    parser.add_argument(
        "--caps",
        default="4000000,2000000",
        help="max_rows_seen values, each optionally :BATCH (a --batch-size; default refine's)",
    )
    parser.add_argument("--spread", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=10, help="data seed (a dev seed)")
    parser.add_argument("--test-rows", type=int, default=50000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rows-seen"))
    parser.add_argument("--out", type=Path, default=None, help="also write a Markdown table")
    args = parser.parse_args()
    settings = [
        (int(cap), int(batch or 0))
        for cap, _, batch in (c.partition(":") for c in args.caps.split(","))
    ]
    results = []
    for case in args.cases.split(","):
        rows, noise = case.split(":")
        results += run_case(int(rows), noise, settings, args)
    table = markdown(results, args)
    print(table)
    if args.out is not None:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
