"""How far to trust the model's judgement of the labels: verified rows, the posterior of the
true class, the evidence gate for runs without verified rows, and what a run reports.

Shapes: ``labels`` ``(N,)`` given class indices (-1 = unlabelled), ``verified`` ``(N,)``
verified class indices (-1 = not verified), ``proba`` ``(N, K)`` calibrated out-of-fold
probabilities. A verified row's probabilities come from fold models that never trained on it,
so whatever is fitted or measured on verified rows speaks for the other rows too.

A round's labels follow one of three policies:

* ``keep``: every given label stays, at weight 1, and nothing is pseudo-labelled (flags and
  scores are still written);
* ``rules``: ``relabel.decide``'s thresholds on the model's flags;
* ``posterior``: each labelled row takes its likeliest true class under a ``Posterior`` fitted
  on the verified rows, which weighs the model's probabilities against the given label.

With verified rows the policy is the one that fixes the most verified labels, scored by
cross-fitting over the verified rows so no choice is scored on the rows that made it; a policy
other than ``keep`` must fix more verified labels than it breaks. Without them, or when they
show nothing either way, ``rules`` needs the evidence of ``noise_evidence``; else ``keep``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from scipy.stats import binom

from refine.config import RunConfig
from refine.io.decisions import Decisions
from refine.judge.detect import anchor_rows, class_calibrated_quality
from refine.judge.relabel import decide, decide_by_posterior, keep_given, with_verified
from refine.learn.calibrate import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_through_noise,
    fit_temperature_to,
    noise_transitions,
)

KEEP, RULES, POSTERIOR = "keep", "rules", "posterior"
# Among policies that fix as many verified labels, the first listed wins: change least.
POLICIES = (KEEP, POSTERIOR, RULES)
# Without verified rows, the model's corrections are trusted when the noise seen at its surest
# rows accounts for at least this share of the rows it disagrees with (reports/trust.md).
MIN_FLAG_PRECISION = 0.5
# Verified rows with a given label that the posterior is fitted on, at the least.
MIN_POSTERIOR_ROWS = 20
GIVEN_WEIGHT_SD = 5.0
# A policy is chosen on verified rows only when the labels it fixes outnumber those it breaks
# beyond chance: a one-sided sign test at this level. Fewer fixes than that show nothing, and a
# policy chosen on them can go on to break the other rows (reports/trust.md).
SIGNIFICANCE = 0.05
VERIFIED_FOLDS = 5
# Verified rows of a class needed to report that class's accuracies.
MIN_CLASS_ROWS = 10
# The verified rows calibrate the probabilities only when the strata they fall in (below) hold
# at least this share of the table: refine review picks doubtful rows, and a temperature fitted
# on them alone flattened every probability, so no correction passed (reports/trust.md).
MIN_COVERED = 0.8
CONFIDENCE_BINS = 5
_EPS = 1e-7


@dataclass(frozen=True)
class Posterior:
    """The probability of each true class given a row's out-of-fold probabilities ``p`` and its
    given label: ``softmax(scale * log p + given_weight * onehot(given) + bias)``.

    ``scale`` sharpens or flattens the model (it was calibrated against noisy labels);
    ``given_weight`` is the log-odds the given label adds for its own class, which is large
    where labels are rarely wrong and small or negative where the model knows better;
    ``bias`` ``(K,)`` moves each class's prior. Rows without a given label get no bonus.
    """

    scale: float
    given_weight: float
    bias: np.ndarray

    def proba(self, proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(N, K)`` true-class probabilities for ``proba`` ``(N, K)`` and ``labels`` ``(N,)``."""
        return softmax(self._logits(proba, labels), axis=1).astype(np.float32)

    def _logits(self, proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
        z = self.scale * _log(proba) + self.bias
        rows = np.flatnonzero(labels >= 0)
        z[rows, labels[rows]] += self.given_weight
        return z

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": round(self.scale, 6),
            "given_weight": round(self.given_weight, 6),
            "bias": [round(float(b), 6) for b in self.bias],
        }


def fit_posterior(
    proba: np.ndarray, labels: np.ndarray, truth: np.ndarray, use_given: bool = True
) -> Posterior:
    """Fit a ``Posterior`` to verified rows by maximum likelihood of their true class.

    ``proba`` ``(M, K)`` out-of-fold probabilities, ``labels`` ``(M,)`` given labels (-1 where
    none), ``truth`` ``(M,)`` verified labels. ``use_given`` False fits ``given_weight = 0``:
    the calibration of the model alone, for rows without a given label. Weak priors keep a
    few verified rows from driving the fit to extremes where the model separates them
    perfectly: ``log(scale)`` and each class bias unit Gaussians, ``given_weight`` a Gaussian
    of sd ``GIVEN_WEIGHT_SD``; so a class with few verified rows keeps about the model's prior.
    """
    m, k = proba.shape
    log_p = _log(proba)
    given = np.zeros((m, k))
    rows = np.flatnonzero(labels >= 0)
    given[rows, labels[rows]] = 1.0
    onehot = np.zeros((m, k))
    onehot[np.arange(m), truth] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        scale, weight, bias = theta[0], theta[1] if use_given else 0.0, theta[2:]
        z = scale * log_p + weight * given + bias
        log_q = log_softmax(z, axis=1)
        residual = np.exp(log_q) - onehot  # d(-log-likelihood)/dz
        prior = math.log(scale) ** 2 / 2 + weight**2 / (2 * GIVEN_WEIGHT_SD**2)
        loss = -float((log_q * onehot).sum()) + prior + float(bias @ bias) / 2
        gradient = np.concatenate(
            [
                [
                    (residual * log_p).sum() + math.log(scale) / scale,
                    (residual * given).sum() + weight / GIVEN_WEIGHT_SD**2 if use_given else 0.0,
                ],
                residual.sum(0) + bias,
            ]
        )
        return loss, gradient

    # The given label never counts against its own class: without that bound a few verified
    # rows that the model alone gets right drive the weight far below 0, and the run then
    # overturns right labels (reports/code-notes.md).
    bounds = [(0.05, 50.0), (0.0, 20.0) if use_given else (0.0, 0.0)] + [(-10.0, 10.0)] * k
    result = minimize(
        objective,
        np.concatenate([[1.0, 0.0], np.zeros(k)]),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
    )
    theta = result.x
    return Posterior(float(theta[0]), float(theta[1]), theta[2:].astype(np.float64))


@dataclass(frozen=True)
class Evidence:
    """What the data alone says about the model's flags, under label noise that does not follow
    the features: the share of the model's surest rows (anchors) whose given label is another
    class (``anchor_noise``) estimates the noise rate, so ``anchor_noise / flag_rate`` estimates
    the share of flagged rows whose label is wrong (``precision``, at most 1).

    Noise that follows the features (crowds, labelling rules) leaves the anchors cleaner than
    the rest, so ``precision`` comes out low there and the evidence errs towards keeping labels.
    A model weaker than the labels disagrees with many right labels: a high ``flag_rate`` and
    low ``precision`` too.
    """

    anchor_noise: float
    flag_rate: float
    precision: float
    trusted: bool
    verified_noise: float | None = None  # the noise rate the verified rows show, where read
    # The share of the flagged verified rows whose label is wrong, where the verified rows
    # hold a flagged one: the precision measured, not estimated.
    verified_precision: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchor_noise": round(self.anchor_noise, 6),
            "verified_noise": _rounded(self.verified_noise),
            "verified_flag_precision": _rounded(self.verified_precision),
            "flag_rate": round(self.flag_rate, 6),
            "estimated_flag_precision": round(self.precision, 6),
            "min_flag_precision": MIN_FLAG_PRECISION,
            "trusted": self.trusted,
        }

    @property
    def rests_on_verified(self) -> bool:
        """Whether the flags are trusted only because of what the verified rows show: the
        surest rows alone would not trust them."""
        if self.verified_noise is None or not self.trusted:
            return False
        anchors = min(1.0, self.anchor_noise / self.flag_rate) if self.flag_rate > 0 else 1.0
        return anchors < MIN_FLAG_PRECISION

    def with_verified(
        self, noise: float, precision: float | None, min_precision: float = MIN_FLAG_PRECISION
    ) -> Evidence:
        """The same evidence, also read through a random sample of verified rows: ``noise``,
        the share of them with a wrong label, and ``precision``, the share of the flagged ones
        with a wrong label (None: none flagged), both weighted to the table's mix.

        The anchors miss noise that follows the features, so the higher of the anchors' and
        the measured precision stands. Not the noise rate over the flag rate: that assumes
        every wrong label is flagged, and where the model has learnt the labelling rule's
        errors it is not. On semeval-single 35 random verified rows read 49% noise against
        24% flags and let through rules that broke 7 labels; in simulated draws of 2% of the
        rows of the real sets, reading the flags directly trusts semeval's harmful rules a
        third as often and youtube's helpful ones about as often (reports/trust/
        flag-precision.md). A sample reading a lower precision than the anchors does not lower
        it: rules that break verified labels beyond chance are vetoed anyway, and a sample of a
        hundred rows misreads often enough to stop corrections that help
        (make_classification-sym20, reports/trust/verified-evidence.md)."""
        if precision is None or precision <= self.precision:
            return Evidence(
                self.anchor_noise, self.flag_rate, self.precision, self.trusted, noise, precision
            )
        return Evidence(
            self.anchor_noise,
            self.flag_rate,
            precision,
            precision >= min_precision,
            noise,
            precision,
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def noise_evidence(
    labels: np.ndarray, proba: np.ndarray, min_precision: float = MIN_FLAG_PRECISION
) -> Evidence:
    """``Evidence`` from labelled rows: ``labels`` ``(N,)`` given classes (no -1), ``proba``
    ``(N, K)`` out-of-fold probabilities of a model trained on those labels."""
    if not len(labels):
        return Evidence(0.0, 0.0, 1.0, True)
    predicted = proba.argmax(1)
    flag_rate = float((predicted != labels).mean())
    anchors = anchor_rows(proba)
    counted = sum(len(a) for a in anchors)
    disagree = sum(int((labels[a] != c).sum()) for c, a in enumerate(anchors))
    anchor_noise = disagree / counted if counted else 0.0
    # A model that disagrees with no label has nothing to correct: nothing to distrust.
    precision = min(1.0, anchor_noise / flag_rate) if flag_rate > 0 else 1.0
    return Evidence(anchor_noise, flag_rate, precision, precision >= min_precision)


@dataclass
class Choice:
    """A round's policy, why, and what was measured on the verified rows.

    ``gains``: verified labels each policy fixes minus those it breaks, cross-fitted;
    ``crossfit``: each verified row's refined label ``(V,)`` as the procedure would have set
    it had the row not been verified (-1 = excluded), for ``rows`` ``(V,)``."""

    policy: str
    reason: str
    gains: dict[str, int] = field(default_factory=dict)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    crossfit: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    posterior: Posterior | None = None
    crossfit_calibrated: np.ndarray | None = None  # (V, K) P(true class | row), cross-fitted


def verified_flag_reading(
    labels: np.ndarray, truth: np.ndarray, proba: np.ndarray, weights: np.ndarray
) -> tuple[float, float | None]:
    """What verified rows show of the noise and the flags, weighted to the table's mix
    (``weights`` ``(V,)``, from ``stratum_weights``): the share of ``labels`` ``(V,)`` that
    differ from ``truth`` ``(V,)``, and the share of the rows ``proba`` ``(V, K)`` flags (its
    likeliest class is not the label) whose label is wrong, None where it flags none."""
    wrong = labels != truth
    flagged = proba.argmax(1) != labels
    noise = float(np.average(wrong, weights=weights))
    if not flagged.any():
        return noise, None
    return noise, float(np.average(wrong[flagged], weights=weights[flagged]))


def choose_policy(
    labels: np.ndarray,
    verified: np.ndarray,
    proba: np.ndarray,
    rules: np.ndarray,
    fallback: str,
    seed: int,
    representative: bool = True,
    evidence: Evidence | None = None,
) -> Choice:
    """The policy the verified rows support, or ``fallback`` (what the data alone allows: a
    policy from ``noise_evidence``) where they show nothing either way.

    Verified rows that do not stand for the table (``representative`` False: rows picked for
    doubt, see ``stratum_weights``) can show a policy that helps, but not overrule the
    fallback: they are the rows where any correction is least sure, and a fallback that breaks
    more of them than it fixes may still fix more of the rest (reports/trust.md, "The review
    loop"). Nor is the posterior a candidate then: fitted to them, its class biases learn their
    mix, not the table's (30 reviewed rows all of one class turned youtube-single's labels
    from 0.824 to 0.576 right, reports/trust/review-real.md).

    ``evidence``: what the fallback rests on. Where it rests on what the verified rows show of
    the flags alone (``Evidence.rests_on_verified``), those rows judge the rules too: the
    fallback stands only where it fixes at least as many verified labels as it breaks.

    ``rules`` ``(N,)``: the labels the ``rules`` policy would set (-1 = excluded). Rows both
    labelled and verified are the evidence; the cross-fitted labels of ``Choice.crossfit`` come
    from the whole choosing procedure run on the other verified rows (nested cross-fitting).
    """
    rows = np.flatnonzero((verified >= 0) & (labels >= 0))
    truth = verified
    chosen, gains, harmful = _select(rows, labels, truth, proba, rules, seed, representative)

    needs_gain = evidence is not None and evidence.rests_on_verified

    def vetoed(gains: dict[str, int]) -> bool:
        return needs_gain and gains.get(fallback, 0) < 0

    def unshown(harmful: set[str], gains: dict[str, int]) -> str:
        if vetoed(gains):
            return KEEP
        return fallback if fallback not in harmful or not representative else KEEP

    policy = chosen or unshown(harmful, gains)
    reason = _reason(chosen, policy, gains, representative, evidence, vetoed(gains))
    crossfit = np.zeros(len(rows), np.int64)
    calibrated = None
    parts = _parts(len(rows), seed)
    if parts is None:  # too few verified rows to hold any out: report the policy as chosen
        crossfit[:] = _apply(policy, rows, labels, rules, None, proba)
    else:
        for part in parts:
            inner = rows[~part]
            chosen, inner_gains, inner_harmful = _select(
                inner, labels, truth, proba, rules, seed, representative
            )
            if chosen is None:
                chosen = unshown(inner_harmful, inner_gains)
            fitted = _fit(inner, labels, truth, proba, chosen)
            crossfit[part] = _apply(chosen, rows[part], labels, rules, fitted, proba)
        if len(rows) >= MIN_POSTERIOR_ROWS:
            calibrated = np.zeros((len(rows), proba.shape[1]), np.float32)
            for part in parts:
                inner = rows[~part]
                model = fit_posterior(proba[inner], labels[inner], truth[inner], use_given=False)
                calibrated[part] = model.proba(proba[rows[part]], np.full(part.sum(), -1))
    posterior = _fit(rows, labels, truth, proba, POSTERIOR)
    return Choice(policy, reason, gains, rows, crossfit, posterior, calibrated)


@dataclass
class Verdict:
    """A round's labels (``decisions``), the flags and label quality to write ``(N,)``, the
    probabilities they speak of, and the round's ``record`` for ``run.json``."""

    decisions: Decisions
    is_issue: np.ndarray
    quality: np.ndarray
    proba: np.ndarray  # (N, K) probabilities of the true class, as well as refine can tell
    record: dict[str, Any]


class Judge:
    """Decides each round's labels from its calibrated out-of-fold probabilities.

    The first round's probabilities model the given labels, so the data's own ``Evidence`` is
    read from them once and holds for the run. Each round then picks a policy (see the module
    docstring), applies it, and sets every verified row to its verified label. Where the
    verified rows fit a ``Posterior``, the flags and label quality speak of the true class:
    ``label_quality`` is the posterior probability of the given label, and a row is flagged
    when that is below one half.
    """

    def __init__(
        self, labels: np.ndarray, verified: np.ndarray, config: RunConfig, classes: list[Any]
    ):
        self.labels = labels
        self.verified = verified
        self.config = config
        self.classes = classes
        self.evidence: Evidence | None = None

    def restore(self, record: dict[str, Any]) -> None:
        """Take back the evidence of a round ``record`` (a checkpoint's), on resuming."""
        e = record["evidence"]
        self.evidence = Evidence(
            e["anchor_noise"],
            e["flag_rate"],
            e["estimated_flag_precision"],
            e["trusted"],
            e.get("verified_noise"),
            e.get("verified_flag_precision"),
        )

    def __call__(
        self,
        proba: np.ndarray,
        agreement: np.ndarray,
        is_issue: np.ndarray,
        reliable: bool,
        teacher_round: bool = False,
    ) -> Verdict:
        """``proba`` ``(N, K)`` calibrated against the given labels; ``is_issue`` ``(N,)`` as
        ``flag_issues`` reads it from them."""
        labels, verified, c = self.labels, self.verified, self.config
        labelled = labels >= 0
        # Weights that make the verified rows stand for the table (stratum_weights); None where
        # they cannot or are too few to calibrate (representative is None then).
        rows = np.flatnonzero(verified >= 0)
        weights = stratum_weights(proba, labels, rows) if len(rows) >= MIN_POSTERIOR_ROWS else None
        representative = None if len(rows) < MIN_POSTERIOR_ROWS else weights is not None
        if self.evidence is None:
            self.evidence = noise_evidence(labels[labelled], proba[labelled])
            if weights is not None:
                checked = labels[rows] >= 0
                if checked.sum() >= MIN_POSTERIOR_ROWS:
                    self.evidence = self.evidence.with_verified(
                        *verified_flag_reading(
                            labels[rows][checked],
                            verified[rows][checked],
                            proba[rows][checked],
                            weights[checked],
                        )
                    )
        fallback = RULES if reliable and (self.evidence.trusted or teacher_round) else KEEP
        temperature, method = truth_temperature(proba, labels, verified, fallback == RULES, weights)
        true_proba = apply_temperature(proba, temperature) if method != "none" else proba
        rows = np.flatnonzero(labelled)
        quality = np.ones(len(labels), np.float32)  # unlabelled rows have no label to doubt
        quality[rows] = class_calibrated_quality(labels[rows], true_proba[rows])
        pseudo = c.pseudo_threshold if c.pseudo_label else None
        # The teacher's round (refine update) flags and pseudo-labels, but leaves given labels
        # and weights to the retrained out-of-fold rounds: a model that never saw the batch's
        # distribution mistakes rows of classes the stream has moved to (reports/code-notes.md).
        rules = decide(
            labels,
            true_proba,
            np.zeros(len(labels), bool) if teacher_round else is_issue,
            quality,
            agreement,
            c.relabel_threshold,
            c.exclude_threshold,
            c.soft_mix,
            reliable,
            pseudo,
            c.relabel_odds,
        )
        if teacher_round or not ((verified >= 0) & labelled).any():
            choice = Choice(fallback, self._unverified_reason(fallback, reliable, teacher_round))
        else:
            choice = choose_policy(
                labels,
                verified,
                proba,
                rules.refined,
                fallback,
                c.seed,
                representative=representative is not False,
                evidence=self.evidence,
            )
        if choice.policy == RULES:
            decisions = rules
        elif choice.policy == POSTERIOR and choice.posterior is not None:
            posterior = choice.posterior.proba(proba, labels)
            posterior[~labelled] = true_proba[~labelled]
            decisions = decide_by_posterior(labels, posterior, agreement, c.soft_mix, pseudo)
        else:
            decisions = keep_given(labels, true_proba, c.soft_mix)
        if choice.posterior is not None:
            quality[rows] = choice.posterior.proba(proba[rows], labels[rows])[
                np.arange(len(rows)), labels[rows]
            ]
            is_issue = labelled & (quality < 0.5)
        is_issue, quality = self._verified_flags(is_issue, quality)
        record = self._record(choice, proba)
        record["calibration"] = {
            "method": method,
            "temperature": round(temperature, 6),
            "verified_rows_representative": representative,
        }
        return Verdict(with_verified(decisions, verified), is_issue, quality, true_proba, record)

    def _verified_flags(
        self, is_issue: np.ndarray, quality: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A verified row's given label is known right or wrong: flag exactly the wrong ones."""
        rows = np.flatnonzero((self.verified >= 0) & (self.labels >= 0))
        is_issue, quality = is_issue.copy(), quality.astype(np.float32, copy=True)
        wrong = self.labels[rows] != self.verified[rows]
        is_issue[rows] = wrong
        quality[rows] = np.where(wrong, 0.0, 1.0)
        return is_issue, quality

    def _unverified_reason(self, policy: str, reliable: bool, teacher_round: bool) -> str:
        if teacher_round:
            return "the earlier run's model judges the batch; corrections wait for the retrained rounds"
        if not reliable:
            return "labels kept: the model barely beats chance on these labels"
        e = self.evidence
        assert e is not None
        count = int((self.verified >= 0).sum())
        # Verified rows without a given label train and calibrate the model, but show nothing
        # about corrections: there is no given label on them to be right or wrong.
        none = (
            f"none of the {count:,} verified rows has a given label to check"
            if count
            else "no verified rows"
        )
        if policy == RULES:
            return (
                f"{none}; the noise seen at the model's surest rows accounts for an "
                f"estimated {e.precision:.0%} of its flags, so its corrections are trusted"
            )
        return (
            f"labels kept: {none}, and the noise seen at the model's surest rows "
            f"accounts for only an estimated {e.precision:.0%} of its flags (under "
            f"{MIN_FLAG_PRECISION:.0%}), so its corrections could be wrong more often than right. "
            "Verify some labelled rows (refine review) and rerun with --verified-file to let "
            "refine correct"
        )

    def _record(self, choice: Choice, proba: np.ndarray) -> dict[str, Any]:
        assert self.evidence is not None
        record: dict[str, Any] = {
            "policy": choice.policy,
            "reason": choice.reason,
            "evidence": self.evidence.to_dict(),
            "verified_rows": int((self.verified >= 0).sum()),
        }
        if len(choice.rows):
            rows, truth = choice.rows, self.verified[choice.rows]
            record["gains"] = choice.gains
            record["measured"] = measure(self.labels[rows], truth, choice.crossfit, self.classes)
            record["ece_true"] = {
                "before": truth_ece(proba[rows], truth),
                "after": truth_ece(choice.crossfit_calibrated, truth)
                if choice.crossfit_calibrated is not None
                else None,
            }
        if choice.posterior is not None:
            record["posterior"] = choice.posterior.to_dict()
        return record


def truth_temperature(
    proba: np.ndarray,
    labels: np.ndarray,
    verified: np.ndarray,
    trusted: bool,
    weights: np.ndarray | None,
) -> tuple[float, str]:
    """A temperature that turns ``proba`` ``(N, K)`` (calibrated against the given ``labels``)
    into probabilities of the true class, and how it was found: against the ``verified`` labels
    weighted by ``weights`` where they stand for the table (``stratum_weights``); else through
    the label noise the model estimates, where the data's evidence ``trusted`` the model; else
    none (1.0, ``proba`` as it is)."""
    if weights is not None:
        rows = np.flatnonzero(verified >= 0)
        return fit_temperature(proba[rows], verified[rows], weights), "verified"
    labelled = np.flatnonzero(labels >= 0)
    if trusted and len(np.unique(labels[labelled])) >= 2:
        given = labels[labelled]
        seen = proba if len(labelled) == len(labels) else proba[labelled]  # no copy if all
        transitions = noise_transitions(given, seen)
        return fit_temperature_through_noise(seen, given, transitions), "noise"
    return 1.0, "none"


def student_temperature(
    trust: dict[str, Any] | None,
    labels: np.ndarray,
    verified: np.ndarray,
    truth: np.ndarray | None,
) -> Callable[[np.ndarray], tuple[float, str] | None]:
    """How a run's student finds its temperature from its out-of-fold probabilities ``(N, K)``
    so that they speak of the true class as the run's do.

    Where the run turned its probabilities to the true class (``trust``, run.json's, found a
    temperature), the Brier score against the run's belief of each row's true class: its
    true-class probabilities ``truth`` ``(N, K)`` (``relabel.true_class_of``) given the row's
    given label too (``given_label_posterior``; the posterior policy's are already), the score
    expected were the true class drawn from that belief ("ensemble"). Without ``truth``
    (``--soft-mix 0``), the way the run found its own, on the given ``labels`` and ``verified``
    labels ``(N,)`` (-1: none). None where the run found no temperature: ``fit_student`` then
    calibrates against the refined labels, as the run's stay calibrated against the given ones.
    """
    method = ((trust or {}).get("calibration") or {}).get("method")
    if truth is not None and (trust or {}).get("policy") != POSTERIOR:
        truth = given_label_posterior(truth, labels)

    def temperature(proba: np.ndarray) -> tuple[float, str] | None:
        if method not in ("noise", "verified"):
            return None
        if truth is not None:
            return fit_temperature_to(proba, truth), "ensemble"
        rows = np.flatnonzero(verified >= 0)
        weights = None
        if method == "verified" and len(rows) >= MIN_POSTERIOR_ROWS:
            weights = stratum_weights(proba, labels, rows)
        found, how = truth_temperature(proba, labels, verified, True, weights)
        return (found, how) if how != "none" else None

    return temperature


def given_label_posterior(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``proba`` ``(N, K)``, probabilities of the true class from the row alone, updated by each
    row's given label (``labels`` ``(N,)``, -1: none) through the noise they estimate
    (``noise_transitions``): P(true | row, given) ~ P(true | row) P(given | true). A row the
    noise makes impossible keeps its ``proba``."""
    labelled = np.flatnonzero(labels >= 0)
    out = proba.astype(np.float64, copy=True)
    if len(np.unique(labels[labelled])) < 2:
        return out
    transitions = noise_transitions(labels[labelled], proba[labelled])
    joint = out[labelled] * transitions[:, labels[labelled]].T
    mass = joint.sum(1, keepdims=True)
    out[labelled] = np.where(mass > 0, joint / np.maximum(mass, 1e-12), out[labelled])
    return out


def stratum_weights(proba: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Weights ``(len(rows),)`` that make the verified ``rows`` stand for the whole table, or
    None where they cannot.

    Rows are put in strata by the model's confidence (``CONFIDENCE_BINS`` quantile bins of the
    top probability over all ``proba`` ``(N, K)``) and, where every verified row has a given
    label (``labels`` -1: none), by whether the predicted class is the given label. A random
    sample gets weights near 1; rows a person picked for doubt are reweighted to the table's
    mix. Calibration holds within a stratum whatever picked the rows in it, so this undoes a
    selection made on confidence and agreement; strata with no verified row cannot be stood
    for, and when they hold more than ``1 - MIN_COVERED`` of the table, None. Verified rows
    without a given label (a gold validation split appended to the data) are judged on
    confidence alone: they cannot agree or disagree with a label they do not have.
    """
    confidence = proba.max(1)
    edges = np.quantile(confidence, np.linspace(0, 1, CONFIDENCE_BINS + 1)[1:-1])
    if (labels[rows] >= 0).all():
        status = np.where(labels < 0, 2, (proba.argmax(1) == labels).astype(np.int64))
    else:
        status = np.zeros(len(labels), np.int64)
    stratum = np.searchsorted(edges, confidence, side="right") * 3 + status
    cells = CONFIDENCE_BINS * 3
    table = np.bincount(stratum, minlength=cells) / len(stratum)
    sample = np.bincount(stratum[rows], minlength=cells) / len(rows)
    if table[sample > 0].sum() < MIN_COVERED:
        return None
    weights = table[stratum[rows]] / sample[stratum[rows]]
    return weights / weights.mean()


def _select(
    rows: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray,
    proba: np.ndarray,
    rules: np.ndarray,
    seed: int,
    representative: bool = True,
) -> tuple[str | None, dict[str, int], set[str]]:
    """The policy that fixes the most of ``rows``' labels, net, or None when none fixes more
    than it breaks beyond chance; each policy's net gain (cross-fitted for the posterior, which
    is a candidate only where the rows are ``representative``); and the policies that break
    more than they fix beyond chance (the same sign test, turned)."""
    refined = {KEEP: labels[rows], RULES: rules[rows]}
    parts = _parts(len(rows), seed)
    if representative and len(rows) >= MIN_POSTERIOR_ROWS and parts is not None:
        refined[POSTERIOR] = np.zeros(len(rows), np.int64)
        for part in parts:
            inner = rows[~part]
            fitted = fit_posterior(proba[inner], labels[inner], truth[inner])
            refined[POSTERIOR][part] = fitted.proba(proba[rows[part]], labels[rows[part]]).argmax(1)
    given, true = labels[rows], truth[rows]
    fixed = {p: int(((r == true) & (given != true)).sum()) for p, r in refined.items()}
    broken = {p: int(((r != true) & (given == true)).sum()) for p, r in refined.items()}
    gains = {p: fixed[p] - broken[p] for p in refined}
    best = max(POLICIES, key=lambda p: (gains.get(p, -math.inf), -POLICIES.index(p)))
    shown = best != KEEP and _beyond_chance(fixed[best], broken[best])
    # A verified row or two that a policy breaks is no evidence against it: on a small table one
    # broken label could veto rules that fixed most of the rest (reports/trust.md).
    harmful = {p for p in refined if _beyond_chance(broken[p], fixed[p])}
    return (best if shown else None), gains, harmful


def _beyond_chance(wins: int, losses: int) -> bool:
    """Whether ``wins`` outnumber ``losses`` beyond chance: a one-sided sign test."""
    return bool(binom.sf(wins - 1, wins + losses, 0.5) < SIGNIFICANCE)


def _fit(
    rows: np.ndarray, labels: np.ndarray, truth: np.ndarray, proba: np.ndarray, policy: str
) -> Posterior | None:
    if policy != POSTERIOR or len(rows) < MIN_POSTERIOR_ROWS:
        return None
    return fit_posterior(proba[rows], labels[rows], truth[rows])


def _apply(
    policy: str,
    rows: np.ndarray,
    labels: np.ndarray,
    rules: np.ndarray,
    posterior: Posterior | None,
    proba: np.ndarray,
) -> np.ndarray:
    """The labels ``policy`` sets on ``rows`` (-1 = excluded)."""
    if policy == RULES:
        return rules[rows]
    if policy == POSTERIOR and posterior is not None:
        return posterior.proba(proba[rows], labels[rows]).argmax(1)
    return labels[rows]


def _parts(n: int, seed: int) -> list[np.ndarray] | None:
    """``VERIFIED_FOLDS`` (or fewer, for few rows) masks that split ``n`` rows at random; None
    for fewer than two rows."""
    folds = min(VERIFIED_FOLDS, n)
    if folds < 2:
        return None
    order = np.random.default_rng([seed, 25]).permutation(n)
    fold = np.empty(n, np.int64)
    fold[order] = np.arange(n) % folds
    return [fold == f for f in range(folds)]


def _reason(
    chosen: str | None,
    policy: str,
    gains: dict[str, int],
    representative: bool,
    evidence: Evidence | None = None,
    vetoed: bool = False,
) -> str:
    shown = ", ".join(f"{p} {gains[p]:+d}" for p in POLICIES if p in gains)
    measured = (
        f": {evidence.verified_precision:.0%} of the verified rows the model flags have a wrong "
        "label"
        if evidence is not None and evidence.verified_precision is not None
        else ""
    )
    if chosen is not None:
        return (
            f"the {chosen} policy fixes the most verified labels, more than it breaks beyond "
            f"chance (labels fixed minus broken, cross-fitted: {shown})"
        )
    shown = f"the verified rows show no policy fixing more labels than it breaks beyond chance ({shown})"
    if policy == RULES and not representative:
        return (
            f"{shown}; they are the doubtful rows, not a sample of the table, so the data's own "
            f"evidence decides, and it supports the rules{measured}"
        )
    if policy == RULES:
        return f"{shown}; the data's own evidence supports the rules{measured}"
    if vetoed:
        return (
            f"labels kept: {shown}; the verified rows' flags would allow the rules, but "
            "they break more verified labels than they fix"
        )
    return f"labels kept: {shown}"


def measure(
    labels: np.ndarray, truth: np.ndarray, refined: np.ndarray, classes: list[Any]
) -> dict[str, Any]:
    """Accuracies on verified rows with 95% Wilson intervals: ``labels`` ``(V,)`` given,
    ``truth`` ``(V,)`` verified, ``refined`` ``(V,)`` the labels refine would have set (cross-
    fitted; -1 = excluded, counted wrong). Also the precision of corrections (a changed label
    that is right) and of exclusions (an excluded label that was wrong), and per class (by
    verified class) where a class has ``MIN_CLASS_ROWS`` rows."""
    corrected = (refined >= 0) & (refined != labels)
    excluded = refined < 0
    result: dict[str, Any] = {
        "rows": int(len(labels)),
        "given_accuracy": _interval(int((labels == truth).sum()), len(labels)),
        "refined_accuracy": _interval(int((refined == truth).sum()), len(labels)),
        "corrections": {
            "rows": int(corrected.sum()),
            "precision": _interval(
                int((refined[corrected] == truth[corrected]).sum()), int(corrected.sum())
            ),
        },
        "exclusions": {
            "rows": int(excluded.sum()),
            "precision": _interval(
                int((labels[excluded] != truth[excluded]).sum()), int(excluded.sum())
            ),
        },
        "per_class": [],
    }
    for index, value in enumerate(classes):
        mine = truth == index
        if mine.sum() >= MIN_CLASS_ROWS:
            result["per_class"].append(
                {
                    "class": value,
                    "rows": int(mine.sum()),
                    "given_accuracy": _interval(
                        int((labels[mine] == index).sum()), int(mine.sum())
                    ),
                    "refined_accuracy": _interval(
                        int((refined[mine] == index).sum()), int(mine.sum())
                    ),
                }
            )
    return result


def _interval(successes: int, n: int) -> dict[str, float | int | None]:
    """A share with its 95% Wilson score interval (sound for small ``n`` and shares near 0 or 1)."""
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {
        "value": round(p, 6),
        "low": round(max(0.0, centre - half), 6),
        "high": round(min(1.0, centre + half), 6),
        "n": n,
    }


def truth_ece(proba: np.ndarray, truth: np.ndarray) -> float | None:
    """Expected calibration error of ``proba`` ``(V, K)`` against verified labels ``(V,)``."""
    return expected_calibration_error(proba, truth) if len(truth) else None


def _log(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, np.float64), _EPS, 1.0))
