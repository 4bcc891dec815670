"""Consensus from votes: majority, Dawid-Skene, GLAD, refine on the majority, refine with votes.

Sets:

* ``youtube``, ``sms``, ``semeval``: the WRENCH training rows in ``--data`` (default
  ``../shared/data/text``) and their labelling functions' votes (``wrench_NAME_lf_votes.parquet``:
  ``row`` = row number in ``_train``, ``lf_votes``, -1 = abstain); gold is ``true_label``, and
  ``wrench_NAME_test.parquet`` (gold ``label``), where present, scores the downstream model;
* ``digits-crowd``, ``wine-crowd``, ``breast_cancer-crowd``: refine's bench recipes
  (``refine.bench.recipes.build_dataset(name, seed)``): a generated crowd
  (``refine.bench.noise.crowd_annotators``/``crowd_votes``) on the train split, whose true
  annotator accuracies are known, and a clean test split.

Methods, each scored as accuracy of its consensus against gold (a row without a label counts
as wrong):

* ``majority``: the majority vote, ties broken with ``seed``;
* ``dawid-skene``: refine's own Dawid-Skene by EM on the votes alone
  (``refine.judge.annotators.dawid_skene``);
* ``ck-ds``, ``ck-glad``: crowd-kit's ``DawidSkene`` and ``GLAD`` on the votes alone (a
  bench-only install, ``pip install crowd-kit`` or the ``bench`` extra; ``-`` without it);
* ``one-coin``: ``fit_annotators`` on the votes alone (no prior);
* ``refine(majority)``: ``label_refined`` of ``refine.run`` on the majority vote (defaults,
  ``seed``; text columns as features);
* ``held-out``: ``consensus`` after that run: its last-round calibrated probabilities as the
  prior, tempered to p^t chosen by held-out votes, or the majority vote;
* ``refine(votes)``: ``label_refined`` of ``refine.run`` given the votes (``votes=``), i.e.
  what refine does with votes.

``--refine-runs votes`` skips the run on the majority (``refine(majority)`` and ``held-out``
show ``-``), for measuring another checkout's votes path alone.

Downstream: a LogisticRegression trained on each consensus (rows without one left out;
standardised features, or TF-IDF word 1-2-grams of the text), scored on the gold test split,
with one on the gold training labels as the ceiling; refine's two runs also with their
``sample_weight`` (rows of weight 0 left out), as DESIGN.md says its labels are trained on.

For the generated crowds it also reports the mean absolute error of the estimated annotator
accuracies against the true ones: refine's (``annotators.parquet`` of the votes run) and
Dawid-Skene's (``annotator_accuracy`` on its posterior). ``seconds``: wall time of each refine
run (``--repeat N``: the run given the votes runs N times, and the median is reported).

    PYTHONPATH=. python benchmarks/crowd.py [--seed 0] [--sets youtube,sms,semeval,digits-crowd]

Writes ``--out`` (default ``reports/crowd.md``) and the same figures as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import refine
from refine.judge.annotators import (
    annotator_accuracy,
    consensus,
    dawid_skene,
    fit_annotators,
    majority_vote,
)

SETS = (
    "youtube",
    "sms",
    "semeval",
    "digits-crowd",
    "wine-crowd",
    "breast_cancer-crowd",
    "music-like-crowd",
)
WRENCH = ("youtube", "sms", "semeval")
# refine's options beyond its defaults (the tests shrink the model).
RUN_OPTIONS: dict = {}
METHODS = (
    "majority",
    "dawid-skene",
    "ck-ds",
    "ck-glad",
    "one-coin",
    "refine(majority)",
    "held-out",
    "refine(votes)",
)
# The consensuses a downstream model is trained on.
DOWNSTREAM = ("majority", "ck-ds", "ck-glad", "refine(majority)", "refine(votes)")
# refine's runs again, trained as its output is meant to be used: with ``sample_weight``.
WEIGHTED = ("refine(majority)", "refine(votes)")


def wrench(name: str, data: Path) -> dict:
    train = pq.read_table(data / f"wrench_{name}_train.parquet")
    lf = pq.read_table(data / f"wrench_{name}_lf_votes.parquet")
    gold = train.column("true_label").to_numpy()
    width = len(lf.column("lf_votes")[0])
    votes = np.full((train.num_rows, width), -1, np.int64)
    votes[lf.column("row").to_numpy()] = np.array(lf.column("lf_votes").to_pylist())
    text = ["text", "entity1", "entity2"] if name == "semeval" else ["text"]
    k = int(max(gold.max(), votes.max()) + 1)
    test_path = data / f"wrench_{name}_test.parquet"
    test = None
    if test_path.exists():
        t = pq.read_table(test_path)
        test = (t.select(text), t.column("label").to_numpy())
    return dict(table=train.select(text), votes=votes, gold=gold, truth=None, k=k, test=test)


def recipe_crowd(name: str, seed: int) -> dict:
    from refine.bench.crowds import crowd_truth
    from refine.bench.recipes import build_dataset

    built = build_dataset(name, seed)
    train = built.train
    votes = np.array(train.column("votes").to_pylist(), np.int64)
    gold = train.column("label_true").to_numpy()
    features = [
        c for c in train.column_names if c not in ("label", "label_true", "is_noisy", "votes")
    ]
    truth = np.array(crowd_truth(train)["accuracy"], dtype=float)  # None (no votes): nan
    test = (built.test.select(features), built.test.column("label").to_numpy())
    k = int(max(gold.max(), votes.max()) + 1)
    return dict(table=train.select(features), votes=votes, gold=gold, truth=truth, k=k, test=test)


def crowd_kit(votes: np.ndarray) -> dict[str, np.ndarray]:
    """crowd-kit's Dawid-Skene and GLAD consensus ``(N,)`` (-1 = no vote), or nothing where
    crowd-kit is not installed."""
    try:
        import pandas as pd
        from crowdkit.aggregation import GLAD, DawidSkene
    except ImportError:
        return {}
    rows, annotators = np.nonzero(votes >= 0)
    frame = pd.DataFrame({"task": rows, "worker": annotators, "label": votes[rows, annotators]})
    found = {}
    for name, model in (("ck-ds", DawidSkene(n_iter=100)), ("ck-glad", GLAD(n_iter=100))):
        with warnings.catch_warnings():  # crowd-kit 1.4's pandas deprecations
            warnings.simplefilter("ignore")
            labels = model.fit_predict(frame)
        out = np.full(len(votes), -1, np.int64)
        out[labels.index.to_numpy(np.int64)] = labels.to_numpy(np.int64)
        found[name] = out
    return found


def downstream(
    table: pa.Table,
    labels: np.ndarray,
    test: tuple,
    seed: int,
    weight: np.ndarray | None = None,
) -> float:
    """Test accuracy of a LogisticRegression trained on ``labels`` (-1 rows left out), with
    ``weight`` ``(N,)`` as sample weights where given (rows of weight 0 left out too)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    test_table, test_gold = test
    keep = labels >= 0
    if weight is not None:
        keep &= weight > 0
    if pa.types.is_string(table.schema[0].type) or pa.types.is_large_string(table.schema[0].type):

        def text(t: pa.Table) -> list[str]:
            columns = [t.column(c).to_pylist() for c in t.column_names]
            return [" ".join(str(v) for v in row) for row in zip(*columns, strict=True)]

        X, X_test = np.array(text(table), dtype=object), text(test_table)
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=1),
            LogisticRegression(max_iter=2000, random_state=seed),
        )
    else:
        X = np.column_stack([table.column(c).to_numpy() for c in table.column_names])
        X_test = np.column_stack([test_table.column(c).to_numpy() for c in table.column_names])
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)
        )
    if len(np.unique(labels[keep])) < 2:
        return float("nan")
    fit = {} if weight is None else {"logisticregression__sample_weight": weight[keep]}
    model.fit(X[keep], labels[keep], **fit)
    return float((model.predict(X_test) == test_gold).mean())


def _weights(result: refine.RunResult) -> np.ndarray:
    return result.refined.column("sample_weight").to_numpy(zero_copy_only=False).astype(float)


def _label_column(result: refine.RunResult) -> np.ndarray:
    refined = result.refined.column("label_refined").to_numpy(zero_copy_only=False)
    return np.where(np.isnan(refined.astype(float)), -1, refined).astype(np.int64)


def run_set(
    name: str,
    seed: int,
    data: Path,
    runs: tuple[str, ...] = ("majority", "votes"),
    repeat: int = 1,
) -> dict:
    s = wrench(name, data) if name in WRENCH else recipe_crowd(name, seed)
    table, votes, gold, truth, k = s["table"], s["votes"], s["gold"], s["truth"], s["k"]
    text = tuple(table.column_names) if name in WRENCH else ()
    options = {"report": False, **RUN_OPTIONS}
    mv = majority_vote(votes, k, seed)
    weights: dict[str, np.ndarray] = {}
    found: dict[str, np.ndarray] = {
        "majority": mv,
        "dawid-skene": dawid_skene(votes, k).posterior.argmax(1),
        "one-coin": fit_annotators(votes).posterior.argmax(1),
        **crowd_kit(votes),
    }
    row: dict = {"rows": len(gold), "annotators": votes.shape[1]}
    row["votes_per_row"] = float((votes >= 0).sum(1).mean())
    if "majority" in runs:
        labelled = table.append_column(
            "label_mv", pa.array(np.where(mv >= 0, mv, None), pa.int64())
        )
        started = time.perf_counter()
        result = refine.run(labelled, label="label_mv", text=text, seed=seed, **options)
        row["seconds_majority"] = time.perf_counter() - started
        found["refine(majority)"] = _label_column(result)
        weights["refine(majority)"] = _weights(result)
        found["held-out"], choice = consensus(votes, result.proba, seed)
        row["held_out_choice"] = "majority" if choice.temper is None else f"t={choice.temper:g}"
    lists = pa.array(votes.tolist(), pa.list_(pa.int64()))  # position = annotator, -1 = none
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        voted = refine.run(
            table.append_column("votes", lists), votes="votes", text=text, seed=seed, **options
        )
        seconds.append(time.perf_counter() - started)
    row["seconds_votes"] = float(np.median(seconds))
    row["seconds_votes_all"] = seconds
    found["refine(votes)"] = _label_column(voted)
    weights["refine(votes)"] = _weights(voted)
    chosen = voted.summary["annotators"]["consensus"]
    row["chosen"] = (
        "majority" if chosen["prior_temper"] is None else f"t={chosen['prior_temper']:g}"
    )
    row["rounds_votes"] = len(voted.summary["rounds"])
    for m in METHODS:
        row[m] = float((found[m] == gold).mean()) if m in found else None
    if s["test"] is not None:
        row["downstream"] = {
            m: downstream(table, found[m], s["test"], seed) for m in DOWNSTREAM if m in found
        }
        row["downstream"]["gold"] = downstream(table, gold, s["test"], seed)
        row["downstream_weighted"] = {
            m: downstream(table, found[m], s["test"], seed, weights[m])
            for m in WEIGHTED
            if m in weights
        }
    if truth is not None:
        estimated = voted.annotators.column("accuracy").to_numpy(zero_copy_only=False)
        row["accuracy_error"] = float(np.nanmean(np.abs(estimated - truth)))
        _, est_ds, _, _ = annotator_accuracy(votes, dawid_skene(votes, k).posterior)
        row["accuracy_error_ds"] = float(np.nanmean(np.abs(est_ds - truth)))
    return row


def _cell(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/text"))
    parser.add_argument("--refine-runs", default="majority,votes")
    parser.add_argument("--repeat", type=int, default=1, help="runs given the votes, timed")
    parser.add_argument("--out", type=Path, default=Path("reports/crowd.md"))
    args = parser.parse_args()
    runs = tuple(args.refine_runs.split(","))
    rows = {}
    for name in args.sets.split(","):
        rows[name] = run_set(name, args.seed, args.data, runs, args.repeat)
        print(name, rows[name], flush=True)
    lines = [
        "# Consensus from votes",
        "",
        f"`PYTHONPATH=. python benchmarks/crowd.py --seed {args.seed} --sets {args.sets} "
        f"--data {args.data} --refine-runs {args.refine_runs} --repeat {args.repeat}`",
        "",
        "Accuracy of each consensus against gold (see the script's docstring for the methods).",
        "",
        "| set | rows | annotators | votes/row | " + " | ".join(METHODS) + " |",
        "|---|---|---|---|" + "---|" * len(METHODS),
    ]
    for name, r in rows.items():
        cells = " | ".join(_cell(r[m]) for m in METHODS)
        lines.append(
            f"| {name} | {r['rows']} | {r['annotators']} | {r['votes_per_row']:.1f} | {cells} |"
        )
    chosen = ", ".join(f"{name} {r['chosen']}" for name, r in rows.items())
    lines.append(f"\nrefine(votes)'s held-out choice (last round): {chosen}.")
    lines += [
        "",
        "Downstream: test accuracy of a LogisticRegression trained on each consensus; for "
        "refine's runs also with their `sample_weight`, as refine's output is meant to be "
        "trained on (weighted).",
        "",
        "| set | "
        + " | ".join((*DOWNSTREAM, *(f"{m}, weighted" for m in WEIGHTED), "gold"))
        + " |",
        "|---|" + "---|" * (len(DOWNSTREAM) + len(WEIGHTED) + 1),
    ]
    for name, r in rows.items():
        if "downstream" in r:
            d, w = r["downstream"], r["downstream_weighted"]
            cells = [*(d.get(m) for m in DOWNSTREAM), *(w.get(m) for m in WEIGHTED), d["gold"]]
            lines.append(f"| {name} | " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "| set | refine(majority) seconds | refine(votes) seconds | rounds |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r.get('seconds_majority', float('nan')):.1f} | "
            f"{r['seconds_votes']:.1f} | {r['rounds_votes']} |"
        )
    for name, r in rows.items():
        if "accuracy_error" in r:
            lines.append(
                f"\n{name}: mean absolute error of the estimated annotator accuracies, "
                f"refine(votes) {r['accuracy_error']:.3f}, Dawid-Skene {r['accuracy_error_ds']:.3f}."
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({"seed": args.seed, "sets": rows}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
