"""--engine ray against the local engine, side by side: the same generated table (a directory of
Parquet shards, a 64-dim embedding, 10 classes, 20% of labels flipped), the same seed, run
through the CLI with `--workers 1`, `--workers N` (N: the machine's cores) and `--engine ray`
(a local Ray instance, started by each run, which takes every core), in turn, several times.
Prints wall time, training time and peak memory of each (medians), and whether all of them
wrote the same refined.parquet; reports/scale-ray.md holds the figures.

    python benchmarks/ray_engine.py [--rows 200000] [--runs 3] [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from refine.bench.noise import flip_symmetric

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4


def make_shards(folder: Path, rows: int, dim: int, classes: int, seed: int = 0) -> np.ndarray:
    """Write ``rows`` clustered vectors with noisy labels as SHARDS Parquet files under
    ``folder``; return the true labels ``(rows,)``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(classes * 3, dim)).astype(np.float32)
    truth = rng.integers(0, classes, size=rows)
    which = truth * 3 + rng.integers(0, 3, size=rows)
    vectors = centres[which] + rng.normal(0.0, 0.9, size=(rows, dim)).astype(np.float32)
    noisy = flip_symmetric(truth, 0.2, classes, seed=seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    for shard, rows_of in enumerate(np.array_split(np.arange(rows), SHARDS)):
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows_of].reshape(-1)), dim)
        table = pa.table({"id": rows_of, "embedding": embedding, "label": noisy[rows_of]})
        pq.write_table(table, folder / f"part-{shard}.parquet")
    return truth


def tree_rss(root: int) -> int:
    """Bytes resident in process ``root`` and every process under it (Linux /proc); shared
    pages, such as Ray's object store, count once in every process that maps them."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            statm = Path(f"/proc/{entry}/statm").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = int(statm.split()[1]) * page
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def timed_run(command: list[str]) -> tuple[float, int]:
    """Run ``command``; its wall seconds and the peak bytes resident in its process tree."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.2):
            peak = max(peak, tree_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if code:
        raise subprocess.CalledProcessError(code, command)
    return wall, peak


def arms(cpus: int, streaming_budget: int) -> dict[str, list[str]]:
    """Each engine's flags, by the name the table gives it. The last streams the features
    (``streaming_budget`` bytes of --memory): a table with a text or image column is then
    encoded on Ray Data actors, shard by shard (docs/ray.md)."""
    return {
        "local, --workers 1": ["--workers", "1"],
        f"local, --workers {cpus}": ["--workers", str(cpus)],
        f"--engine ray (local instance, {cpus} CPUs)": ["--engine", "ray"],
        "--engine ray, streaming (--memory under the in-memory plan)": [
            "--engine",
            "ray",
            "--memory",
            str(streaming_budget),
        ],
    }


def streaming_budget(rows: int, dim: int, classes: int, folds: int) -> int:
    """A --memory budget just under what the in-memory plan needs, so the run streams."""
    from refine.learn import budget

    return int(0.9 * budget.plan(rows, dim, classes, folds, memory=1 << 50).in_memory_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/refine-ray-bench"))
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1

    data = args.workdir / f"shards_{args.rows}"
    make_shards(data, args.rows, args.dim, args.classes)
    flags = ["--ignore", "id", "--folds", str(args.folds), "--rounds", str(args.rounds)]
    if args.max_epochs is not None:
        flags += ["--max-epochs", str(args.max_epochs)]
    engines = arms(cpus, streaming_budget(args.rows, args.dim, args.classes, args.folds))
    results: dict[str, list[tuple[float, float, int, float]]] = {name: [] for name in engines}
    outputs: dict[str, set[bytes]] = {name: set() for name in results}
    for _ in range(args.runs):
        for name, extra in engines.items():
            out = args.workdir / "run"
            command = [sys.executable, "-m", "refine", "run", str(data), "--out", str(out)]
            command += ["--overwrite", "--quiet", *flags, *extra]
            wall, peak = timed_run(command)
            timings = json.loads((out / "run.json").read_text())["timings"]
            train, encode = timings["train"], timings["encode"]
            results[name].append((wall, train, peak, encode))
            print(
                f"{name}: {wall:.1f} s, encode {encode:.1f} s, train {train:.1f} s, "
                f"{peak / 1e9:.2f} GB",
                file=sys.stderr,
            )
            outputs[name].add((out / "refined.parquet").read_bytes())
    baseline = statistics.median(r[0] for r in results[next(iter(results))])
    lines = [
        "| engine | wall s (median) | ratio to --workers 1 | encode s (median) | "
        "train s, summed over folds (median) | peak RSS of the process tree, GB (median) | "
        "every wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        lines.append(
            f"| {name} | {wall:.1f} | {wall / baseline:.2f} | "
            f"{statistics.median(r[3] for r in runs):.1f} | "
            f"{statistics.median(r[1] for r in runs):.1f} | "
            f"{statistics.median(r[2] for r in runs) / 1e9:.2f} | "
            f"{', '.join(f'{r[0]:.1f}' for r in runs)} |"
        )
    same = len(set().union(*outputs.values())) == 1
    command = shlex.join(["python", "benchmarks/ray_engine.py", *sys.argv[1:]])
    text = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Data: {args.rows} rows in {SHARDS} Parquet shards, {args.dim}-dim embedding, "
            f"{args.classes} classes, 20% of labels flipped; {args.folds} folds x "
            f"{args.rounds} rounds, seed 0; {args.runs} runs of each engine, in turn.",
            f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}.",
            "",
            *lines,
            "",
            f"Same refined.parquet from every engine and run: {'yes' if same else 'NO'}.",
            "",
        ]
    )
    if args.out is not None:
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
