"""The bundled demo: scikit-learn's digits with 20% of labels flipped, refine next to cleanlab.

The digits (1,797 8x8 images, 10 classes) ship inside scikit-learn, so the demo needs no
download. Labels are flipped symmetrically with a fixed seed; the true labels stay aside and
only score the result.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from refine.bench.baselines import cleanlab_baseline
from refine.bench.noise import flip_symmetric
from refine.finish import RunResult
from refine.pipeline import run
from refine.progress import NULL_PROGRESS, Progress
from refine.report.metrics import flag_scores, label_accuracy, label_codes

NOISE_RATE = 0.2
NOISE_SEED = 2026


def noisy_digits(rate: float = NOISE_RATE, seed: int = NOISE_SEED) -> tuple[pa.Table, np.ndarray]:
    """The digits as a table (64 pixel columns ``px0..px63`` and a noisy ``label``) and the true labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    truth = digits.target.astype(np.int64)
    noisy = flip_symmetric(truth, rate, n_classes=10, seed=seed)
    columns = {f"px{i}": digits.data[:, i].astype(np.float32) for i in range(digits.data.shape[1])}
    return pa.table({**columns, "label": noisy}), truth


@dataclass
class DemoReport:
    result: RunResult
    scores: dict[str, dict[str, Any]]  # method -> metrics


def run_demo(
    out: str | Path = "runs/demo",
    seed: int = 0,
    overwrite: bool = True,
    progress: Progress = NULL_PROGRESS,
    command: str | None = None,
) -> DemoReport:
    """Write the noisy digits, run refine on them into ``out``, and score refine and the baseline.

    ``command``, the command line that asked for it, goes to the run's ``run.json``."""
    table, truth = noisy_digits()
    labels = table.column("label").to_numpy()
    is_noisy = labels != truth
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "digits_noisy.parquet"
        pq.write_table(table, source)
        started = time.perf_counter()
        result = run(
            source,
            out,
            label="label",
            seed=seed,
            overwrite=overwrite,
            progress=progress,
            command=command,
        )
        refine_seconds = time.perf_counter() - started

    refined = result.refined
    refined_labels = label_codes(refined)
    scores = {
        "refine": {
            **flag_scores(
                refined.column("is_label_issue").to_numpy(zero_copy_only=False),
                is_noisy,
                refined.column("label_quality").to_numpy(zero_copy_only=False),
            ),
            "label_accuracy": label_accuracy(refined_labels, truth)["accuracy"],
            "seconds": refine_seconds,
        }
    }
    X = np.column_stack([table.column(f"px{i}").to_numpy() for i in range(64)])
    started = time.perf_counter()
    issues, quality, _ = cleanlab_baseline(X, labels, folds=5, seed=seed)
    scores["cleanlab+LR"] = {
        **flag_scores(issues, is_noisy, quality),
        "label_accuracy": float((labels == truth).mean()),  # it flags, it does not relabel
        "seconds": time.perf_counter() - started,
    }
    return DemoReport(result=result, scores=scores)
