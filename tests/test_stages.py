"""Each stage on tiny arrays with known answers: features, model, calibration, detection, relabel."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.base import clone

from refine.bench.noise import flip_symmetric, flip_with_matrix
from refine.config import ModelConfig
from refine.encode.features import fit_features
from refine.errors import InputError
from refine.io.decisions import CORRECTED, EXCLUDED, GIVEN, PSEUDO, UNLABELLED
from refine.judge.detect import (
    anchor_transitions,
    class_calibrated_quality,
    detect_issues,
    merge_directions,
    noise_directions,
)
from refine.judge.relabel import (
    decide,
    teacher_is_reliable,
)
from refine.learn.calibrate import apply_temperature, expected_calibration_error, fit_temperature
from refine.learn.crossfit import cross_fit, make_folds
from refine.learn.model import Dropout, MLPClassifier, _stratified_holdout
from tests.conftest import blobs


def test_features_encode_each_kind_and_skip_with_reasons():
    table = pa.table(
        {
            "num": pa.array([1.0, None, 3.0, float("inf")]),
            "cat": pa.array(["a", "b", None, "a"]),
            "flag": pa.array([True, False, True, True]),
            "emb": pa.array([[1.0, 2.0], [3.0, 4.0], None, [5.0, 6.0]], pa.list_(pa.float32())),
            "const": pa.array([7, 7, 7, 7]),
            "when": pa.array([1, 2, 3, 4], pa.timestamp("s")),
            "y": pa.array([0, 1, 0, 1]),
        }
    )
    encoder = fit_features(table, "y")
    assert encoder.columns == ["num", "cat", "flag", "emb"]
    assert encoder.skipped == {
        "const": "constant (one distinct value)",
        "when": "type timestamp[s] is not a feature type refine encodes",
    }
    X = encoder.transform(table)
    # num: standardised value + missing indicator; cat: a, b, null; flag: False, True; emb: 2 + indicator
    assert X.shape == (4, 2 + 3 + 2 + 3)
    np.testing.assert_allclose(X[:, 0], [-1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(X[:, 1], [0, 1, 0, 1])
    np.testing.assert_array_equal(X[:, 2:5], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(X[:, 5:7], [[0, 1], [1, 0], [0, 1], [0, 1]])
    np.testing.assert_allclose(X[:, 7], [-1.2247449, 0.0, 0.0, 1.2247449], rtol=1e-5)
    np.testing.assert_array_equal(X[:, 9], [0, 0, 1, 0])


def test_features_named_explicitly_must_be_usable():
    table = pa.table({"const": [1, 1, 1], "y": [0, 1, 0]})
    with pytest.raises(InputError, match="--features column 'const' cannot be used: constant"):
        fit_features(table, "y", features=("const",))


def test_high_cardinality_strings_without_spaces_are_skipped():
    table = pa.table(
        {"code": [f"row-{i}" for i in range(100)], "x": np.arange(100.0), "y": [0, 1] * 50}
    )
    encoder = fit_features(table, "y", max_categories=64)
    assert encoder.columns == ["x"]
    assert encoder.skipped["code"].startswith(
        "100 distinct values, more than --max-categories 64, and few have spaces (an id?)"
    )


def test_model_contract_probabilities_predict_and_clone():
    X, y = blobs(n=300, k=3, seed=1)
    model = MLPClassifier(hidden=(32,), random_state=0).fit(X, y)
    proba = model.predict_proba(X)
    assert proba.shape == (300, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), model.predict(X))
    assert (model.predict(X) == y).mean() > 0.95  # logistic regression: 0.98
    assert model.predict_member_proba(X).shape == (len(model.states_), 300, 3)
    twin = clone(model).fit(X, y)
    np.testing.assert_array_equal(twin.predict_proba(X), proba)  # same seed, same weights


def test_cpu_dropout_keeps_its_share_scaled_and_repeats_by_seed():
    layer = Dropout(0.2)
    x = torch.ones(400, 250)
    layer.rng = np.random.default_rng(7)
    out = layer(x)
    kept = out != 0
    # 100,000 units: the kept share's standard error is 0.0013.
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    np.testing.assert_allclose(out[kept].numpy(), 1.25)  # scaled by 1 / (1 - p)
    x.requires_grad_(True)
    layer.rng = np.random.default_rng(7)
    layer(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), out.numpy())  # the mask is the gradient
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    layer.rng = None  # no generator: PyTorch's own dropout
    torch.manual_seed(0)
    first = layer(x)
    assert not torch.equal(first, x)  # it drops
    torch.manual_seed(0)
    assert torch.equal(layer(x), first)


def test_model_trains_on_soft_targets_and_ignores_zero_weights():
    X, y = blobs(n=300, k=2, seed=2)
    soft = np.eye(2, dtype=np.float32)[y]
    weights = np.ones(300, np.float32)
    # Rows of weight 0 carry the opposite label: they must not pull the model.
    poisoned = np.arange(300) % 3 == 0
    soft[poisoned] = 1 - soft[poisoned]
    weights[poisoned] = 0
    model = MLPClassifier(hidden=(16,), max_epochs=30, random_state=0).fit(X, soft, weights)
    assert (model.predict(X) == y).mean() > 0.95  # logistic regression: 0.98


def test_mixup_trains_on_blends_and_repeats_by_seed():
    X, y = blobs(n=300, k=3, seed=1)
    plain = MLPClassifier(hidden=(32,), random_state=0).fit(X, y)
    mixed = MLPClassifier(hidden=(32,), random_state=0, mixup=1.0).fit(X, y)
    proba = mixed.predict_proba(X)
    assert (proba.argmax(1) == y).mean() > 0.95  # logistic regression: 0.98
    assert np.abs(proba - plain.predict_proba(X)).max() > 1e-3  # the blends changed the fit
    twin = clone(mixed).fit(X, y)
    np.testing.assert_array_equal(twin.predict_proba(X), proba)  # same seed, same blends


def test_stratified_holdout_takes_the_share_of_each_class():
    classes = np.repeat([0, 1, 2], [100, 20, 1])
    mask = _stratified_holdout(classes, 0.1, np.random.default_rng(0))
    assert [mask[classes == c].sum() for c in range(3)] == [10, 2, 0]


def test_folds_are_stratified_and_deal_unlabelled_rows_evenly():
    labels = np.array([0] * 10 + [1] * 10 + [-1] * 12)
    folds = make_folds(labels, 5, seed=0)
    for fold in range(5):
        assert (labels[folds == fold] == 0).sum() == 2 and (labels[folds == fold] == 1).sum() == 2
    assert sorted(np.bincount(folds[-12:], minlength=5)) == [2, 2, 2, 3, 3]
    np.testing.assert_array_equal(folds, make_folds(labels, 5, seed=0))
    # the labelled rows' folds do not depend on the unlabelled rows
    np.testing.assert_array_equal(folds[:20], make_folds(labels[:20], 5, seed=0))


def test_pooled_rows_must_not_train():
    X, truth = blobs(60, 2, seed=0)
    targets = np.eye(2, dtype=np.float32)[truth]
    weights = np.ones(60, np.float32)
    folds = make_folds(truth, 3, seed=0)
    with pytest.raises(ValueError, match="pooled rows must have weight 0"):
        cross_fit(X, targets, weights, folds, ModelConfig(), 1, 0, pooled=truth == 0)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 4))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (rng.random((20000, 1)) > true_p.cumsum(1)).sum(1)
    overconfident = np.exp(logits * 2.0)
    overconfident /= overconfident.sum(1, keepdims=True)
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(2.0, rel=0.05)
    calibrated = apply_temperature(overconfident, t)
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(
        overconfident, labels
    )


def test_ece_by_hand():
    # Two rows at confidence 0.9 (one right), two at 0.6 (both right), 15 bins.
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    # bin of 0.9: |0.5 - 0.9| * 2 rows; bin of 0.6: |1.0 - 0.6| * 2 rows; over 4 rows.
    assert expected_calibration_error(proba, labels) == pytest.approx((0.4 * 2 + 0.4 * 2) / 4)


def test_detection_flags_only_disagreements():
    labels = np.array([0, 0, 1, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.95, 0.05], [0.1, 0.9], [0.2, 0.8], [0.05, 0.95], [0.97, 0.03]])
    is_issue, quality = detect_issues(labels, proba, np.ones(6))
    np.testing.assert_array_equal(is_issue, [False, False, False, False, True, True])
    # Within each given class, the order of the given label's probability.
    assert quality[1] > quality[0] > quality[4] and quality[2] > quality[3] > quality[5]


def test_class_calibrated_quality_weighs_each_class_by_its_noise():
    # An easy class: 40 rows at 0.95 and 4 doubtful ones at 0.6; a hard class: 40 rows at 0.55
    # (right, but the model is never sure of them) and none below.
    labels, proba = _rows([(40, 0, (0.95, 0.05)), (4, 0, (0.6, 0.4)), (40, 1, (0.45, 0.55))])
    quality = class_calibrated_quality(labels, proba)
    # The plain probability ranks the hard class's right rows first; per class they do not.
    assert quality[-1] > quality[40] and proba[-1, 1] < proba[40, 0]
    # Each class's mean is the share of its labels the confident joint estimates right.
    from cleanlab.count import estimate_joint

    joint = estimate_joint(labels, proba)
    for given in (0, 1):
        members = labels == given
        right = joint[given, given] / joint[given].sum()
        right = np.clip(right, 0.5 / members.sum(), 1 - 0.5 / members.sum())
        assert quality[members].mean() == pytest.approx(right, abs=1e-5)
    assert ((quality >= 0) & (quality <= 1)).all() and quality.dtype == np.float32
    # One class: nothing to weigh, the probability as it is.
    np.testing.assert_allclose(class_calibrated_quality(labels[:40], proba[:40]), 0.95)


def _rows(spec: list[tuple[int, int, tuple[float, ...]]]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities from (count, given label, probabilities) groups."""
    labels = np.concatenate([np.full(count, given) for count, given, _ in spec])
    proba = np.concatenate([np.tile(p, (count, 1)) for count, _, p in spec])
    return labels, proba


def test_one_way_noise_leaves_rows_against_its_direction():
    # Noise runs only 1 -> 2: twenty class-1 rows labelled 2, which the model knows are 1s.
    # Eight correct 1s near the border are dragged over to 2 by them; the check keeps those.
    labels, proba = _rows(
        [
            (60, 0, (0.9, 0.05, 0.05)),
            (32, 1, (0.05, 0.85, 0.1)),
            (8, 1, (0.02, 0.38, 0.6)),  # correct 1s predicted 2: against the noise
            (20, 2, (0.05, 0.8, 0.15)),  # the mislabelled rows
            (60, 2, (0.02, 0.08, 0.9)),
        ]
    )
    on, _ = detect_issues(labels, proba, np.ones(len(labels)))
    off, _ = detect_issues(labels, proba, np.ones(len(labels)), one_way=False)
    border, wrong = slice(92, 100), slice(100, 120)
    assert off[border].all() and not on[border].any()
    assert on[wrong].all() and off[wrong].all()
    assert on.sum() == 20 and off.sum() == 28


def test_anchor_transitions_recover_a_known_noise_matrix():
    # A model of the given labels outputs clean posteriors pushed through T; rows whose clean
    # posterior is one-hot are the anchors, and read T's rows back.
    rng = np.random.default_rng(0)
    noise = np.array([[0.7, 0.3, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 0.95]])
    clean = np.concatenate([np.eye(3).repeat(20, axis=0), rng.dirichlet(np.ones(3), 300)])
    np.testing.assert_allclose(anchor_transitions(clean @ noise), noise, atol=1e-9)


def test_anchors_find_one_way_noise_the_counts_miss():
    # Small data, noise only 1 -> 2 (iris, 40% of versicolor filed as virginica): the model's
    # posterior for a typical 1 sits on a plateau at a third for 2, and ten correct border 1s
    # are dragged over to 2. The confident joint counts 0 against 0, so only the anchors see it.
    labels, proba = _rows(
        [
            (40, 0, (0.98, 0.01, 0.01)),
            (20, 1, (0.01, 0.66, 0.33)),
            (10, 1, (0.01, 0.40, 0.59)),  # correct 1s predicted 2: against the noise
            (12, 2, (0.01, 0.55, 0.44)),  # the mislabelled rows
            (30, 2, (0.01, 0.02, 0.97)),
        ]
    )
    border, wrong = slice(60, 70), slice(70, 82)
    assert not noise_directions(labels, proba, floor=np.inf).any()  # the counts alone
    assert noise_directions(labels, proba)[1, 2]  # given 1, predicted 2: keep the label
    on, _ = detect_issues(labels, proba, np.ones(len(labels)))
    off, _ = detect_issues(labels, proba, np.ones(len(labels)), one_way=False)
    assert off[border].all() and not on[border].any()
    assert on[wrong].all() and on.sum() == 12


def test_a_class_that_only_noise_fills_has_no_anchors():
    # A batch with no true 2s (a stream whose class mix shifts): the only rows given 2 are
    # mislabelled 0s and 1s, and the model predicts 2 for none. Its "anchors" used to be the
    # rows likeliest to be 2, those very rows, which read as noise running 2 -> 0 one way and
    # kept every one of them out of the flags.
    labels, proba = _rows(
        [
            (50, 0, (0.9, 0.05, 0.05)),
            (50, 1, (0.05, 0.9, 0.05)),
            (8, 2, (0.6, 0.1, 0.3)),
            (6, 2, (0.1, 0.6, 0.3)),
        ]
    )
    assert np.isnan(anchor_transitions(proba)[2]).all()
    assert not noise_directions(labels, proba)[2].any()
    flags, _ = detect_issues(labels, proba, np.ones(len(labels)))
    assert flags[100:].all() and flags.sum() == 14


def test_directions_read_both_ways_fall_back_to_the_first_round():
    none, ab, ba = np.zeros((3, 3), bool), np.zeros((3, 3), bool), np.zeros((3, 3), bool)
    ab[0, 1] = ba[1, 0] = True
    assert (merge_directions(None, None, ab) == ab).all()  # the first round's reading
    kept = merge_directions(none, none, ab)  # a later round adds 0 -> 1
    assert (kept == ab).all()
    assert not merge_directions(kept, none, ba).any()  # then 1 -> 0: neither holds
    assert (merge_directions(ab, ab, ba) == ab).all()  # the first round's 0 -> 1 stays
    both = ab | ba
    assert not merge_directions(None, None, both).any()  # one round that reads both ways


@pytest.mark.parametrize(
    "spec",
    [
        # two classes, noise two to one (instance-dependent noise looks like this): no check
        [
            (100, 0, (0.9, 0.1)),
            (30, 0, (0.1, 0.9)),
            (15, 1, (0.9, 0.1)),
            (100, 1, (0.1, 0.9)),
            (5, 1, (0.55, 0.45)),  # 1s predicted 0: the check would keep them at three to one
        ],
        # ten classes, one pair 4 to 0: what chance gives among 45 pairs; no check
        [(50, c, tuple(0.91 if i == c else 0.01 for i in range(10))) for c in range(10)]
        + [(4, 1, tuple(0.91 if i == 0 else 0.01 for i in range(10)))]
        + [(2, 0, (0.4, 0.55) + (0.05 / 8,) * 8)],  # 0s predicted 1: the check would keep
    ],
    ids=["two-to-one", "chance"],
)
def test_one_way_check_needs_lopsided_noise_beyond_chance(spec):
    labels, proba = _rows(spec)
    on, _ = detect_issues(labels, proba, np.ones(len(labels)))
    off, _ = detect_issues(labels, proba, np.ones(len(labels)), one_way=False)
    assert off.any()
    np.testing.assert_array_equal(on, off)


def test_decide_applies_each_rule():
    labels = np.array([0, 0, 1, 1, -1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.98, 0.02], [0.3, 0.7]], np.float32)
    is_issue = np.array([False, True, True, True, False])
    quality = np.array([0.9, 0.2, 0.45, 0.02, 1.0], np.float32)
    agreement = np.array([1.0, 1.0, 1.0, 0.5, 1.0], np.float32)
    d = decide(
        labels,
        proba,
        is_issue,
        quality,
        agreement,
        relabel_threshold=0.6,
        exclude_threshold=0.05,
        soft_mix=0.5,
        reliable=True,
    )
    # kept; corrected (0.8 >= 0.6, unanimous), weighted by that confidence; down-weighted
    # (0.55 < 0.6) by its quality; excluded (members disagree, quality 0.02 < 0.05); unlabelled.
    np.testing.assert_array_equal(d.source, [GIVEN, CORRECTED, GIVEN, EXCLUDED, UNLABELLED])
    np.testing.assert_array_equal(d.refined, [0, 1, 1, -1, -1])
    np.testing.assert_allclose(d.weight, [1.0, 0.8, 0.45, 0.0, 0.0])
    np.testing.assert_allclose(d.soft[0], [0.95, 0.05])
    np.testing.assert_allclose(d.soft[1], [0.1, 0.9])
    np.testing.assert_allclose(d.soft[3], [0.98, 0.02])
    kept = decide(labels, proba, is_issue, quality, agreement, 0.6, 0.05, 0.5, reliable=False)
    np.testing.assert_array_equal(kept.refined, labels)
    np.testing.assert_array_equal(kept.weight, [1, 1, 1, 1, 0])


def test_decide_corrects_by_odds_below_the_threshold():
    # Four classes: the predicted class of row 0 is under the 0.4 threshold but four times the
    # given label's probability; row 1's is only 1.5 times it. Both are flagged.
    labels = np.array([0, 0])
    proba = np.array([[0.08, 0.32, 0.30, 0.30], [0.24, 0.36, 0.20, 0.20]], np.float32)
    is_issue = np.array([True, True])
    quality = proba[:, 0].copy()
    agreement = np.ones(2, np.float32)
    args = (labels, proba, is_issue, quality, agreement, 0.4, 0.05, 0.0, True, None)
    d = decide(*args, relabel_odds=3.0)
    np.testing.assert_array_equal(d.source, [CORRECTED, GIVEN])
    np.testing.assert_array_equal(d.refined, [1, 0])
    np.testing.assert_allclose(d.weight, [0.32, 0.24])  # each row's probability of being right
    off = decide(*args, relabel_odds=0.0)
    np.testing.assert_array_equal(off.source, [GIVEN, GIVEN])
    np.testing.assert_allclose(off.weight, [0.08, 0.24])


def test_pseudo_labels_only_confident_unanimous_unlabelled_rows():
    labels = np.array([0, 1, -1, -1, -1, -1])
    proba = np.array(
        [[0.05, 0.95], [0.9, 0.1], [0.95, 0.05], [0.15, 0.85], [0.02, 0.98], [0.5, 0.5]],
        np.float32,
    )
    agreement = np.array([1.0, 1.0, 1.0, 1.0, 0.8, 1.0], np.float32)
    no_issue = np.zeros(6, bool)
    quality = np.ones(6, np.float32)
    d = decide(labels, proba, no_issue, quality, agreement, 0.5, 0.05, 0.0, True, 0.9)
    # labelled rows keep their labels however confident the model is against them;
    # 0.95 unanimous: pseudo; 0.85 < 0.9: not; 0.98 with a dissenting member: not; 0.5: not.
    np.testing.assert_array_equal(
        d.source, [GIVEN, GIVEN, PSEUDO, UNLABELLED, UNLABELLED, UNLABELLED]
    )
    np.testing.assert_array_equal(d.refined, [0, 1, 0, -1, -1, -1])
    np.testing.assert_allclose(d.weight, [1.0, 1.0, 0.95, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(d.soft[2], [1.0, 0.0])
    off = decide(labels, proba, no_issue, quality, agreement, 0.5, 0.05, 0.0, True, None)
    assert off.count(PSEUDO) == 0
    weak = decide(labels, proba, no_issue, quality, agreement, 0.5, 0.05, 0.0, False, 0.9)
    assert weak.count(PSEUDO) == 0


def test_reliability_tells_a_learned_model_from_chance():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 3000)
    labels = flip_symmetric(truth, 0.4, 3, seed=1)
    good = np.eye(3)[truth] * 0.8 + 0.2 / 3
    assert teacher_is_reliable(labels, good)
    assert not teacher_is_reliable(labels, rng.dirichlet(np.ones(3), size=3000))


def test_noise_generators_hit_their_rate_and_repeat_by_seed():
    truth = np.arange(1000) % 4
    noisy = flip_symmetric(truth, 0.25, 4, seed=3)
    assert (noisy != truth).sum() == 250
    np.testing.assert_array_equal(noisy, flip_symmetric(truth, 0.25, 4, seed=3))
    identity = flip_with_matrix(truth, np.eye(4), seed=0)
    np.testing.assert_array_equal(identity, truth)
    shifted = flip_with_matrix(truth, np.roll(np.eye(4), 1, axis=1), seed=0)
    np.testing.assert_array_equal(shifted, (truth + 1) % 4)
