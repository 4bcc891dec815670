"""`refine predict` here against `refine predict --engine ray` (Ray Data actors reading the row
groups where they lie), side by side: a student trained once on a generated table, then the same
generated Parquet directory predicted by each engine in turn, several times, through the CLI.
Prints wall seconds and rows/s of each (medians; the Ray figure counts starting a local Ray
instance and its actors, as a run pays for them) and whether both wrote the same table;
reports/scale-ray.md holds the figures.

    python benchmarks/ray_predict.py [--rows 1000000] [--files 8] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, rows: int, dim: int, classes: int, seed: int, files: int = 1) -> None:
    """``rows`` clustered vectors with labels (the same clusters for every seed) as ``files``
    Parquet files of 65,536-row groups: one file at ``path``, or a directory of them."""
    centres = np.random.default_rng(0).normal(0.0, 1.0, size=(classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, size=rows)
    vectors = centres[truth] + rng.normal(0.0, 0.9, size=(rows, dim)).astype(np.float32)
    parts = np.array_split(np.arange(rows), files)
    if files > 1:
        path.mkdir(parents=True, exist_ok=True)
    for part, rows_of in enumerate(parts):
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows_of].reshape(-1)), dim)
        table = pa.table({"id": rows_of, "embedding": embedding, "label": truth[rows_of]})
        where = path / f"part-{part}.parquet" if files > 1 else path
        pq.write_table(table, where, row_group_size=65_536)


def cli(*args: str) -> float:
    """Run ``python -m refine ARGS`` (its printout to stderr, out of the table's way); its wall
    seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "refine", *args]
    subprocess.run(command, cwd=ROOT, check=True, stdout=sys.stderr)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/refine-ray-predict"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    train, data = args.workdir / "train.parquet", args.workdir / f"data_{args.rows}"
    write_rows(train, args.train_rows, args.dim, args.classes, seed=1)
    if not data.exists():
        write_rows(data, args.rows, args.dim, args.classes, seed=2, files=args.files)
    run = args.workdir / "run"
    cli("run", str(train), "--out", str(run), "--overwrite", "--quiet", "--no-report")
    cli("distill", str(run), "--out", str(args.workdir / "model"), "--overwrite")
    seconds: dict[str, list[float]] = {"local": [], "ray": []}
    outputs: dict[str, pa.Table] = {}
    for _ in range(args.runs):
        for engine in seconds:
            out = args.workdir / f"pred-{engine}.parquet"
            common = [str(args.workdir / "model"), str(data), "--out", str(out), "--overwrite"]
            seconds[engine].append(cli("predict", *common, "--engine", engine))
            print(f"{engine}: {seconds[engine][-1]:.1f} s", file=sys.stderr)
            outputs[engine] = pq.read_table(out)
    same = outputs["local"].equals(outputs["ray"], check_metadata=True)
    cpus = len(os.sched_getaffinity(0))
    print(f"Command: `{shlex.join(['python', 'benchmarks/ray_predict.py', *sys.argv[1:]])}`")
    print()
    print(
        f"{args.rows:,} rows in {args.files} files of 65,536-row groups, {args.dim}-d embedding, "
        f"{args.classes} classes; a student distilled from a run on {args.train_rows:,} rows. "
        f"{platform.machine()}, {cpus} CPUs; medians of {args.runs} runs, in turn."
    )
    print()
    print("| engine | wall s (median) | rows/s | every wall s |")
    print("|---|---|---|---|")
    for engine, label in (("local", "here"), ("ray", f"--engine ray ({cpus} CPU actors)")):
        median = statistics.median(seconds[engine])
        runs = ", ".join(f"{s:.1f}" for s in seconds[engine])
        print(f"| {label} | {median:.1f} | {args.rows / median:,.0f} | {runs} |")
    print()
    print(f"Same table from both engines: {'yes' if same else 'NO'}.")


if __name__ == "__main__":
    main()
