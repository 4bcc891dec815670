"""One round's stages, and what carries from round to round.

``pipeline.refine_rounds`` runs the loop: each round trains (or takes the update's teacher),
calibrates, detects, decides and records. ``Rounds`` holds what the loop carries (the
targets the next round trains on, the one-way noise mask, the synthetic rows) and what it
does around the stages: resuming from a checkpoint, replayed and synthetic rows, the teacher
round of ``refine update``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from refine.config import RunConfig
from refine.encode.features import FeatureEncoder
from refine.io.decisions import CORRECTED, EXCLUDED, GIVEN, PSEUDO, Decisions
from refine.io.read import LabelledTable
from refine.judge.detect import flag_issues, merge_directions, noise_directions
from refine.judge.relabel import teacher_is_reliable
from refine.judge.trust import KEEP, Judge, Verdict
from refine.learn.calibrate import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from refine.learn.checkpoint import resume_rounds, round_record
from refine.learn.crossfit import CrossFit, FoldRunner, cross_fit, make_folds, restore_cross_fit
from refine.learn.model import resolve_device
from refine.progress import Progress, logger


@dataclass
class Extra:
    """Training rows beside the judged ones: they train every round with fixed targets, are
    never judged, and never appear in ``refined.parquet`` (replayed rows of an earlier run,
    synthetic rows). ``labels`` ``(M,)`` is each row's class, used to deal them to folds;
    ``folds`` ``(M,)`` overrides that when given."""

    X: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    labels: np.ndarray
    folds: np.ndarray | None = None
    synthetic: Any = None  # the augment.Synthetic these rows came from, if any


@dataclass
class Teacher:
    """Round 1's probabilities ``(N, K)`` and agreement ``(N,)`` for the judged rows, from a
    model that never saw them (``refine update``'s previous run), instead of a cross-fit; and
    that run's calibration temperature and reliability, for a batch whose own labels cannot
    measure them (none, or a single class)."""

    proba: np.ndarray
    agreement: np.ndarray
    temperature: float = 1.0
    reliable: bool = True


@dataclass
class RoundsResult:
    """The last round's decisions and arrays (``(N,)`` or ``(N, K)``), its fold models, the
    round rows, and the last round's calibration and trust records."""

    decisions: Decisions
    proba: np.ndarray
    agreement: np.ndarray
    is_issue: np.ndarray
    quality: np.ndarray
    crossfit: CrossFit
    rounds: list[dict[str, Any]]
    ece_before: float
    ece_after: float
    temperature: float
    reliable: bool
    device: str
    trust: dict[str, Any]  # the last round's policy, its reason and the verified measurements
    synthetic: Any = None
    reliability: dict[str, Any] | None = None  # the last round's bins before/after calibration


# A finished round's values a checkpoint keeps, beside its decisions, arrays and rows.
ROUND_METRICS = ("ece_before", "ece_after", "temperature", "reliable", "reliability", "trust")
TIMED_STAGES = ("train", "predict", "calibrate", "detect", "refine")

# After a round's decisions: (decisions, is_issue, quality, folds) -> synthetic rows.
Augment = Callable[[Decisions, np.ndarray, np.ndarray, np.ndarray], Extra]

# With votes, after the judge: verdict -> the verdict the votes' annotator model leaves, and
# the round's record of it (crowd.VotesRound).
Consensus = Callable[[Verdict], tuple[Verdict, dict[str, Any]]]

# Rows that may parent synthetic rows: given labels the run did not flag and rates at least
# this likely to be right (calibrated probability of the given label).
TRUSTED_QUALITY = 0.5


def augmenter(data: LabelledTable, encoder: FeatureEncoder, config: RunConfig) -> Augment:
    """Synthetic rows from each round's trusted rows, for the next round to train on."""
    from refine.learn.augment import synthesize

    method = config.augment
    assert method is not None, "the pipeline builds an augmenter only for --augment"

    def augment(
        decisions: Decisions, is_issue: np.ndarray, quality: np.ndarray, folds: np.ndarray
    ) -> Extra:
        trusted = (decisions.source == GIVEN) & ~is_issue & (quality >= TRUSTED_QUALITY)
        synthetic = synthesize(
            data.table,
            encoder,
            data.label,
            data.classes,
            decisions.refined,
            trusted,
            folds,
            method,
            config.augment_ratio,
            config.seed,
        )
        return Extra(
            X=encoder.transform(synthetic.table),
            targets=synthetic.soft,
            weights=np.ones(len(synthetic), np.float32),
            labels=synthetic.labels,
            folds=synthetic.folds,
            synthetic=synthetic,
        )

    return augment


class Rounds:
    """The state the round loop carries, and each stage of a round over it.

    ``data``'s rows are the judged rows; they train with ``replay`` rows and each round's
    synthetic rows (from ``augment``). ``teacher`` stands in for round 1's cross-fit (refine
    update). ``runner`` trains the folds; its checkpoint, if any, records each finished round.
    ``verified`` ``(N,)``: each row's verified class (-1 = none); verified rows train with that
    label from the first round on. ``consensus``, with votes: the annotator model that weighs
    them with each round's probabilities.
    """

    def __init__(
        self,
        data: LabelledTable,
        X: np.ndarray,
        config: RunConfig,
        progress: Progress,
        timings: dict[str, float],
        teacher: Teacher | None = None,
        replay: Extra | None = None,
        augment: Augment | None = None,
        image_blocks: tuple[tuple[int, int, int, int], ...] = (),
        runner: FoldRunner | None = None,
        verified: np.ndarray | None = None,
        consensus: Consensus | None = None,
    ) -> None:
        self.data, self.X, self.config, self.progress = data, X, config, progress
        self.teacher, self.replay, self.augment = teacher, replay, augment
        self.consensus = consensus
        self.annotators: dict[str, Any] | None = None
        self.image_blocks, self.runner = image_blocks, runner
        self.timings = timings
        for stage in TIMED_STAGES:
            timings.setdefault(stage, 0.0)
        labels = data.labels
        n = len(labels)
        self.labelled = labels >= 0
        self.given = labels[self.labelled]
        self.raw_is_ours = False  # whether the round's raw probabilities are its cross-fit's
        self.verified = np.full(n, -1, np.int64) if verified is None else verified
        self.judge = Judge(labels, self.verified, config, data.class_values())
        replay_labels = replay.labels if replay is not None else np.zeros(0, np.int64)
        all_folds = make_folds(np.concatenate([labels, replay_labels]), config.folds, config.seed)
        self.folds, self.replay_folds = all_folds[:n], all_folds[n:]
        self.device = str(resolve_device(config.model.device))
        self.total = config.rounds + (teacher is not None)  # the teacher's round trains nothing
        self.checkpoint = runner.checkpoint if runner is not None and teacher is None else None

        trained = np.where(self.verified >= 0, self.verified, labels)  # what rows train on first
        self.targets = np.zeros((n, data.n_classes), np.float32)
        self.targets[np.flatnonzero(trained >= 0), trained[trained >= 0]] = 1.0
        self.weights = (trained >= 0).astype(np.float32)
        self.previous = trained.copy()
        # The one-way noise check's (K, K) mask over rounds, and the first round's reading
        # (see merge_directions; measured in reports/trust/one-way-merge.md).
        self.directions: np.ndarray | None = None
        self.first_directions: np.ndarray | None = None
        self.rounds: list[dict[str, Any]] = []
        self.synthetic: Extra | None = None
        self.fitted: CrossFit | None = None
        self.metrics: dict[str, Any] = dict.fromkeys(ROUND_METRICS)
        self.arrays: dict[str, np.ndarray] = {}
        self.decisions: Decisions | None = None

    def resume(self) -> int:
        """The first round to run: 1, or the one after the last the checkpoint holds, whose
        state this takes on."""
        if self.checkpoint is None:
            return 1
        checkpoint, config = self.checkpoint, self.config
        resumed = resume_rounds(
            checkpoint,
            len(self.data.labels),
            self.total,
            config.min_changes,
            lambda stage: restore_cross_fit(
                checkpoint,
                stage,
                config.folds,
                self.X.shape[1],
                self.data.n_classes,
                config.model,
                self.image_blocks,
            ),
        )
        if resumed is None:
            return 1
        self.decisions, self.rounds, self.fitted = (
            resumed.decisions,
            resumed.rounds,
            resumed.fitted,
        )
        self.arrays = {k: resumed.arrays[k] for k in ("proba", "agreement", "is_issue", "quality")}
        self.directions = resumed.arrays.get("directions")
        self.first_directions = resumed.arrays.get("first_directions", self.directions)
        self.metrics = {key: resumed.metrics[key] for key in ROUND_METRICS}
        self.judge.restore(self.metrics["trust"])
        self.timings.update(resumed.metrics["timings"])
        self._carry(resumed.decisions, self.arrays["is_issue"], self.arrays["quality"])
        return resumed.next_round

    def is_teacher_round(self, round_index: int) -> bool:
        return round_index == 1 and self.teacher is not None

    def train(self, round_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-fold probabilities ``(N, K)`` and ensemble agreement ``(N,)`` of the judged
        rows: a cross-fit on this round's targets, replay and synthetic rows, or the teacher's."""
        if self.is_teacher_round(round_index):
            assert self.teacher is not None
            self.raw_is_ours = False
            return self.teacher.proba, self.teacher.agreement
        # The last round's arrays and fold models are replaced at the end of this one: let
        # them go now rather than hold two rounds' at once.
        self.arrays, self.fitted, self.raw_is_ours = {}, None, True
        n = len(self.data.labels)
        extras = [e for e in (self.replay, self.synthetic) if e is not None and len(e.X)]
        extra_folds = [self.replay_folds if e is self.replay else e.folds for e in extras]

        def joined(own: np.ndarray, theirs: list[Any]) -> np.ndarray:
            return np.concatenate([own, *theirs]) if extras else own  # no copy without extras

        self.fitted = cross_fit(
            joined(self.X, [e.X for e in extras]),
            joined(self.targets, [e.targets for e in extras]),
            joined(self.weights, [e.weights for e in extras]),
            joined(self.folds, extra_folds),
            self.config.model,
            self.config.seeds,
            self.config.seed,
            self.progress,
            # Rows with neither a label nor a target train nothing; their folds pool.
            pooled=joined(
                ~self.labelled & (self.weights == 0), [np.zeros(len(e.X), bool) for e in extras]
            ),
            image_blocks=self.image_blocks,
            runner=self.runner,
            stage=f"round-{round_index}",
        )
        self.timings["train"] += self.fitted.train_seconds
        self.timings["predict"] += self.fitted.predict_seconds
        return self.fitted.proba[:n], self.fitted.agreement[:n]

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` scaled by a temperature fitted against the given labels (a batch with none
        keeps the earlier run's), with the round's calibration errors in ``metrics``. Scaled in
        place when this round's cross-fit made ``raw``: nothing reads it afterwards."""
        started = time.perf_counter()
        labelled, given, metrics = self.labelled, self.given, self.metrics
        metrics.update(ece_before=None, ece_after=None, reliability=None)
        self.oof_accuracy = None
        before = None
        if labelled.any():
            seen = self._labelled(raw)
            metrics["temperature"] = fit_temperature(seen, given)
            metrics["ece_before"] = expected_calibration_error(seen, given)
            before = reliability_bins(seen, given)
            del seen
        else:
            metrics["temperature"] = self.teacher.temperature if self.teacher is not None else 1.0
        proba = apply_temperature(raw, metrics["temperature"], raw if self.raw_is_ours else None)
        if labelled.any():
            seen = self._labelled(proba)
            metrics["ece_after"] = expected_calibration_error(seen, given)
            self.oof_accuracy = float((seen.argmax(1) == given).mean())
            metrics["reliability"] = {"before": before, "after": reliability_bins(seen, given)}
        self.timings["calibrate"] += time.perf_counter() - started
        return proba

    def _labelled(self, values: np.ndarray) -> np.ndarray:
        """The labelled rows of ``values`` ``(N, ...)``: ``values`` itself when every row is
        labelled, not a copy."""
        return values if len(self.given) == len(self.labelled) else values[self.labelled]

    def detect(self, proba: np.ndarray, agreement: np.ndarray, round_index: int) -> np.ndarray:
        """``is_issue`` ``(N,)``; unlabelled rows are never flagged. The judge scores label
        quality, on the probabilities it calibrates to the true class."""
        started = time.perf_counter()
        config, labelled, given = self.config, self.labelled, self.given
        if config.one_way_noise and not self.is_teacher_round(round_index):
            seen = noise_directions(given, self._labelled(proba))
            self.directions = merge_directions(self.directions, self.first_directions, seen)
            if self.first_directions is None:
                self.first_directions = self.directions
        n = len(self.data.labels)
        is_issue = np.zeros(n, bool)
        is_issue[labelled] = flag_issues(
            given,
            self._labelled(proba),
            self._labelled(agreement),
            config.filter_by,
            config.relabel_threshold if config.flag_confident else None,
            self.directions if self.directions is not None else config.one_way_noise,
        )
        self.timings["detect"] += time.perf_counter() - started
        return is_issue

    def decide(
        self,
        proba: np.ndarray,
        agreement: np.ndarray,
        is_issue: np.ndarray,
        round_index: int,
    ) -> Verdict:
        """The trust judge's verdict on this round."""
        started = time.perf_counter()
        if len(np.unique(self.given)) >= 2 or self.teacher is None:
            reliable = teacher_is_reliable(self.given, self._labelled(proba))
        else:  # agreement beyond chance needs two classes; trust the earlier run's verdict
            reliable = self.teacher.reliable
        self.metrics["reliable"] = reliable
        verdict = self.judge(
            proba, agreement, is_issue, reliable, self.is_teacher_round(round_index)
        )
        self.timings["refine"] += time.perf_counter() - started
        return verdict

    def weigh_votes(self, verdict: Verdict) -> Verdict:
        """With votes, the verdict the annotator model leaves (re-estimated on this round's
        probabilities of the true class); the round's synthetic rows for the next."""
        started = time.perf_counter()
        if self.consensus is not None:
            verdict, self.annotators = self.consensus(verdict)
        self.metrics["trust"] = verdict.record
        if self.augment is not None:
            self.synthetic = self.augment(
                verdict.decisions, verdict.is_issue, verdict.quality, self.folds
            )
        self.timings["refine"] += time.perf_counter() - started
        return verdict

    def record(self, round_index: int, verdict: Verdict, agreement: np.ndarray, started: float):
        """The round's row, its checkpoint, and the targets the next round trains on."""
        decisions = verdict.decisions
        changed = int((decisions.refined != self.previous).sum())
        self.rounds.append(
            {
                "round": round_index,
                "flagged": int(verdict.is_issue.sum()),
                "corrected": decisions.count(CORRECTED),
                "excluded": decisions.count(EXCLUDED),
                "pseudo_labelled": decisions.count(PSEUDO),
                "changed": changed,
                "oof_accuracy": self.oof_accuracy,
                "ece_before": self.metrics["ece_before"],
                "ece_after": self.metrics["ece_after"],
                "temperature": self.metrics["temperature"],
                "reliable": self.metrics["reliable"],
                "policy": verdict.record["policy"],
                "seconds": time.perf_counter() - started,
            }
        )
        if self.annotators is not None:
            accuracy = [a for a in self.annotators["accuracy"] if a is not None]
            self.rounds[-1].update(
                votes_temper=self.annotators["prior_temper"],
                annotator_accuracy=round(float(np.mean(accuracy)), 4) if accuracy else None,
                annotators=self.annotators,
            )
        logger.info(self._line(self.rounds[-1], self.is_teacher_round(round_index)))
        self.decisions = decisions
        self.arrays = dict(
            proba=verdict.proba,
            agreement=agreement,
            is_issue=verdict.is_issue,
            quality=verdict.quality,
        )
        if self.checkpoint is not None:
            directions: dict[str, np.ndarray] = {}
            if self.directions is not None:
                # detect() and a resume set the first round's reading with the first directions.
                assert self.first_directions is not None
                directions = {
                    "directions": self.directions,
                    "first_directions": self.first_directions,
                }
            self.checkpoint.save_round(
                round_index,
                round_record(
                    decisions,
                    self.arrays | directions,
                    self.rounds,
                    {**self.metrics, "timings": self.timings},
                ),
            )
        self.previous = decisions.refined
        self.targets, self.weights = decisions.soft, decisions.weight

    @staticmethod
    def _line(row: dict[str, Any], teacher: bool) -> str:
        """``round 2: 41 flagged, 30 corrected, ...``, for the ``refine`` logger."""
        accuracy = row["oof_accuracy"]
        return (
            f"round {row['round']}{' (the earlier run judges the batch)' if teacher else ''}: "
            f"{row['flagged']:,} flagged, {row['corrected']:,} corrected, "
            f"{row['excluded']:,} excluded, {row['pseudo_labelled']:,} pseudo-labelled, "
            f"{row['changed']:,} labels changed, out-of-fold accuracy "
            f"{'n/a' if accuracy is None else f'{accuracy:.3f}'}, policy {row['policy']}"
        )

    def _carry(self, decisions: Decisions, is_issue: np.ndarray, quality: np.ndarray) -> None:
        """Take on a resumed round's decisions as the next round's targets."""
        self.previous, self.targets, self.weights = (
            decisions.refined,
            decisions.soft,
            decisions.weight,
        )
        if self.augment is not None:
            self.synthetic = self.augment(decisions, is_issue, quality, self.folds)

    def settled(self) -> bool:
        """A round that keeps every label (or changes fewer than ``min_changes``) would only
        retrain on the same targets."""
        last = self.rounds[-1]
        quiet = last["changed"] < self.config.min_changes or last["policy"] == KEEP
        return quiet and self.fitted is not None

    def result(self) -> RoundsResult:
        assert self.fitted is not None and self.decisions is not None, "a run trains a round"
        metrics = self.metrics
        return RoundsResult(
            self.decisions,
            self.arrays["proba"],
            self.arrays["agreement"],
            self.arrays["is_issue"],
            self.arrays["quality"],
            self.fitted,
            self.rounds,
            metrics["ece_before"],
            metrics["ece_after"],
            metrics["temperature"],
            metrics["reliable"],
            self.device,
            metrics["trust"],
            self.synthetic,
            metrics["reliability"],
        )
