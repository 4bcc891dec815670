"""Cross-fitting: out-of-fold predictions from K fold models, each an ensemble of members.

The folds are drawn once per run (stratified by the given label) and reused every round, so
a row's own label or target never trains a model that predicts that row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from refine.config import ModelConfig
from refine.errors import WorkerError
from refine.learn.model import MLPClassifier
from refine.learn.stream import FeatureFile
from refine.progress import NULL_PROGRESS, Progress

if TYPE_CHECKING:
    from refine.encode.embedding import Inference
    from refine.learn.checkpoint import Checkpoint

# Rows per piece when predicting from features on disk: a multiple of every batch size
# predict_member_proba uses, so the pieces give the same bytes as one call.
PREDICT_ROWS = 65536


def make_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index ``(N,)`` of every row: stratified by the label for labelled rows, and dealt
    evenly at random for unlabelled rows (``labels == -1``), so that a row that is pseudo-labelled
    later trains only the models that do not predict it. Drawing the unlabelled rows' folds from
    their own generator leaves the labelled rows' folds as they would be without them."""
    folds = np.full(len(labels), -1, dtype=np.int64)
    rows = np.flatnonzero(labels >= 0)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), labels[rows])):
        folds[rows[test]] = fold
    unlabelled = np.flatnonzero(labels < 0)
    rng = np.random.default_rng([seed, 1])
    folds[rng.permutation(unlabelled)] = np.arange(len(unlabelled)) % n_folds
    return folds


@dataclass
class CrossFit:
    """What one round of cross-fitting produced.

    ``proba`` ``(N, K)``: out-of-fold probabilities, or the mean of every fold model for the
    ``pooled`` rows (rows no model trains on, such as unlabelled rows). ``agreement`` ``(N,)``:
    share of ensemble members whose most likely class is the ensemble's. ``models``: the fold
    models, in fold order.
    """

    proba: np.ndarray
    agreement: np.ndarray
    models: list[list[MLPClassifier]]
    train_seconds: float
    predict_seconds: float
    epochs: list[int]


def cross_fit(
    X: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    folds: np.ndarray,
    model: ModelConfig,
    seeds: int,
    seed: int,
    progress: Progress = NULL_PROGRESS,
    pooled: np.ndarray | None = None,
    image_blocks: tuple[tuple[int, int, int, int], ...] = (),
    runner: FoldRunner | None = None,
    stage: str = "",
) -> CrossFit:
    """Train one ensemble per fold on the other folds' rows and predict the held-out fold.

    ``targets`` ``(N, K)`` are the (soft) training targets and ``weights`` ``(N,)`` the sample
    weights; rows with weight 0 (excluded, unlabelled) do not train. ``pooled`` ``(N,)`` marks
    rows that every fold model predicts, their probabilities averaged and their agreement
    counted over all members: it must only mark rows of weight 0, which no model trains on.
    ``image_blocks`` go to every ``MLPClassifier``. ``runner`` says where the folds train (this
    process, or worker processes) and which checkpoint records them, under ``stage``
    (``"round-2"``); folds the checkpoint already holds are loaded, not trained again.
    """
    n, k = targets.shape
    n_folds = int(folds.max()) + 1
    pooled = np.zeros(n, bool) if pooled is None else pooled
    if (weights[pooled] > 0).any():
        raise ValueError("pooled rows must have weight 0: a model that trains on a row predicts it")
    pool_rows = np.flatnonzero(pooled)
    runner = runner or FoldRunner()
    checkpoint = runner.checkpoint if stage else None
    options = _model_options(model, k, image_blocks)
    jobs = _fold_jobs(folds, weights, pooled, pool_rows, n_folds)
    task = progress.start("folds", "folds", total=n_folds * seeds)
    proba = np.zeros((n, k), np.float32)
    agreement = np.ones(n, np.float32)
    records = _saved_folds(jobs, checkpoint, stage, len(pool_rows), progress, task, seeds)
    for record in records.values():
        _take_held(record, jobs, proba, agreement)

    def finished(record: dict[str, Any]) -> None:
        records[record["fold"]] = record
        if checkpoint is not None:
            checkpoint.save_fold(stage, record["fold"], record)
        _take_held(record, jobs, proba, agreement)
        progress.advance(task, seeds)

    pending = [job for job in jobs if job.fold not in records]
    if runner.workers == 1 or len(pending) < 2:
        for job in pending:
            finished(fit_fold(X, targets, weights, job, options, seeds, seed, progress))
    else:
        runner.fit_folds(X, targets, weights, pending, options, seeds, seed, finished)
    progress.finish(task)
    return _assemble(records, proba, agreement, X.shape[1], options, jobs, pool_rows)


def _fold_jobs(
    folds: np.ndarray,
    weights: np.ndarray,
    pooled: np.ndarray,
    pool_rows: np.ndarray,
    n_folds: int,
) -> list[FoldJob]:
    """One job per fold: it trains on the other folds' rows of weight above 0 ``(N,)`` and
    predicts its own rows that are not ``pooled`` ``(N,)``, and the ``pool_rows``."""
    usable = weights > 0
    return [FoldJob(fold, n_folds, folds, usable, pooled, pool_rows) for fold in range(n_folds)]


def _saved_folds(
    jobs: list[FoldJob],
    checkpoint: Checkpoint | None,
    stage: str,
    n_pool: int,
    progress: Progress,
    task: Any,
    seeds: int,
) -> dict[int, dict[str, Any]]:
    """The records of the folds ``checkpoint`` already holds for ``stage``, by fold."""
    records: dict[int, dict[str, Any]] = {}
    for job in jobs:
        saved = checkpoint.load_fold(stage, job.fold, len(job.held), n_pool) if checkpoint else None
        if saved is not None:
            records[job.fold] = saved
            progress.advance(task, seeds)
    return records


def _take_held(
    record: dict[str, Any], jobs: list[FoldJob], proba: np.ndarray, agreement: np.ndarray
) -> None:
    """Put a fold's held-out mean and agreement into ``proba`` ``(N, K)`` and ``agreement``
    ``(N,)``, and drop its snapshots' probabilities ``(S, H, K)`` from ``record``: kept to the
    end of the round, every fold's would weigh S times the round's ``proba``."""
    member_proba = record.pop("held").numpy()
    held = jobs[record["fold"]].held
    proba[held] = member_proba.mean(0)
    agreement[held] = ensemble_agreement(member_proba)


def _assemble(
    records: dict[int, dict[str, Any]],
    proba: np.ndarray,
    agreement: np.ndarray,
    n_features: int,
    options: dict[str, Any],
    jobs: list[FoldJob],
    pool_rows: np.ndarray,
) -> CrossFit:
    """The round's ``CrossFit`` from its folds' records (their held-out rows already in
    ``proba`` and ``agreement``, see ``_take_held``), in fold order (however they came)."""
    models: list[list[MLPClassifier]] = []
    epochs: list[int] = []
    pool_members: list[np.ndarray] = []
    train_seconds = predict_seconds = 0.0
    for job in jobs:
        record = records[job.fold]
        pool_members.append(record["pool"].numpy())
        models.append([_rebuild(m, n_features, options) for m in record["members"]])
        epochs += [int(m["epochs"]) for m in record["members"]]
        train_seconds += float(record["train_seconds"])
        predict_seconds += float(record["predict_seconds"])
    if len(pool_rows):
        pool_proba = np.concatenate(pool_members)
        proba[pool_rows] = pool_proba.mean(0)
        agreement[pool_rows] = ensemble_agreement(pool_proba)
    return CrossFit(proba, agreement, models, train_seconds, predict_seconds, epochs)


def restore_cross_fit(
    checkpoint: Checkpoint,
    stage: str,
    n_folds: int,
    n_features: int,
    n_classes: int,
    model: ModelConfig,
    image_blocks: tuple[tuple[int, int, int, int], ...] = (),
) -> CrossFit | None:
    """The fold models of a finished ``stage`` from its checkpoint, or None when a fold's file
    is missing or unreadable. Its ``proba`` and ``agreement`` are empty: the round's record
    holds the calibrated ones."""
    loaded = [checkpoint.load_fold(stage, fold) for fold in range(n_folds)]
    records = [record for record in loaded if record is not None]
    if len(records) < n_folds:
        return None
    options = _model_options(model, n_classes, image_blocks)
    models = [[_rebuild(m, n_features, options) for m in r["members"]] for r in records]
    return CrossFit(
        np.zeros((0, n_classes), np.float32),
        np.zeros(0, np.float32),
        models,
        sum(float(r["train_seconds"]) for r in records),
        sum(float(r["predict_seconds"]) for r in records),
        [int(m["epochs"]) for r in records for m in r["members"]],
    )


def _model_options(
    model: ModelConfig, n_classes: int, image_blocks: tuple[tuple[int, int, int, int], ...]
) -> dict[str, Any]:
    """``MLPClassifier``'s arguments, but for its seed."""
    return {
        **dataclasses.asdict(model),
        "n_classes": n_classes,
        "image_blocks": tuple(image_blocks),
    }


def _rebuild(member: dict[str, Any], n_features: int, options: dict[str, Any]) -> MLPClassifier:
    model = MLPClassifier.from_states(
        member["states"],
        n_features,
        options["n_classes"],
        tuple(options["hidden"]),
        options["dropout"],
        options["device"],
        options["image_blocks"],
    )
    model.random_state = int(member["seed"])
    model.epochs_ = int(member["epochs"])
    return model


@dataclass
class FoldJob:
    """One fold to fit: its training rows, held-out rows and pooled rows (indices into X).

    The jobs share the ``(N,)`` fold numbers and masks and find their rows when asked: every
    fold's row indices made up front held 40 bytes a row for the whole cross-fit (issue 29)."""

    fold: int
    n_folds: int
    folds: np.ndarray  # (N,) each row's fold
    usable: np.ndarray  # (N,) rows that may train: weight above 0
    pooled: np.ndarray  # (N,) rows every fold model predicts, not held out by any
    pool: np.ndarray

    @property
    def train(self) -> np.ndarray:
        """The other folds' rows that may train, sorted."""
        return np.flatnonzero((self.folds != self.fold) & self.usable)

    @property
    def held(self) -> np.ndarray:
        """This fold's rows that are not pooled, sorted."""
        return np.flatnonzero((self.folds == self.fold) & ~self.pooled)


def fit_fold(
    X: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    job: FoldJob,
    options: dict[str, Any],
    seeds: int,
    seed: int,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """Train a fold's members and predict its held-out and pooled rows, on one thread.

    Returns the fold's record: plain tensors and values (``members``: each member's seed,
    epochs and snapshot weights on the CPU; ``held`` ``(S, H, K)`` and ``pool`` ``(S, P, K)``:
    every snapshot's probabilities), what a checkpoint stores and a worker process sends back.
    One thread, wherever the fold trains, so that the sums inside every matrix product are
    taken in the same order and the bytes do not depend on --workers or on the machine's
    cores; it is also the fast setting for these small models (README, "Parallel folds").
    """
    with one_thread():
        started = time.perf_counter()
        fitted = []
        for member in range(seeds):
            epoch_task = progress.start(
                "epochs", f"fold {job.fold + 1}/{job.n_folds}", total=options["max_epochs"]
            )
            estimator = MLPClassifier(
                random_state=_member_seed(seed, job.fold, member), **options
            ).fit(
                X,
                targets,
                weights,
                on_epoch=functools.partial(progress.update, epoch_task),
                rows=job.train,
            )
            progress.finish(epoch_task)
            fitted.append(estimator)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        held = predict_rows(fitted, X, job.held)
        pool = predict_rows(fitted, X, job.pool)
        predict_seconds = time.perf_counter() - started
    return {
        "fold": job.fold,
        "members": [
            {
                "seed": m.random_state,
                "epochs": m.epochs_,
                "states": [{k: v.detach().cpu() for k, v in s.items()} for s in m.states_],
            }
            for m in fitted
        ],
        "held": torch.from_numpy(held),
        "pool": torch.from_numpy(pool),
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
    }


def predict_rows(models: list[MLPClassifier], X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Every snapshot's probabilities ``(S, len(rows), K)`` of ``models`` for ``rows`` (sorted)
    of ``X``; read PREDICT_ROWS at a time when ``X`` maps a file, so memory stays bounded."""
    source = FeatureFile.of(X)
    if source is None:
        return np.concatenate([m.predict_member_proba(X[rows]) for m in models])
    try:
        parts: list[np.ndarray] = []
        for start in range(0, len(rows), PREDICT_ROWS):
            x = source.take(rows[start : start + PREDICT_ROWS])
            parts.append(np.concatenate([m.predict_member_proba(x) for m in models]))
    finally:
        source.close()
    k = models[0].classes_.size if models else 0
    if not parts:
        return np.zeros((sum(len(m.states_) for m in models), 0, k), np.float32)
    return np.concatenate(parts, axis=1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FoldRunner:
    """Where folds train: in this process (``workers=1``) or in ``workers`` worker processes,
    each training one fold at a time; and the checkpoint (if any) that records each finished
    fold. Use it as a context manager, so the worker processes end with it."""

    def __init__(self, workers: int = 1, checkpoint: Checkpoint | None = None):
        self.workers = workers
        self.checkpoint = checkpoint
        self._executor: ProcessPoolExecutor | None = None
        self._arrays: tempfile.TemporaryDirectory[str] | None = None
        self._saved: dict[str, tuple[np.ndarray, str]] = {}  # name -> (array, its .npy file)
        self._files = itertools.count()  # file numbers, never reused

    def __enter__(self) -> FoldRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=exc[0] is None, cancel_futures=True)
            self._executor = None
        if self._arrays is not None:
            self._arrays.cleanup()
            self._arrays, self._saved = None, {}

    def inference(self, device: str) -> Inference | None:
        """Where pretrained encoders run their models for a run on ``device``: None, in this
        process (``RayFoldRunner`` runs them on Ray actors)."""
        return None

    def scratch(self, where: str | Path | None = None) -> Path:
        """The run's working directory (the workers' arrays, features on disk), removed with
        the runner: in the checkpoint's directory when there is one, else in ``where`` (else
        the system's temporary directory)."""
        if self._arrays is None:
            if self.checkpoint is not None:
                where = self.checkpoint.path
            self._arrays = tempfile.TemporaryDirectory(
                prefix=".arrays-", dir=where, ignore_cleanup_errors=True
            )
        return Path(self._arrays.name)

    def _array_file(self, name: str, array: np.ndarray) -> str:
        """The .npy file the workers map ``array`` from: written once for as long as the same
        array comes back (the features, round after round), under a new name otherwise, so a
        file a worker may still have mapped is never rewritten."""
        on_disk = FeatureFile.of(array)
        if on_disk is not None:  # features already on disk (the streaming path): map that
            on_disk.close()
            return on_disk.path
        saved = self._saved.get(name)
        if saved is not None and saved[0] is array:
            return saved[1]
        path = str(self.scratch() / f"{name}-{next(self._files)}.npy")
        np.save(path, np.ascontiguousarray(array))
        if saved is not None:
            Path(saved[1]).unlink(missing_ok=True)
        self._saved[name] = (array, path)
        return path

    def fit_folds(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        jobs: list[FoldJob],
        options: dict[str, Any],
        seeds: int,
        seed: int,
        finished: Callable[[dict[str, Any]], None],
    ) -> None:
        """Fit ``jobs`` in the worker processes, calling ``finished(record)`` as each ends.

        The arrays go to the workers as .npy files they map into memory (spawned processes
        share nothing; fork is unsafe once torch has started threads)."""
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
        paths = [
            self._array_file(name, array)
            for name, array in (("X", X), ("targets", targets), ("weights", weights))
        ]
        futures = [
            self._executor.submit(_fit_fold_in_worker, paths, job, options, seeds, seed)
            for job in jobs
        ]
        try:
            for future in as_completed(futures):
                finished(future.result())
        except BrokenProcessPool:
            raise WorkerError(
                "a --workers process died while training a fold (often: out of memory); "
                "rerun with fewer --workers, adding --resume to keep the finished folds. From "
                'Python, a script that calls refine outside `if __name__ == "__main__":` '
                "does this too: its workers rerun it"
            ) from None
        finally:
            for future in futures:
                future.cancel()


def _watch_parent(parent: int) -> None:
    """In a worker: exit as soon as the parent is gone (killed), instead of training on."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _fit_fold_in_worker(
    paths: list[str],
    job: FoldJob,
    options: dict[str, Any],
    seeds: int,
    seed: int,
) -> dict[str, Any]:
    X, targets, weights = (np.load(path, mmap_mode="r") for path in paths)
    return fit_fold(X, targets, weights, job, options, seeds, seed)


def ensemble_agreement(member_proba: np.ndarray) -> np.ndarray:
    """Share of members ``(S, N, K)`` whose argmax equals the argmax of their mean."""
    consensus = member_proba.mean(0).argmax(1)
    return (member_proba.argmax(2) == consensus[None, :]).mean(0).astype(np.float32)


def _member_seed(seed: int, fold: int, member: int) -> int:
    return int(np.random.SeedSequence([seed, fold, member]).generate_state(1)[0])
