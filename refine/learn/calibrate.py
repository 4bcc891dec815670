"""Temperature scaling of out-of-fold probabilities, and expected calibration error."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import softmax

_EPS = 1e-7
# Rows at a time for row-wise arithmetic on (N, K) arrays: a row's result does not depend on
# the others, so the bytes are those of one pass without its (N, K) float64 temporaries.
CHUNK_ROWS = 65536


def row_chunks(n: int) -> Iterator[slice]:
    """Slices of consecutive rows covering ``range(n)``: ``CHUNK_ROWS`` each, the last one
    taking the remainder too. No piece is small, because a matrix product of a few rows can
    round otherwise than the same rows of a large one (BLAS takes another path for them)."""
    starts = range(0, max(n - CHUNK_ROWS, 0) + 1, CHUNK_ROWS)
    return (slice(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True))


def _logits(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(proba, _EPS, 1.0)).astype(np.float64)


def fit_temperature(
    proba: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """The temperature T minimising the Brier score of ``softmax(log(proba) / T)`` on ``labels``.

    ``proba`` ``(N, K)`` are probabilities (an ensemble mean, so its log serves as logits);
    ``labels`` ``(N,)`` class indices; ``weights`` ``(N,)`` optional row weights. Searched
    over T in [0.05, 20] on a log scale.

    The Brier score rather than the usual log loss: both are proper scoring rules, so both
    recover the right temperature on clean labels, but under label noise the log loss is
    dominated by the mislabelled rows (probability near 0 for their given label), which drags
    T up and leaves the bulk of rows underconfident (reports/detection.md measures the switch).
    """
    scores = np.empty(len(labels))

    def brier(log_t: float) -> float:
        for part in row_chunks(len(labels)):
            q = softmax(_logits(proba[part]) / np.exp(log_t), axis=1)
            scores[part] = (q**2).sum(1) - 2.0 * q[np.arange(len(q)), labels[part]]
        return float(np.average(scores, weights=weights))  # + 1, a constant

    result = minimize_scalar(
        brier, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4}
    )
    return float(np.exp(result.x))


def fit_temperature_to(proba: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising the Brier score of ``softmax(log(proba) / T)`` against soft
    ``targets`` ``(N, K)``, each row a distribution over the classes: the expected Brier score
    were the true class drawn from them. Searched over T in [0.05, 20] on a log scale."""
    logits = np.log(np.clip(proba, _EPS, 1.0)).astype(np.float64)
    targets = np.asarray(targets, np.float64)

    def brier(log_t: float) -> float:
        q = softmax(logits / np.exp(log_t), axis=1)
        return float(((q**2).sum(1) - 2.0 * (q * targets).sum(1)).mean())  # + a constant

    result = minimize_scalar(
        brier, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4}
    )
    return float(np.exp(result.x))


def noise_transitions(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """The label noise ``C[true, given]`` ~ P(given | true) ``(K, K)``, from cleanlab's calibrated
    confident joint of ``labels`` ``(N,)`` and out-of-fold ``proba`` ``(N, K)``. A class no row
    is confidently counted as keeps its labels (an identity row)."""
    from cleanlab.count import estimate_joint

    joint = estimate_joint(labels, proba).T  # true x given
    mass = joint.sum(1, keepdims=True)
    k = joint.shape[0]
    return np.where(mass > 0, joint / np.maximum(mass, 1e-12), np.eye(k))


def fit_temperature_through_noise(
    proba: np.ndarray, labels: np.ndarray, transitions: np.ndarray
) -> float:
    """The temperature T whose ``softmax(log(proba) / T)`` best explains the given ``labels``
    once passed through the label noise: P(given | row) = P(true | row) @ ``transitions``.

    ``proba`` ``(N, K)`` calibrated against the given labels, so under noise its confidence
    tops out near the share of labels that are right; this T is the one that speaks of the
    true class instead (reports/trust.md, reports/code-notes.md).
    The log loss, unlike ``fit_temperature``'s Brier score: the noise model already accounts
    for the mislabelled rows that make it unstable there. Searched over [0.05, 20].
    """
    transitions = np.asarray(transitions, np.float64)
    likelihood = np.empty(len(labels))

    def log_loss(log_t: float) -> float:
        for part in row_chunks(len(labels)):
            given = softmax(_logits(proba[part]) / np.exp(log_t), axis=1) @ transitions
            likelihood[part] = given[np.arange(len(given)), labels[part]]
        return -float(np.log(np.clip(likelihood, 1e-12, 1.0)).mean())

    result = minimize_scalar(
        log_loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4}
    )
    return float(np.exp(result.x))


def apply_temperature(
    proba: np.ndarray, temperature: float, out: np.ndarray | None = None
) -> np.ndarray:
    """``softmax(log(proba) / temperature)`` ``(N, K)`` float32, into ``out`` when given (which
    may be ``proba`` itself: the rows are scaled a chunk at a time)."""
    if out is None:
        out = np.empty(proba.shape, np.float32)
    for part in row_chunks(len(proba)):
        out[part] = softmax(np.log(np.clip(proba[part], _EPS, 1.0)) / temperature, axis=1)
    return out


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the mean |accuracy - confidence| over equal-width confidence bins."""
    counts, correct, confidence = _bin_sums(proba, labels, bins)
    return float(np.abs(correct - confidence).sum() / max(counts.sum(), 1))


def reliability_bins(proba: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, list]:
    """The data of a reliability diagram: per equal-width confidence bin, the rows' mean top-label
    confidence, their accuracy, and their count.

    The same bins as ``expected_calibration_error``, which is the count-weighted mean of
    ``|accuracy - confidence|`` over them. ``proba`` ``(N, K)``, ``labels`` ``(N,)`` class
    indices. Returns JSON-ready lists of length ``bins``: ``edges`` (``bins + 1`` bin edges),
    ``confidence`` and ``accuracy`` (None for an empty bin) and ``count``.
    """
    counts, correct, confidence = _bin_sums(proba, labels, bins)
    filled = counts > 0
    safe = np.maximum(counts, 1)
    return {
        "edges": [round(float(e), 6) for e in np.linspace(0.0, 1.0, bins + 1)],
        "confidence": [
            float(c) if f else None for c, f in zip(confidence / safe, filled, strict=True)
        ],
        "accuracy": [float(a) if f else None for a, f in zip(correct / safe, filled, strict=True)],
        "count": [int(c) for c in counts],
    }


def _bin_sums(
    proba: np.ndarray, labels: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of top-label confidence ``(bins,)``: rows, correct rows, and the sum
    of their confidences."""
    confidence = proba.max(1)
    correct = proba.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return (
        np.bincount(which, minlength=bins),
        np.bincount(which, weights=correct, minlength=bins),
        np.bincount(which, weights=confidence, minlength=bins),
    )
