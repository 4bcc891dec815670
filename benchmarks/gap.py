"""Where the noisy->clean test-accuracy gap goes: refine's shortfall taken apart, over many seeds.

`refine bench` reports the share of the gap that training on refine's labels recovers, over two
seeds. On the small recipes a case's gap is a handful of test rows (iris: 38 test rows, wine:
45), so two seeds say little, and the share alone does not say what is missing. This script
runs refine at its defaults on each recipe over many seeds (by default the dev seeds 10-29,
never the bench's 0 and 1) and scores, with the bench's yardstick (a standardised
LogisticRegression on the clean test split, `refine.bench.suite._downstream`), eight training sets on
the same rows:

* `noisy`: the given labels;
* `refine`: `label_refined` with `sample_weight`, as the bench scores refine;
* `soft`: `label_soft` with `sample_weight`, the other way DESIGN.md gives to train on refine's
  output (each row once per class, weighted by its probability: the soft cross-entropy);
* `unweighted`: `label_refined`, every kept row at weight 1;
* `missed fixed`: as `unweighted`, with the wrong labels refine never flagged set to the truth;
* `missed fixed, weighted`: as `refine` (with `sample_weight`), those labels set to the truth
  (unflagged, they already weigh 1): what catching every one of them would bring to the bench;
* `kept, true`: the true labels of the rows refine kept (every residual error fixed);
* `clean`: the true labels of every row.

The steps between them split refine's shortfall (`clean - refine`) into the weights, the wrong
labels nobody flagged, the other wrong labels refine left or made, and the rows it excluded.
The labelled rows whose refined label is wrong are counted by kind: `missed` (a wrong given
label, not flagged), `flagged, kept` (flagged, not corrected), `miscorrected` (a wrong given
label corrected to another wrong class), `broken` (a right label corrected to a wrong one) and
`excluded` (no label to train on).

    python benchmarks/gap.py [--seeds 10-29] [--recipes a,b] [--out reports/gap.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# The decision runs' recipes and the way they build and refine one (benchmarks/ is the
# script's own folder): the full bench suite without its 45,000-row embeddings, plus the two
# WRENCH sets where their files are.
from decisions import RECIPES, run_case

from refine.bench.recipes import load_recipe
from refine.bench.suite import _downstream, _lr_model

SETS = (
    "noisy",
    "refine",
    "soft",
    "unweighted",
    "missed fixed",
    "missed fixed, weighted",
    "kept, true",
    "clean",
)
KINDS = ("missed", "flagged, kept", "miscorrected", "broken", "excluded")


def score(name: str, seed: int) -> dict:
    """One recipe at one seed: test accuracy of each training set in ``SETS``, the counts of
    ``KINDS`` among the labelled rows, and their number."""
    case = run_case(name, seed, {})
    truth, given, labelled, is_noisy = case.truth, case.given, case.labelled, case.is_noisy
    X, X_test, y_test, refined = case.X, case.X_test, case.y_test, case.refined
    labels, weight = case.labels, case.weight
    flagged = refined.column("is_label_issue").to_numpy(zero_copy_only=False).astype(bool)
    kept = labels >= 0
    wrong = labelled & (labels != truth)
    changed = kept & (labels != given)
    kinds = {
        "missed": wrong & kept & ~changed & is_noisy & ~flagged,
        "flagged, kept": wrong & kept & ~changed & is_noisy & flagged,
        "miscorrected": wrong & changed & is_noisy,
        "broken": wrong & changed & ~is_noisy,
        "excluded": labelled & ~kept,
    }
    ones = kept.astype(float)
    missed_fixed = np.where(kinds["missed"], truth, labels)
    accuracy = {
        "noisy": _downstream(X[labelled], given[labelled], np.ones(labelled.sum()), X_test, y_test),
        "refine": _downstream(X, labels, weight, X_test, y_test),
        "soft": _soft_downstream(X, refined, weight, X_test, y_test),
        "unweighted": _downstream(X, labels, ones, X_test, y_test),
        "missed fixed": _downstream(X, missed_fixed, ones, X_test, y_test),
        "missed fixed, weighted": _downstream(X, missed_fixed, weight, X_test, y_test),
        "kept, true": _downstream(X, np.where(kept, truth, -1), ones, X_test, y_test),
        "clean": _downstream(X, truth, np.ones(len(truth)), X_test, y_test),
    }
    return {
        "accuracy": accuracy,
        "kinds": {kind: int(rows.sum()) for kind, rows in kinds.items()},
        "labelled": int(labelled.sum()),
        "noisy_rows": int(is_noisy[labelled].sum()),
        "label_accuracy": float((labels[labelled] == truth[labelled]).mean()),
        "test_rows": len(y_test),
        "seconds": case.seconds,
    }


def _soft_downstream(X, refined, weight, X_test, y_test) -> float:
    """Test accuracy of the yardstick trained on ``refined``'s ``label_soft`` with ``weight``:
    each row once per class whose probability is above 1e-6, weighted by that probability
    times the row's weight, which makes the fit's loss the cross-entropy to the soft label."""
    classes = np.array(json.loads(refined.schema.metadata[b"refine.classes"]))
    soft = np.array(refined.column("label_soft").to_pylist(), dtype=float)
    rows, columns = np.nonzero((soft > 1e-6) & (weight > 0)[:, None])
    model = _lr_model(X.dtype == object)
    model.fit(
        X[rows],
        classes[columns],
        logisticregression__sample_weight=soft[rows, columns] * weight[rows],
    )
    return float((model.predict(X_test) == y_test).mean())


def gap_share(run: dict, key: str = "refine") -> float | None:
    """The share of the noisy->clean gap that training set ``key`` recovers; None where the
    gap is under 0.005, as the bench leaves such cases out."""
    a = run["accuracy"]
    gap = a["clean"] - a["noisy"]
    return (a[key] - a["noisy"]) / gap if gap > 0.005 else None


def summarise(runs: list[dict]) -> dict:
    """Means over seeds: the gap share (mean, its standard error, pooled), test accuracies and
    the wrong-label counts per labelled row."""
    shares = np.array([s for s in (gap_share(r) for r in runs) if s is not None])
    acc = {k: float(np.mean([r["accuracy"][k] for r in runs])) for k in SETS}
    gap = sum(r["accuracy"]["clean"] - r["accuracy"]["noisy"] for r in runs)

    def pooled(key: str) -> float:
        recovered = sum(r["accuracy"][key] - r["accuracy"]["noisy"] for r in runs)
        return recovered / gap if gap > 0 else float("nan")

    def mean_share(key: str) -> float:
        kept = [s for s in (gap_share(r, key) for r in runs) if s is not None]
        return float(np.mean(kept)) if kept else float("nan")

    return {
        "seeds": len(runs),
        "cases": len(shares),
        "mean": float(shares.mean()) if len(shares) else float("nan"),
        "se": float(shares.std(ddof=1) / np.sqrt(len(shares))) if len(shares) > 1 else float("nan"),
        "pooled": pooled("refine"),
        # What each repaired training set would recover: the ceilings of the shortfall's parts.
        "shares": {k: (mean_share(k), pooled(k)) for k in SETS[1:-1]},
        "accuracy": acc,
        "label_accuracy": float(np.mean([r["label_accuracy"] for r in runs])),
        "noise": float(np.mean([r["noisy_rows"] / r["labelled"] for r in runs])),
        "kinds": {k: float(np.mean([r["kinds"][k] / r["labelled"] for r in runs])) for k in KINDS},
        "test_rows": runs[0]["test_rows"],
        "seconds": float(np.mean([r["seconds"] for r in runs])),
    }


def parse_seeds(text: str) -> list[int]:
    """``10-29`` or ``10,11,12``."""
    if "-" in text:
        low, high = (int(s) for s in text.split("-"))
        return list(range(low, high + 1))
    return [int(s) for s in text.split(",")]


def render(summaries: dict[str, dict], all_runs: list[dict], command: str) -> str:
    lines = [
        "# Where the noisy→clean gap goes",
        "",
        f"`{command}`: refine at its defaults, scored as `refine bench` scores it (a "
        "standardised LogisticRegression on the clean test split). See the script's docstring "
        "for the training sets. A gap share is left out where the noisy and clean test "
        "accuracies are within 0.005.",
        "",
        "## Gap recovered",
        "",
        "Mean over seeds ± its standard error, and pooled (recovered accuracy summed over the "
        "seeds, over the gaps summed).",
        "",
    ]
    total = summarise(all_runs)
    lines += _table(
        ["recipe", "test rows", "seeds", "label accuracy", "gap, mean ± s.e.", "gap, pooled"]
        + ["seconds"],
        [
            *(
                [name, str(s["test_rows"]), f"{s['cases']} of {s['seeds']}"]
                + [f"{s['label_accuracy']:.3f}", f"{s['mean']:.0%} ± {s['se']:.0%}"]
                + [f"{s['pooled']:.0%}", f"{s['seconds']:.1f}"]
                for name, s in summaries.items()
            ),
            ["**all**", "", f"{total['cases']} of {total['seeds']}"]
            + [f"{total['label_accuracy']:.3f}", f"{total['mean']:.0%} ± {total['se']:.0%}"]
            + [f"{total['pooled']:.0%}", ""],
        ],
    )
    lines += [
        "",
        "## Test accuracy by training set",
        "",
        "Means over seeds. `refine` → `soft` is what training on `label_soft` gains or "
        "costs; `refine` → `unweighted`, what the weights do; "
        "`unweighted` → `missed fixed`, the wrong labels nobody flagged; `missed fixed` → "
        "`kept, true`, the other wrong labels; `kept, true` → `clean`, the excluded rows; "
        "`refine` → `missed fixed, weighted`, the wrong labels nobody flagged, weights kept.",
        "",
    ]
    lines += _table(
        ["recipe", *SETS],
        ([name, *(f"{s['accuracy'][k]:.3f}" for k in SETS)] for name, s in summaries.items()),
    )
    lines += [
        "",
        "## Gap recovered by training set",
        "",
        "The share of the gap each training set above recovers: mean over seeds (pooled in "
        "brackets). `missed fixed, weighted` is what the bench would score had refine also "
        "caught and fixed every wrong label it never flagged; `kept, true`, had it left no "
        "wrong label among the rows it kept.",
        "",
    ]
    repaired = SETS[1:-1]
    lines += _table(
        ["recipe", *repaired],
        (
            [name, *(f"{s['shares'][k][0]:.0%} ({s['shares'][k][1]:.0%})" for k in repaired)]
            for name, s in [*summaries.items(), ("**all**", total)]
        ),
    )
    lines += [
        "",
        "## Wrong refined labels, by kind",
        "",
        "Share of the labelled rows, mean over seeds; `noise` is the share of given labels "
        "that are wrong.",
        "",
    ]
    lines += _table(
        ["recipe", "noise", *KINDS],
        (
            [name, f"{s['noise']:.3f}", *(f"{s['kinds'][k]:.3f}" for k in KINDS)]
            for name, s in summaries.items()
        ),
    )
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows) -> list[str]:
    """A markdown table's lines: ``header`` and each row's cells."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="10-29", help="a range (10-29) or a list (10,11)")
    parser.add_argument("--recipes", default=RECIPES)
    parser.add_argument("--out", type=Path, default=Path("reports/gap.md"))
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    summaries, all_runs = {}, []
    for name in args.recipes.split(","):
        if load_recipe(name).missing_files():
            print(f"skipped {name}: its files are not on this machine")
            continue
        runs = [score(name, seed) for seed in seeds]
        all_runs += runs
        summaries[name] = s = summarise(runs)
        print(f"{name}: gap {s['mean']:.0%} ± {s['se']:.0%}, pooled {s['pooled']:.0%}", flush=True)
    command = f"python benchmarks/gap.py --seeds {args.seeds}"
    if args.recipes != RECIPES:
        command += f" --recipes {args.recipes}"
    args.out.write_text(render(summaries, all_runs, command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
