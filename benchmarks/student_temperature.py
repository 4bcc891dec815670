"""Which target the deployable student's temperature should be fitted to (issue 30's ECE miss).

For each bench recipe and seed: ``refine.run`` (``--rounds 2``, as ``benchmarks/student.py``)
and ``refine.deploy.distill``, then temperatures fitted to the student's own out-of-fold
probabilities against each target below, each applied to the same deployed network and scored
by top-label ECE on the recipe's clean test split beside the teacher ensemble's:

- ``belief``: what refine does (``refine.judge.trust.student_temperature``), the Brier score
  against the run's belief of each row's true class given its row and its given label;
- ``belief-mean``: the student's mean confidence set equal to the belief's mean probability of
  the student's predicted class;
- ``belief-binned``: the binned gap between the two above minimised (an ECE against the belief);
- ``row-belief``: the Brier score against the run's true-class probabilities from the row
  alone, without the given label's evidence;
- ``noise``: as the run finds its own ensemble's temperature, through the label noise that
  cleanlab's confident joint of the given labels and the student's probabilities estimates;
- ``noise-teacher``: the same, with the noise estimated on the run's true-class probabilities;
- ``oracle``: the Brier score against the true training labels (unattainable: the ceiling of a
  single temperature).

Two calibrators more flexible than a temperature, each an isotonic map of the top-class
confidence (at refine's temperature) fitted on the out-of-fold rows, the other classes scaled to
fill the rest: ``belief-isotonic`` to the belief's probability of the top class, and
``oracle-isotonic`` to whether the top class is the true training label.

Recipes where refine keeps the given labels find no true-class temperature and are skipped.

    python benchmarks/student_temperature.py --seeds 10,11 --recipes digits-sym20,...
        [--out reports/student-temperature.jsonl]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar
from scipy.special import softmax
from sklearn.isotonic import IsotonicRegression

import refine
import refine.judge.trust as trust
from refine.bench.recipes import build_dataset
from refine.deploy import _class_codes as class_codes
from refine.deploy import distill
from refine.judge.posterior import truth_temperature
from refine.learn.calibrate import (
    expected_calibration_error,
    fit_temperature_through_noise,
    fit_temperature_to,
    noise_transitions,
)

RECIPES = (
    "digits-sym20",
    "digits-pair30",
    "digits-sym40",
    "breast_cancer-sym20",
    "make_classification-sym20",
    "make_classification-pair30",
    "text-sym20",
    "wine-sym20",
    "wine-pair30",
)
SPAN = (0.05, 20.0)  # the temperatures searched, as refine's fits search them


class Capture:
    """Within ``with``: records what refine's student temperature is fitted on, the student's
    out-of-fold probabilities ``(N, K)``, the run's belief ``(N, K)`` and its row-only part, by
    wrapping the two functions of ``refine.judge.trust`` that see them (put back on exit)."""

    def __init__(self) -> None:
        self.seen: dict[str, np.ndarray] = {}
        self._originals = (trust.fit_temperature_to, trust.given_label_posterior)

    def __enter__(self) -> Capture:
        fit, posterior = self._originals

        def fit_spy(proba: np.ndarray, truth: np.ndarray) -> float:
            self.seen["oof"], self.seen["belief"] = proba.copy(), truth.copy()
            return fit(proba, truth)

        def posterior_spy(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
            self.seen["row"] = truth.copy()
            return posterior(truth, labels)

        trust.fit_temperature_to, trust.given_label_posterior = fit_spy, posterior_spy
        return self

    def __exit__(self, *exc: object) -> None:
        trust.fit_temperature_to, trust.given_label_posterior = self._originals


def scaled(proba: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.log(np.clip(proba, 1e-7, 1.0)) / temperature, axis=1)


def mean_matched(oof: np.ndarray, belief: np.ndarray) -> float:
    """T whose mean top confidence equals the belief's mean probability of the top class."""
    target = belief[np.arange(len(oof)), oof.argmax(1)].mean()

    def gap(log_t: float) -> float:
        return float(scaled(oof, np.exp(log_t)).max(1).mean() - target)

    low, high = np.log(SPAN)
    return float(np.exp(brentq(gap, low, high))) if gap(low) * gap(high) < 0 else 1.0


def binned(oof: np.ndarray, belief: np.ndarray, bins: int = 10) -> float:
    """T minimising the binned gap between top confidence and the belief in the top class."""
    expected = belief[np.arange(len(oof)), oof.argmax(1)]

    def gap(log_t: float) -> float:
        confidence = scaled(oof, np.exp(log_t)).max(1)
        which = np.clip((confidence * bins).astype(int), 0, bins - 1)
        sums = np.bincount(which, confidence - expected, bins)
        return float(np.abs(sums).sum() / len(oof))

    bounds = tuple(np.log(SPAN))
    return float(np.exp(minimize_scalar(gap, bounds=bounds, method="bounded").x))


def with_top(proba: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """``proba`` ``(N, K)`` with each row's top class set to ``confidence`` ``(N,)`` and the
    other classes scaled to fill the rest."""
    rows, top = np.arange(len(proba)), proba.argmax(1)
    rest = np.maximum(1.0 - proba[rows, top], 1e-12)
    out = proba * ((1.0 - confidence) / rest)[:, None]
    out[rows, top] = confidence
    return out


def isotonic(confidence: np.ndarray, target: np.ndarray) -> IsotonicRegression:
    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence, target)


def case(name: str, seed: int, capture: Capture, work: Path) -> dict | None:
    built = build_dataset(name, seed=seed)
    train = built.train.drop_columns(["label_true", "is_noisy"])
    truth = built.test.column("label").to_numpy()
    test = built.test.drop_columns(["label"])
    capture.seen.clear()
    refine.run(train, work / "run", seed=seed, rounds=2, report=False)
    previous = refine.load_run(work / "run", device="cpu")
    student = distill(work / "run", None, device="cpu")
    if "oof" not in capture.seen:
        return None  # the run found no true-class temperature: the refined labels are the target
    ensemble, _ = previous.predict(test)
    deployed = student.net.predict_proba(previous.encoder.transform(test))
    t0 = student.net.temperature
    given = class_codes(train.column("label"), previous.classes)
    true_train = class_codes(built.train.column("label_true"), previous.classes)
    labelled = given >= 0
    oof, belief = capture.seen["oof"], capture.seen["belief"]
    row = capture.seen.get("row", belief)  # the posterior policy's belief has no row-only part
    onehot = np.eye(len(previous.classes))[true_train]
    temperatures = {
        "belief": t0,
        "belief-mean": mean_matched(oof, belief),
        "belief-binned": binned(oof, belief),
        "row-belief": fit_temperature_to(oof, row),
        "noise": truth_temperature(oof, given, np.full(len(given), -1), True, None)[0],
        "noise-teacher": fit_temperature_through_noise(
            oof[labelled], given[labelled], noise_transitions(given[labelled], row[labelled])
        ),
        "oracle": fit_temperature_to(oof, onehot),
    }
    ece = {
        k: expected_calibration_error(scaled(deployed, t / t0), truth)
        for k, t in temperatures.items()
    }
    at_t0 = scaled(oof, t0)  # the out-of-fold rows as the deployed network is calibrated
    top, confidence = at_t0.argmax(1), at_t0.max(1)
    rows = np.arange(len(top))
    for key, target in (
        ("belief-isotonic", belief[rows, top]),
        ("oracle-isotonic", (top == true_train).astype(np.float64)),
    ):
        mapped = isotonic(confidence, target).predict(deployed.max(1))
        ece[key] = expected_calibration_error(with_top(deployed, mapped), truth)
    return {
        "recipe": name,
        "seed": seed,
        "ensemble_ece": expected_calibration_error(ensemble, truth),
        "temperature": temperatures,
        # the deployed network's probabilities at t0, rescaled to each temperature or mapped
        "ece": ece,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="10,11")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--out", type=Path, default=None, help="JSON Lines, one case a line")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with Capture() as capture:
        for name in args.recipes.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                with tempfile.TemporaryDirectory() as tmp:
                    result = case(name, seed, capture, Path(tmp))
                if result is None:
                    print(name, seed, "no true-class temperature: skipped", flush=True)
                    continue
                rows.append(result)
                print(json.dumps(result), flush=True)
    targets = list(rows[0]["ece"]) if rows else []
    print(
        "\n| target | cases below the ensemble's ECE | mean student ECE | mean student - ensemble |"
    )
    print("|---|---|---|---|")
    for target in targets:
        below = sum(r["ece"][target] < r["ensemble_ece"] for r in rows)
        mean = np.mean([r["ece"][target] for r in rows])
        diff = np.mean([r["ece"][target] - r["ensemble_ece"] for r in rows])
        print(f"| {target} | {below}/{len(rows)} | {mean:.4f} | {diff:+.4f} |")
    if args.out is not None:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
