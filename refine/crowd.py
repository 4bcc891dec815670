"""Votes in a run: the majority vote that refine starts from, the annotator model each round
weighs the votes with, and the annotators' estimates (``annotators.parquet``).

``pipeline._run`` calls ``with_votes`` before the rounds, hands a ``VotesRound`` to them (each
round, after calibration, it re-estimates the annotators from the votes and the round's model
and, where held-out votes choose that model, makes its posterior the round's targets), and
``annotators_table_of`` after the last.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from refine.config import RunConfig
from refine.io.decisions import CORRECTED, GIVEN, Decisions
from refine.io.votes import VOTE_LABEL, Votes, read_votes
from refine.judge.annotators import (
    annotator_accuracy,
    annotators_table,
    choose_prior,
    fit_annotators,
    majority_vote,
    tempered,
)
from refine.judge.trust import Verdict
from refine.progress import Progress
from refine.rounds import RoundsResult

# The round's policy where the annotator model's posterior decided its labels.
ANNOTATORS = "annotators"


def with_votes(
    table: pa.Table, config: RunConfig, progress: Progress
) -> tuple[pa.Table, RunConfig, Votes | None]:
    """With votes, the table with their majority vote appended as ``label_vote`` (ties drawn
    with the seed), and the configuration that refines it, the votes (and a label column the
    classes came from) kept out of the features."""
    votes = read_votes(table, config.votes, config.annotations, config.key, config.label)
    if votes is None:
        return table, config, None
    majority = majority_vote(votes.votes, len(votes.classes), config.seed)
    table = table.append_column(
        VOTE_LABEL, votes.classes.take(pa.array(majority, mask=majority < 0))
    )
    unvoted = int((majority < 0).sum())
    if unvoted:
        progress.note(f"{unvoted:,} row{'s have' if unvoted != 1 else ' has'} no vote: unlabelled")
    kept_out = [
        c for c in (config.votes, config.label) if c is not None and c in table.column_names
    ]
    ignore = config.ignore + tuple(
        c for c in kept_out if c != VOTE_LABEL and c not in config.ignore
    )
    return table, dataclasses.replace(config, label=VOTE_LABEL, ignore=ignore), votes


def votes_prior(proba: np.ndarray, verified: np.ndarray) -> np.ndarray:
    """Each row's prior over the true class ``(N, K)`` before its votes: a round's calibrated
    out-of-fold probabilities; a verified row's label is certain."""
    prior = proba.astype(np.float64, copy=True)
    rows = np.flatnonzero(verified >= 0)
    prior[rows] = 0.0
    prior[rows, verified[rows]] = 1.0
    return prior


class VotesRound:
    """A round's stage with votes (``Rounds``' ``consensus``): the annotators re-estimated from
    the votes ``(N, A)`` and the round's probabilities of the true class, and, where
    held-out votes choose the model (``choose_prior``) over the majority vote, the posterior of
    the true class given the votes and the features as the round's labels and soft targets.

    ``labels`` ``(N,)``: the majority vote the judge refines (-1 = no vote); ``verified``
    ``(N,)``: verified classes (-1 = none), certain in the model and never changed."""

    def __init__(
        self, votes: np.ndarray, labels: np.ndarray, verified: np.ndarray, seed: int
    ) -> None:
        self.votes, self.labels, self.verified, self.seed = votes, labels, verified, seed

    def __call__(self, verdict: Verdict) -> tuple[Verdict, dict[str, Any]]:
        """The round's verdict, its labels replaced by the posterior's where the model was
        chosen, and the round's record of the choice and the annotators' estimated accuracy.

        The prior is the judge's probabilities of the true class (``verdict.proba``), not the
        round's probabilities calibrated to the majority vote: those are flatter than the
        truth, and from the second round on let noisy votes overrule a right model
        (reports/crowd-rounds.md)."""
        prior = votes_prior(verdict.proba, self.verified)
        choice = choose_prior(self.votes, prior, self.seed)
        temper = 1.0 if choice.temper is None else choice.temper
        model = fit_annotators(self.votes, tempered(prior, temper))
        _, accuracy, _, _ = annotator_accuracy(self.votes, model.posterior)
        record = {
            "given": VOTE_LABEL if choice.temper is None else ANNOTATORS,
            "prior_temper": choice.temper,
            "heldout_log_likelihood": {k: round(v, 4) for k, v in choice.scores.items()},
            "accuracy": [None if np.isnan(a) else round(float(a), 4) for a in accuracy],
        }
        if choice.temper is None:
            return verdict, record
        return self._posterior_verdict(verdict, model.posterior, choice.temper), record

    def _posterior_verdict(self, verdict: Verdict, posterior: np.ndarray, temper: float) -> Verdict:
        """Every voted, unverified row takes the posterior's class and its soft target; its
        given label (the majority) is flagged where the posterior disagrees."""
        labels, old = self.labels, verdict.decisions
        rows = np.flatnonzero((self.votes >= 0).any(1) & (self.verified < 0) & (labels >= 0))
        found = posterior[rows].argmax(1)
        refined, source = old.refined.copy(), old.source.copy()
        weight, soft = old.weight.copy(), old.soft.copy()
        # The weight is the chance the label is right, as for a correction (docs/output.md).
        refined[rows], soft[rows] = found, posterior[rows]
        weight[rows] = posterior[rows, found]
        source[rows] = np.where(found == labels[rows], GIVEN, CORRECTED)
        is_issue, quality = verdict.is_issue.copy(), verdict.quality.copy()
        is_issue[rows] = found != labels[rows]
        quality[rows] = posterior[rows, labels[rows]]
        moved = int(is_issue[rows].sum())
        reason = (
            f"held-out votes chose the annotator model (the model's probabilities ^{temper:g}) "
            f"over the majority vote: its posterior moved {moved:,} "
            f"label{'s' if moved != 1 else ''} off {VOTE_LABEL}"
        )
        return dataclasses.replace(
            verdict,
            decisions=Decisions(refined, source, weight, soft),
            is_issue=is_issue,
            quality=quality,
            record={**verdict.record, "policy": ANNOTATORS, "reason": reason},
        )


def describe_choice(state: RoundsResult) -> dict[str, Any]:
    """run.json's record of the last round's held-out choice between the majority vote and
    the annotator model."""
    record = state.rounds[-1]["annotators"]
    return {k: record[k] for k in ("given", "prior_temper", "heldout_log_likelihood")}


def annotators_table_of(votes: Votes, state: RoundsResult, verified: np.ndarray) -> pa.Table:
    """``annotators.parquet``: the last round's annotator model (its calibrated out-of-fold
    probabilities as each row's prior, raised to the chosen power, or whole where the majority
    was kept; a verified row's label is certain), scored against the refined labels."""
    temper = state.rounds[-1]["annotators"]["prior_temper"]
    prior = tempered(votes_prior(state.proba, verified), 1.0 if temper is None else temper)
    model = fit_annotators(votes.votes, prior)
    return annotators_table(votes.annotators, votes.votes, model, state.decisions.refined)


def describe_annotators(table: pa.Table) -> dict[str, Any]:
    """run.json's summary of ``annotators.parquet``."""
    rows = table.to_pylist()
    scored = sorted((r for r in rows if r["accuracy"] is not None), key=lambda r: r["accuracy"])
    return {
        "annotators": len(rows),
        "votes": int(sum(r["labels_given"] for r in rows)),
        "mean_accuracy": (
            round(float(np.mean([r["accuracy"] for r in scored])), 4) if scored else None
        ),
        "least_accurate": [
            {"annotator": r["annotator"], "accuracy": round(r["accuracy"], 4)} for r in scored[:3]
        ],
    }
