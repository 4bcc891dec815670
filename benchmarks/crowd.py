"""Consensus from votes: majority vote, Dawid-Skene, refine on the majority, refine with votes.

Sets:

* ``youtube``, ``sms``, ``semeval``: the WRENCH training rows in ``--data`` (default
  ``../shared/data/text``) and their labelling functions' votes (``wrench_NAME_lf_votes.parquet``:
  ``row`` = row number in ``_train``, ``lf_votes``, -1 = abstain); gold is ``true_label``;
* ``digits-crowd``: scikit-learn's digits with a generated crowd: 20 annotators, each with a
  known confusion matrix (accuracy drawn in [0.35, 0.9], errors spread over the classes by a
  Dirichlet), 3 to 5 of them voting on each item (generator ``[seed, 3]``).

Methods, each scored as accuracy of its consensus against gold (a row without a label counts
as wrong):

* ``majority``: the majority vote, ties broken with ``seed``;
* ``dawid-skene``: Dawid-Skene by EM on the votes alone (``refine.judge.annotators`` with
  ``dawid_skene``);
* ``ds-shrunk``: the same with each confusion row shrunk toward the pool by 5 pseudo-votes;
* ``one-coin``: ``fit_annotators`` on the votes alone (no prior);
* ``refine(majority)``: ``label_refined`` of ``refine.run`` on the majority vote (defaults,
  ``seed``; text columns as features), i.e. what refine does today;
* ``refine+votes``: the annotator model with refine's last-round calibrated out-of-fold
  probabilities as each row's prior (``fit_annotators(votes, prior=proba)``);
* ``held-out``: ``consensus``: the same prior tempered to p^t, t in {0, 0.25, 0.5, 1} chosen
  by the log-likelihood of held-out votes (5 folds of votes, no gold), or the majority vote
  where it predicts them best; the chosen t is reported;
* ``refine(votes)``: ``label_refined`` of ``refine.run`` given the votes (``votes=``), refine's
  default for votes: it refines the ``held-out`` consensus where the held-out votes chose the
  model, else the majority vote (then it equals ``refine(majority)``).

For ``digits-crowd`` it also reports the mean absolute error of the estimated annotator
accuracies (``annotator_accuracy`` on the consensus) against the true ones.

    PYTHONPATH=. python benchmarks/crowd.py [--seed 0] [--sets youtube,sms,semeval,digits-crowd]

Writes ``reports/crowd.md``.
"""

from __future__ import annotations

import argparse
import time
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

SETS = ("youtube", "sms", "semeval", "digits-crowd")
# refine's options beyond its defaults (the tests shrink the model).
RUN_OPTIONS: dict = {}
METHODS = (
    "majority",
    "dawid-skene",
    "ds-shrunk",
    "one-coin",
    "refine(majority)",
    "refine+votes",
    "held-out",
    "refine(votes)",
)


def wrench(name: str, data: Path) -> tuple[pa.Table, np.ndarray, np.ndarray, None, int]:
    train = pq.read_table(data / f"wrench_{name}_train.parquet")
    lf = pq.read_table(data / f"wrench_{name}_lf_votes.parquet")
    gold = train.column("true_label").to_numpy()
    width = len(lf.column("lf_votes")[0])
    votes = np.full((train.num_rows, width), -1, np.int64)
    votes[lf.column("row").to_numpy()] = np.array(lf.column("lf_votes").to_pylist())
    text = ["text", "entity1", "entity2"] if name == "semeval" else ["text"]
    k = int(max(gold.max(), votes.max()) + 1)
    return train.select(text), votes, gold, None, k


def digits_crowd(seed: int) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    X, gold = load_digits(return_X_y=True)
    k, n, a = 10, len(gold), 20
    rng = np.random.default_rng([seed, 3])
    accuracy = rng.uniform(0.35, 0.9, a)
    confusion = np.zeros((a, k, k))
    for j in range(a):
        for c in range(k):
            off = rng.dirichlet(np.full(k - 1, 0.5)) * (1 - accuracy[j])
            confusion[j, c] = np.insert(off, c, accuracy[j])
    votes = np.full((n, a), -1, np.int64)
    for i in range(n):
        for j in rng.choice(a, rng.integers(3, 6), replace=False):
            votes[i, j] = rng.choice(k, p=confusion[j, gold[i]])
    table = pa.table({f"px{d}": X[:, d].astype(np.float32) for d in range(X.shape[1])})
    return table, votes, gold, accuracy, k


def run_set(name: str, seed: int, data: Path) -> dict:
    if name == "digits-crowd":
        table, votes, gold, truth, k = digits_crowd(seed)
        text: tuple[str, ...] = ()
    else:
        table, votes, gold, truth, k = wrench(name, data)
        text = tuple(table.column_names)
    started = time.perf_counter()
    mv = majority_vote(votes, k, seed)
    found = {
        "majority": mv,
        "dawid-skene": dawid_skene(votes, k).posterior.argmax(1),
        "ds-shrunk": dawid_skene(votes, k, strength=5.0).posterior.argmax(1),
        "one-coin": fit_annotators(votes).posterior.argmax(1),
    }
    labelled = table.append_column("label_mv", pa.array(np.where(mv >= 0, mv, None), pa.int64()))
    result = refine.run(
        labelled, label="label_mv", text=text, seed=seed, **{"report": False, **RUN_OPTIONS}
    )
    refined = result.refined.column("label_refined").to_numpy(zero_copy_only=False)
    found["refine(majority)"] = np.where(np.isnan(refined.astype(float)), -1, refined)
    model = fit_annotators(votes, prior=result.proba)
    found["refine+votes"] = model.posterior.argmax(1)
    found["held-out"], choice = consensus(votes, result.proba, seed)
    lists = pa.array(votes.tolist(), pa.list_(pa.int64()))  # position = annotator, -1 = none
    voted = refine.run(
        table.append_column("votes", lists),
        votes="votes",
        text=text,
        seed=seed,
        **{"report": False, **RUN_OPTIONS},
    )
    given = voted.refined.column("label_refined").to_numpy(zero_copy_only=False)
    found["refine(votes)"] = np.where(np.isnan(given.astype(float)), -1, given)
    row = {m: float((found[m] == gold).mean()) for m in METHODS}
    row["rows"], row["annotators"] = len(gold), votes.shape[1]
    row["votes_per_row"] = float((votes >= 0).sum(1).mean())
    if truth is not None:
        _, est, _, _ = annotator_accuracy(votes, model.posterior)
        row["accuracy_error"] = float(np.abs(est - truth).mean())
        _, est_ds, _, _ = annotator_accuracy(votes, dawid_skene(votes, k).posterior)
        row["accuracy_error_ds"] = float(np.abs(est_ds - truth).mean())
    row["seconds"] = time.perf_counter() - started
    row["chosen"] = "majority" if choice.temper is None else f"t={choice.temper:g}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/text"))
    parser.add_argument("--out", type=Path, default=Path("reports/crowd.md"))
    args = parser.parse_args()
    rows = {}
    for name in args.sets.split(","):
        rows[name] = run_set(name, args.seed, args.data)
        print(name, rows[name], flush=True)
    lines = [
        "# Consensus from votes",
        "",
        f"`PYTHONPATH=. python benchmarks/crowd.py --seed {args.seed} --sets {args.sets} "
        f"--data {args.data}`",
        "",
        "Accuracy of each consensus against gold (see the script's docstring for the methods).",
        "",
        "| set | rows | annotators | votes/row | " + " | ".join(METHODS) + " |",
        "|---|---|---|---|" + "---|" * len(METHODS),
    ]
    for name, r in rows.items():
        cells = " | ".join(f"{r[m]:.3f}" for m in METHODS)
        lines.append(
            f"| {name} | {r['rows']} | {r['annotators']} | {r['votes_per_row']:.1f} | {cells} |"
        )
    chosen = ", ".join(f"{name} {r['chosen']}" for name, r in rows.items())
    lines.append(f"\nheld-out's choice: {chosen}.")
    for name, r in rows.items():
        if "accuracy_error" in r:
            lines.append(
                f"\n{name}: mean absolute error of the estimated annotator accuracies, "
                f"refine+votes {r['accuracy_error']:.3f}, Dawid-Skene {r['accuracy_error_ds']:.3f}."
            )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
