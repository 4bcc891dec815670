"""Label noise with a known answer: flip an exact share of labels, reproducibly by seed."""

from __future__ import annotations

import numpy as np


def flip_symmetric(labels: np.ndarray, rate: float, n_classes: int, seed: int) -> np.ndarray:
    """Flip exactly ``round(rate * N)`` labels, each to a uniformly drawn other class.

    ``labels`` ``(N,)`` class indices; returns new noisy labels, ``labels`` is not changed.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    rng = np.random.default_rng(seed)
    noisy = np.asarray(labels).copy()
    rows = rng.choice(len(noisy), size=int(round(rate * len(noisy))), replace=False)
    noisy[rows] = (noisy[rows] + rng.integers(1, n_classes, size=len(rows))) % n_classes
    return noisy


def flip_with_matrix(labels: np.ndarray, transition: np.ndarray, seed: int) -> np.ndarray:
    """Draw each noisy label from row ``transition[true]`` (rows sum to 1): ``P(noisy | true)``."""
    transition = np.asarray(transition, dtype=float)
    if not np.allclose(transition.sum(1), 1.0):
        raise ValueError("each row of the transition matrix must sum to 1")
    rng = np.random.default_rng(seed)
    cumulative = transition.cumsum(1)[labels]
    draws = rng.random(len(labels))[:, None]
    return np.minimum((draws > cumulative).sum(1), transition.shape[1] - 1)
