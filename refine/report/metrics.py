"""Scores of a run against the truth, for the demo and benchmarks.

``is_issue`` and ``is_noisy`` are ``(N,)`` masks; ``quality`` ``(N,)`` scores (low = likely
wrong). Thin wrappers over scikit-learn so every figure is computed one way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score


def flag_scores(
    is_issue: np.ndarray, is_noisy: np.ndarray, quality: np.ndarray | None = None
) -> dict[str, float]:
    """Precision, recall and F1 of the flags; AUPRC and AUROC of ``1 - quality`` when given."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        is_noisy, is_issue, average="binary", zero_division=0
    )
    scores = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    if quality is not None and 0 < is_noisy.sum() < len(is_noisy):
        scores["auprc"] = float(average_precision_score(is_noisy, -quality))
        scores["auroc"] = float(roc_auc_score(is_noisy, -quality))
    return scores


def label_codes(refined: Any) -> np.ndarray:
    """``label_refined`` of a refined table as class indices ``(N,)``, -1 where it is null
    (an excluded or unlabelled row): the form ``label_accuracy`` reads."""
    labels = refined.column("label_refined").to_numpy(zero_copy_only=False)
    return np.where(np.isnan(labels.astype(float)), -1, labels).astype(np.int64)


def label_accuracy(refined: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy of refined labels (class indices, -1 = none) against the truth.

    ``accuracy`` counts a row without a label as wrong; ``accuracy_kept`` scores kept rows only.
    """
    kept = refined >= 0
    return {
        "accuracy": float((refined == truth).mean()),
        "accuracy_kept": float((refined[kept] == truth[kept]).mean()) if kept.any() else 0.0,
        "kept": float(kept.mean()),
    }
