"""The probability of each row's true class: a ``Posterior`` fitted on verified rows that
weighs the model against the given label, a temperature that turns probabilities calibrated
against the given labels toward the true class, and the given label as evidence through the
estimated noise.

Shapes: ``labels`` ``(N,)`` given class indices (-1 = unlabelled), ``verified`` ``(N,)``
verified class indices (-1 = not verified), ``proba`` ``(N, K)`` calibrated out-of-fold
probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from refine.learn.calibrate import fit_temperature, fit_temperature_through_noise, noise_transitions

GIVEN_WEIGHT_SD = 5.0
_EPS = 1e-7


@dataclass(frozen=True)
class Posterior:
    """The probability of each true class given a row's out-of-fold probabilities ``p`` and its
    given label: ``softmax(scale * log p + given_weight * onehot(given) + bias)``.

    ``scale`` sharpens or flattens the model (it was calibrated against noisy labels);
    ``given_weight`` is the log-odds the given label adds for its own class, which is large
    where labels are rarely wrong and small (never below 0: ``fit_posterior``) where the model
    knows better; ``bias`` ``(K,)`` moves each class's prior. Rows without a given label get no
    bonus.
    """

    scale: float
    given_weight: float
    bias: np.ndarray

    def proba(self, proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(N, K)`` true-class probabilities for ``proba`` ``(N, K)`` and ``labels`` ``(N,)``."""
        return softmax(self._logits(proba, labels), axis=1).astype(np.float32)

    def _logits(self, proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
        z = self.scale * _log(proba) + self.bias
        rows = np.flatnonzero(labels >= 0)
        z[rows, labels[rows]] += self.given_weight
        return z

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": round(self.scale, 6),
            "given_weight": round(self.given_weight, 6),
            "bias": [round(float(b), 6) for b in self.bias],
        }


def fit_posterior(
    proba: np.ndarray, labels: np.ndarray, truth: np.ndarray, use_given: bool = True
) -> Posterior:
    """Fit a ``Posterior`` to verified rows by maximum likelihood of their true class.

    ``proba`` ``(M, K)`` out-of-fold probabilities, ``labels`` ``(M,)`` given labels (-1 where
    none), ``truth`` ``(M,)`` verified labels. ``use_given`` False fits ``given_weight = 0``:
    the calibration of the model alone, for rows without a given label. Weak priors keep a
    few verified rows from driving the fit to extremes where the model separates them
    perfectly: ``log(scale)`` and each class bias unit Gaussians, ``given_weight`` a Gaussian
    of sd ``GIVEN_WEIGHT_SD``; so a class with few verified rows keeps about the model's prior.
    """
    m, k = proba.shape
    log_p = _log(proba)
    given = np.zeros((m, k))
    rows = np.flatnonzero(labels >= 0)
    given[rows, labels[rows]] = 1.0
    onehot = np.zeros((m, k))
    onehot[np.arange(m), truth] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        scale, weight, bias = theta[0], theta[1] if use_given else 0.0, theta[2:]
        z = scale * log_p + weight * given + bias
        log_q = log_softmax(z, axis=1)
        residual = np.exp(log_q) - onehot  # d(-log-likelihood)/dz
        prior = math.log(scale) ** 2 / 2 + weight**2 / (2 * GIVEN_WEIGHT_SD**2)
        loss = -float((log_q * onehot).sum()) + prior + float(bias @ bias) / 2
        gradient = np.concatenate(
            [
                [
                    (residual * log_p).sum() + math.log(scale) / scale,
                    (residual * given).sum() + weight / GIVEN_WEIGHT_SD**2 if use_given else 0.0,
                ],
                residual.sum(0) + bias,
            ]
        )
        return loss, gradient

    # The given label never counts against its own class: without that bound a few verified
    # rows that the model alone gets right drive the weight far below 0, and the run then
    # overturns right labels (reports/code-notes.md).
    bounds = [(0.05, 50.0), (0.0, 20.0) if use_given else (0.0, 0.0)] + [(-10.0, 10.0)] * k
    result = minimize(
        objective,
        np.concatenate([[1.0, 0.0], np.zeros(k)]),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
    )
    theta = result.x
    return Posterior(float(theta[0]), float(theta[1]), theta[2:].astype(np.float64))


def truth_temperature(
    proba: np.ndarray,
    labels: np.ndarray,
    verified: np.ndarray,
    trusted: bool,
    weights: np.ndarray | None,
) -> tuple[float, str]:
    """A temperature that turns ``proba`` ``(N, K)`` (calibrated against the given ``labels``)
    into probabilities of the true class, and how it was found: against the ``verified`` labels
    weighted by ``weights`` where they stand for the table (``stratum_weights``); else through
    the label noise the model estimates, where the data's evidence ``trusted`` the model; else
    none (1.0, ``proba`` as it is)."""
    if weights is not None:
        rows = np.flatnonzero(verified >= 0)
        return fit_temperature(proba[rows], verified[rows], weights), "verified"
    labelled = np.flatnonzero(labels >= 0)
    if trusted and len(np.unique(labels[labelled])) >= 2:
        given = labels[labelled]
        seen = proba if len(labelled) == len(labels) else proba[labelled]  # no copy if all
        transitions = noise_transitions(given, seen)
        return fit_temperature_through_noise(seen, given, transitions), "noise"
    return 1.0, "none"


def given_label_posterior(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``proba`` ``(N, K)``, probabilities of the true class from the row alone, updated by each
    row's given label (``labels`` ``(N,)``, -1: none) through the noise they estimate
    (``noise_transitions``): P(true | row, given) ~ P(true | row) P(given | true). A row the
    noise makes impossible keeps its ``proba``."""
    labelled = np.flatnonzero(labels >= 0)
    out = proba.astype(np.float64, copy=True)
    if len(np.unique(labels[labelled])) < 2:
        return out
    transitions = noise_transitions(labels[labelled], proba[labelled])
    joint = out[labelled] * transitions[:, labels[labelled]].T
    mass = joint.sum(1, keepdims=True)
    out[labelled] = np.where(mass > 0, joint / np.maximum(mass, 1e-12), out[labelled])
    return out


def _log(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, np.float64), _EPS, 1.0))
