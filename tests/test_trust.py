"""refine.judge.trust, evidence and posterior, and the truth calibration: known answers on
hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from refine.judge.evidence import _interval, measure, noise_evidence, stratum_weights
from refine.judge.posterior import Posterior, fit_posterior
from refine.judge.trust import KEEP, POSTERIOR, RULES, choose_policy
from refine.learn.calibrate import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_through_noise,
    noise_transitions,
)


def _sharp_model(truth: np.ndarray, k: int, seed: int, strength: float = 3.0) -> np.ndarray:
    """Probabilities ``(N, K)`` of a model that knows the truth with some spread."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, size=(len(truth), k))
    logits[np.arange(len(truth)), truth] += strength
    return softmax(logits, axis=1)


def test_posterior_recovers_its_own_parameters():
    rng = np.random.default_rng(0)
    n, k = 4000, 3
    proba = softmax(rng.normal(0.0, 1.5, size=(n, k)), axis=1)
    labels = rng.integers(0, k, n)
    true = Posterior(scale=1.7, given_weight=2.0, bias=np.array([0.3, -0.2, -0.1]))
    q = true.proba(proba, labels)
    truth = np.array([rng.choice(k, p=row / row.sum()) for row in q.astype(np.float64)])
    fitted = fit_posterior(proba, labels, truth)
    assert fitted.scale == pytest.approx(1.7, abs=0.2)
    assert fitted.given_weight == pytest.approx(2.0, abs=0.25)
    assert fitted.bias - fitted.bias.mean() == pytest.approx(true.bias - true.bias.mean(), abs=0.2)


def test_posterior_gives_unlabelled_rows_no_bonus():
    post = Posterior(scale=1.0, given_weight=5.0, bias=np.zeros(2))
    proba = np.array([[0.7, 0.3], [0.7, 0.3]])
    out = post.proba(proba, np.array([1, -1]))
    assert out[1] == pytest.approx([0.7, 0.3], abs=1e-6)  # no label: the model alone
    # given 1 adds e^5 to its odds: 0.3 e^5 / (0.7 + 0.3 e^5)
    assert out[0, 1] == pytest.approx(0.3 * np.e**5 / (0.7 + 0.3 * np.e**5), abs=1e-6)


def test_given_weight_never_goes_below_zero():
    # The model alone is right on every verified row, and a few given labels are wrong: the
    # likelihood alone would push the given label's weight negative without bound.
    truth = np.arange(60) % 2
    proba = np.where(truth[:, None] == np.arange(2), 0.9, 0.1)
    labels = truth.copy()
    labels[:5] = 1 - labels[:5]
    assert fit_posterior(proba, labels, truth).given_weight >= 0.0


def test_evidence_reads_the_noise_at_the_surest_rows():
    # 10 classes x 100 rows; the model is sure of every row's class (its truth). Labels: 20%
    # flipped uniformly, so the anchors (top 10% of each class) show ~20% noise and every flag
    # is a wrong label: precision ~1.
    rng = np.random.default_rng(1)
    k, n = 10, 1000
    truth = np.arange(n) % k
    proba = _sharp_model(truth, k, seed=2, strength=6.0)
    labels = truth.copy()
    flip = rng.random(n) < 0.2
    labels[flip] = (truth[flip] + rng.integers(1, k, flip.sum())) % k
    evidence = noise_evidence(labels, proba)
    assert evidence.flag_rate == pytest.approx(flip.mean(), abs=0.01)
    assert evidence.anchor_noise == pytest.approx(0.2, abs=0.08)
    assert evidence.trusted


def test_evidence_distrusts_a_model_whose_disagreements_avoid_its_surest_rows():
    # Labels all right; the model is wrong on 30% of rows, and never confidently so: no noise
    # at the anchors, 30% flags, estimated precision 0.
    rng = np.random.default_rng(3)
    k, n = 3, 900
    labels = np.arange(n) % k
    proba = _sharp_model(labels, k, seed=4, strength=10.0)  # right wherever not set wrong
    wrong = rng.random(n) < 0.3
    shift = (labels[wrong] + 1) % k
    proba[wrong] = 0.1
    proba[wrong, shift] = 0.45
    proba[wrong, labels[wrong]] = 0.45 - 1e-3
    evidence = noise_evidence(labels, proba / proba.sum(1, keepdims=True))
    assert evidence.anchor_noise == 0.0
    assert evidence.flag_rate == pytest.approx(wrong.mean())
    assert not evidence.trusted


def test_choose_policy_follows_what_the_verified_rows_show():
    rng = np.random.default_rng(5)
    k, n = 3, 600
    truth = np.arange(n) % k
    labels = truth.copy()
    noisy = rng.random(n) < 0.25
    labels[noisy] = (truth[noisy] + 1) % k
    proba = _sharp_model(truth, k, seed=6)
    verified = np.full(n, -1)
    checked = rng.choice(n, 120, replace=False)
    verified[checked] = truth[checked]
    good_rules = proba.argmax(1)  # rules that set the model's class: right where it is
    choice = choose_policy(labels, verified, proba, good_rules, KEEP, seed=0)
    assert choice.policy in (RULES, POSTERIOR)
    assert choice.gains[RULES] > 10
    # Cross-fitted refined labels on the verified rows beat the given ones there.
    assert (choice.crossfit == truth[choice.rows]).mean() > (
        labels[choice.rows] == truth[choice.rows]
    ).mean()

    bad_rules = (truth + 2) % k  # rules that break labels
    labels_clean = truth.copy()  # and no noise at all: nothing can be fixed
    choice = choose_policy(labels_clean, verified, proba, bad_rules, RULES, seed=0)
    assert choice.policy == KEEP
    assert choice.gains[RULES] < 0
    assert "labels kept" in choice.reason


def _clean_two_classes(n: int, checked: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` rows of two classes, all labels right (``truth``), a sure model's ``proba`` and
    ``verified`` labels on the first ``checked`` rows."""
    truth = np.arange(n) % 2
    verified = np.full(n, -1)
    verified[:checked] = truth[:checked]
    return truth, _sharp_model(truth, 2, seed=7), verified


def test_choose_policy_falls_back_when_the_verified_rows_show_nothing():
    # Three verified rows, all with right labels the rules keep: no evidence either way, so the
    # data's own verdict (the fallback) stands.
    truth, proba, verified = _clean_two_classes(30, 3)
    choice = choose_policy(truth, verified, proba, truth, RULES, seed=0)
    assert choice.policy == RULES
    assert "data's own evidence" in choice.reason
    assert choose_policy(truth, verified, proba, truth, KEEP, seed=0).policy == KEEP


def test_verified_rows_picked_for_doubt_cannot_overrule_the_data_but_a_sample_can():
    # Twelve verified rows where the rules break five right labels and fix none (a one-sided
    # sign test: p = 1/32): a random sample showing that keeps the labels; the doubtful rows a
    # reviewer checked leave the data's verdict (the rules) standing, and say why. Two broken
    # labels (p = 1/4) are no evidence either way: the rules stand.
    truth, proba, verified = _clean_two_classes(40, 12)
    rules = truth.copy()
    rules[:5] = 1 - truth[:5]
    assert choose_policy(truth, verified, proba, rules, RULES, seed=0).policy == KEEP
    doubtful = choose_policy(truth, verified, proba, rules, RULES, seed=0, representative=False)
    assert doubtful.policy == RULES
    assert "doubtful rows, not a sample of the table" in doubtful.reason
    assert doubtful.gains[RULES] == -5
    rules[2:5] = truth[2:5]
    assert choose_policy(truth, verified, proba, rules, RULES, seed=0).policy == RULES


def test_a_posterior_is_not_fitted_to_verified_rows_that_do_not_stand_for_the_table():
    # Thirty reviewed rows, all of class 1, half labelled 0 by a labeller who calls the hard
    # ones 0, with a model that cannot tell them apart: a posterior fitted on them learns "say
    # 1" and fixes every one, which is what it would do to the whole table. As a random sample
    # they would stand for the table and the posterior may be chosen; picked for doubt, not.
    rng = np.random.default_rng(3)
    n = 400
    truth = np.arange(n) % 2
    labels = truth.copy()
    proba = np.full((n, 2), 0.5)
    proba[:, 1] += rng.normal(0, 0.02, n)
    proba[:, 0] = 1 - proba[:, 1]
    reviewed = np.flatnonzero(truth == 1)[:30]
    labels[reviewed[:15]] = 0
    verified = np.full(n, -1)
    verified[reviewed] = 1
    sample = choose_policy(labels, verified, proba, labels, KEEP, seed=0)
    assert sample.policy == POSTERIOR and sample.gains[POSTERIOR] > 10
    doubtful = choose_policy(labels, verified, proba, labels, KEEP, seed=0, representative=False)
    assert doubtful.policy == KEEP and POSTERIOR not in doubtful.gains


def test_measure_matches_a_hand_count():
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    truth = np.array([0, 1, 1, 0, 2, 0, 0, 1])
    refined = np.array([0, 1, 1, 1, -1, 0, 2, 1])
    m = measure(labels, truth, refined, ["a", "b", "c"])
    # given right: rows 0, 2, 4, 6, 7 -> 5/8; refined right: rows 0, 1, 2, 5, 7 -> 5/8
    assert m["given_accuracy"]["value"] == 5 / 8
    assert m["refined_accuracy"]["value"] == 5 / 8
    # corrections (changed, not excluded): rows 1 (right), 5 (right), 6 (wrong) -> 2/3
    assert m["corrections"]["rows"] == 3
    assert m["corrections"]["precision"]["value"] == pytest.approx(2 / 3, abs=1e-6)
    # exclusions: row 4, whose given label 2 was right -> precision 0
    assert m["exclusions"]["rows"] == 1
    assert m["exclusions"]["precision"]["value"] == 0.0
    assert m["per_class"] == []  # no class has 10 verified rows


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38415 = 0.71678, half-width
    # 1.96 * sqrt(0.016 + 0.0096040) / 1.38415 = 0.22661 -> [0.4902, 0.9433]
    interval = _interval(8, 10)
    assert interval["value"] == 0.8
    assert interval["low"] == pytest.approx(0.4902, abs=1e-4)
    assert interval["high"] == pytest.approx(0.9433, abs=1e-4)
    assert _interval(0, 0)["value"] is None


def test_temperature_through_noise_speaks_of_the_true_class():
    # A model sure of the truth, calibrated against labels with 30% symmetric noise, says about
    # 0.7; through the noise its confidence returns near 1 and its ECE against the truth falls.
    rng = np.random.default_rng(8)
    k, n = 4, 4000
    truth = np.arange(n) % k
    labels = truth.copy()
    flip = rng.random(n) < 0.3
    labels[flip] = (truth[flip] + rng.integers(1, k, flip.sum())) % k
    sure = _sharp_model(truth, k, seed=9, strength=8.0)
    given_scale = apply_temperature(sure, fit_temperature(sure, labels))
    before = expected_calibration_error(given_scale, truth)
    transitions = noise_transitions(labels, given_scale)
    assert np.diag(transitions) == pytest.approx(np.full(k, 0.7), abs=0.06)
    t = fit_temperature_through_noise(given_scale, labels, transitions)
    after = expected_calibration_error(apply_temperature(given_scale, t), truth)
    assert t < 1.0
    assert after < before / 3


def test_verified_rows_without_a_given_label_are_named_but_show_nothing_about_corrections():
    from refine.config import RunConfig
    from refine.judge.trust import Judge

    n, k = 200, 2
    truth = np.arange(n) % k
    labels = truth.copy()
    labels[:100] = -1  # half unlabelled; the verified rows are among them
    verified = np.full(n, -1)
    verified[:30] = truth[:30]
    # A model wrong on a third of the rows, never confidently: its surest rows agree with the
    # labels, so the data's evidence distrusts its flags.
    proba = np.where(truth[:, None] == np.arange(k), 0.99, 0.01)
    wrong = np.arange(n) % 3 == 0
    proba[wrong] = np.where(truth[wrong, None] == np.arange(k), 0.45, 0.55)
    judge = Judge(labels, verified, RunConfig(), [0, 1])
    verdict = judge(proba, np.ones(n), proba.argmax(1) != np.maximum(labels, 0), True)
    reason = verdict.record["reason"]
    assert reason.startswith("labels kept: none of the 30 verified rows has a given label")
    assert verdict.decisions.source[:30].tolist() == [6] * 30  # VERIFIED


def test_stratum_weights_by_hand():
    # Ten labelled rows, two confidence bins (top probability under or over the median) and
    # whether the model agrees with the given label: low-disagree 2 rows, low-agree 3,
    # high-agree 5. Verified: one low-disagree row and two high-agree rows (they cover the
    # strata holding 7 of 10 rows); a 0.7 coverage floor lets them stand for the table.
    import refine.judge.evidence as evidence

    top = np.array([0.55, 0.56, 0.6, 0.61, 0.62, 0.9, 0.91, 0.92, 0.93, 0.94])
    proba = np.stack([top, 1 - top], axis=1)
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    rows = np.array([0, 5, 6])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evidence, "CONFIDENCE_BINS", 2)
        patch.setattr(evidence, "MIN_COVERED", 0.7)
        weights = stratum_weights(proba, labels, rows)
        # table shares 0.2 and 0.5 over sample shares 1/3 and 2/3: 0.6, 0.75, 0.75, then / mean
        assert weights == pytest.approx(np.array([0.6, 0.75, 0.75]) / 0.7)
        patch.setattr(evidence, "MIN_COVERED", 0.8)
        assert stratum_weights(proba, labels, rows) is None


def test_rows_picked_for_doubt_do_not_calibrate_but_a_random_sample_does():
    rng = np.random.default_rng(3)
    k, n = 3, 3000
    truth = np.arange(n) % k
    labels = truth.copy()
    flip = rng.random(n) < 0.2
    labels[flip] = (truth[flip] + 1) % k
    proba = _sharp_model(truth, k, seed=4, strength=4.0)
    random_rows = rng.choice(n, 150, replace=False)
    weights = stratum_weights(proba, labels, random_rows)
    assert weights is not None and np.median(weights) == pytest.approx(1.0, abs=0.3)
    doubtful = np.argsort(proba.max(1))[:150]  # what refine review's picks look like
    assert stratum_weights(proba, labels, doubtful) is None
    # A gold split appended without given labels is a random sample too: judged on confidence.
    appended = labels.copy()
    appended[random_rows] = -1
    weights = stratum_weights(proba, appended, random_rows)
    assert weights is not None and np.median(weights) == pytest.approx(1.0, abs=0.3)

    from refine.config import RunConfig
    from refine.judge.trust import Judge

    for rows, method in ((random_rows, "verified"), (doubtful, "noise")):
        verified = np.full(n, -1)
        verified[rows] = truth[rows]
        judge = Judge(labels, verified, RunConfig(), [0, 1, 2])
        issue = proba.argmax(1) != labels
        verdict = judge(proba, np.ones(n), issue, True)
        calibration = verdict.record["calibration"]
        assert calibration["method"] == method
        assert calibration["verified_rows_representative"] is (method == "verified")


def test_a_random_verified_sample_measures_noise_the_surest_rows_miss():
    # Labels wrong only where the model is unsure (noise that follows the features): the
    # surest rows show none, so the data alone distrusts the flags. A random sample of verified
    # rows shows the 20% noise and the flags are trusted; a sample from clean labels is not.
    from refine.config import RunConfig
    from refine.judge.trust import Judge

    rng = np.random.default_rng(8)
    k, n = 2, 2000
    truth = np.arange(n) % k
    proba = _sharp_model(truth, k, seed=9, strength=2.0)
    unsure = np.argsort(proba.max(1))[: int(0.3 * n)]
    flip = unsure[rng.random(len(unsure)) < 2 / 3]  # 20% of all rows
    labels = truth.copy()
    labels[flip] = 1 - truth[flip]
    assert not noise_evidence(labels, proba).trusted
    sample = rng.choice(n, 200, replace=False)
    for given, trusted in ((labels, True), (truth, False)):
        verified = np.full(n, -1)
        verified[sample] = truth[sample]
        judge = Judge(given, verified, RunConfig(), [0, 1])
        verdict = judge(proba, np.ones(n), proba.argmax(1) != given, True)
        evidence = verdict.record["evidence"]
        expected = (given[sample] != truth[sample]).mean()
        assert evidence["verified_noise"] == pytest.approx(expected, abs=0.05)
        flagged = sample[proba[sample].argmax(1) != given[sample]]
        precision = (given[flagged] != truth[flagged]).mean()  # by hand, unweighted
        assert evidence["verified_flag_precision"] == pytest.approx(precision, abs=0.05)
        assert evidence["trusted"] is trusted


def test_flags_on_right_labels_are_not_trusted_however_noisy_the_verified_rows():
    # The model learnt a labelling rule's error: 20% of labels are wrong, but the model agrees
    # with them, and it flags 25% of rows whose labels are right. The verified rows show the
    # noise, so the noise rate over the flag rate (0.8) would trust the flags; read directly,
    # none of the flagged verified rows is wrong, and the labels stay.
    from refine.config import RunConfig
    from refine.judge.trust import Judge

    rng = np.random.default_rng(3)
    k, n = 2, 2000
    truth = np.arange(n) % k
    labels = truth.copy()
    order = rng.permutation(n)
    wrong, doubted = order[:400], order[400:900]
    labels[wrong] = 1 - truth[wrong]
    believed = labels.copy()  # what the model predicts: the wrong labels, and 500 flips
    believed[doubted] = 1 - labels[doubted]
    proba = _sharp_model(believed, k, seed=4, strength=4.0)
    proba[doubted] = _sharp_model(believed[doubted], k, seed=5, strength=1.5)  # less sure there
    assert not noise_evidence(labels, proba).trusted
    verified = np.full(n, -1)
    sample = rng.choice(n, 200, replace=False)
    verified[sample] = truth[sample]
    judge = Judge(labels, verified, RunConfig(), [0, 1])
    issue = proba.argmax(1) != labels
    verdict = judge(proba, np.ones(n), issue, True)
    evidence = verdict.record["evidence"]
    assert evidence["verified_noise"] == pytest.approx(0.2, abs=0.07)
    assert evidence["verified_noise"] / evidence["flag_rate"] > 0.5  # the old reading trusted
    assert evidence["verified_flag_precision"] < 0.1
    assert evidence["trusted"] is False
    assert verdict.record["policy"] == KEEP
    unverified = verified < 0
    assert (verdict.decisions.refined[unverified] == labels[unverified]).all()


def test_a_verified_sample_adds_evidence_but_never_lowers_the_anchors():
    from refine.judge.evidence import Evidence

    anchors = Evidence(anchor_noise=0.2, flag_rate=0.3, precision=2 / 3, trusted=True)
    lower = anchors.with_verified(0.1, 0.3)  # the sample reads less than the anchors
    assert (lower.precision, lower.trusted, lower.verified_precision) == (2 / 3, True, 0.3)
    assert not lower.rests_on_verified
    weak = Evidence(anchor_noise=0.03, flag_rate=0.3, precision=0.1, trusted=False)
    higher = weak.with_verified(0.24, 0.8)
    assert higher.precision == pytest.approx(0.8) and higher.trusted and higher.rests_on_verified
    # Plenty of noise but no flagged verified row: the sample says nothing about the flags.
    unflagged = weak.with_verified(0.24, None)
    assert (unflagged.precision, unflagged.trusted, unflagged.verified_noise) == (0.1, False, 0.24)


def test_rules_resting_on_the_verified_noise_rate_must_not_break_verified_labels():
    # Two right labels broken among twelve verified rows: no evidence against rules the
    # surest rows trust, but rules trusted only thanks to the verified rows' noise rate are
    # judged by those rows too, and a net loss keeps the labels.
    from refine.judge.evidence import Evidence

    truth, proba, verified = _clean_two_classes(40, 12)
    rules = truth.copy()
    rules[:2] = 1 - truth[:2]
    anchors = Evidence(anchor_noise=0.2, flag_rate=0.3, precision=2 / 3, trusted=True)
    assert choose_policy(truth, verified, proba, rules, RULES, 0, evidence=anchors).policy == RULES
    sample = Evidence(anchor_noise=0.0, flag_rate=0.3, precision=0.0, trusted=False)
    sample = sample.with_verified(0.25, 0.6)
    choice = choose_policy(truth, verified, proba, rules, RULES, 0, evidence=sample)
    assert choice.policy == KEEP
    assert "would allow the rules, but they break more verified labels" in choice.reason
    rules[:2] = truth[:2]  # nothing broken: the rules stand, and say what the sample showed
    choice = choose_policy(truth, verified, proba, rules, RULES, 0, evidence=sample)
    assert (
        choice.policy == RULES
        and "60% of the verified rows the model flags have a wrong label" in choice.reason
    )
