"""How far to trust the model's judgement of the labels: each round's policy, chosen on verified
rows or, without them, on the data's own evidence (``refine.judge.evidence``), and the labels,
flags and record it gives. The probabilities of the true class it works with are
``refine.judge.posterior``'s.

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
from scipy.stats import binom

from refine.config import RunConfig
from refine.io.decisions import Decisions
from refine.judge.detect import class_calibrated_quality
from refine.judge.evidence import (
    MIN_FLAG_PRECISION,
    Evidence,
    measure,
    noise_evidence,
    stratum_weights,
    truth_ece,
    verified_flag_reading,
)
from refine.judge.posterior import (
    Posterior,
    fit_posterior,
    given_label_posterior,
    truth_temperature,
)
from refine.judge.relabel import decide, decide_by_posterior, keep_given, with_verified
from refine.learn.calibrate import apply_temperature, fit_temperature_to

KEEP, RULES, POSTERIOR = "keep", "rules", "posterior"
# Among policies that fix as many verified labels, the first listed wins: change least.
POLICIES = (KEEP, POSTERIOR, RULES)
# Verified rows with a given label that the posterior is fitted on, at the least.
MIN_POSTERIOR_ROWS = 20
# A policy is chosen on verified rows only when the labels it fixes outnumber those it breaks
# beyond chance: a one-sided sign test at this level. Fewer fixes than that show nothing, and a
# policy chosen on them can go on to break the other rows (reports/trust.md).
SIGNIFICANCE = 0.05
VERIFIED_FOLDS = 5


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
