"""Generated crowds for the bench: a recipe's ``crowd`` noise model checked, its annotators and
votes drawn (``refine.bench.noise``'s generators), and the crowd's truth (each annotator's
accuracy and confusion matrix) kept in the train table's metadata to score refine's estimates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from refine.bench.noise import crowd_annotators, crowd_votes, crowd_workloads, item_hardness

# A crowd recipe's train table: the votes as a list column, one entry per annotator (-1 = no
# vote), and under this schema metadata key the crowd's truth, as JSON (``with_crowd``).
VOTES_COLUMN = "votes"
CROWD_KEY = b"refine.crowd"


def check_crowd(noise: dict[str, Any], unlabelled: float, fail: Any) -> None:
    """A crowd noise model's keys: ``annotators`` (an integer >= 1), ``votes`` and
    ``accuracy`` (``[low, high]`` ranges), ``concentration`` (> 0), ``one_direction`` ([0, 1])."""

    def pair(key: str, kind: type | tuple[type, ...]) -> bool:
        value = noise.get(key, [0, 1])
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
            and value[0] <= value[1]
        )

    annotators = noise["annotators"]
    if isinstance(annotators, bool) or not isinstance(annotators, int) or annotators < 1:
        fail(f"crowd 'annotators' must be an integer of at least 1, got {annotators!r}")
    if not pair("votes", int) or not 1 <= noise["votes"][0] <= noise["votes"][1] <= annotators:
        fail(f"crowd 'votes' must be [low, high] votes per item within 1..{annotators}")
    if not pair("accuracy", (int, float)) or not 0 <= noise.get("accuracy", [0, 1])[0]:
        fail("crowd 'accuracy' must be [low, high] within [0, 1]")
    if not 0 < noise.get("concentration", 1) or not 0 <= noise.get("one_direction", 0) <= 1:
        fail("crowd 'concentration' must be above 0 and 'one_direction' a share in [0, 1]")
    shares = [noise.get(k, 0) for k in ("spammers", "one_class", "difficulty")]
    if not all(_is_number(v) and 0 <= v <= 1 for v in shares) or shares[0] + shares[1] > 1:
        fail(
            "crowd 'spammers' and 'one_class' must be shares summing to at most 1, and "
            "'difficulty' a number in [0, 1]"
        )
    if not _is_number(noise.get("workload", 0)) or noise.get("workload", 0) < 0:
        fail("crowd 'workload' must be a number >= 0 (the lognormal sigma of the workloads)")
    if unlabelled:
        fail("a crowd's items without a majority are its unlabelled rows: set 'unlabelled' to 0")


def draw_crowd(
    noise: dict[str, Any],
    truth: np.ndarray,
    n_classes: int,
    seed: int,
    clean_proba: Callable[[], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A crowd noise model's votes ``(N, A)`` on the train rows of true labels ``truth``,
    confusions ``(A, K, K)``, and with ``difficulty`` each annotator's expected accuracy on the
    items it voted ``(A,)`` (item hardness from ``clean_proba()``, a clean model's out-of-fold
    probabilities ``(N, K)``, asked for only then); annotators, workloads and votes draw from
    independent streams of ``seed``."""
    annotator_seed, vote_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    confusion = crowd_annotators(
        n_classes,
        noise["annotators"],
        annotator_seed,
        accuracy=tuple(noise.get("accuracy", (0.35, 0.9))),
        concentration=noise.get("concentration", 0.5),
        one_direction=noise.get("one_direction", 0.0),
        spammers=noise.get("spammers", 0.0),
        one_class=noise.get("one_class", 0.0),
    )
    per_item = tuple(noise["votes"])
    difficulty = noise.get("difficulty", 0.0)
    if not difficulty and not noise.get("workload"):
        return crowd_votes(truth, confusion, per_item, vote_seed), confusion, None
    workload_seed = int(np.random.SeedSequence(seed).generate_state(3)[2])
    workload = crowd_workloads(noise["annotators"], noise.get("workload", 0.0), workload_seed)
    hardness, confusable = item_hardness(clean_proba(), truth)
    votes = crowd_votes(
        truth,
        confusion,
        per_item,
        vote_seed,
        workload=workload,
        hardness=hardness,
        confusable=confusable,
        difficulty=difficulty,
    )
    # The share of right votes each annotator is expected to give on the items it voted.
    right = confusion[:, truth, truth].T * (1 - difficulty * hardness[:, None])  # (N, A)
    voted = votes >= 0
    attentive = ~np.all(np.isclose(confusion, confusion[:, :1]), axis=(1, 2))
    right = np.where(attentive[None], right, confusion[:, truth, truth].T)
    accuracy = (right * voted).sum(0) / np.maximum(voted.sum(0), 1)
    return votes, confusion, np.where(voted.any(0), accuracy, np.nan)


def with_crowd(
    train: pa.Table, votes: np.ndarray, confusion: np.ndarray, accuracy: np.ndarray | None
) -> pa.Table:
    """``train`` with the ``votes`` column and the crowd's truth in its metadata: per
    annotator (in the column's order) its true accuracy (``accuracy`` ``(A,)``, else its
    confusion's mean diagonal) and confusion matrix (before item difficulty)."""
    column = pa.array(list(votes), type=pa.list_(pa.int64()))
    if accuracy is None:
        accuracy = np.array([np.diagonal(c).mean() for c in confusion])
    truth = {
        "accuracy": [None if np.isnan(a) else float(a) for a in accuracy],
        "confusion": confusion.tolist(),
    }
    table = train.append_column(pa.field(VOTES_COLUMN, column.type), column)
    metadata = {**(table.schema.metadata or {}), CROWD_KEY: json.dumps(truth).encode()}
    return table.replace_schema_metadata(metadata)


def crowd_truth(train: pa.Table) -> dict[str, Any] | None:
    """A crowd recipe's truth from its train table's metadata (``accuracy`` ``(A,)``,
    ``confusion`` ``(A, K, K)`` as lists), or None for other recipes."""
    raw = (train.schema.metadata or {}).get(CROWD_KEY)
    return None if raw is None else json.loads(raw)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
