"""What the data and the verified rows show of the labels and of the model's flags: the
evidence gate for runs without verified rows (``noise_evidence``), what a sample of verified
rows reads of it, the weights that make verified rows stand for the table, and the accuracies
measured on them.

Shapes: ``labels`` ``(N,)`` given class indices (-1 = unlabelled), ``proba`` ``(N, K)``
calibrated out-of-fold probabilities; verified rows' arrays ``(V,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from refine.judge.detect import anchor_rows
from refine.learn.calibrate import expected_calibration_error

# Without verified rows, the model's corrections are trusted when the noise seen at its surest
# rows accounts for at least this share of the rows it disagrees with (reports/trust.md).
MIN_FLAG_PRECISION = 0.5
# Verified rows of a class needed to report that class's accuracies.
MIN_CLASS_ROWS = 10
# The verified rows calibrate the probabilities only when the strata they fall in (below) hold
# at least this share of the table: refine review picks doubtful rows, and a temperature fitted
# on them alone flattened every probability, so no correction passed (reports/trust.md).
MIN_COVERED = 0.8
CONFIDENCE_BINS = 5


@dataclass(frozen=True)
class Evidence:
    """What the data alone says about the model's flags, under label noise that does not follow
    the features: the share of the model's surest rows (anchors) whose given label is another
    class (``anchor_noise``) estimates the noise rate, so ``anchor_noise / flag_rate`` estimates
    the share of flagged rows whose label is wrong (``precision``, at most 1).

    Noise that follows the features (crowds, labelling rules) leaves the anchors cleaner than
    the rest, so ``precision`` comes out low there and the evidence errs towards keeping labels.
    A model weaker than the labels disagrees with many right labels: a high ``flag_rate`` and
    low ``precision`` too.
    """

    anchor_noise: float
    flag_rate: float
    precision: float
    trusted: bool
    verified_noise: float | None = None  # the noise rate the verified rows show, where read
    # The share of the flagged verified rows whose label is wrong, where the verified rows
    # hold a flagged one: the precision measured, not estimated.
    verified_precision: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchor_noise": round(self.anchor_noise, 6),
            "verified_noise": _rounded(self.verified_noise),
            "verified_flag_precision": _rounded(self.verified_precision),
            "flag_rate": round(self.flag_rate, 6),
            "estimated_flag_precision": round(self.precision, 6),
            "min_flag_precision": MIN_FLAG_PRECISION,
            "trusted": self.trusted,
        }

    @property
    def rests_on_verified(self) -> bool:
        """Whether the flags are trusted only because of what the verified rows show: the
        surest rows alone would not trust them."""
        if self.verified_noise is None or not self.trusted:
            return False
        anchors = min(1.0, self.anchor_noise / self.flag_rate) if self.flag_rate > 0 else 1.0
        return anchors < MIN_FLAG_PRECISION

    def with_verified(
        self, noise: float, precision: float | None, min_precision: float = MIN_FLAG_PRECISION
    ) -> Evidence:
        """The same evidence, also read through a random sample of verified rows: ``noise``,
        the share of them with a wrong label, and ``precision``, the share of the flagged ones
        with a wrong label (None: none flagged), both weighted to the table's mix.

        The anchors miss noise that follows the features, so the higher of the anchors' and
        the measured precision stands. Not the noise rate over the flag rate: that assumes
        every wrong label is flagged, and where the model has learnt the labelling rule's
        errors it is not. On semeval-single 35 random verified rows read 49% noise against
        24% flags and let through rules that broke 7 labels; in simulated draws of 2% of the
        rows of the real sets, reading the flags directly trusts semeval's harmful rules a
        third as often and youtube's helpful ones about as often (reports/trust/
        flag-precision.md). A sample reading a lower precision than the anchors does not lower
        it: rules that break verified labels beyond chance are vetoed anyway, and a sample of a
        hundred rows misreads often enough to stop corrections that help
        (make_classification-sym20, reports/trust/verified-evidence.md)."""
        if precision is None or precision <= self.precision:
            return Evidence(
                self.anchor_noise, self.flag_rate, self.precision, self.trusted, noise, precision
            )
        return Evidence(
            self.anchor_noise,
            self.flag_rate,
            precision,
            precision >= min_precision,
            noise,
            precision,
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def noise_evidence(
    labels: np.ndarray, proba: np.ndarray, min_precision: float = MIN_FLAG_PRECISION
) -> Evidence:
    """``Evidence`` from labelled rows: ``labels`` ``(N,)`` given classes (no -1), ``proba``
    ``(N, K)`` out-of-fold probabilities of a model trained on those labels."""
    if not len(labels):
        return Evidence(0.0, 0.0, 1.0, True)
    predicted = proba.argmax(1)
    flag_rate = float((predicted != labels).mean())
    anchors = anchor_rows(proba)
    counted = sum(len(a) for a in anchors)
    disagree = sum(int((labels[a] != c).sum()) for c, a in enumerate(anchors))
    anchor_noise = disagree / counted if counted else 0.0
    # A model that disagrees with no label has nothing to correct: nothing to distrust.
    precision = min(1.0, anchor_noise / flag_rate) if flag_rate > 0 else 1.0
    return Evidence(anchor_noise, flag_rate, precision, precision >= min_precision)


def verified_flag_reading(
    labels: np.ndarray, truth: np.ndarray, proba: np.ndarray, weights: np.ndarray
) -> tuple[float, float | None]:
    """What verified rows show of the noise and the flags, weighted to the table's mix
    (``weights`` ``(V,)``, from ``stratum_weights``): the share of ``labels`` ``(V,)`` that
    differ from ``truth`` ``(V,)``, and the share of the rows ``proba`` ``(V, K)`` flags (its
    likeliest class is not the label) whose label is wrong, None where it flags none."""
    wrong = labels != truth
    flagged = proba.argmax(1) != labels
    noise = float(np.average(wrong, weights=weights))
    if not flagged.any():
        return noise, None
    return noise, float(np.average(wrong[flagged], weights=weights[flagged]))


def stratum_weights(proba: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Weights ``(len(rows),)`` that make the verified ``rows`` stand for the whole table, or
    None where they cannot.

    Rows are put in strata by the model's confidence (``CONFIDENCE_BINS`` quantile bins of the
    top probability over all ``proba`` ``(N, K)``) and, where every verified row has a given
    label (``labels`` -1: none), by whether the predicted class is the given label. A random
    sample gets weights near 1; rows a person picked for doubt are reweighted to the table's
    mix. Calibration holds within a stratum whatever picked the rows in it, so this undoes a
    selection made on confidence and agreement; strata with no verified row cannot be stood
    for, and when they hold more than ``1 - MIN_COVERED`` of the table, None. Verified rows
    without a given label (a gold validation split appended to the data) are judged on
    confidence alone: they cannot agree or disagree with a label they do not have.
    """
    confidence = proba.max(1)
    edges = np.quantile(confidence, np.linspace(0, 1, CONFIDENCE_BINS + 1)[1:-1])
    if (labels[rows] >= 0).all():
        status = np.where(labels < 0, 2, (proba.argmax(1) == labels).astype(np.int64))
    else:
        status = np.zeros(len(labels), np.int64)
    stratum = np.searchsorted(edges, confidence, side="right") * 3 + status
    cells = CONFIDENCE_BINS * 3
    table = np.bincount(stratum, minlength=cells) / len(stratum)
    sample = np.bincount(stratum[rows], minlength=cells) / len(rows)
    if table[sample > 0].sum() < MIN_COVERED:
        return None
    weights = table[stratum[rows]] / sample[stratum[rows]]
    return weights / weights.mean()


def measure(
    labels: np.ndarray, truth: np.ndarray, refined: np.ndarray, classes: list[Any]
) -> dict[str, Any]:
    """Accuracies on verified rows with 95% Wilson intervals: ``labels`` ``(V,)`` given,
    ``truth`` ``(V,)`` verified, ``refined`` ``(V,)`` the labels refine would have set (cross-
    fitted; -1 = excluded, counted wrong). Also the precision of corrections (a changed label
    that is right) and of exclusions (an excluded label that was wrong), and per class (by
    verified class) where a class has ``MIN_CLASS_ROWS`` rows."""
    corrected = (refined >= 0) & (refined != labels)
    excluded = refined < 0
    result: dict[str, Any] = {
        "rows": int(len(labels)),
        "given_accuracy": _interval(int((labels == truth).sum()), len(labels)),
        "refined_accuracy": _interval(int((refined == truth).sum()), len(labels)),
        "corrections": {
            "rows": int(corrected.sum()),
            "precision": _interval(
                int((refined[corrected] == truth[corrected]).sum()), int(corrected.sum())
            ),
        },
        "exclusions": {
            "rows": int(excluded.sum()),
            "precision": _interval(
                int((labels[excluded] != truth[excluded]).sum()), int(excluded.sum())
            ),
        },
        "per_class": [],
    }
    for index, value in enumerate(classes):
        mine = truth == index
        if mine.sum() >= MIN_CLASS_ROWS:
            result["per_class"].append(
                {
                    "class": value,
                    "rows": int(mine.sum()),
                    "given_accuracy": _interval(
                        int((labels[mine] == index).sum()), int(mine.sum())
                    ),
                    "refined_accuracy": _interval(
                        int((refined[mine] == index).sum()), int(mine.sum())
                    ),
                }
            )
    return result


def _interval(successes: int, n: int) -> dict[str, float | int | None]:
    """A share with its 95% Wilson score interval (sound for small ``n`` and shares near 0 or 1)."""
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {
        "value": round(p, 6),
        "low": round(max(0.0, centre - half), 6),
        "high": round(min(1.0, centre + half), 6),
        "n": n,
    }


def truth_ece(proba: np.ndarray, truth: np.ndarray) -> float | None:
    """Expected calibration error of ``proba`` ``(V, K)`` against verified labels ``(V,)``."""
    return expected_calibration_error(proba, truth) if len(truth) else None
