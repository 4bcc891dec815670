"""Cross-modal distillation: a student on other columns learns the refined targets.

The refine rounds train a teacher on ``--teacher-features`` (an expensive, strong modality such
as a precomputed embedding); its final soft labels and weights then train a student on
``--student-features`` (a cheap one such as raw text), cross-fitted on the same folds with the
same model settings. The student is the model the run keeps in ``model.pt``, so predicting new
rows needs only the student's columns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from refine.config import RunConfig
from refine.encode.features import FeatureEncoder, fit_features
from refine.io.decisions import Decisions
from refine.io.read import LabelledTable
from refine.learn.calibrate import apply_temperature, fit_temperature
from refine.learn.crossfit import CrossFit, FoldRunner, cross_fit, make_folds
from refine.progress import Progress


@dataclass
class Student:
    """The student's encoder and fold models, its calibration ``temperature``, and its summary
    for ``run.json`` (``features``, out-of-fold accuracies, ``seconds``)."""

    encoder: FeatureEncoder
    crossfit: CrossFit
    temperature: float
    summary: dict[str, Any]


def distill(
    data: LabelledTable,
    decisions: Decisions,
    config: RunConfig,
    progress: Progress,
    timings: dict[str, float],
    runner: FoldRunner | None = None,
) -> Student:
    """Cross-fit a student on ``config.student_features`` to the teacher's final targets
    (``decisions.soft`` ``(N, K)``, weighted by ``decisions.weight`` ``(N,)``).

    The folds are the teacher's (same labels, folds and seed), so no row's refined target
    trains the student model that predicts it, and the out-of-fold accuracies are honest.
    """
    started = time.perf_counter()
    columns = config.student_features
    assert columns is not None, "distill needs student_features"  # checked by RunConfig
    encoder = _student_encoder(data, decisions, config, columns)
    X = encoder.transform(data.table)
    labels = data.labels
    labelled = labels >= 0
    folds = make_folds(labels, config.folds, config.seed)
    fitted = cross_fit(
        X,
        decisions.soft,
        decisions.weight,
        folds,
        config.model,
        config.seeds,
        config.seed,
        progress,
        pooled=~labelled & (decisions.weight == 0),
        image_blocks=encoder.image_blocks,
        runner=runner,
        stage="student",
    )
    refined, temperature = _calibrate(fitted, decisions, labelled)
    predicted = apply_temperature(fitted.proba, temperature).argmax(1)
    seconds = time.perf_counter() - started
    timings["student"] = seconds
    summary = {
        "features": list(encoder.columns),
        "oof_accuracy_vs_refined": _accuracy(predicted[refined], decisions.refined[refined]),
        "oof_accuracy_vs_given": _accuracy(predicted[labelled], labels[labelled]),
        "temperature": temperature,
        "epochs_per_fit": fitted.epochs,
        "seconds": round(seconds, 4),
    }
    return Student(encoder, fitted, temperature, summary)


def _student_encoder(
    data: LabelledTable, decisions: Decisions, config: RunConfig, columns: tuple[str, ...]
) -> FeatureEncoder:
    """The student's encoder, fitted on its ``columns`` with the run's encoding settings."""
    return fit_features(
        data.table,
        config.label,
        columns,
        config.ignore,
        config.max_categories,
        tuple(c for c in config.text if c in columns),
        config.seed,
        tuple(c for c in config.image if c in columns),
        config.image_model,
        config.image_size,
        labels=decisions.refined,  # the teacher's labels choose a text block
        text_model=config.text_model,
        embedding_cache=config.embedding_cache,
        device=config.model.device,
    )


def _calibrate(
    fitted: CrossFit, decisions: Decisions, labelled: np.ndarray
) -> tuple[np.ndarray, float]:
    """The labelled rows with a refined class ``(N,)``, and the temperature fitted on them."""
    # Calibrated against the refined labels it learned, not the teacher's temperature.
    refined = labelled & (decisions.refined >= 0)
    temperature = (
        fit_temperature(fitted.proba[refined], decisions.refined[refined]) if refined.any() else 1.0
    )
    return refined, temperature


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    return float((predicted == truth).mean()) if len(truth) else None
