"""Cross-fitting: out-of-fold predictions from K fold models, each an ensemble of members.

The folds are drawn once per run (stratified by the given label) and reused every round, so
a row's own label or target never trains a model that predicts that row.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from refine.config import ModelConfig
from refine.model import MLPClassifier
from refine.progress import NULL_PROGRESS, Progress


def make_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index ``(N,)`` of every row: stratified by the label for labelled rows, and dealt
    evenly at random for unlabelled rows (``labels == -1``), so that a row that is pseudo-labelled
    later trains only the models that do not predict it. Drawing the unlabelled rows' folds from
    their own generator leaves the labelled rows' folds as they would be without them."""
    folds = np.full(len(labels), -1, dtype=np.int64)
    rows = np.flatnonzero(labels >= 0)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), labels[rows])):
        folds[rows[test]] = fold
    unlabelled = np.flatnonzero(labels < 0)
    rng = np.random.default_rng([seed, 1])
    folds[rng.permutation(unlabelled)] = np.arange(len(unlabelled)) % n_folds
    return folds


@dataclass
class CrossFit:
    """What one round of cross-fitting produced.

    ``proba`` ``(N, K)``: out-of-fold probabilities, or the mean of every fold model for the
    ``pooled`` rows (rows no model trains on, such as unlabelled rows). ``agreement`` ``(N,)``:
    share of ensemble members whose most likely class is the ensemble's. ``models``: the fold
    models, in fold order.
    """

    proba: np.ndarray
    agreement: np.ndarray
    models: list[list[MLPClassifier]]
    train_seconds: float
    predict_seconds: float
    epochs: list[int]


def cross_fit(
    X: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    folds: np.ndarray,
    model: ModelConfig,
    seeds: int,
    seed: int,
    progress: Progress = NULL_PROGRESS,
    pooled: np.ndarray | None = None,
) -> CrossFit:
    """Train one ensemble per fold on the other folds' rows and predict the held-out fold.

    ``targets`` ``(N, K)`` are the (soft) training targets and ``weights`` ``(N,)`` the sample
    weights; rows with weight 0 (excluded, unlabelled) do not train. ``pooled`` ``(N,)`` marks
    rows that every fold model predicts, their probabilities averaged and their agreement
    counted over all members: it must only mark rows of weight 0, which no model trains on.
    """
    n, k = targets.shape
    n_folds = int(folds.max()) + 1
    proba = np.zeros((n, k), np.float32)
    agreement = np.ones(n, np.float32)
    pooled = np.zeros(n, bool) if pooled is None else pooled
    if (weights[pooled] > 0).any():
        raise ValueError("pooled rows must have weight 0: a model that trains on a row predicts it")
    pool_rows = np.flatnonzero(pooled)
    pool_members: list[np.ndarray] = []
    models: list[list[MLPClassifier]] = []
    epochs: list[int] = []
    train_seconds = predict_seconds = 0.0
    task = progress.start("folds", "folds", total=n_folds * seeds)
    for fold in range(n_folds):
        held = np.flatnonzero((folds == fold) & ~pooled)
        train = np.flatnonzero((folds != fold) & (weights > 0))
        members: list[MLPClassifier] = []
        for member in range(seeds):
            started = time.perf_counter()
            epoch_task = progress.start(
                "epochs", f"fold {fold + 1}/{n_folds}", total=model.max_epochs
            )
            estimator = MLPClassifier(
                n_classes=k,
                random_state=_member_seed(seed, fold, member),
                **dataclasses.asdict(model),
            ).fit(
                X[train],
                targets[train],
                weights[train],
                on_epoch=lambda done, total, t=epoch_task: progress.update(t, done, total),
            )
            progress.finish(epoch_task)
            train_seconds += time.perf_counter() - started
            epochs.append(estimator.epochs_)
            members.append(estimator)
            progress.advance(task)
        models.append(members)

        started = time.perf_counter()
        member_proba = np.concatenate([m.predict_member_proba(X[held]) for m in members])
        proba[held] = member_proba.mean(0)
        agreement[held] = ensemble_agreement(member_proba)
        if len(pool_rows):
            pool_members.append(
                np.concatenate([m.predict_member_proba(X[pool_rows]) for m in members])
            )
        predict_seconds += time.perf_counter() - started
    progress.finish(task)
    if len(pool_rows):
        pool_proba = np.concatenate(pool_members)
        proba[pool_rows] = pool_proba.mean(0)
        agreement[pool_rows] = ensemble_agreement(pool_proba)
    return CrossFit(proba, agreement, models, train_seconds, predict_seconds, epochs)


def ensemble_agreement(member_proba: np.ndarray) -> np.ndarray:
    """Share of members ``(S, N, K)`` whose argmax equals the argmax of their mean."""
    consensus = member_proba.mean(0).argmax(1)
    return (member_proba.argmax(2) == consensus[None, :]).mean(0).astype(np.float32)


def _member_seed(seed: int, fold: int, member: int) -> int:
    return int(np.random.SeedSequence([seed, fold, member]).generate_state(1)[0])
