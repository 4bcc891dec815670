"""benchmarks/gap.py: the arithmetic of its gap shares and its soft-label yardstick.

The script's numbers go into reports/gap.md and the closing notes, so its helpers are checked
here on hand-made cases; the full run (refine on 15 recipes x 20 seeds) is too long for CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.datasets import load_wine

from refine.bench.suite import _downstream

# benchmarks/ is a folder of scripts, not a package: gap.py imports its neighbour decisions.py
# by name, so the folder joins the import path for as long as the import takes.
_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, _BENCHMARKS)
try:
    import gap
finally:
    sys.path.remove(_BENCHMARKS)


def _run(noisy: float, refine: float, clean: float) -> dict:
    """A run as ``gap.score`` returns it, with every other training set at the clean score."""
    accuracy = {name: clean for name in gap.SETS}
    accuracy.update(noisy=noisy, refine=refine)
    return {
        "accuracy": accuracy,
        "kinds": {kind: 0 for kind in gap.KINDS},
        "labelled": 100,
        "noisy_rows": 20,
        "label_accuracy": 0.9,
        "test_rows": 50,
        "seconds": 1.0,
    }


def test_gap_share_by_hand_and_none_under_the_bench_cut():
    assert gap.gap_share(_run(0.80, 0.95, 1.00)) == pytest.approx(0.75)
    assert gap.gap_share(_run(0.80, 0.70, 1.00)) == pytest.approx(-0.5)
    # The bench leaves out cases whose noisy and clean scores are within 0.005.
    assert gap.gap_share(_run(0.900, 0.950, 0.904)) is None


def test_summarise_means_shares_and_pools_gaps():
    runs = [_run(0.80, 0.95, 1.00), _run(0.90, 0.90, 0.94), _run(0.90, 0.95, 0.902)]
    summary = gap.summarise(runs)
    # Shares 0.75 and 0.0; the third case's gap (0.002) is left out of the mean...
    assert summary["cases"] == 2
    assert summary["mean"] == pytest.approx(0.375)
    # Two shares: their standard deviation is |0.75 - 0| / sqrt(2), its error that over sqrt(2).
    assert summary["se"] == pytest.approx(0.375)
    # ...but pooled, every case counts: (0.15 + 0 + 0.05) / (0.20 + 0.04 + 0.002).
    assert summary["pooled"] == pytest.approx(0.20 / 0.242)
    assert summary["shares"]["kept, true"][0] == pytest.approx(1.0)
    assert summary["accuracy"]["noisy"] == pytest.approx((0.8 + 0.9 + 0.9) / 3)


def test_parse_seeds_takes_a_range_or_a_list():
    assert gap.parse_seeds("10-13") == [10, 11, 12, 13]
    assert gap.parse_seeds("3,1,7") == [3, 1, 7]


def _refined_table(classes: list[int], soft: np.ndarray) -> pa.Table:
    """The two things ``_soft_downstream`` reads of refined.parquet: ``label_soft`` and the
    class order in the schema's metadata."""
    column = pa.array(soft.astype(np.float32).tolist(), pa.list_(pa.float32(), len(classes)))
    table = pa.table({"label_soft": column})
    return table.replace_schema_metadata({b"refine.classes": json.dumps(classes).encode()})


@pytest.fixture(scope="module")
def wine():
    X, y = load_wine(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order], y[order]
    return X[:120], y[:120], X[120:], y[120:]


def test_soft_fit_with_one_hot_labels_is_the_hard_fit(wine):
    X, y, X_test, y_test = wine
    # Classes named out of index order, as refine.classes may be: the soft columns follow it.
    classes = [2, 0, 1]
    column_of = {c: i for i, c in enumerate(classes)}
    labels = np.random.default_rng(1).permutation(y)  # a label set the fit cannot predict well
    labels[:60] = y[:60]
    soft = np.zeros((len(labels), 3))
    soft[np.arange(len(labels)), [column_of[c] for c in labels]] = 1.0
    weight = np.linspace(0.2, 1.0, len(labels))
    weight[::7] = 0.0  # excluded rows: no label to train on
    hard = _downstream(X, np.where(weight > 0, labels, -1), weight, X_test, y_test)
    assert gap._soft_downstream(X, _refined_table(classes, soft), weight, X_test, y_test) == hard


def test_soft_fit_follows_the_probabilities_not_the_argmax(wine):
    X, y, X_test, y_test = wine
    classes = [0, 1, 2]
    # Every row's soft label puts 0.45 on the truth and 0.55 on a wrong class: the argmax is
    # wrong everywhere, but the truth is each row's second choice and the only class the rows
    # of a true class share, so the cross-entropy fit still learns it.
    wrong = (y + 1 + np.arange(len(y)) % 2) % 3
    soft = np.zeros((len(y), 3))
    soft[np.arange(len(y)), wrong] = 0.55
    soft[np.arange(len(y)), y] = 0.45
    weight = np.ones(len(y))
    hard = _downstream(X, soft.argmax(1), weight, X_test, y_test)
    soft_accuracy = gap._soft_downstream(X, _refined_table(classes, soft), weight, X_test, y_test)
    assert hard < 0.5 < soft_accuracy
