"""Which detection and ensemble settings work: measured side by side with cleanlab's baseline.

Variants: the defaults; without flagging confident unanimous disagreements (cleanlab's
filter alone); one snapshot per fold instead of three (no checkpoint averaging); three seeds
per fold with one snapshot each. Each runs on small datasets with injected noise, next to
cleanlab's find_label_issues on out-of-fold LogisticRegression probabilities, and the script
prints F1, AUPRC and refined-label accuracy (medians over seeds, then means over everything).

    python benchmarks/detection.py [--seeds 1] [--noise sym20,pair30,sym40] [--variants ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_classification

import refine
from refine.bench.baselines import cleanlab_baseline
from refine.bench.noise import flip_symmetric, flip_with_matrix
from refine.report.metrics import flag_scores, label_accuracy, label_codes


def datasets():
    d = load_digits()
    yield "digits", d.data, d.target
    w = load_wine()
    yield "wine", w.data, w.target
    b = load_breast_cancer()
    yield "breast_cancer", b.data, b.target
    X, y = make_classification(
        2000, 20, n_informative=10, n_classes=5, n_clusters_per_class=2, random_state=0
    )
    yield "make_classification", X, y


def noisy(y, k, kind, seed):
    if kind == "sym20":
        return flip_symmetric(y, 0.2, k, seed)
    if kind == "sym40":
        return flip_symmetric(y, 0.4, k, seed)
    # pair: 30% of class c goes to c+1
    t = np.eye(k) * 0.7
    for c in range(k):
        t[c, (c + 1) % k] += 0.3
    return flip_with_matrix(y, t, seed)


VARIANTS = {
    "refine (defaults)": dict(),
    "cleanlab filter only": dict(flag_confident=False),
    "snapshots=1": dict(snapshots=1),
    # No comma in a name: --variants takes the names comma-separated.
    "seeds=3 snapshots=1": dict(seeds=3, snapshots=1),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--noise", default="sym20,sym40,pair30")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated names of the variants to run",
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; the variants are {', '.join(VARIANTS)}")
    rows = []
    for name, X, y in datasets():
        k = len(np.unique(y))
        for kind in args.noise.split(","):
            for seed in range(args.seeds):
                y_noisy = noisy(y, k, kind, seed)
                truth = y_noisy != y
                t0 = time.perf_counter()
                issues, quality, _ = cleanlab_baseline(X, y_noisy, seed=seed)
                rows.append(
                    (
                        name,
                        kind,
                        "cleanlab+LR",
                        seed,
                        flag_scores(issues, truth, quality),
                        label_accuracy(y_noisy, y),
                        time.perf_counter() - t0,
                    )
                )
                table = pa.table(
                    {**{f"f{i}": X[:, i] for i in range(X.shape[1])}, "label": y_noisy}
                )
                for variant in variants:
                    opts = VARIANTS[variant]
                    t0 = time.perf_counter()
                    r = refine.run(table, seed=seed, **opts)
                    ref = r.refined
                    refined = label_codes(ref)
                    rows.append(
                        (
                            name,
                            kind,
                            variant,
                            seed,
                            flag_scores(
                                ref.column("is_label_issue").to_numpy(zero_copy_only=False),
                                truth,
                                ref.column("label_quality").to_numpy(zero_copy_only=False),
                            ),
                            label_accuracy(refined, y),
                            time.perf_counter() - t0,
                        )
                    )
                print(f"{name} {kind} seed {seed} done", flush=True)
    import pandas as pd

    df = pd.DataFrame(
        [
            {
                "dataset": d,
                "noise": n,
                "method": m,
                "seed": s,
                **f,
                "label_acc": a["accuracy"],
                "seconds": sec,
            }
            for d, n, m, s, f, a, sec in rows
        ]
    )
    summary = df.groupby(["dataset", "noise", "method"])[
        ["f1", "auprc", "label_acc", "seconds"]
    ].median()
    print(summary.round(3).to_string())
    print(df.groupby("method")[["f1", "auprc", "label_acc", "seconds"]].mean().round(4).to_string())


if __name__ == "__main__":
    main()
