"""benchmarks/glc.py: GLC's corruption-matrix estimate and loss on hand-made cases, and one
small end-to-end run of its main with tiny training.

The full run covers the bench's full suite and takes most of an hour; these checks take seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# benchmarks/ is a folder of scripts, not a package: it joins the import path for the import.
_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, _BENCHMARKS)
try:
    import glc
finally:
    sys.path.remove(_BENCHMARKS)


def test_corruption_matrix_averages_the_probabilities_of_each_true_class():
    # Five trusted rows, three classes; no trusted row has class 2.
    proba = np.array(
        [
            [0.8, 0.2, 0.0],  # true 0
            [0.6, 0.2, 0.2],  # true 0
            [0.1, 0.5, 0.4],  # true 1
            [0.3, 0.3, 0.4],  # true 1
            [0.2, 0.6, 0.2],  # true 1
        ]
    )
    truth = np.array([0, 0, 1, 1, 1])
    C = glc.corruption_matrix(proba, truth, 3)
    expected = np.array(
        [
            [0.7, 0.2, 0.1],  # (0.8 + 0.6) / 2, (0.2 + 0.2) / 2, (0.0 + 0.2) / 2
            [0.2, 1.4 / 3, 1.0 / 3],  # (0.1 + 0.3 + 0.2) / 3, (0.5 + 0.3 + 0.6) / 3, ...
            [0.0, 0.0, 1.0],  # absent from the trusted rows: identity
        ]
    )
    np.testing.assert_allclose(C, expected)


def test_true_transition_counts_the_flips_of_each_class():
    truth = np.array([0, 0, 0, 0, 1, 1])
    noisy = np.array([0, 0, 0, 1, 1, 0])
    T = glc.true_transition(truth, noisy, 3)
    np.testing.assert_allclose(T, [[0.75, 0.25, 0], [0.5, 0.5, 0], [0, 0, 1]])


def test_loss_is_cross_entropy_on_trusted_rows_and_corrected_on_the_others():
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
    labels = torch.tensor([1, 1])
    C = torch.tensor([[0.6, 0.4], [0.0, 1.0]])
    # Trusted row: -log 0.1. Untrusted: p @ C = [0.54, 0.46], so -log 0.46.
    loss = glc.glc_loss(logits, labels, torch.tensor([True, False]), C)
    assert loss.item() == pytest.approx((-np.log(0.1) - np.log(0.46)) / 2, rel=1e-5)
    # Without C every row is plain cross-entropy.
    plain = glc.glc_loss(logits, labels, torch.tensor([False, False]), None)
    assert plain.item() == pytest.approx(-np.log(0.1), rel=1e-5)


def test_main_writes_the_table_and_the_json(tmp_path):
    out = glc.main(
        [
            "--dataset",
            "iris-onedir",
            "--epochs",
            "1",
            "--min-steps",
            "5",
            "--hidden",
            "8",
            "--out",
            str(tmp_path / "glc.md"),
        ]
    )
    assert out == tmp_path / "glc.md"
    text = out.read_text()
    assert (
        "| dataset | seed | noisy LR | GLC linear | GLC MLP | refine LR | refine model | clean LR |"
        in text
    )
    assert "| iris-onedir | 0 | " in text
    assert "refine LR vs GLC linear" in text
    saved = json.loads((tmp_path / "glc.json").read_text())
    (row,) = saved["rows"]
    assert row["dataset"] == "iris-onedir" and row["seed"] == 0
    # refine bench --verified 0.05 reveals round(0.05 * 112) rows of iris's 112 training rows.
    assert row["trusted"] == 6
    for key, _ in glc.COLUMNS:
        assert 0 <= row[key] <= 1
    assert saved["header"]["glc_config"]["hidden"] == 8
    assert saved["summary"]["pairs"]["refine_lr - glc_linear"]["cases"] == 1
