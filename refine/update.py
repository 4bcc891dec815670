"""``refine update``: refine a new batch of data with an earlier run's model as the teacher.

The previous run's fold ensemble judges the new rows (it never saw them, so its predictions
are held out without cross-fitting), then refine retrains on the new rows plus a replay
sample of the run's refined rows, so the model keeps what it learned from earlier batches,
and re-judges the new rows out of fold for the remaining rounds. The new run directory has the
same contract as ``refine run``'s, for the new rows only, and ``run.json`` names its parent.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from refine.config import RunConfig, check_summary
from refine.encode.embedding import add_run
from refine.encode.features import FeatureEncoder
from refine.errors import ConfigError, InputError
from refine.finish import MODEL_FORMAT, RunResult, finish_run, summarise_run
from refine.io.conform import conform
from refine.io.keys import FROM_KEY, RowKey, row_key
from refine.io.read import (
    OUTPUT_COLUMNS,
    Input,
    LabelledTable,
    as_table,
    encode_labels,
    read_input,
)
from refine.io.rundir import read_summary
from refine.io.verify import verified_labels
from refine.io.write import check_output, output_lock
from refine.learn.budget import check_not_spawning, parse_memory, parse_workers
from refine.learn.budget import plan as budget_plan
from refine.learn.calibrate import apply_temperature
from refine.learn.crossfit import FoldRunner, ensemble_agreement
from refine.learn.model import MLPClassifier
from refine.learn.modeldir import describe_student
from refine.pipeline import refine_rounds, student_model, with_options
from refine.prepare import check_input_outside, note_reader
from refine.progress import NULL_PROGRESS, Progress
from refine.rounds import Extra, Rounds, Teacher, augmenter

# Most rows an update run keeps in history.parquet to replay from.
HISTORY_ROWS = 100_000
# Replay tops a small batch up to this many training rows (as far as the history goes): below
# it the retrained models are weaker than the teacher that judged the batch, and training on
# a few thousand rows costs seconds.
MIN_TRAIN_ROWS = 2_000


@dataclass
class PreviousRun:
    """A finished run loaded back: its configuration, summary, refined rows, the encoder of its
    input columns and its fold models."""

    path: Path
    config: RunConfig
    summary: dict[str, Any]
    refined: pa.Table
    classes: pa.Array
    encoder: FeatureEncoder
    models: list[MLPClassifier]

    @property
    def input_schema(self) -> pa.Schema:
        return pa.schema([f for f in self.refined.schema if f.name not in OUTPUT_COLUMNS])

    @property
    def unread_columns(self) -> set[str]:
        """Input columns the run's model never reads: ignored, or skipped as features. A new
        batch may hold them in any type, since the saved encoder stays as it is."""
        read = {*self.encoder.columns, self.config.label, self.config.verified}
        return {name for name in self.input_schema.names if name not in read}

    def predict(self, table: Any, given: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``(N, K)`` for the rows of ``table`` (anything ``refine.run``
        reads: a pyarrow or pandas table, a path, ...) from every fold model, and the share of
        members that agree with the ensemble ``(N,)``.

        The probabilities speak of the true class, as ``label_soft`` does: the models' mean is
        calibrated against the given labels (run.json ``calibration``), then turned to the true
        class as the last round's judgement did (``trust.calibration``). ``given=True`` stops at
        the first step: how likely each class is to be the label the data's labellers would
        write, noise included (what ``refine update`` judges a new batch's labels with)."""
        if any(e.cache is None for e in self.encoder.embedded):
            self.reuse_embeddings()
        members = self.member_proba(self.encoder.transform(as_table(table)))
        proba = apply_temperature(members.mean(0), self.temperature)
        return (proba if given else self.true_class(proba)), ensemble_agreement(members)

    def reuse_embeddings(
        self, cache_setting: str | None = None, progress: Progress = NULL_PROGRESS
    ) -> None:
        """Give the run's pretrained encoders (``--text-model``, ``--image-model DIR``) the cache
        ``cache_setting`` names (None: the run's own ``--embedding-cache``), holding the run's
        ``embeddings.parquet`` too: the rows the run encoded are not encoded again."""
        setting = self.config.embedding_cache if cache_setting is None else cache_setting
        self.encoder.use_cache(setting, progress)
        add_run(self.path, self.encoder.embedded)

    def true_class(self, proba: np.ndarray) -> np.ndarray:
        """``proba`` calibrated against the given labels, turned to the true class with the
        temperature the run's judgement found (unchanged where it found none). A cross-modal
        student's probabilities stay as calibrated: that temperature was the teacher's."""
        found = (self.summary.get("trust") or {}).get("calibration") or {}
        if self.summary.get("student") or found.get("method") in (None, "none"):
            return proba
        return apply_temperature(proba, float(found["temperature"]))

    @property
    def temperature(self) -> float:
        """The saved models' calibration: a distilled run keeps its student's."""
        calibration = self.summary.get("student") or self.summary["calibration"]
        return float(calibration["temperature"])

    def member_proba(self, X: np.ndarray) -> np.ndarray:
        return np.concatenate([m.predict_member_proba(X) for m in self.models])


def load_run(run_dir: str | Path, device: str = "auto") -> PreviousRun:
    """Load a run directory written by ``refine run`` or ``refine update``.

    The model file is read with ``torch.load(..., weights_only=True)``: plain tensors and
    values only, no code runs. It holds the fitted feature encoder too, so new rows are encoded
    exactly as the run's were (an update run's own rows would fit a different one).
    """
    path = Path(run_dir)
    try:
        summary = read_summary(path, ("run.json", "refined.parquet", "model.pt"))
        config = RunConfig.from_dict(summary["config"])
        refined = pq.read_table(path / "refined.parquet")
        with warnings.catch_warnings():  # torch warns about a pickle it is about to refuse
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            saved = torch.load(path / "model.pt", weights_only=True, map_location="cpu")
    except InputError:
        raise
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code.
        raise InputError(
            f"{str(path / 'model.pt')!r} holds Python objects or code besides tensors and plain "
            "values; refine does not load such a file, since loading it could run code. Rerun "
            "refine run on the data to write a fresh model.pt"
        ) from None
    except (ValueError, KeyError, TypeError, OSError, pa.ArrowInvalid, RuntimeError) as exc:
        raise InputError(f"cannot load the run {str(path)!r}: {exc}") from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise InputError(f"{str(path / 'model.pt')!r} is not a refine model ({MODEL_FORMAT})")
    check_summary(summary, path / "run.json", saved.get("classes"))
    if "classes" not in summary or config.label not in refined.schema.names:
        raise InputError(
            f"{str(path)!r} is not a refine run: run.json records no classes, or "
            f"refined.parquet has no label column {config.label!r}. Rerun refine run"
        )
    try:
        classes = pa.array(summary["classes"], type=refined.schema.field(config.label).type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise InputError(
            f'{str(path / "run.json")!r}: "classes" do not fit the label\'s type ({exc}); '
            "restore the run.json that refine wrote"
        ) from None
    if "encoder" not in saved:
        raise InputError(
            f"{str(path / 'model.pt')!r} has no saved feature encoder; it was written by an older "
            "refine. Rerun refine run on the data to update from it"
        )
    encoder = FeatureEncoder.from_state(saved["encoder"])
    models = [
        MLPClassifier.from_states(
            member["states"],
            saved["n_features"],
            len(classes),
            tuple(saved["hidden"]),
            saved["dropout"],
            device,
            tuple(tuple(block) for block in saved.get("image_blocks", ())),
        )
        for member in saved["members"]
    ]
    return PreviousRun(path, config, summary, refined, classes, encoder, models)


def update(
    run_dir: str | Path,
    data: Any,
    out: str | Path | None = None,
    *,
    replay: float = 1.0,
    overwrite: bool = False,
    progress: Progress = NULL_PROGRESS,
    command: str | None = None,
    workers: int | str = "auto",
    memory: str | int | None = None,
    **options: Any,
) -> RunResult:
    """Refine the rows of ``data`` with the run in ``run_dir`` as the teacher; write to ``out``.

    Parameters
    ----------
    run_dir : path
        The previous run (``refine run`` or ``refine update`` output).
    data : path or table
        The new batch: the same columns, with the same types, as the run's input. Anything
        ``refine.run`` reads: a Parquet, CSV or JSON Lines path, or a table in memory.
    replay : float
        Replayed rows per new row: a uniform sample of every earlier batch's refined rows (with
        their ``label_soft`` and ``sample_weight``) trains beside the new rows, so the model does
        not forget earlier batches. A batch smaller than ``MIN_TRAIN_ROWS`` is topped up to that
        many training rows from the history, unless ``replay`` is 0 (the new rows alone).
    command : str, optional
        The command line that started the update, recorded in ``run.json`` (the CLI passes it).
    workers, memory
        As for ``refine.run``: fold processes (``"auto"``: as many as the cores, folds and
        ``memory`` allow) and the memory budget they are chosen for. An update's features
        stay in memory (they train beside the replayed rows).
    options
        Settings to change from the run's configuration (``rounds=2``, ``seed=1``,
        ``verified_file="checked.csv", key="id"`` for verified labels of the batch's rows); the
        label and feature columns cannot change. A run's ``--verified`` column stays in use.

    Returns
    -------
    RunResult
        For the new rows. ``summary["parent"]`` names the previous run.
    """
    fixed = {
        "label",
        "features",
        "ignore",
        "text",
        "image",
        "image_model",
        "image_size",
        "text_model",
        "max_categories",
        "teacher_features",
        "student_features",
    } & set(options)
    if fixed:
        raise ConfigError(
            f"refine update keeps the run's {', '.join(sorted(fixed))}; start a new run to change it"
        )
    if not 0 <= replay <= 100:
        raise ConfigError(f"--replay must be in [0, 100] replayed rows per new row, got {replay}")
    check_not_spawning()
    # Held until the run directory is renamed into place: one refine process per --out.
    execution = (parse_workers(workers), parse_memory(memory))
    with output_lock(out):
        return _update(run_dir, data, out, replay, overwrite, progress, options, command, execution)


def _update(
    run_dir: str | Path,
    data: Any,
    out: str | Path | None,
    replay: float,
    overwrite: bool,
    progress: Progress,
    options: dict[str, Any],
    command: str | None = None,
    execution: tuple[int | None, int | None] = (1, None),
) -> RunResult:
    if out is not None:
        check_output(Path(out), overwrite)
    started = time.perf_counter()
    previous = load_run(run_dir)
    if previous.config.votes is not None or previous.config.annotations is not None:
        raise InputError(
            f"{str(run_dir)!r} was refined from votes (--votes or --annotations), which refine "
            "update does not take yet; rerun refine run on all the rows and their votes"
        )
    # A verified-labels file belongs to the batch it was made for, not to the next one.
    config = with_options(
        dataclasses.replace(previous.config, verified_file=None, key=None), options
    )
    config.validate()
    batch, verified, source = _read_batch(previous, data, out, config, progress)
    table = batch.table
    key = _batch_key(previous, table, config)
    timings = {"read": time.perf_counter() - started}

    started = time.perf_counter()
    # --text-model, --image-model DIR: the cache (and a text model's run embeddings) spare
    # the model rows it has seen.
    previous.reuse_embeddings(config.embedding_cache, progress)
    X = previous.encoder.transform(table)
    for encoder in previous.encoder.embedded:
        progress.note(encoder.encoded_note())
    history, seen = _history(previous, config.seed)
    wanted = round(replay * table.num_rows)
    if replay > 0:
        wanted = max(wanted, MIN_TRAIN_ROWS - table.num_rows)
    replayed = _replay_sample(previous, history, wanted, config.seed)
    timings["encode"] = time.perf_counter() - started

    started = time.perf_counter()
    teacher = _teacher(previous, X)
    timings["teacher"] = time.perf_counter() - started

    augment = augmenter(batch, previous.encoder, config) if config.augment else None
    rows = len(X) + len(replayed.X)
    plan = dataclasses.replace(
        budget_plan(
            rows, X.shape[1], batch.n_classes, config.folds, *execution, model=config.model
        ),
        streaming=False,
    )
    with FoldRunner(plan.workers) as runner:
        state = refine_rounds(
            Rounds(
                batch,
                X,
                config,
                progress,
                timings,
                teacher=teacher,
                replay=replayed,
                augment=augment,
                image_blocks=previous.encoder.image_blocks,
                runner=runner,
                verified=verified,
            )
        )
    student = student_model(batch, X, previous.encoder, config, state, timings, out)
    summary = summarise_run(batch, previous.encoder, config, state, timings, source, command, key)
    summary["execution"] = plan.describe()
    if student is not None:
        summary["student_model"] = describe_student(student)
    # --rounds counts retraining rounds; the earlier model's judgement is round 1 of
    # rounds.parquet, said apart so the count matches what was asked.
    summary["rounds_run"] = len(state.rounds) - 1
    summary["teacher_round"] = True
    summary["parent"] = {
        "run": str(previous.path.resolve()),
        "input": previous.summary.get("input"),
        "rows": previous.summary.get("rows"),
        "refine_version": previous.summary.get("refine_version"),
    }
    summary["replayed_rows"] = len(replayed.X)
    summary["history"] = {"rows_seen": seen, "rows_kept": history.num_rows}
    return finish_run(
        batch,
        previous.encoder,
        config,
        state,
        summary,
        out,
        overwrite,
        extra_files={"history.parquet": history},
        student=student,
    )


def _read_batch(
    previous: PreviousRun,
    data: Any,
    out: str | Path | None,
    config: RunConfig,
    progress: Progress,
) -> tuple[LabelledTable, np.ndarray, Input]:
    """The new batch with the run's columns in the run's types (``refine.io.conform``), labels
    encoded with the run's classes, its verified labels ``(N,)``, and where it came from."""
    source = read_input(data)
    note_reader(source, progress)
    table = source.table
    if out is not None and source.path is not None:
        check_input_outside(source.path, Path(out))
    conformed = conform(previous.input_schema, table, previous.unread_columns)
    for name, kind in conformed.kept.items():
        progress.note(
            f"column {name!r} is {kind} in the batch, {previous.input_schema.field(name).type} "
            "in the run's input; refine does not read it, so it is kept as it is"
        )
    if table.num_rows == 0:
        raise InputError("the new batch has no rows; pass a Parquet file with rows to update")
    batch = encode_labels(conformed.table, config.label, config.folds, classes=previous.classes)
    verified = verified_labels(batch, config.verified, config.verified_file, config.key)
    return batch, verified, source


def _batch_key(previous: PreviousRun, table: pa.Table, config: RunConfig) -> RowKey:
    """The columns naming the batch's rows: the update's --key, else the earlier run's --key
    where it still holds unique values, else what the run's --ignore or id-like names give."""
    if config.key is None:
        recorded = previous.summary.get("key") or {}
        columns = recorded.get("columns") or []
        if recorded.get("from") == FROM_KEY and len(columns) == 1:
            try:
                return row_key(table, config.label, columns[0])
            except InputError:
                pass
    return row_key(table, config.label, config.key, config.ignore)


def _teacher(previous: PreviousRun, X: np.ndarray) -> Teacher:
    """The earlier run's fold models on the new rows, with its calibration and verdict."""
    members = previous.member_proba(X)
    return Teacher(
        proba=members.mean(0),
        agreement=ensemble_agreement(members),
        temperature=previous.temperature,
        reliable=bool(previous.summary.get("teacher_reliable", True)),
    )


def _history(previous: PreviousRun, seed: int) -> tuple[pa.Table, int]:
    """A uniform sample, of at most ``HISTORY_ROWS`` rows, of every row that trained in the
    chain of runs ending with ``previous``, and the number of rows it stands for.

    A plain run's history is its own rows. An update run keeps, in ``history.parquet``, the
    sample of everything before its batch; here it is merged with that batch, each part
    sampled in proportion to the rows it stands for, so the oldest batch is replayed as often
    as the newest and the file does not grow without bound.
    """
    refined = previous.refined.replace_schema_metadata(None)
    trained = pc.and_(
        pc.greater(refined.column("sample_weight"), 0), pc.is_valid(refined.column("label_refined"))
    )
    latest = refined.filter(trained)
    path = previous.path / "history.parquet"
    if path.is_file():
        old = _like(pq.read_table(path).replace_schema_metadata(None), latest.schema)
        seen_old = int(previous.summary.get("history", {}).get("rows_seen", old.num_rows))
    else:
        old, seen_old = latest.slice(0, 0), 0
    seen = seen_old + latest.num_rows
    keep = min(HISTORY_ROWS, old.num_rows + latest.num_rows)
    from_old = min(old.num_rows, round(keep * seen_old / max(seen, 1)))
    from_latest = min(latest.num_rows, keep - from_old)
    rng = np.random.default_rng([seed, 3])
    parts = [
        part.take(pa.array(np.sort(rng.choice(part.num_rows, size=size, replace=False))))
        for part, size in ((old, from_old), (latest, from_latest))
    ]
    # A batch may differ from the one before in nullability (DuckDB writes "not null").
    return pa.concat_tables(parts, promote_options="default"), seen


def _like(old: pa.Table, schema: pa.Schema) -> pa.Table:
    """The older history's rows in the types of ``schema``, the latest batch's. Only a column
    the run never reads can have changed type (``refine.io.conform``); its old values are cast
    where Arrow can do so safely, else left null, since replay reads only the features and
    targets."""
    columns = []
    for field in schema:
        column = old.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except pa.ArrowException:
                column = pa.nulls(old.num_rows, field.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=schema.names)


def _replay_sample(previous: PreviousRun, history: pa.Table, rows: int, seed: int) -> Extra:
    """A uniform sample of the history's rows, with their refined targets and weights."""
    rng = np.random.default_rng([seed, 2])
    take = pa.array(
        np.sort(rng.choice(history.num_rows, size=min(rows, history.num_rows), replace=False))
    )
    sample = history.take(take)
    k = len(previous.classes)
    codes = pc.index_in(sample.column("label_refined"), value_set=previous.classes)
    soft = sample.column("label_soft").combine_chunks()
    return Extra(
        X=previous.encoder.transform(sample),
        targets=soft.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, k),
        weights=sample.column("sample_weight").to_numpy().astype(np.float32),
        labels=codes.to_numpy(zero_copy_only=False).astype(np.int64),
    )
