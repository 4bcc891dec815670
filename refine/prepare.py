"""A run's first two stages, read and encode: the input read and checked, its labels and
verified labels encoded, the feature encoder fitted, the run's plan (workers, in memory or
streaming) chosen, and the features in memory or on disk. ``refine.pipeline`` calls them in
order.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from refine import crowd
from refine.config import RunConfig
from refine.encode.embedding import Inference
from refine.encode.features import FeatureEncoder, check_named_columns, fit_features
from refine.errors import InputError
from refine.io.keys import RowKey, check_key, row_key
from refine.io.read import Input, LabelledTable, check_no_clashes, encode_labels, read_input
from refine.io.verify import verified_labels
from refine.io.votes import Votes
from refine.learn.budget import Plan
from refine.learn.budget import plan as budget_plan
from refine.learn.crossfit import FoldRunner
from refine.learn.ray_engine import RayFoldRunner
from refine.learn.stream import save_features, window_bytes
from refine.progress import NULL_PROGRESS, Progress


def read_run_input(
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


def streamed_features(
    encoder: FeatureEncoder,
    data: LabelledTable,
    X: np.ndarray | None,
    runner: FoldRunner | None,
    where: Path | None,
    timings: dict[str, float],
    shards: Path | None = None,
    progress: Progress = NULL_PROGRESS,
) -> np.ndarray:
    """``X``; where it is None (streaming), ``data``'s features written to a file in the run's
    working directory (``where``) and mapped, or encoded in memory without a runner. With
    ``--engine ray`` and ``shards``, the Parquet input ``data`` was read from, Ray Data reads
    and encodes the shards on the cluster's workers instead, to the same bytes."""
    if X is not None:
        return X
    started = time.perf_counter()
    if runner is not None:
        scratch = runner.scratch(where)
        if isinstance(runner, RayFoldRunner) and shards is not None:
            X = runner.encode_shards(
                encoder, shards, data.table.num_rows, scratch / "features.npy", progress
            )
        if X is None:
            X = _encode_to_disk(encoder, data.table, scratch)
    else:
        X = encoder.transform(data.table)
    timings["encode"] += time.perf_counter() - started
    return X


def let_input_go(
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


def shard_source(
    source: Input, config: RunConfig, votes: bool, encoder: FeatureEncoder
) -> Path | None:
    """The Parquet input a streaming run may read again, shard by shard, for its features or
    to write refined.parquet (``_can_read_again``), or None."""
    return source.path if _can_read_again(source, config, votes, encoder) else None


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


def encode_planned(
    data: LabelledTable,
    config: RunConfig,
    progress: Progress,
    timings: dict,
    execution: tuple[int | None, int | None],
    runner: FoldRunner | None = None,
) -> tuple[FeatureEncoder, np.ndarray | None, Plan]:
    """The rounds' feature encoder and the run's plan (workers, in memory or streaming, from
    ``execution``: the workers asked for, None for auto, and the memory budget); and the
    features ``(N, D)`` in memory, or None when they are to stream from disk. Pretrained
    models run where ``runner`` says (``--engine ray``: on Ray actors)."""
    started = time.perf_counter()
    inference = runner.inference(config.model.device) if runner is not None else None
    encoder = _fit_encoder(data, config, progress, inference)
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


def _fit_encoder(
    data: LabelledTable, config: RunConfig, progress: Progress, inference: Inference | None
) -> FeatureEncoder:
    """The rounds' feature encoder, fitted on ``data``, its pretrained models run by
    ``inference`` (None: here)."""
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
        inference=inference,
    )
    return encoder


def encoder_notes(encoder: FeatureEncoder, progress: Progress) -> None:
    """What the user should hear about how the columns were encoded, once they are."""
    _note_skipped(encoder.skipped, progress)
    for note in encoder.notes:
        progress.note(note)


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


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' if n != 1 else ''}"


def check_input_outside(source: Path, out: Path) -> None:
    source, out = source.resolve(), out.resolve()
    if source == out or out in source.parents:
        raise InputError(
            f"input {str(source)!r} lies inside the output directory {str(out)!r}; "
            "choose an --out outside the input"
        )
