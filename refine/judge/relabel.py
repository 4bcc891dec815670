"""Decide, per row, what to train on next: keep, correct, down-weight or exclude the label.

Inputs are the stage shapes: ``labels`` ``(N,)`` (-1 = unlabelled), calibrated ``proba``
``(N, K)``, ``is_issue`` / ``quality`` / ``agreement`` ``(N,)``. Out: a ``Decisions``.
"""

from __future__ import annotations

import numpy as np

from refine.io.decisions import (
    CORRECTED,
    EXCLUDED,
    GIVEN,
    PSEUDO,
    UNLABELLED,
    VERIFIED,
    Decisions,
)
from refine.learn.calibrate import row_chunks


def teacher_is_reliable(labels: np.ndarray, proba: np.ndarray, min_kappa: float = 0.2) -> bool:
    """Whether the out-of-fold predictions agree with the given labels well beyond chance.

    Cohen's kappa between predicted and given classes: near 0 for a model that learned
    nothing (random features, far too little data), about 0.5 for a good model under 40%
    symmetric noise. Below ``min_kappa`` refine keeps every label rather than flip any.
    """
    k = proba.shape[1]
    predicted = proba.argmax(1)
    observed = float((predicted == labels).mean())
    expected = float(
        (np.bincount(labels, minlength=k) / len(labels))
        @ (np.bincount(predicted, minlength=k) / len(labels))
    )
    kappa = (observed - expected) / (1.0 - expected) if expected < 1 else 0.0
    return kappa >= min_kappa


def decide(
    labels: np.ndarray,
    proba: np.ndarray,
    is_issue: np.ndarray,
    quality: np.ndarray,
    agreement: np.ndarray,
    relabel_threshold: float,
    exclude_threshold: float,
    soft_mix: float,
    reliable: bool,
    pseudo_threshold: float | None = None,
    relabel_odds: float = 0.0,
) -> Decisions:
    """Apply the rules, for labelled rows (``labels >= 0``):

    * not flagged: keep the given label, weight 1;
    * flagged, and the calibrated confidence in the predicted class reaches
      ``relabel_threshold``, or ``relabel_odds`` times the given label's probability (0: off),
      with every ensemble member agreeing: correct it to that class, weight = that confidence
      (the probability the correction is right);
    * flagged, not correctable, quality below ``exclude_threshold``: exclude (weight 0);
    * otherwise flagged: keep the label with weight = its quality (the probability it is right).

    Unlabelled rows (``labels == -1``) are pseudo-labelled with the predicted class when
    ``pseudo_threshold`` is given, the calibrated confidence reaches it and every ensemble member
    agrees; their weight is that confidence, so an uncertain pseudo-label counts for less than a
    given label. Other unlabelled rows get no label and weight 0. With an unreliable teacher
    every label is kept with weight 1 and nothing is pseudo-labelled. The soft target mixes the refined label's one-hot with the calibrated
    prediction: ``(1 - soft_mix) * onehot + soft_mix * proba``; rows without a label get ``proba``.
    """
    n, k = proba.shape
    labelled = labels >= 0
    predicted = proba.argmax(1)
    confidence = proba[np.arange(n), predicted]

    refined = labels.copy()
    source = np.where(labelled, GIVEN, UNLABELLED).astype(np.int8)
    weight = labelled.astype(np.float32)
    if reliable:
        flagged = labelled & is_issue
        sure = confidence >= relabel_threshold
        if relabel_odds > 0:
            # With many classes the probability spreads over the runners-up, so a predicted
            # class can sit below the threshold yet far above the given one; the odds ask how
            # the two candidates compare, whatever the rest holds (reports/code-notes.md).
            given_proba = proba[np.arange(n), np.where(labelled, labels, 0)]
            sure |= confidence >= relabel_odds * given_proba
        correct = flagged & sure & (agreement >= 1.0) & (predicted != labels)
        exclude = flagged & ~correct & (quality < exclude_threshold)
        down = flagged & ~correct & ~exclude
        refined[correct] = predicted[correct]
        source[correct] = CORRECTED
        # A correction counts as much as it is likely to be right, as a doubtful kept label
        # and a pseudo-label do: a wrong correction agrees with the model's own mistakes, so
        # at full weight it teaches them to the next round and to downstream models.
        weight[correct] = confidence[correct]
        refined[exclude] = -1
        source[exclude] = EXCLUDED
        weight[exclude] = 0.0
        weight[down] = quality[down]
        if pseudo_threshold is not None:
            pseudo = ~labelled & (confidence >= pseudo_threshold) & (agreement >= 1.0)
            refined[pseudo] = predicted[pseudo]
            source[pseudo] = PSEUDO
            weight[pseudo] = confidence[pseudo]

    return Decisions(refined, source, weight, _soft_targets(refined, proba, soft_mix))


def keep_given(labels: np.ndarray, proba: np.ndarray, soft_mix: float) -> Decisions:
    """Every given label kept at weight 1, nothing pseudo-labelled: what refine writes when it
    cannot show that its corrections would be right."""
    labelled = labels >= 0
    source = np.where(labelled, GIVEN, UNLABELLED).astype(np.int8)
    return Decisions(
        labels.copy(), source, labelled.astype(np.float32), _soft_targets(labels, proba, soft_mix)
    )


def decide_by_posterior(
    labels: np.ndarray,
    posterior: np.ndarray,
    agreement: np.ndarray,
    soft_mix: float,
    pseudo_threshold: float | None = None,
) -> Decisions:
    """Decide from ``posterior`` ``(N, K)``: for labelled rows the probability of each true class
    given the row and its given label (``posterior.Posterior``), for unlabelled rows given the row
    alone. Both are calibrated against verified labels, so the rules need no thresholds of
    their own:

    * labelled rows take their most likely true class: the given label where it is likeliest,
      else a correction; the weight is that class's probability (the chance the label is right);
    * unlabelled rows are pseudo-labelled as ``decide`` does, at ``pseudo_threshold``.
    """
    n, k = posterior.shape
    labelled = labels >= 0
    best = posterior.argmax(1) if n else np.zeros(0, np.int64)
    confidence = posterior[np.arange(n), best]
    refined = np.where(labelled, best, -1)
    source = np.where(labelled, GIVEN, UNLABELLED).astype(np.int8)
    source[labelled & (best != labels)] = CORRECTED
    weight = np.where(labelled, confidence, 0.0).astype(np.float32)
    if pseudo_threshold is not None:
        pseudo = ~labelled & (confidence >= pseudo_threshold) & (agreement >= 1.0)
        refined[pseudo] = best[pseudo]
        source[pseudo] = PSEUDO
        weight[pseudo] = confidence[pseudo]
    return Decisions(refined, source, weight, _soft_targets(refined, posterior, soft_mix))


def with_verified(decisions: Decisions, verified: np.ndarray) -> Decisions:
    """``decisions`` with every verified row (``verified`` ``(N,)`` class index, -1 = not
    verified) set to its verified label: source ``VERIFIED``, weight 1, a one-hot soft target."""
    rows = np.flatnonzero(verified >= 0)
    if not len(rows):
        return decisions
    refined, source = decisions.refined.copy(), decisions.source.copy()
    weight, soft = decisions.weight.copy(), decisions.soft.copy()
    refined[rows] = verified[rows]
    source[rows] = VERIFIED
    weight[rows] = 1.0
    soft[rows] = 0.0
    soft[rows, verified[rows]] = 1.0
    return Decisions(refined, source, weight, soft)


def true_class_of(soft: np.ndarray, refined: np.ndarray, soft_mix: float) -> np.ndarray | None:
    """The probabilities of the true class that ``soft`` ``(N, K)`` (``label_soft``) mixed with
    the ``refined`` labels' one-hot (``_soft_targets``, undone); a verified row's is its verified
    label. None where ``soft_mix`` is 0 and the soft targets hold none."""
    if soft_mix <= 0:
        return None
    has_label = refined >= 0
    proba = soft.astype(np.float64, copy=True)
    proba[has_label, refined[has_label]] -= 1.0 - soft_mix
    proba[has_label] /= soft_mix
    proba = np.clip(proba, 0.0, 1.0)  # float32 rounding
    return proba / proba.sum(1, keepdims=True)


def _soft_targets(refined: np.ndarray, proba: np.ndarray, soft_mix: float) -> np.ndarray:
    """The refined label's one-hot mixed with the prediction: ``(1 - soft_mix) * onehot +
    soft_mix * proba``; rows without a label get ``proba``."""
    k = proba.shape[1]
    soft = proba.astype(np.float32, copy=True)
    for part in row_chunks(len(soft)):  # (N, K) temporaries a chunk of rows at a time
        block, labels = soft[part], refined[part]
        has_label = labels >= 0
        onehot = np.zeros((int(has_label.sum()), k), np.float32)
        onehot[np.arange(len(onehot)), labels[has_label]] = 1.0
        block[has_label] = (1.0 - soft_mix) * onehot + soft_mix * block[has_label]
    return soft
