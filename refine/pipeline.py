"""The pipeline, in order: read, encode, then rounds of cross-fit, calibrate, detect, refine;
then write. This is the one place that knows the order of the stages; reading and encoding
live in ``refine.prepare``, the summary and the writing in ``refine.finish``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from refine import crowd
from refine.config import ModelConfig, RunConfig
from refine.encode.features import FeatureEncoder
from refine.errors import RefineError
from refine.finish import RunResult, finish_run, summarise_run, versions
from refine.io.decisions import VERIFIED
from refine.io.read import LabelledTable
from refine.io.votes import Votes
from refine.io.write import check_output, output_lock
from refine.judge.relabel import true_class_of
from refine.judge.trust import student_temperature
from refine.learn.budget import check_not_spawning, parse_memory, parse_workers
from refine.learn.checkpoint import check_execution, kill_point, open_checkpoint
from refine.learn.crossfit import FoldRunner
from refine.learn.modeldir import StudentModel, describe_student, train_student
from refine.learn.ray_engine import RayFoldRunner, check_engine
from refine.learn.student import network_parameters
from refine.prepare import (
    encode_planned,
    encoder_notes,
    let_input_go,
    read_run_input,
    shard_source,
    streamed_features,
)
from refine.progress import NULL_PROGRESS, Progress
from refine.rounds import Rounds, RoundsResult, augmenter


def run(
    data: Any,
    out: str | Path | None = None,
    *,
    config: RunConfig | None = None,
    overwrite: bool = False,
    progress: Progress = NULL_PROGRESS,
    command: str | None = None,
    resume: bool = False,
    workers: int | str = "auto",
    memory: str | int | None = None,
    engine: str = "local",
    address: str | None = None,
    **options: Any,
) -> RunResult:
    """Find and fix wrong labels in ``data``; write the run to ``out`` when given.

    Parameters
    ----------
    data : path or table
        A Parquet file or a directory of them, a CSV (``.csv``, ``.tsv``) or JSON Lines
        (``.jsonl``, ``.ndjson``, ``.json``) file, or a table in memory: a pyarrow Table or
        Dataset, a pandas or polars DataFrame, a DuckDB relation, or anything with
        ``__arrow_c_stream__`` (see ``refine.io.read.read_input``).
    out : path, optional
        The run directory to write (``refined.parquet``, ``rounds.parquet``, ``run.json``,
        ``model.pt``, ``report.html`` unless ``report=False``). Written atomically; an existing
        one is replaced only with ``overwrite``.
    config : RunConfig, optional
        The full configuration; ``options`` override its fields (``label="y", rounds=2``), and
        fields of ``ModelConfig`` may be given the same way (``max_epochs=20``).
    progress : Progress
        Receives progress updates (the CLI passes rich progress bars).
    command : str, optional
        The command line that started the run, recorded in ``run.json`` (the CLI passes it).
    resume : bool
        Go on from the checkpoint an interrupted run to ``out`` left (``.<out>.partial``
        beside it), when its configuration, input and versions match; the result is the same
        as an uninterrupted run's. Without it an earlier checkpoint is discarded. Every run with
        ``out`` writes checkpoints, removed once the run directory is in place.
    workers : int or "auto"
        Processes that train folds side by side; the output does not depend on it. ``"auto"``:
        as many as the cores, the folds and ``memory`` allow, and one for a small table
        (docs/scale.md).
    memory : str or int, optional
        The memory budget (``"4GB"`` or bytes; default half the machine's): features that
        would not fit in it stream from a file in the run's working directory instead of
        staying in memory. The output does not depend on it.
    engine : {"local", "ray"}
        Where the folds train: this machine's processes (``workers``), or Ray tasks, one per
        fold (``pip install 'refine[ray]'``; docs/ray.md). The output does not depend on it.
    address : str, optional
        With ``engine="ray"``: the Ray cluster to join (``ray://head:10001``, ``auto``);
        without it a Ray instance is started on this machine for the run.

    Returns
    -------
    RunResult
    """
    config = with_options(config or RunConfig(), options)
    config.validate()
    check_not_spawning()
    execution = (parse_workers(workers), parse_memory(memory))
    check_execution(out, overwrite, resume, execution[0] or 1)
    check_engine(engine, address)
    # Held until the run directory is renamed into place: one refine process per --out.
    with (
        output_lock(out),
        _fold_runner(engine, execution[0] or 1, address) as runner,
        _resumable(runner),
    ):
        return _run(data, out, config, overwrite, progress, command, resume, runner, execution)


@contextlib.contextmanager
def _resumable(runner: FoldRunner) -> Iterator[None]:
    """A run's checkpoint: named by any ``RefineError`` the run stops with, so the user can
    ``--resume`` from it, and removed once the run has finished."""
    try:
        yield
    except RefineError as exc:
        if runner.checkpoint is None:
            raise
        raise type(exc)(
            f"{exc}. The finished folds and rounds are kept in "
            f"{str(runner.checkpoint.path)!r}: rerun with --resume to go on from them"
        ) from None
    if runner.checkpoint is not None:
        kill_point("renamed")
        runner.checkpoint.remove()


def _fold_runner(engine: str, workers: int, address: str | None) -> FoldRunner:
    if engine == "ray":
        return RayFoldRunner(address)
    return FoldRunner(workers)


def _run(
    data: Any,
    out: str | Path | None,
    config: RunConfig,
    overwrite: bool,
    progress: Progress,
    command: str | None = None,
    resume: bool = False,
    runner: FoldRunner | None = None,
    execution: tuple[int | None, int | None] = (1, None),
) -> RunResult:
    if out is not None:
        check_output(Path(out), overwrite)
    timings: dict[str, float] = {}
    labelled_table, verified, source, votes, config = read_run_input(
        data, out, config, timings, progress
    )
    where = Path(out).absolute().parent if out is not None else None
    encoder, X, plan = encode_planned(labelled_table, config, progress, timings, execution, runner)
    if isinstance(runner, RayFoldRunner):  # Ray schedules the folds on its own cluster
        plan = dataclasses.replace(plan, workers=runner.workers)
    elif runner is not None:
        runner.workers = plan.workers
    shards = shard_source(source, config, votes is not None, encoder)
    X = streamed_features(encoder, labelled_table, X, runner, where, timings, shards, progress)
    labelled_table, source, key, reread = let_input_go(
        labelled_table, source, config, votes is not None, encoder, plan, out
    )
    if reread is not None:  # the table's buffers are free now that nothing holds them
        pa.default_memory_pool().release_unused()
    encoder_notes(encoder, progress)
    if runner is not None and out is not None:
        runner.checkpoint = open_checkpoint(
            Path(out), resume, config, X, labelled_table, versions(), progress, verified
        )
    consensus = (
        crowd.VotesRound(votes.votes, labelled_table.labels, verified, config.seed)
        if votes is not None
        else None
    )
    state = _rounds(
        labelled_table, X, encoder, config, progress, timings, runner, verified, consensus
    )
    kept = None
    if config.student_features is not None:
        from refine.learn.distill import distill

        student = distill(labelled_table, state.decisions, config, progress, timings, runner)
        kept = (student.crossfit, student.encoder)
    deployable = student_model(labelled_table, X, encoder, config, state, timings, out)
    summary = summarise_run(labelled_table, encoder, config, state, timings, source, command, key)
    summary["execution"] = plan.describe()
    if kept is not None:
        summary["student"] = student.summary
    if deployable is not None:
        summary["student_model"] = describe_student(deployable)
    extra = _annotators(votes, state, verified, summary) if votes is not None else None
    result = finish_run(
        labelled_table,
        encoder,
        config,
        state,
        summary,
        out,
        overwrite,
        extra,
        kept=kept,
        student=deployable,
        reread=reread,
    )
    result.annotators = extra["annotators.parquet"] if extra else None
    return result


def student_model(
    data: LabelledTable,
    X: np.ndarray,
    encoder: FeatureEncoder,
    config: RunConfig,
    state: RoundsResult,
    timings: dict[str, float],
    out: str | Path | None,
) -> StudentModel | None:
    """With ``config.student``: one student trained on the final soft labels of ``data``'s rows
    (encoded ``X`` ``(N, D)``), for RUN_DIR/student/ (docs/predict.md)."""
    if not config.student:
        return None
    started = time.perf_counter()
    teacher = sum(network_parameters(m) for fold in state.crossfit.models for m in fold)
    source = {"run": str(Path(out).resolve()) if out is not None else None, "folds": config.folds}
    schema = data.table.schema
    classes = pa.array(data.class_values())
    if config.label in schema.names:
        classes = classes.cast(schema.field(config.label).type)
    student = train_student(
        X,
        state.decisions.soft,
        state.decisions.weight,
        encoder,
        schema,
        pa.field(config.label, classes.type),
        classes,
        config,
        config.student_size,
        config.student_temperature,
        config.seed,
        teacher,
        source,
        versions(),
        true_class=student_temperature(
            state.trust,
            data.labels,
            np.where(state.decisions.source == VERIFIED, state.decisions.refined, -1),
            true_class_of(state.decisions.soft, state.decisions.refined, config.soft_mix),
        ),
    )
    timings["student"] = round(time.perf_counter() - started, 4)
    return student


def _rounds(
    labelled_table: LabelledTable,
    X: np.ndarray,
    encoder: FeatureEncoder,
    config: RunConfig,
    progress: Progress,
    timings: dict,
    runner: FoldRunner | None,
    verified: np.ndarray,
    consensus: crowd.VotesRound | None,
) -> RoundsResult:
    """The rounds on ``labelled_table``; with votes, ``consensus`` weighs them each round."""
    augment = augmenter(labelled_table, encoder, config) if config.augment else None
    return refine_rounds(
        Rounds(
            labelled_table,
            X,
            config,
            progress,
            timings,
            augment=augment,
            image_blocks=encoder.image_blocks,
            runner=runner,
            verified=verified,
            consensus=consensus,
        )
    )


def _annotators(
    votes: Votes, state: RoundsResult, verified: np.ndarray, summary: dict[str, Any]
) -> dict[str, pa.Table]:
    """``annotators.parquet``'s table, under its name, described in ``summary``."""
    annotators = crowd.annotators_table_of(votes, state, verified)
    summary["annotators"] = crowd.describe_annotators(annotators)
    summary["annotators"]["consensus"] = crowd.describe_choice(state)
    return {"annotators.parquet": annotators}


def refine_rounds(rounds: Rounds) -> RoundsResult:
    """Rounds of cross-fit, calibrate, detect and decide on the judged rows ``rounds`` holds,
    each training on the last one's refined labels. A checkpoint in its runner records each
    round, and the rounds go on after its last."""
    progress = rounds.progress
    task = progress.start("rounds", "rounds", total=rounds.total)
    first = rounds.resume()
    progress.advance(task, len(rounds.rounds))
    for round_index in range(first, rounds.total + 1):
        _round(rounds, round_index)
        progress.advance(task)
        if rounds.settled():
            break
    progress.finish(task)
    return rounds.result()


def _round(rounds: Rounds, round_index: int) -> None:
    """One round: train, calibrate, detect, decide, record. A function of its own so that its
    (N, K) arrays go when it returns, not while the next round trains."""
    started = time.perf_counter()
    raw, agreement = rounds.train(round_index)
    proba = rounds.calibrate(raw)
    is_issue = rounds.detect(proba, agreement, round_index)
    verdict = rounds.decide(proba, agreement, is_issue, round_index)
    verdict = rounds.weigh_votes(verdict)
    rounds.record(round_index, verdict, agreement, started)


def with_options(config: RunConfig, options: dict[str, Any]) -> RunConfig:
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(options) - model_fields - run_fields)
    if unknown:
        raise TypeError(f"run() got unknown options: {', '.join(unknown)}")
    model_options = {k: v for k, v in options.items() if k in model_fields and k not in run_fields}
    run_options = {k: v for k, v in options.items() if k in run_fields}
    for key in ("features", "ignore", "text", "image", "teacher_features", "student_features"):
        if isinstance(run_options.get(key), list):
            run_options[key] = tuple(run_options[key])
    if isinstance(run_options.get("image_model"), Path):  # run.json records it as a string
        run_options["image_model"] = str(run_options["image_model"])
    model = dataclasses.replace(config.model, **model_options)
    return dataclasses.replace(config, model=model, **run_options)
