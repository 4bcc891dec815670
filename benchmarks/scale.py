"""Scale check: a 1,000,000-row file with a 64-dim fixed_size_list<float32> embedding column and
10 classes, 20% of labels flipped, run end to end (5 folds, 2 rounds) through the CLI.

Prints wall time, peak memory of the refine process, the share of time in each stage (from
run.json), and flag quality against the known noise. The data is generated, not downloaded.

    python benchmarks/scale.py [--rows 1000000] [--dim 64] [--workdir /tmp/refine-scale]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from refine.bench.noise import flip_symmetric


def make_embeddings(rows: int, dim: int, classes: int, seed: int = 0):
    """Clustered Gaussian vectors: each class a mixture of 3 centres, overlapping a little."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(classes * 3, dim)).astype(np.float32)
    truth = rng.integers(0, classes, size=rows)
    which = truth * 3 + rng.integers(0, 3, size=rows)
    vectors = centres[which] + rng.normal(0.0, 0.9, size=(rows, dim)).astype(np.float32)
    return vectors.astype(np.float32), truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/refine-scale"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.workdir / f"embeddings_{args.rows}.parquet"
    vectors, truth = make_embeddings(args.rows, args.dim, args.classes)
    noisy = flip_symmetric(truth, 0.2, args.classes, seed=1)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), args.dim)
    pq.write_table(
        pa.table({"id": np.arange(args.rows), "embedding": embedding, "label": noisy}), data
    )
    del vectors, embedding

    out = args.workdir / "run"
    command = [
        sys.executable,
        "-m",
        "refine",
        "run",
        str(data),
        "--out",
        str(out),
        "--overwrite",
        "--ignore",
        "id",
        "--folds",
        "5",
        "--rounds",
        "2",
        "--quiet",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2

    summary = json.loads((out / "run.json").read_text())
    timings = summary["timings"]
    flagged = pq.read_table(out / "refined.parquet", columns=["is_label_issue", "label_refined"])
    is_issue = flagged.column("is_label_issue").to_numpy(zero_copy_only=False)
    refined = flagged.column("label_refined").to_pandas()
    wrong = noisy != truth
    tp = (is_issue & wrong).sum()
    report = {
        "rows": args.rows,
        "dim": args.dim,
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": round(peak_gb, 2),
        "stage_seconds": timings,
        "stage_share": {k: round(v / wall, 3) for k, v in timings.items()},
        "epochs_per_fit": summary["epochs_per_fit"],
        "precision": round(tp / max(is_issue.sum(), 1), 4),
        "recall": round(tp / wrong.sum(), 4),
        "label_accuracy": round(float((refined == truth).mean()), 4),
        "given_accuracy": round(float((noisy == truth).mean()), 4),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
