"""The noise generators flip an exact number of rows, reproducibly, and only where they should."""

from __future__ import annotations

import numpy as np
import pytest

from refine.bench.noise import (
    flip_instance_dependent,
    flip_one_direction,
    flip_pair,
    hide_labels,
)

N, K = 1000, 4
TRUTH = np.arange(N) % K


def confusable_proba(truth: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(N, K)`` whose true-class share varies from row to row, and whose largest
    other class is always ``(true + 2) % k``: the known top confusion ``(N,)``."""
    rng = np.random.default_rng(seed)
    rows = np.arange(len(truth))
    p_true = rng.uniform(0.05, 0.95, size=len(truth))
    confused = (truth + 2) % k
    proba = np.zeros((len(truth), k))
    proba[rows, truth] = p_true
    proba[rows, confused] = 0.8 * (1 - p_true)
    others = (proba == 0).sum(1, keepdims=True)
    proba = np.where(proba == 0, 0.2 * (1 - p_true)[:, None] / others, proba)
    return proba, confused


PROBA, CONFUSED = confusable_proba(TRUTH, K)

GENERATORS = {
    "pair": (lambda seed: flip_pair(TRUTH, 0.3, K, seed), round(0.3 * N)),
    "instance": (lambda seed: flip_instance_dependent(TRUTH, PROBA, 0.3, seed), round(0.3 * N)),
    "one_direction": (
        lambda seed: flip_one_direction(TRUTH, 1, 2, 0.45, seed),
        round(0.45 * (TRUTH == 1).sum()),
    ),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_each_generator_hits_its_rate_exactly_and_repeats_by_seed(name):
    generate, expected = GENERATORS[name]
    before = TRUTH.copy()
    noisy = generate(seed=3)
    np.testing.assert_array_equal(TRUTH, before)  # the input is never changed
    assert (noisy != TRUTH).sum() == expected
    np.testing.assert_array_equal(noisy, generate(seed=3))
    assert not np.array_equal(noisy, generate(seed=4))


@pytest.mark.parametrize("rate", [0.0, 0.001, 0.25, 0.5005, 1.0])
def test_rates_round_to_the_nearest_row(rate):
    truth = np.arange(999) % 3
    assert (flip_pair(truth, rate, 3, seed=0) != truth).sum() == round(rate * 999)
    one = flip_one_direction(truth, 0, 1, rate, seed=0)
    assert (one != truth).sum() == round(rate * 333)


def test_pair_noise_goes_only_to_the_mapped_class():
    noisy = flip_pair(TRUTH, 0.5, K, seed=0)
    changed = noisy != TRUTH
    np.testing.assert_array_equal(noisy[changed], (TRUTH[changed] + 1) % K)

    mapping = [3, 0, 0, 1]
    noisy = flip_pair(TRUTH, 0.5, K, seed=0, mapping=mapping)
    changed = noisy != TRUTH
    np.testing.assert_array_equal(noisy[changed], np.array(mapping)[TRUTH[changed]])
    assert set(TRUTH[changed]) == {0, 1, 2, 3}  # rows of every class flip


def test_one_direction_changes_only_source_rows_to_target():
    truth = np.array([0, 1, 1, 1, 1, 2, 1, 0, 1, 1, 1, 2])  # eight rows of class 1
    noisy = flip_one_direction(truth, source=1, target=2, rate=0.25, seed=0)
    changed = noisy != truth
    assert changed.sum() == 2
    assert (truth[changed] == 1).all() and (noisy[changed] == 2).all()
    np.testing.assert_array_equal(noisy[truth != 1], truth[truth != 1])


def test_instance_dependent_flips_go_to_the_top_confusion():
    noisy = flip_instance_dependent(TRUTH, PROBA, 0.4, seed=0)
    changed = noisy != TRUTH
    np.testing.assert_array_equal(noisy[changed], CONFUSED[changed])


def test_instance_dependent_flips_hard_rows_more_often():
    noisy = flip_instance_dependent(TRUTH, PROBA, 0.2, seed=0)
    changed = noisy != TRUTH
    difficulty = 1 - PROBA[np.arange(N), TRUTH]
    assert difficulty[changed].mean() > difficulty[~changed].mean() + 0.15
    hardest, easiest = difficulty > 0.75, difficulty < 0.25
    assert changed[hardest].mean() > 3 * changed[easiest].mean()


def test_instance_dependent_can_flip_every_row_even_easy_ones():
    proba = np.eye(K)[TRUTH] * 0.999 + 0.001 / K  # the clean model is sure of every row
    proba[:, 0] += 0.0001  # so class 0 is the top confusion of every other class
    noisy = flip_instance_dependent(TRUTH, proba, 1.0, seed=0)
    assert (noisy != TRUTH).all()


def test_hide_labels_hides_an_exact_share_reproducibly():
    mask = hide_labels(999, 0.5, seed=1)
    assert mask.dtype == bool and mask.shape == (999,)
    assert mask.sum() == round(0.5 * 999)
    np.testing.assert_array_equal(mask, hide_labels(999, 0.5, seed=1))
    assert not np.array_equal(mask, hide_labels(999, 0.5, seed=2))
    assert not hide_labels(10, 0.0, seed=0).any() and hide_labels(10, 1.0, seed=0).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: flip_pair(TRUTH, 1.5, K, 0), r"noise rate must be in \[0, 1\], got 1.5"),
        (lambda: flip_pair(TRUTH, -0.1, K, 0), r"noise rate must be in \[0, 1\]"),
        (lambda: flip_pair(TRUTH, 0.2, 3, 0), "label 3 is not a known class"),
        (lambda: flip_pair(TRUTH, 0.2, K, 0, mapping=[1, 2, 0]), "4 integers, got shape \\(3,\\)"),
        (lambda: flip_pair(TRUTH, 0.2, K, 0, mapping=[1, 2, 3, 4]), "unknown class"),
        (lambda: flip_pair(TRUTH, 0.2, K, 0, mapping=[1, 1, 3, 0]), "sends class 1 to itself"),
        (lambda: flip_instance_dependent(TRUTH, PROBA[:10], 0.2, 0), r"shape \(10, 4\)"),
        (lambda: flip_instance_dependent(TRUTH, PROBA[:, :3], 0.2, 0), "not a known class"),
        (lambda: flip_instance_dependent(TRUTH, PROBA, 2.0, 0), "noise rate"),
        (lambda: flip_one_direction(TRUTH, 7, 1, 0.2, 0), "source class 7 does not occur"),
        (lambda: flip_one_direction(TRUTH, 1, 9, 0.2, 0), "target class 9 does not occur"),
        (lambda: flip_one_direction(TRUTH, 1, 1, 0.2, 0), "both class 1"),
        (lambda: hide_labels(10, 1.2, 0), r"unlabelled fraction must be in \[0, 1\]"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
