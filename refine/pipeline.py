"""The pipeline, in order: read, encode, then rounds of cross-fit, calibrate, detect, refine;
then write. This is the one place that knows the order of the stages.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from refine import crowd
from refine.config import VERSION, ModelConfig, RunConfig
from refine.encode.features import FeatureEncoder, check_named_columns, fit_features
from refine.errors import InputError, RefineError
from refine.io.decisions import (
    CORRECTED,
    EXCLUDED,
    GIVEN,
    PSEUDO,
    SYNTHETIC,
    VERIFIED,
    Decisions,
)
from refine.io.keys import RowKey, check_key, row_key
from refine.io.read import (
    Input,
    LabelledTable,
    check_no_clashes,
    encode_labels,
    read_batches,
    read_input,
)
from refine.io.verify import verified_labels
from refine.io.votes import Votes
from refine.io.write import (
    ROUNDS_SCHEMA,
    atomic_directory,
    check_output,
    output_lock,
    refined_table,
    write_json,
    write_parquet,
    write_refined_from,
)
from refine.judge.detect import confident_joint
from refine.judge.relabel import true_class_of
from refine.judge.trust import student_temperature
from refine.learn.budget import Plan, parse_memory, parse_workers
from refine.learn.budget import plan as budget_plan
from refine.learn.calibrate import (
    apply_temperature,
)
from refine.learn.checkpoint import (
    check_execution,
    kill_point,
    open_checkpoint,
)
from refine.learn.crossfit import CrossFit, FoldRunner
from refine.learn.modeldir import (
    RUN_STUDENT_DIR,
    StudentModel,
    describe_student,
    save_into,
    train_student,
)
from refine.learn.ray_engine import RayFoldRunner, check_engine
from refine.learn.stream import save_features, window_bytes
from refine.learn.student import network_parameters
from refine.progress import NULL_PROGRESS, Progress, logger, trust_lines
from refine.rounds import Rounds, RoundsResult, augmenter

# The layout of model.pt: refine.update.load_run reads what _save_model writes.
MODEL_FORMAT = "refine.mlp-ensemble/1"


@dataclass
class RunResult:
    """What a run produced: the tables written to disk, the run's summary (``run.json``), and the
    last round's calibrated probabilities ``proba`` ``(N, K)`` (out-of-fold for labelled rows)
    and ensemble ``agreement`` ``(N,)``."""

    held: pa.Table | None  # None: a streaming run wrote refined.parquet without holding it
    rounds: pa.Table
    summary: dict[str, Any]
    proba: np.ndarray
    agreement: np.ndarray
    out: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    synthetic: pa.Table | None = None  # synthetic.parquet, with --augment
    annotators: pa.Table | None = None  # annotators.parquet, with votes

    @property
    def refined(self) -> pa.Table:
        """refined.parquet's table; read from ``out`` when the run did not hold it."""
        if self.held is None and self.out is not None:
            self.held = pq.read_table(self.out / "refined.parquet")
        if self.held is None:  # only a run with --out lets its table go
            raise RefineError("the run's refined table is neither held nor written")
        return self.held

    @property
    def flagged(self) -> pa.Table:
        return self.refined.filter(self.refined.column("is_label_issue"))


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
    execution = (parse_workers(workers), parse_memory(memory))
    check_execution(out, overwrite, resume, execution[0] or 1)
    check_engine(engine, address)
    # Held until the run directory is renamed into place: one refine process per --out.
    with output_lock(out), _fold_runner(engine, execution[0] or 1, address) as runner:
        try:
            result = _run(
                data, out, config, overwrite, progress, command, resume, runner, execution
            )
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
        return result


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
    labelled_table, verified, source, votes, config = _read(data, out, config, timings, progress)
    where = Path(out).absolute().parent if out is not None else None
    encoder, X, plan = _encode_planned(labelled_table, config, progress, timings, execution)
    if isinstance(runner, RayFoldRunner):  # Ray schedules the folds on its own cluster
        plan = dataclasses.replace(plan, workers=runner.workers)
    elif runner is not None:
        runner.workers = plan.workers
    X = _streamed_features(encoder, labelled_table, X, runner, where, timings)
    labelled_table, source, key, reread = _let_input_go(
        labelled_table, source, config, votes is not None, encoder, plan, out
    )
    if reread is not None:  # the table's buffers are free now that nothing holds them
        pa.default_memory_pool().release_unused()
    _encoder_notes(encoder, progress)
    if runner is not None and out is not None:
        runner.checkpoint = open_checkpoint(
            Path(out), resume, config, X, labelled_table, _versions(), progress, verified
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
        _versions(),
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


def _read(
    data: Any, out: str | Path | None, config: RunConfig, timings: dict, progress: Progress
) -> tuple[LabelledTable, np.ndarray, Input, Votes | None, RunConfig]:
    """The input table, checked, with its labels encoded; its verified labels ``(N,)``; where
    it came from; its votes, if any; and the configuration, which with votes refines
    ``label_vote``."""
    started = time.perf_counter()
    source = read_input(data)
    note_reader(source, progress)
    table = source.table
    if out is not None and source.path is not None:
        check_input_outside(source.path, Path(out))
    check_no_clashes(table)
    table, config, votes = crowd.with_votes(table, config, progress)
    check_named_columns(table, config.features, config.ignore)
    check_named_columns(table, config.teacher_features, (), "--teacher-features")
    check_named_columns(table, config.student_features, (), "--student-features")
    labelled_table = encode_labels(table, config.label, config.folds)
    verified = verified_labels(labelled_table, config.verified, config.verified_file, config.key)
    if config.key is not None:  # a bad --key fails before training, not after
        check_key(table, config.key, config.label)
    timings["read"] = time.perf_counter() - started
    return labelled_table, verified, source, votes, config


def note_reader(source: Input, progress: Progress) -> None:
    """Say which reader read a file that is not Parquet: its types are the reader's guesses."""
    if source.path is not None and not source.reader.startswith("Parquet"):
        table = source.table
        progress.note(
            f"read {str(source.path)!r} as {source.reader}: {_count(table.num_rows, 'row')}, "
            f"{_count(table.num_columns, 'column')}"
        )


def _streamed_features(
    encoder: FeatureEncoder,
    data: LabelledTable,
    X: np.ndarray | None,
    runner: FoldRunner | None,
    where: Path | None,
    timings: dict[str, float],
) -> np.ndarray:
    """``X``; where it is None (streaming), ``data``'s features written to a file in the run's
    working directory (``where``) and mapped, or encoded in memory without a runner."""
    if X is not None:
        return X
    started = time.perf_counter()
    if runner is not None:
        X = _encode_to_disk(encoder, data.table, runner.scratch(where))
    else:
        X = encoder.transform(data.table)
    timings["encode"] += time.perf_counter() - started
    return X


def _let_input_go(
    data: LabelledTable,
    source: Input,
    config: RunConfig,
    votes: bool,
    encoder: FeatureEncoder,
    plan: Plan,
    out: str | Path | None,
) -> tuple[LabelledTable, Input, RowKey | None, Path | None]:
    """``data`` and ``source``, and where a streaming run may read its input again
    (``_can_read_again``), the same with empty tables of their schemas, the rows' key taken
    first, and the input's path to read again: the rounds need the labels only."""
    if not (plan.streaming and out is not None and _can_read_again(source, config, votes, encoder)):
        return data, source, None, None
    key = row_key(data.table, config.label, config.key, config.ignore)
    # The path, not the Input: the Input holds the table.
    return _schema_only(data), _schema_only(source), key, source.path


def _annotators(
    votes: Votes, state: RoundsResult, verified: np.ndarray, summary: dict[str, Any]
) -> dict[str, pa.Table]:
    """``annotators.parquet``'s table, under its name, described in ``summary``."""
    annotators = crowd.annotators_table_of(votes, state, verified)
    summary["annotators"] = crowd.describe_annotators(annotators)
    summary["annotators"]["consensus"] = crowd.describe_choice(state)
    return {"annotators.parquet": annotators}


def _can_read_again(source: Input, config: RunConfig, votes: bool, encoder: FeatureEncoder) -> bool:
    """Whether a streaming run may let the input table go once its features are on disk and
    read it again to write refined.parquet: it came from Parquet, and nothing after the
    encoding (votes, augmentation, a distilled student, a pretrained model's embeddings.parquet)
    reads it."""
    return (
        source.path is not None
        and source.reader.startswith("Parquet")
        and not votes
        and not config.augment
        and config.student_features is None
        and not encoder.embedded
    )


def _schema_only(holder: Any) -> Any:
    """``holder`` (a ``LabelledTable`` or ``Input``) with an empty table of its table's schema.
    Not a slice of no rows: a slice keeps the whole table's buffers alive."""
    return dataclasses.replace(holder, table=holder.table.schema.empty_table())


def _encode_planned(
    data: LabelledTable,
    config: RunConfig,
    progress: Progress,
    timings: dict,
    execution: tuple[int | None, int | None],
) -> tuple[FeatureEncoder, np.ndarray | None, Plan]:
    """The rounds' feature encoder and the run's plan (workers, in memory or streaming, from
    ``execution``: the workers asked for, None for auto, and the memory budget); and the
    features ``(N, D)`` in memory, or None when they are to stream from disk."""
    started = time.perf_counter()
    encoder = _fit_encoder(data, config, progress)
    n, width = data.table.num_rows, encoder.width
    plan = budget_plan(n, width, data.n_classes, config.folds, *execution, model=config.model)
    if plan.streaming:  # worth a line as it happens; every run's plan is in run.json
        progress.note(plan.line())
    X = None if plan.streaming else encoder.transform(data.table)
    timings["encode"] = time.perf_counter() - started
    return encoder, X, plan


def _encode_to_disk(encoder: FeatureEncoder, table: pa.Table, where: Path) -> np.ndarray:
    """``encoder``'s features of ``table`` written to ``where/features.npy`` a slice of rows at
    a time (each as large as ``refine.learn.stream.CHUNK_BYTES`` × ``WINDOW_CHUNKS``), mapped
    read-only: every encoder works row by row, so the bytes are those of one transform."""
    step = max(1, window_bytes(encoder.width) // max(4 * encoder.width, 1))
    slices = (
        encoder.transform(table.slice(start, step)) for start in range(0, table.num_rows, step)
    )
    return save_features(where / "features.npy", slices, (table.num_rows, encoder.width))


def _fit_encoder(data: LabelledTable, config: RunConfig, progress: Progress) -> FeatureEncoder:
    """The rounds' feature encoder, fitted on ``data``."""
    features, text, image = config.features, config.text, config.image
    if config.teacher_features is not None:  # the rounds' model is the teacher
        features = config.teacher_features
        text = tuple(c for c in config.text if c in features)
        image = tuple(c for c in config.image if c in features)
    encoder = fit_features(
        data.table,
        config.label,
        features,
        # A verified label would give the answer away; a join key is an id.
        config.ignore + tuple(c for c in (config.verified, config.key) if c is not None),
        config.max_categories,
        text,
        config.seed,
        image,
        config.image_model,
        config.image_size,
        labels=data.labels,  # a text column's block is chosen by these classes
        text_model=config.text_model,
        embedding_cache=config.embedding_cache,
        device=config.model.device,
        progress=progress,
    )
    return encoder


def _encoder_notes(encoder: FeatureEncoder, progress: Progress) -> None:
    """What the user should hear about how the columns were encoded, once they are."""
    _note_skipped(encoder.skipped, progress)
    for note in encoder.notes:
        progress.note(note)


def finish_run(
    data: LabelledTable,
    encoder: FeatureEncoder,
    config: RunConfig,
    state: RoundsResult,
    summary: dict[str, Any],
    out: str | Path | None,
    overwrite: bool,
    extra_files: dict[str, pa.Table] | None = None,
    kept: tuple[CrossFit, FeatureEncoder] | None = None,
    student: StudentModel | None = None,
    reread: Path | None = None,
) -> RunResult:
    """Build the output tables from the last round and write the run directory atomically,
    with ``extra_files`` (name -> table) beside them, and ``report.html`` (built from the
    written files) when ``config.report``. ``model.pt`` holds the last round's fold models
    and ``encoder``, or ``kept`` (fold models, encoder) instead: a distilled student. With
    ``reread`` (the input's path; ``data`` then holds its schema only), refined.parquet is
    written from the input read again, a row group at a time, and read back when asked for."""
    metadata = {
        "refine.classes": data.class_values(),
        "refine.run": {"version": VERSION, "config": config.to_dict(), "seed": config.seed},
    }
    refined = (
        None
        if reread is not None
        else refined_table(
            data, state.decisions, state.proba, state.is_issue, state.quality, metadata
        )
    )
    rounds = pa.Table.from_pylist(state.rounds, schema=ROUNDS_SCHEMA)
    synthetic = _synthetic_table(data, state, metadata) if state.synthetic is not None else None
    result = RunResult(
        held=refined,
        rounds=rounds,
        summary=summary,
        proba=state.proba,
        agreement=state.agreement,
        skipped=encoder.skipped,
        synthetic=synthetic,
    )
    if out is not None:
        started = time.perf_counter()
        with atomic_directory(Path(out), overwrite) as tmp:
            if reread is not None:
                write_refined_from(
                    tmp / "refined.parquet",
                    read_batches(reread),
                    data,
                    state.decisions,
                    state.proba,
                    state.is_issue,
                    state.quality,
                    metadata,
                )
            elif refined is not None:
                write_parquet(refined, tmp / "refined.parquet")
            write_parquet(rounds, tmp / "rounds.parquet")
            if synthetic is not None:
                write_parquet(synthetic, tmp / "synthetic.parquet")
            for name, table in (extra_files or {}).items():
                write_parquet(table, tmp / name)
            embeddings = encoder.embeddings(data.table)  # pretrained encoders', from the cache
            if embeddings is not None:
                write_parquet(embeddings, tmp / "embeddings.parquet")
            fitted, model_encoder = kept or (state.crossfit, encoder)
            _save_model(tmp / "model.pt", fitted, model_encoder, data, config)
            if student is not None:
                save_into(tmp / RUN_STUDENT_DIR, student)
            summary["timings"]["write"] = round(time.perf_counter() - started, 4)
            write_json(summary, tmp / "run.json")
            if config.report:
                from refine.report.html import write_report  # matplotlib loads only when needed

                write_report(tmp)
            kill_point("write")
        result.out = Path(out)
    _log_summary(summary, result.out)
    return result


def _log_summary(s: dict[str, Any], out: Path | None) -> None:
    """What the CLI's summary says, in a few lines for the ``refine`` logger."""
    rounds = s["rounds_run"]
    logger.info(
        f"{s['rows']:,} rows ({s['labelled']:,} labelled): {s['flagged']:,} flagged, "
        f"{s['corrected']:,} corrected, {s['excluded']:,} excluded, "
        f"{s['pseudo_labelled']:,} pseudo-labelled in {rounds} round{'s' if rounds != 1 else ''}"
    )
    for line in trust_lines(s.get("trust")):
        logger.info(line)
    if out is not None:
        logger.info(f"wrote {out}; the refined labels are in {out / 'refined.parquet'}")


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


def _synthetic_table(
    data: LabelledTable, state: RoundsResult, metadata: dict[str, Any]
) -> pa.Table:
    """``synthetic.parquet``: the last round's synthetic rows with refined.parquet's columns
    (``label_source`` 'synthetic', no ``label_quality``), plus ``synthetic_parent_rows``: the
    row numbers in ``refined.parquet`` of the rows each was made from. ``label_predicted`` is
    the last round's fold models' calibrated mean, as for unlabelled rows."""
    extra = state.synthetic
    synthetic = extra.synthetic
    m = len(synthetic)
    members = [mm.predict_member_proba(extra.X) for fold in state.crossfit.models for mm in fold]
    proba = apply_temperature(
        np.concatenate(members).mean(0) if m else np.zeros((0, data.n_classes), np.float32),
        state.temperature,
    )
    table = refined_table(
        LabelledTable(synthetic.table, data.label, np.full(m, -1), data.classes),
        Decisions(
            refined=synthetic.labels,
            source=np.full(m, SYNTHETIC, np.int8),
            weight=extra.weights,
            soft=synthetic.soft,
        ),
        proba,
        np.zeros(m, bool),
        np.ones(m, np.float32),
        metadata,
    )
    parents = [[int(p) for p in row if p >= 0] for row in synthetic.parents]
    return table.append_column(
        pa.field("synthetic_parent_rows", pa.list_(pa.int64())),
        pa.array(parents, pa.list_(pa.int64())),
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' if n != 1 else ''}"


def summarise_run(
    data: LabelledTable,
    encoder: FeatureEncoder,
    config: RunConfig,
    state: RoundsResult,
    timings: dict[str, float],
    source: Input,
    command: str | None = None,
    key: RowKey | None = None,
) -> dict[str, Any]:
    """run.json's summary of a finished run on ``source``; ``key`` names its rows (default: the
    key that ``config`` gives ``data``, ``refine.io.keys.row_key``)."""
    labels = data.labels
    key = key if key is not None else row_key(data.table, config.label, config.key, config.ignore)
    classes = data.class_values()
    d = state.decisions
    predicted = state.proba.argmax(1)
    # A verified row is flagged for its known-wrong label, whatever the model predicts; the
    # confusions are the model's, so rows it predicts as given are left out.
    issues = np.flatnonzero(state.is_issue & (predicted != labels))
    confusions = Counter(zip(labels[issues].tolist(), predicted[issues].tolist(), strict=True))
    return {
        "refine_version": VERSION,
        **source.record,
        "command": command,
        "config": config.to_dict(),
        "seed": config.seed,
        "device": state.device,
        "versions": _versions(),
        "classes": classes,
        "rows": int(len(labels)),
        "labelled": int((labels >= 0).sum()),
        "unlabelled": int((labels < 0).sum()),
        "flagged": int(state.is_issue.sum()),
        "corrected": d.count(CORRECTED),
        "excluded": d.count(EXCLUDED),
        "pseudo_labelled": d.count(PSEUDO),
        "synthetic_rows": len(state.synthetic.X) if state.synthetic is not None else 0,
        "down_weighted": int(((d.source == GIVEN) & (d.weight < 1)).sum()),
        "verified": d.count(VERIFIED),
        "rounds_run": len(state.rounds),
        "teacher_reliable": state.reliable,
        "trust": state.trust,
        "calibration": {
            "temperature": state.temperature,
            "ece_before": state.ece_before,
            "ece_after": state.ece_after,
            "reliability": state.reliability,
        },
        "noise_matrix": {
            "confident_joint": confident_joint(labels[labels >= 0], state.proba[labels >= 0])
        },
        "top_confusions": [
            {"given": classes[g], "predicted": classes[p], "rows": n}
            for (g, p), n in confusions.most_common(10)
        ],
        "features": encoder.describe(),
        "key": key.describe(),
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "epochs_per_fit": state.crossfit.epochs,
        "rounds": state.rounds,
    }


def _versions() -> dict[str, str]:
    import cleanlab
    import duckdb
    import pandas
    import sklearn

    return {
        "refine": VERSION,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn.__version__,
        "cleanlab": cleanlab.__version__,
        "duckdb": duckdb.__version__,
    }


def _save_model(
    path: Path, fitted: CrossFit, encoder: FeatureEncoder, data: LabelledTable, config: RunConfig
) -> None:
    """The last round's fold ensembles: plain tensors and JSON-able values only, so the file
    loads with ``torch.load(path, weights_only=True)``."""
    members = [
        {"fold": fold, "seed": m.random_state, "states": m.states_}
        for fold, fold_models in enumerate(fitted.models)
        for m in fold_models
    ]
    torch.save(
        {
            "format": MODEL_FORMAT,
            "classes": data.class_values(),
            "n_features": encoder.width,
            "hidden": list(config.model.hidden),
            "dropout": config.model.dropout,
            "image_blocks": [list(block) for block in encoder.image_blocks],
            "features": encoder.describe(),
            "encoder": encoder.state(),
            "members": members,
        },
        path,
    )


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


def _note_skipped(skipped: dict[str, str], progress: Progress) -> None:
    """Tell the user which columns are not features, one line per reason."""
    by_reason: dict[str, list[str]] = {}
    for column, reason in skipped.items():
        by_reason.setdefault(reason, []).append(column)
    for reason, columns in by_reason.items():
        shown = ", ".join(columns[:8]) + (
            f" and {len(columns) - 8} more" if len(columns) > 8 else ""
        )
        progress.note(f"skipped {'column' if len(columns) == 1 else 'columns'} {shown}: {reason}")


def check_input_outside(source: Path, out: Path) -> None:
    source, out = source.resolve(), out.resolve()
    if source == out or out in source.parents:
        raise InputError(
            f"input {str(source)!r} lies inside the output directory {str(out)!r}; "
            "choose an --out outside the input"
        )
