"""The rounds' (N, K) arithmetic a chunk of rows at a time gives the bytes of one pass over all
rows; raw probabilities are calibrated in place; a cross-fit keeps no fold's snapshots."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from refine.config import ModelConfig
from refine.judge.relabel import _soft_targets
from refine.learn import calibrate
from refine.learn.calibrate import (
    apply_temperature,
    fit_temperature,
    fit_temperature_through_noise,
    row_chunks,
)
from refine.learn.crossfit import cross_fit, make_folds
from refine.learn.model import MLPClassifier
from tests.conftest import blobs

ROWS = 2 * calibrate.CHUNK_ROWS + 3  # two chunks, the second with the remainder


@pytest.fixture(scope="module")
def proba() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(0, 2, size=(ROWS, 5)), axis=1).astype(np.float32)
    return p, rng.integers(0, 5, ROWS)


def test_row_chunks_cover_the_rows_once_and_none_is_small():
    for n in (0, 1, calibrate.CHUNK_ROWS, calibrate.CHUNK_ROWS + 1, ROWS):
        parts = list(row_chunks(n))
        assert np.array_equal(np.concatenate([np.arange(n)[p] for p in parts]), np.arange(n))
        assert all(p.stop - p.start >= min(n, calibrate.CHUNK_ROWS) for p in parts)


def test_temperature_in_chunks_has_the_bytes_of_one_pass(proba):
    p, labels = proba
    logits = np.log(np.clip(p, 1e-7, 1.0)).astype(np.float64)
    rows = np.arange(ROWS)
    # the one-pass forms these functions had before they went a chunk at a time
    q = softmax(logits / np.exp(0.3), axis=1)
    brier = float(np.average((q**2).sum(1) - 2.0 * q[rows, labels]))
    transitions = np.full((5, 5), 0.05) + np.eye(5) * 0.75
    given = softmax(logits / np.exp(0.3), axis=1) @ transitions
    loss = -float(np.log(np.clip(given[rows, labels], 1e-12, 1.0)).mean())
    seen = {}

    def minimize_scalar(f, **kwargs):  # read the objective at one point
        seen["value"] = f(0.3)

        class Result:
            x = 0.3

        return Result

    with pytest.MonkeyPatch.context() as m:
        m.setattr(calibrate, "minimize_scalar", minimize_scalar)
        fit_temperature(p, labels)
        assert seen["value"] == brier
        fit_temperature_through_noise(p, labels, transitions)
        assert seen["value"] == loss
    one_pass = softmax(np.log(np.clip(p, 1e-7, 1.0)) / 1.7, axis=1).astype(np.float32)
    assert np.array_equal(apply_temperature(p, 1.7), one_pass)
    in_place = p.copy()
    assert apply_temperature(in_place, 1.7, in_place) is in_place
    assert np.array_equal(in_place, one_pass)


def test_soft_targets_in_chunks_have_the_bytes_of_one_pass(proba):
    p, labels = proba
    refined = np.where(np.arange(ROWS) % 7 == 0, -1, labels)
    soft = p.copy()
    has_label = refined >= 0
    onehot = np.eye(5, dtype=np.float32)[refined[has_label]]
    soft[has_label] = (1.0 - 0.3) * onehot + 0.3 * soft[has_label]
    assert np.array_equal(_soft_targets(refined, p, 0.3), soft)


def test_soft_targets_train_without_a_copy_and_as_a_copy_would():
    X, truth = blobs(300, 3, seed=0)
    targets = np.eye(3, dtype=np.float32)[truth] * 0.8 + 0.2 / 3
    weights = np.ones(300, np.float32)
    rows = np.flatnonzero(np.arange(300) % 4 != 0)
    options = {"n_classes": 3, "max_epochs": 3, "random_state": 0}
    shared = MLPClassifier(**options).fit(X, targets, weights, rows=rows)
    read_only = targets.copy()
    read_only.flags.writeable = False  # a worker's mapped targets take the copying path
    copied = MLPClassifier(**options).fit(X, read_only, weights, rows=rows)
    assert np.array_equal(shared.predict_proba(X), copied.predict_proba(X))


def test_each_row_of_a_cross_fit_is_its_fold_models_prediction():
    X, truth = blobs(200, 2, seed=1)
    folds = make_folds(truth, 3, 0)
    targets = np.eye(2, dtype=np.float32)[truth]
    config = ModelConfig(max_epochs=2)
    fitted = cross_fit(X, targets, np.ones(200, np.float32), folds, config, 2, 0)
    for fold, members in enumerate(fitted.models):
        held = folds == fold
        mean = np.mean([m.predict_proba(X[held]) for m in members], axis=0)
        assert np.allclose(fitted.proba[held], mean, atol=1e-6)
