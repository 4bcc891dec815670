"""The baseline refine is measured against: cleanlab's ``find_label_issues`` on K-fold
out-of-fold probabilities of a scikit-learn model (standardised LogisticRegression)."""

from __future__ import annotations

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def logistic_regression():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def text_logistic_regression():
    """TF-IDF of word 1-2-grams into LogisticRegression: the usual strong text baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return make_pipeline(
        TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)), LogisticRegression(max_iter=2000)
    )


def cleanlab_baseline(
    X: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0, model=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of ``model`` (default: standardised LogisticRegression), and
    cleanlab's issue mask and self-confidence quality on them: ``(issues, quality, proba)``."""
    model = model if model is not None else logistic_regression()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(model, X, labels, cv=splitter, method="predict_proba")
    issues = find_label_issues(labels, proba, n_jobs=1)
    quality = get_label_quality_scores(labels, proba)
    return issues, quality, proba
