"""Votes in a run: the majority vote that refine starts from, the annotator model's consensus
where held-out votes choose it, and the annotators' estimates (``annotators.parquet``).

``pipeline._run`` calls these around the rounds: ``with_votes`` before them, ``with_consensus``
when ``choose_prior`` picks the model, ``annotators_table_of`` after the last.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from refine.config import RunConfig
from refine.io.read import LabelledTable, encode_labels
from refine.io.verify import verified_labels
from refine.io.votes import CONSENSUS_LABEL, VOTE_LABEL, Votes, read_votes
from refine.judge.annotators import (
    PriorChoice,
    annotators_table,
    fit_annotators,
    majority_vote,
    tempered,
)
from refine.progress import Progress
from refine.rounds import RoundsResult


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


def votes_prior(state: RoundsResult, verified: np.ndarray) -> np.ndarray:
    """Each row's prior over the true class ``(N, K)`` before its votes: the last round's
    calibrated out-of-fold probabilities; a verified row's label is certain."""
    prior = state.proba.astype(np.float64, copy=True)
    rows = np.flatnonzero(verified >= 0)
    prior[rows] = 0.0
    prior[rows, verified[rows]] = 1.0
    return prior


def with_consensus(
    labelled_table: LabelledTable,
    config: RunConfig,
    votes: Votes,
    state: RoundsResult,
    verified: np.ndarray,
    temper: float,
    progress: Progress,
) -> tuple[LabelledTable, RunConfig, np.ndarray]:
    """The table with the annotator model's consensus appended as ``label_consensus`` (the
    majority vote's model prior tempered to p^``temper``; rows without a vote unlabelled), and
    the configuration and verified labels that refine it, ``label_vote`` kept as written."""
    model = fit_annotators(votes.votes, tempered(votes_prior(state, verified), temper))
    found = np.where((votes.votes >= 0).any(1), model.posterior.argmax(1), -1)
    table = labelled_table.table.append_column(
        CONSENSUS_LABEL, votes.classes.take(pa.array(found, mask=found < 0))
    )
    moved = int((found != majority_vote(votes.votes, len(votes.classes), config.seed)).sum())
    progress.note(
        f"held-out votes chose the annotator model (model prior ^{temper:g}) over the majority "
        f"vote: refining {CONSENSUS_LABEL}, which differs from {VOTE_LABEL} on "
        f"{moved:,} row{'s' if moved != 1 else ''}"
    )
    config = dataclasses.replace(
        config, label=CONSENSUS_LABEL, ignore=config.ignore + (VOTE_LABEL,)
    )
    consensus = encode_labels(table, CONSENSUS_LABEL, config.folds)
    verified = verified_labels(consensus, config.verified, config.verified_file, config.key)
    return consensus, config, verified


def describe_choice(choice: PriorChoice | None) -> dict[str, Any]:
    """run.json's record of the held-out choice between the majority vote and the model."""
    assert choice is not None
    return {
        "given": VOTE_LABEL if choice.temper is None else CONSENSUS_LABEL,
        "prior_temper": choice.temper,
        "heldout_log_likelihood": {k: round(v, 4) for k, v in choice.scores.items()},
    }


def annotators_table_of(votes: Votes, state: RoundsResult, verified: np.ndarray) -> pa.Table:
    """``annotators.parquet``: the annotator model fitted with the last round's calibrated
    out-of-fold probabilities as each row's prior (a verified row's label is certain), scored
    against the refined labels."""
    model = fit_annotators(votes.votes, votes_prior(state, verified))
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
