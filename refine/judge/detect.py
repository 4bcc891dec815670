"""Detect likely wrong labels from calibrated out-of-fold probabilities.

Shapes: ``labels`` ``(N,)`` class indices of labelled rows, ``proba`` ``(N, K)``,
``agreement`` ``(N,)``. Out: an issue mask ``(N,)`` and a quality score ``(N,)`` in [0, 1]
(low = likely wrong). The detector never sees the model, only its outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cleanlab.filter import find_label_issues

# A pair of classes whose noise runs at least three times more one way than the other, beyond
# chance at this family-wise level, is treated as one-way (see ``noise_directions``).
ONE_WAY_RATIO = 1 / 3
ONE_WAY_ALPHA = 0.05
# The anchor estimate of the noise (see ``anchor_transitions``) reads each class's most typical
# rows: this share of the rows predicted as the class, and at least this many.
ANCHOR_SHARE = 0.1
MIN_ANCHORS = 3
# The smallest noise rate from a class that the anchor estimate calls a direction of noise.
ONE_WAY_FLOOR = 0.1
# The widest shift of a class's logits ``class_calibrated_quality`` searches.
LOGIT_SPAN = 30.0


def detect_issues(
    labels: np.ndarray,
    proba: np.ndarray,
    agreement: np.ndarray,
    filter_by: str = "predicted_neq_given",
    confident_threshold: float | None = 0.5,
    one_way: bool | np.ndarray = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``flag_issues``'s flags ``(N,)`` and every row's label quality ``(N,)``,
    ``class_calibrated_quality`` of ``proba``."""
    flags = flag_issues(labels, proba, agreement, filter_by, confident_threshold, one_way)
    return flags, class_calibrated_quality(labels, proba)


def flag_issues(
    labels: np.ndarray,
    proba: np.ndarray,
    agreement: np.ndarray,
    filter_by: str = "predicted_neq_given",
    confident_threshold: float | None = 0.5,
    one_way: bool | np.ndarray = True,
) -> np.ndarray:
    """Flag rows ``(N,)`` whose given label is likely wrong.

    A row is flagged when cleanlab's ``find_label_issues`` (method ``filter_by``) flags it and
    the ensemble's most likely class is not the given one. The default, ``predicted_neq_given``,
    flags exactly the rows whose calibrated out-of-fold prediction is another class. Confident
    learning's per-class thresholds (``prune_by_noise_rate``) undercount when the noise depends
    on the row: the mislabelled rows sit near class boundaries, below the class's mean
    confidence, so the estimated noise count comes out low and most of them go unflagged
    (reports/code-notes.md). Where classes overlap heavily and the noise does not depend on the
    row, ``prune_by_noise_rate`` is the more precise choice (see the README).

    Rows that every ensemble member assigns to another class, with calibrated probability at
    least ``confident_threshold`` and at least 0.5 above the given label's, are flagged whatever
    ``filter_by`` says: with ``prune_by_noise_rate`` this recovers rows that one-directional
    noise hides from the per-class thresholds (reports/code-notes.md). None turns the rule
    off.

    ``one_way``: leave alone rows flagged against the direction the noise runs in (see
    ``noise_directions``). True estimates the directions from ``proba``; a ``(K, K)`` mask
    from ``noise_directions`` gives them (the pipeline reads one per round and merges them with
    ``merge_directions``); False turns the check off.
    """
    rows = np.arange(len(labels))
    predicted = proba.argmax(1) if len(labels) else np.zeros(0, np.int64)
    if filter_by == "predicted_neq_given" or len(np.unique(labels)) < 2:
        # cleanlab's predicted_neq_given is exactly this; computing it here also serves a batch
        # with fewer than two classes (refine update), which cleanlab refuses.
        flagged = predicted != labels
    else:
        flagged = find_label_issues(labels, proba, filter_by=filter_by, n_jobs=1)
    if confident_threshold is not None and len(labels):
        confidence = proba[rows, predicted]
        margin = confidence - proba[rows, labels]
        flagged |= (confidence >= confident_threshold) & (margin >= 0.5) & (agreement >= 1.0)
    is_issue = flagged & (predicted != labels)
    if one_way is True:
        one_way = noise_directions(labels, proba)
    if one_way is not False and len(labels):
        is_issue &= ~np.asarray(one_way, bool)[labels, predicted]
    return is_issue


def class_calibrated_quality(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """The probability ``(N,)`` that each row's given label is right: the calibrated
    probability of the given label, shifted on the logit scale by one constant per given class
    so that the class's mean is the share of its labels that cleanlab's confident joint
    estimates right.

    ``labels`` ``(N,)`` class indices, ``proba`` ``(N, K)`` calibrated out-of-fold. A model
    fitted to noisy labels is as unsure of a hard class's right labels as of an easy class's
    wrong ones, so the plain probability ranks rows of hard and rare classes first; the given
    label is evidence too, as strong as that class's labels are clean (P(given | true)). Within
    a class the order is the probability's (reports/encoders.md).
    """
    from cleanlab.count import estimate_joint
    from scipy.optimize import brentq
    from scipy.special import expit, logit

    rows = np.arange(len(labels))
    quality = np.clip(proba[rows, labels], 0.0, 1.0).astype(np.float64)
    if len(np.unique(labels)) < 2:
        return quality.astype(np.float32)
    joint = estimate_joint(labels, proba)  # given x true
    z = logit(np.clip(quality, 1e-6, 1 - 1e-6))
    for given in np.unique(labels):
        members = labels == given
        # Half a row either way: a class with no estimated noise keeps an order among its rows.
        half = 0.5 / members.sum()
        right = np.clip(joint[given, given] / max(joint[given].sum(), 1e-12), half, 1 - half)

        def excess(shift: float, z: np.ndarray = z[members], right: float = right) -> float:
            return float(expit(z + shift).mean() - right)

        shift = brentq(excess, -LOGIT_SPAN, LOGIT_SPAN) if _bracketed(excess) else 0.0
        quality[members] = expit(z[members] + shift)
    return quality.astype(np.float32)


def _bracketed(excess: Any) -> bool:
    return excess(-LOGIT_SPAN) < 0 < excess(LOGIT_SPAN)


def confident_joint(labels: np.ndarray, proba: np.ndarray) -> list[list[int]] | None:
    """cleanlab's confident joint: rows counted by given label (rows) and the class they
    confidently belong to (columns), calibrated to the label counts.

    ``labels`` ``(N,)`` class indices of labelled rows, ``proba`` ``(N, K)`` their calibrated
    out-of-fold probabilities. Returns a ``K x K`` list of ints, or None when fewer than two
    classes are labelled (no noise to estimate).
    """
    if len(np.unique(labels)) < 2:
        return None
    from cleanlab.count import compute_confident_joint

    return compute_confident_joint(labels, proba).astype(np.int64).tolist()


def noise_directions(
    labels: np.ndarray,
    proba: np.ndarray,
    ratio: float = ONE_WAY_RATIO,
    alpha: float = ONE_WAY_ALPHA,
    floor: float = ONE_WAY_FLOOR,
) -> np.ndarray:
    """Which flags go against the direction the noise runs in: ``(K, K)`` bool, true at
    ``[i, j]`` when a row given i and predicted j should keep its label.

    ``labels`` ``(N,)`` and ``proba`` ``(N, K)`` out-of-fold. Both estimates below presume a
    model trained on the given labels. The pipeline also reads the mask in later rounds, whose
    models learned labels refine has corrected, and adds what those show; there the counts can
    misread instance-dependent noise (see ``merge_directions``).

    When the noise between classes i and j runs one way (a labeller who files some i under j,
    never the reverse), a row given i that the model predicts as j is almost surely a correct
    i whose posterior the mislabelled rows have dragged over the border, not an error to fix.
    Bayes says so too: P(true j | given i) carries the factor P(given i | true j), about zero.
    Two estimates of the direction are read, and either one suffices:

    * **Counts.** cleanlab's confident joint counts rows given i that truly belong to j
      (``forward``: the errors a flag of given i, predicted j could find) and rows given j that
      truly belong to i (``reverse``). The direction is one-way when
      ``forward < ratio * reverse`` and a fair coin would give so lopsided a split
      with probability below ``alpha`` divided by the number of class pairs (so ten classes
      with 20% symmetric noise, a few rows per pair, trigger nothing).
    * **Anchors.** ``anchor_transitions`` estimates P(given j | true i) from each class's most
      typical rows. The direction is one-way when that rate is at least ``floor`` and the
      reverse rate is below ``ratio`` times it. This has the power the counts lack on small
      data: the drag that makes the model flip correct border rows also inflates the counts
      the wrong way (reports/code-notes.md).

    The ratio leaves instance-dependent noise alone: the confident joint undercounts it
    unevenly, up to two to one between the directions (reports/code-notes.md), and a check
    there would cost most of the recall. Its anchors, the easy rows, carry next to no noise,
    below the floor.
    """
    from cleanlab.count import compute_confident_joint
    from scipy.stats import binom

    k = proba.shape[1]
    if len(np.unique(labels)) < 2:
        return np.zeros((k, k), bool)
    forward = compute_confident_joint(labels, proba).astype(np.int64)  # given x true
    reverse = forward.T
    n = forward + reverse
    p_value = binom.cdf(forward, np.maximum(n, 1), 0.5)
    pairs = max(k * (k - 1) // 2, 1)
    counted = (forward < ratio * reverse) & (p_value < alpha / pairs)
    noise = anchor_transitions(proba)  # true x given
    # given i, predicted j: against the noise when true j -> given i is rare next to i -> j
    anchored = (noise.T < ratio * noise) & (noise >= floor)
    return counted | anchored


def merge_directions(
    kept: np.ndarray | None, first: np.ndarray | None, seen: np.ndarray
) -> np.ndarray:
    """The one-way mask to flag with after a round that read ``seen``: every ``(K, K)``
    direction seen so far (``kept``), where the first round read ``first``.

    A direction once seen stays: later rounds model labels refine has corrected, which hide
    the noise from the anchors, though their counts can add a direction. But noise cannot run
    one way in both directions: a pair read one way in one round and the other way in another
    is a misreading of a later round's model, which can block every flag, so such a pair falls
    back to the first round's reading (reports/trust/one-way-merge.md).
    """
    if kept is None or first is None:
        return seen & ~seen.T
    merged = kept | seen
    both_ways = merged & merged.T
    return np.where(both_ways, first & ~first.T, merged)


def anchor_transitions(
    proba: np.ndarray, share: float = ANCHOR_SHARE, min_anchors: int = MIN_ANCHORS
) -> np.ndarray:
    """The noise transition matrix ``T[i, j]`` ~ P(given j | true i), ``(K, K)``, estimated at
    anchor points (Patrini et al., 2017, "Making deep neural networks robust to label noise").

    A class's anchors are the rows the model is surest belong to it: the top ``share`` of
    the rows predicted as the class by its probability, at least ``min_anchors``. Such rows
    are almost surely of that class, so the probabilities a model of the *given* labels
    assigns them, averaged, estimate where that class's labels go. ``proba`` ``(N, K)`` must
    be out-of-fold: a model that has memorised its training labels says 1.0 everywhere.

    A class the model predicts for fewer than ``min_anchors`` rows gets a row of NaN: it has no
    typical rows, and the rows likeliest to be it are other classes' rows filed under it
    (a batch with no true 9s, whose only 9s are mislabelled 0s, read as noise 9 -> 0 one way,
    and every such row went unflagged). NaN compares false, so it names no direction.
    """
    k = proba.shape[1]
    noise = np.full((k, k), np.nan)
    for i, anchors in enumerate(anchor_rows(proba, share, min_anchors)):
        if len(anchors):
            noise[i] = proba[anchors].mean(0)
    return noise


def anchor_rows(
    proba: np.ndarray, share: float = ANCHOR_SHARE, min_anchors: int = MIN_ANCHORS
) -> list[np.ndarray]:
    """Each class's anchors: the top ``share`` (at least ``min_anchors``) of the rows predicted
    as the class, by its probability; none for a class predicted for fewer rows than that.
    ``proba`` ``(N, K)``; returns K arrays of row indices."""
    predicted = proba.argmax(1)
    anchors = []
    for i in range(proba.shape[1]):
        rows = np.flatnonzero(predicted == i)
        if len(rows) < min_anchors:
            anchors.append(rows[:0])  # too few rows to tell where the class's labels go
            continue
        count = max(min_anchors, round(share * len(rows)))
        anchors.append(rows[np.argsort(-proba[rows, i], kind="stable")[:count]])
    return anchors
