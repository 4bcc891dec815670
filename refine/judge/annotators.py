"""Estimate how reliable each annotator is, and what their votes together say of the true class.

Inputs are plain shapes: ``votes`` ``(N, A)`` class indices, -1 where annotator ``a`` gave row
``i`` no vote (an abstention, or an item the annotator never saw), and a ``prior`` ``(N, K)``
over each row's true class: the model's calibrated out-of-fold probabilities (the row's own
votes never trained them), or none.

``fit_annotators``: the one-coin model (each annotator votes the true class with one
probability, wrong votes spread evenly; as in GLAD without item difficulty), fitted by hard EM
with the prior, each annotator shrunk toward the pool by ``strength`` pseudo-votes so one with
few votes stays near the crowd; then every annotator's confusion counted against that
posterior. ``choose_prior``/``consensus``: how far to trust the prior (p^t, or the majority
vote), chosen by how well each predicts held-out votes, without gold. ``dawid_skene``: the
full-confusion baseline, which drifts to poor optima with few
annotators and on labelling functions (reports/crowd.md).

Written by hand: cleanlab's CROWDLAB weighs each annotator by one number and crowd-kit is not
a dependency; neither takes a per-row prior over the true class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from refine.io.write import ANNOTATORS_SCHEMA

# Pseudo-votes pulling each annotator's confusion row toward the pool's (reports/crowd.md).
SHRINK_STRENGTH = 5.0


@dataclass
class AnnotatorModel:
    """``posterior`` ``(N, K)``: each row's true class given its votes and the prior;
    ``confusion`` ``(A, K, K + 1)``: P(annotator votes l | true class k), the last column an
    abstention; ``iterations``: EM steps run."""

    posterior: np.ndarray
    confusion: np.ndarray
    iterations: int


def majority_vote(votes: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """The most voted class per row ``(N,)``, -1 for a row without votes; a tie goes to one of
    the tied classes drawn with ``seed`` (the same seed, the same draw)."""
    counts = vote_counts(votes, n_classes)
    rng = np.random.default_rng(seed)
    # A random key below 1 breaks ties among the top counts, and only among them.
    keyed = counts + rng.random(counts.shape) * (counts == counts.max(1, keepdims=True))
    return np.where(counts.sum(1) > 0, keyed.argmax(1), -1)


def vote_counts(votes: np.ndarray, n_classes: int) -> np.ndarray:
    """``(N, K)`` how many votes each class got in each row."""
    n = len(votes)
    counts = np.zeros((n, n_classes), np.float64)
    rows, annotators = np.nonzero(votes >= 0)
    np.add.at(counts, (rows, votes[rows, annotators]), 1.0)
    return counts


def fit_annotators(
    votes: np.ndarray,
    prior: np.ndarray | None = None,
    *,
    strength: float = SHRINK_STRENGTH,
    steps: int = 20,
) -> AnnotatorModel:
    """Fit each row's posterior over the true class and every annotator's confusion.

    The posterior comes from the one-coin model (each annotator right with one probability,
    shrunk toward the pool's by ``strength`` pseudo-votes), fitted by ``steps`` of hard EM;
    the confusions are then counted against it, shrunk toward the pooled confusion. Full
    Dawid-Skene confusions fitted jointly drift to poor optima with few annotators and on
    labelling functions (``dawid_skene``; reports/crowd.md).

    Parameters
    ----------
    votes : (N, A) int array
        Class index of each annotator's vote on each row; -1 = no vote.
    prior : (N, K) float array, optional
        P(true class | row) before the votes (rows sum to 1): the model's calibrated
        out-of-fold probabilities. None: uniform.
    strength : float
        Pseudo-votes pulling each annotator toward the pool.
    """
    votes = np.asarray(votes, np.int64)
    k = prior.shape[1] if prior is not None else int(votes.max()) + 1
    posterior = _one_coin(votes, k, prior, strength, steps)
    confusion = _m_step(_outcomes(votes, k), posterior, strength)
    return AnnotatorModel(posterior.astype(np.float32), confusion, steps)


# The model prior's exponents ``choose_prior`` tries; 0 = the votes alone.
PRIOR_TEMPERS = (0.0, 0.25, 0.5, 1.0)


@dataclass
class PriorChoice:
    """``temper``: the exponent t of the chosen prior p^t, None when the majority vote
    predicted held-out votes best (the fallback); ``scores``: each candidate's mean
    log-likelihood of the held-out votes (``"majority"`` and the tempers as strings)."""

    temper: float | None
    scores: dict[str, float]


def choose_prior(
    votes: np.ndarray,
    prior: np.ndarray,
    seed: int,
    *,
    folds: int = 5,
    tempers: tuple[float, ...] = PRIOR_TEMPERS,
) -> PriorChoice:
    """How far to trust the model prior against the votes, chosen without gold.

    Every vote is put in one of ``folds`` folds (drawn with ``seed``); for each fold the
    annotator model is fitted on the other votes with the prior tempered to p^t, and scored by
    the log-likelihood of the fold's votes (each vote's class given that the annotator voted:
    the row's posterior times the annotator's confusion). The majority vote (vote shares, the
    same confusions) is a candidate too and wins ties: labelling functions that each vote one
    class are predicted as well by any candidate, so there the majority stays
    (reports/crowd.md)."""
    votes = np.asarray(votes, np.int64)
    k = prior.shape[1]
    rows, annotators = np.nonzero(votes >= 0)
    fold = np.random.default_rng(seed).integers(0, folds, len(rows))
    scores: dict[str, float] = {}
    for candidate in (None, *tempers):
        total = 0.0
        for f in range(folds):
            held = fold == f
            train = votes.copy()
            train[rows[held], annotators[held]] = -1
            if candidate is None:
                counts = vote_counts(train, k) + 1.0 / k
                posterior = counts / counts.sum(1, keepdims=True)
                confusion = _m_step(_outcomes(train, k), posterior, SHRINK_STRENGTH)
            else:
                model = fit_annotators(train, tempered(prior, candidate))
                posterior, confusion = model.posterior.astype(np.float64), model.confusion
            cast = confusion[:, :, :k] / confusion[:, :, :k].sum(2, keepdims=True)
            r, a = rows[held], annotators[held]
            # P(vote = v | row, annotator voted) = sum_k posterior[k] * cast[a, k, v]
            likely = np.einsum("nk,nk->n", posterior[r], cast[a, :, votes[r, a]])
            total += float(np.log(np.clip(likely, 1e-12, None)).sum())
        scores["majority" if candidate is None else str(candidate)] = total / max(len(rows), 1)
    best = max(scores, key=lambda name: (scores[name], name == "majority"))
    return PriorChoice(None if best == "majority" else float(best), scores)


def tempered(prior: np.ndarray, temper: float) -> np.ndarray | None:
    """The prior raised to ``temper`` and renormalised; None (uniform) at 0."""
    if temper == 0:
        return None
    powered = np.clip(prior.astype(np.float64), 1e-12, None) ** temper
    return powered / powered.sum(1, keepdims=True)


def consensus(votes: np.ndarray, prior: np.ndarray, seed: int) -> tuple[np.ndarray, PriorChoice]:
    """Each row's consensus ``(N,)`` (-1 = no vote and no prior) and the prior chosen for it:
    the annotator model with the held-out choice of ``choose_prior``, or the majority vote
    (ties drawn with ``seed``) where it predicted held-out votes best."""
    choice = choose_prior(votes, prior, seed)
    if choice.temper is None:
        return majority_vote(votes, prior.shape[1], seed), choice
    model = fit_annotators(votes, tempered(prior, choice.temper))
    return model.posterior.argmax(1), choice


def dawid_skene(
    votes: np.ndarray, n_classes: int, *, strength: float = 0.0, max_iter: int = 50
) -> AnnotatorModel:
    """Dawid-Skene by EM from the vote shares, with class frequencies learned and abstention
    as an outcome; ``strength`` > 0 shrinks each confusion row toward the pooled one. The
    baseline ``fit_annotators`` is measured against (benchmarks/crowd.py)."""
    votes = np.asarray(votes, np.int64)
    n, k = len(votes), n_classes
    onehot = _outcomes(votes, k)
    outcome = np.where(votes >= 0, votes, k)
    counts = vote_counts(votes, k) + 1e-2
    posterior = counts / counts.sum(1, keepdims=True)
    confusion = np.zeros((votes.shape[1], k, k + 1))
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        confusion = _m_step(onehot, posterior, strength)
        log_prior = np.broadcast_to(np.log(np.clip(posterior.mean(0), 1e-12, None)), (n, k))
        new = _e_step(outcome, confusion, log_prior)
        change = float(np.abs(new - posterior).max()) if n else 0.0
        posterior = new
        if change < 1e-5:
            break
    return AnnotatorModel(posterior.astype(np.float32), confusion, iterations)


def _outcomes(votes: np.ndarray, k: int) -> np.ndarray:
    """``(N, A, K + 1)`` one-hot of each vote, the last column an abstention."""
    n, a = votes.shape
    onehot = np.zeros((n, a, k + 1), np.float64)
    onehot[np.arange(n)[:, None], np.arange(a)[None, :], np.where(votes >= 0, votes, k)] = 1.0
    return onehot


def _one_coin(
    votes: np.ndarray, k: int, prior: np.ndarray | None, strength: float, steps: int
) -> np.ndarray:
    """A starting posterior ``(N, K)`` from a few EM steps of the one-coin model (each annotator
    right with one probability, wrong votes spread evenly): votes weighted by their
    annotator's log-odds. Started from the vote shares, full confusions fall into poor local
    optima when a few weak annotators outvote a reliable one."""
    n, a = votes.shape
    rows, annotators = np.nonzero(votes >= 0)
    cast = votes[rows, annotators]
    log_prior = np.log(np.clip(prior, 1e-12, None)) if prior is not None else np.zeros((n, k))
    counts = vote_counts(votes, k) + 1e-2
    posterior = _normalise(counts / counts.sum(1, keepdims=True) * np.exp(log_prior))
    given = np.bincount(annotators, minlength=a)
    for _ in range(steps):
        # Hard assignments: soft ones stall at a flat fixed point where every annotator looks
        # mediocre (a reliable one outvoted by two weak ones stays outvoted).
        right = np.bincount(annotators, posterior.argmax(1)[rows] == cast, minlength=a)
        pooled = right.sum() / max(given.sum(), 1)
        accuracy = np.clip((right + strength * pooled) / (given + strength + 1e-12), 1e-3, 1 - 1e-3)
        weight = np.log(accuracy * (k - 1) / (1 - accuracy))
        log_post = log_prior.copy()
        np.add.at(log_post, (rows, cast), weight[annotators])
        posterior = _normalise(np.exp(log_post - log_post.max(1, keepdims=True)))
    return posterior


def _m_step(onehot: np.ndarray, posterior: np.ndarray, strength: float) -> np.ndarray:
    """``(A, K, K + 1)`` confusions from the soft counts, shrunk toward the pooled ones."""
    counts = np.einsum("ik,iao->ako", posterior, onehot)  # (A, K, K+1)
    pooled = counts.sum(0) + 1e-3
    pooled /= pooled.sum(1, keepdims=True)
    smoothed = counts + strength * pooled[None] + 1e-6
    return smoothed / smoothed.sum(2, keepdims=True)


def _e_step(outcome: np.ndarray, confusion: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """``(N, K)`` P(true class | votes) ∝ prior * Π_a confusion[a, class, outcome]."""
    log_conf = np.log(confusion)  # (A, K, K+1)
    a = outcome.shape[1]
    # (N, A, K): each annotator's log-likelihood of its outcome under each true class.
    per_vote = log_conf[np.arange(a)[None, :], :, outcome]
    log_post = log_prior + per_vote.sum(1)
    log_post -= log_post.max(1, keepdims=True)
    return _normalise(np.exp(log_post))


def _normalise(p: np.ndarray) -> np.ndarray:
    return p / p.sum(1, keepdims=True)


def annotator_accuracy(
    votes: np.ndarray, posterior: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per annotator ``(A,)``: votes given, expected accuracy (the mean posterior probability
    of the class voted), and its 95% interval (a Beta posterior with a uniform prior over the
    expected right and wrong votes)."""
    from scipy.stats import beta

    voted = votes >= 0
    given = voted.sum(0)
    rows, annotators = np.nonzero(voted)
    right = np.zeros(votes.shape[1])
    np.add.at(right, annotators, posterior[rows, votes[rows, annotators]])
    accuracy = np.where(given > 0, right / np.maximum(given, 1), np.nan)
    low = beta.ppf(0.025, right + 1, given - right + 1)
    high = beta.ppf(0.975, right + 1, given - right + 1)
    return given, accuracy, low, high


def annotators_table(
    names: list[str], votes: np.ndarray, model: AnnotatorModel, consensus: np.ndarray
) -> pa.Table:
    """``annotators.parquet``: per annotator, the votes given, the estimated accuracy and its
    95% interval, the ``(K, K)`` confusion among votes (row = true class, column = vote; a
    list of rows), and the share of its votes that agree with ``consensus`` ``(N,)`` (the
    refined label, -1 = none)."""
    given, accuracy, low, high = annotator_accuracy(votes, model.posterior)
    voted = model.confusion[:, :, :-1]
    confusion = voted / np.clip(voted.sum(2, keepdims=True), 1e-12, None)
    counted = (votes >= 0) & (consensus[:, None] >= 0)
    agree = ((votes == consensus[:, None]) & counted).sum(0)
    seen = counted.sum(0)
    none = given == 0
    return pa.Table.from_pydict(
        {
            "annotator": names,
            "labels_given": given.astype(np.int64),
            "accuracy": pa.array(accuracy.astype(np.float32), mask=none),
            "accuracy_low": pa.array(low.astype(np.float32), mask=none),
            "accuracy_high": pa.array(high.astype(np.float32), mask=none),
            "confusion": [c.astype(np.float32).tolist() for c in confusion],
            "agreement": pa.array((agree / np.maximum(seen, 1)).astype(np.float32), mask=seen == 0),
        },
        schema=ANNOTATORS_SCHEMA,
    )
