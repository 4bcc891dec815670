"""Scale curve: files of ROWS rows with a 64-dim fixed_size_list<float32> embedding column and
10 classes, 20% of labels flipped, each run end to end (5 folds, 2 rounds) through the CLI,
once per engine.

Engines: ``memory`` (the default plan: --workers auto, --memory unset), ``streaming`` (a
--memory budget of 90% of the in-memory estimate, or ``--memory SIZE``, so the features stream
from disk), and ``ray`` (``--engine ray``, where the installed refine has it). For each run it
prints wall time, peak resident memory (the largest single process, and the sum over the
process tree sampled every 0.2 s, as VmRSS and, once a second, as PSS), seconds per million
rows, the plan refine chose (from run.json), the time of each stage, and flag quality against
the known noise. The data is generated, not downloaded.

    python benchmarks/scale.py [--rows 1000000,2000000] [--engines memory,streaming]
        [--dim 64] [--workers auto] [--memory SIZE] [--workdir /tmp/refine-scale]
        [--json results.json] [--max-epochs 1] [--timeline rss]

``--max-epochs 1`` makes a memory measurement cheap: peak memory does not depend on the epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from refine.bench.noise import flip_symmetric

ENGINES = ("memory", "streaming", "ray")


def make_embeddings(rows: int, dim: int, classes: int, seed: int = 0):
    """Clustered Gaussian vectors: each class a mixture of 3 centres, overlapping a little."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(classes * 3, dim)).astype(np.float32)
    truth = rng.integers(0, classes, size=rows)
    which = truth * 3 + rng.integers(0, 3, size=rows)
    vectors = centres[which] + rng.normal(0.0, 0.9, size=(rows, dim)).astype(np.float32)
    return vectors.astype(np.float32), truth


def write_data(path: Path, rows: int, dim: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The generated table at ``path`` (written once, reused, with its true labels beside it
    as ``.truth.npy``); its true and noisy labels."""
    truth_path = path.with_suffix(".truth.npy")
    if path.exists() and truth_path.exists():
        truth = np.load(truth_path)
        return truth, flip_symmetric(truth, 0.2, classes, seed=1)
    vectors, truth = make_embeddings(rows, dim, classes)
    noisy = flip_symmetric(truth, 0.2, classes, seed=1)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    del vectors
    table = pa.table({"id": np.arange(rows), "embedding": embedding, "label": noisy})
    pq.write_table(table, path, row_group_size=1 << 20)
    np.save(truth_path, truth)
    return truth, noisy


def tree_memory(pid: int, pss: bool = False) -> tuple[int, int, int]:
    """Bytes resident in process ``pid`` and all its descendants now, the largest high-water
    mark (VmHWM) among them, and with ``pss`` their proportional set size (shared pages split
    among the processes that map them, so memory-mapped features and Ray's object store count
    once; 0 without ``pss``) (Linux /proc)."""
    total, highest, proportional, todo = 0, 0, 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith("Vm"))
            total += int(fields["VmRSS"].split()[0]) * 1024
            highest = max(highest, int(fields["VmHWM"].split()[0]) * 1024)
            if pss:
                with open(f"/proc/{current}/smaps_rollup") as f:
                    proportional += next(
                        int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:")
                    )
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo += [int(child) for child in f.read().split()]
        except (OSError, KeyError, ValueError, StopIteration):
            continue  # the process ended between two reads
    return total, highest, proportional


def run_refine(command: list[str], timeline: Path | None = None) -> dict[str, float]:
    """Run ``command``; its wall seconds, CPU seconds, and the peak resident bytes of its
    largest process and of its whole process tree (VmRSS summed, which counts shared pages in
    every process that maps them, and PSS, which does not), all sampled. With ``timeline``,
    every sample (seconds since the start, tree bytes) goes there as a line.

    The largest process is read from each process's own high-water mark, not wait4's
    ``ru_maxrss``: Linux carries a process's high-water mark into the children it forks, past
    exec, so ``ru_maxrss`` reported this script's own peak (generating 10M rows: 10.07 GB)
    as refine's. A run too short to be sampled falls back to ``ru_maxrss``."""
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak = [0, 0, 0]
    done = threading.Event()
    samples: list[str] = []

    def sample() -> None:
        count = 0
        while not done.wait(0.2):
            # PSS walks every page table of the tree: once a second keeps its cost small.
            rss, highest, pss = tree_memory(process.pid, pss=count % 5 == 0)
            peak[0], peak[1], peak[2] = max(peak[0], rss), max(peak[1], highest), max(peak[2], pss)
            count += 1
            samples.append(f"{time.perf_counter() - started:.1f} {rss}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if timeline is not None:
        timeline.write_text("\n".join(samples) + "\n")
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,  # the process and the workers it waited for
        "process_rss": peak[1] or usage.ru_maxrss * 1024,
        "tree_rss": peak[0],
        "tree_pss": peak[2],
    }


def engine_flags(
    engine: str, rows: int, dim: int, classes: int, folds: int, memory: str | None = None
) -> list[str]:
    """The flags that select ``engine``; ``memory``, the streaming engine's budget (default:
    90% of the in-memory estimate)."""
    if engine == "streaming":
        if memory is not None:
            return ["--memory", memory]
        from refine.learn import budget  # here, so that a checkout without it runs `memory`

        estimate = budget.plan(rows, dim, classes, folds, memory=1 << 50).in_memory_bytes
        return ["--memory", str(int(0.9 * estimate))]
    if engine == "ray":
        return ["--engine", "ray"]
    return []


def measure(
    data: Path, out: Path, engine: str, args: argparse.Namespace, truth, noisy
) -> dict[str, Any]:
    """One run of ``engine`` on ``data``: its figures and its quality against the truth."""
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
        str(args.folds),
        "--rounds",
        "2",
        "--workers",
        args.workers,
        "--no-report",
        "--quiet",
        *engine_flags(engine, len(truth), args.dim, args.classes, args.folds, args.memory),
        *(["--max-epochs", str(args.max_epochs)] if args.max_epochs else []),
    ]
    timeline = args.timeline.with_suffix(f".{len(truth)}-{engine}.txt") if args.timeline else None
    cost = run_refine(command, timeline)
    summary = json.loads((out / "run.json").read_text())
    flagged = pq.read_table(out / "refined.parquet", columns=["is_label_issue", "label_refined"])
    is_issue = flagged.column("is_label_issue").to_numpy(zero_copy_only=False)
    refined = flagged.column("label_refined").to_numpy(zero_copy_only=False)
    wrong = noisy != truth
    tp = int((is_issue & wrong).sum())
    timings = summary["timings"]
    return {
        "rows": len(truth),
        "dim": args.dim,
        "engine": engine,
        "execution": summary.get("execution"),
        "wall_seconds": round(cost["wall"], 1),
        "seconds_per_million_rows": round(cost["wall"] / len(truth) * 1e6, 1),
        "cpu_seconds": round(cost.get("cpu", float("nan")), 1),
        "peak_process_rss_gb": round(cost["process_rss"] / 2**30, 2),
        "peak_tree_rss_gb": round(cost["tree_rss"] / 2**30, 2),
        "peak_tree_pss_gb": round(cost.get("tree_pss", 0) / 2**30, 2),
        "stage_seconds": timings,
        "stage_share": {k: round(v / cost["wall"], 3) for k, v in timings.items()},
        "epochs_per_fit": summary["epochs_per_fit"],
        "precision": round(tp / max(int(is_issue.sum()), 1), 4),
        "recall": round(tp / max(int(wrong.sum()), 1), 4),
        "label_accuracy": round(float((refined == truth).mean()), 4),
        "given_accuracy": round(float((noisy == truth).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000", help="comma-separated row counts")
    parser.add_argument("--engines", default="memory,streaming", help=f"some of {ENGINES}")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workers", default="auto")
    parser.add_argument(
        "--memory",
        default=None,
        metavar="SIZE",
        help="the streaming engine's --memory, such as 6GB (default: 90%% of the in-memory "
        "estimate)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/refine-scale"))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--max-epochs", type=int, default=0, help="passed to refine (0: its default)"
    )
    parser.add_argument(
        "--timeline", type=Path, default=None, help="write RSS samples to TIMELINE.ROWS-ENGINE.txt"
    )
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        data = args.workdir / f"embeddings_{rows}x{args.dim}.parquet"
        truth, noisy = write_data(data, rows, args.dim, args.classes)
        for engine in engines:
            out = args.workdir / f"run-{rows}-{engine}"
            results.append(measure(data, out, engine, args, truth, noisy))
            print(json.dumps(results[-1]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
