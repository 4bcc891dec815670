"""The clean model as a product: distill a run into one small calibrated student
(``refine distill``), predict with it (``refine predict``), export it (``refine export``).

``distill`` reads a finished run directory: its encoder and fold models (``model.pt``), and the
teacher ensemble's calibrated soft labels and weights (``label_soft``, ``sample_weight`` of
``refined.parquet``); the student trains on every row (``refine.learn.student``) and is written
as a model directory (``refine.learn.modeldir``). ``predict`` streams a Parquet file or directory
in batches through the student and writes every input row and column, then ``label_predicted``,
``label_proba``, ``confidence`` and ``abstain``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from refine.config import VERSION
from refine.encode.columns import OneHotEncoder
from refine.errors import ConfigError, InputError, OutputError
from refine.finish import versions
from refine.io.conform import cast_safely, holds_values
from refine.io.read import as_table
from refine.io.write import atomic_file
from refine.judge.relabel import true_class_of
from refine.judge.trust import student_temperature
from refine.learn.graph import FORMATS, export_graph
from refine.learn.modeldir import (
    StudentModel,
    check_model_out,
    is_model_dir,
    load_model_dir,
    student_dir_of,
    train_student,
    write_model_dir,
)
from refine.learn.ray_data import carry_refine_errors
from refine.learn.ray_engine import check_engine
from refine.learn.student import coverage_threshold, network_parameters
from refine.progress import NULL_PROGRESS, Progress
from refine.update import load_run

PREDICT_COLUMNS = ("label_predicted", "label_proba", "confidence", "abstain")
GRAPH_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".torchscript": "torchscript"}
# Rows encoded and predicted at a time: any input is predicted in bounded memory.
BATCH_ROWS = 65_536


def distill(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    size: str = "auto",
    soft_temperature: float = 1.0,
    seed: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> StudentModel:
    """Train one student on every row of the run in ``run_dir`` and write it to ``out``.

    Parameters
    ----------
    run_dir : path
        A directory written by ``refine run`` or ``refine update``; only read.
    out : path, optional
        The model directory to write, atomically; None: return the model without writing.
    size : str
        Hidden widths (``"64"``, ``"128,64"``), a parameter budget (``"params:20000"``), or
        ``"auto"``: the teacher's widths, one network in place of the ensemble's folds x seeds
        x snapshots.
    soft_temperature : float
        Softens (above 1) or sharpens (below 1) the soft labels the student learns.
    seed : int, optional
        Seeds the student's fits; None: the run's seed.
    """
    if out is not None:
        check_model_out(Path(out), overwrite)  # before the training, not after
    student = _distill(run_dir, size, soft_temperature, seed, device, progress)
    if out is not None:
        write_model_dir(Path(out), student, overwrite)
        student.manifest["path"] = str(out)
    return student


def _distill(
    run_dir: str | Path,
    size: str,
    soft_temperature: float,
    seed: int | None,
    device: str,
    progress: Progress,
) -> StudentModel:
    _check_soft_temperature(soft_temperature)
    previous = load_run(run_dir, device)
    config = previous.config
    table = previous.refined
    soft = _soft_labels(table.column("label_soft"), len(previous.classes))
    weight = table.column("sample_weight").to_numpy(zero_copy_only=False).astype(np.float32)
    previous.reuse_embeddings(progress=progress)  # the run's rows: encoded once, by the run
    X = previous.encoder.transform(table)
    teacher = sum(network_parameters(m) for m in previous.models)
    given = _class_codes(table.column(config.label), previous.classes)
    refined = _class_codes(table.column("label_refined"), previous.classes)
    is_verified = pc.equal(table.column("label_source"), "verified")
    verified = np.where(is_verified.to_numpy(zero_copy_only=False), refined, -1)
    truth = true_class_of(soft, refined, config.soft_mix)
    progress.note(f"distilling {table.num_rows:,} rows of {run_dir} into one student")
    return train_student(
        X,
        soft,
        weight,
        previous.encoder,
        table.schema,
        table.schema.field(config.label),
        previous.classes,
        config,
        size,
        soft_temperature,
        config.seed if seed is None else seed,
        teacher,
        {"run": str(Path(run_dir).resolve()), "folds": config.folds},
        versions(),
        device,
        student_temperature(previous.summary.get("trust"), given, verified, truth),
    )


def _class_codes(column: pa.ChunkedArray, classes: pa.Array) -> np.ndarray:
    """``(N,)`` the index in ``classes`` of each value of ``column``, -1 for null."""
    codes = pc.index_in(column, value_set=classes)
    return codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _check_soft_temperature(value: float) -> None:
    if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
        raise ConfigError(f"--student-temperature must be a number above 0, got {value!r}")


def _soft_labels(column: pa.ChunkedArray, n_classes: int) -> np.ndarray:
    """``label_soft`` as ``(N, K)`` float32 (a null list, which refine never writes, as uniform)."""
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    if column.null_count == 0 and len(flat) == len(column) * n_classes:
        return flat.reshape(len(column), n_classes)
    rows = [v if v is not None else [1.0 / n_classes] * n_classes for v in column.to_pylist()]
    return np.asarray(rows, np.float32)


@dataclass
class Prediction:
    """What ``predict`` made: the file written (or the table, with no ``out``), the rows, the
    rows that abstain, and the confidence threshold (None: no row abstains)."""

    out: Path | None
    rows: int
    abstained: int
    threshold: float | None
    table: pa.Table | None = None


def predict(
    model: str | Path | StudentModel,
    data: Any,
    out: str | Path | None = None,
    *,
    min_confidence: float | None = None,
    coverage: float | None = None,
    batch_rows: int = BATCH_ROWS,
    overwrite: bool = False,
    device: str = "auto",
    embedding_cache: str = "auto",
    engine: str = "local",
    address: str | None = None,
) -> Prediction:
    """Predict the rows of ``data`` with the student of ``model`` and write them to ``out``.

    Parameters
    ----------
    model : path or StudentModel
        A model directory (``refine distill``), or a run directory with a ``student/``.
    data : path or table
        A Parquet file or directory of Parquet files (read in batches of ``batch_rows``), or
        a table in memory (pyarrow, pandas). It needs every column the student reads, with the
        types it was trained on; other columns are carried through.
    out : path, optional
        The Parquet file to write, atomically; None: return the table in ``Prediction.table``.
    min_confidence : float, optional
        Rows whose calibrated confidence is below it get ``abstain`` true.
    coverage : float, optional
        Instead of ``min_confidence``: the share of rows to answer; the threshold is the
        student's out-of-fold confidence quantile at ``1 - coverage``.
    embedding_cache : str
        Where a ``--text-model`` or ``--image-model DIR`` student finds and keeps embeddings
        (``auto``, ``off`` or a directory, as ``refine run --embedding-cache``): values the run
        or an earlier prediction encoded are not encoded again.
    engine : {"local", "ray"}
        ``ray``: Ray Data actors read the Parquet ``data``'s row groups where they lie and
        predict them (one actor per GPU of the cluster, else per CPU), and this process writes
        the rows in order (docs/ray.md). The output is the local engine's.
    address : str, optional
        With ``engine="ray"``: the Ray cluster to join; without it a local Ray instance.

    Raises
    ------
    InputError
        A column the student reads is missing or has another type, a categorical column holds
        a value the student never saw, or the data already has a column ``predict`` adds.
    """
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise ConfigError(f"batch_rows must be a whole number >= 1, got {batch_rows!r}")
    if not isinstance(embedding_cache, str) or not embedding_cache.strip():
        raise ConfigError(
            f"--embedding-cache must be auto, off or a directory, got {embedding_cache!r}"
        )
    check_engine(engine, address)
    student = model if isinstance(model, StudentModel) else load_model_dir(model, device)
    if student.encoder.embedded:
        student.encoder.use_cache(embedding_cache)
    threshold = _threshold(student, min_confidence, coverage)
    schema, batches = _batches(data, batch_rows)
    plan = _Plan(student, schema, threshold)  # the data is checked here, before Ray starts
    if engine == "ray":
        setup = (_model_path(student), device, embedding_cache, schema, threshold, batch_rows)
        outputs = _on_ray(plan, _ray_input(data, schema), setup, address)
    else:
        outputs = (plan.apply(batch) for batch in batches)
    if out is None:
        tables = list(outputs)
        table = pa.concat_tables(tables) if tables else plan.schema.empty_table()
        return Prediction(None, table.num_rows, plan.abstained, threshold, table)
    out = Path(out)
    if isinstance(data, str | Path) and Path(data).resolve() in (
        out.resolve(),
        *out.resolve().parents,
    ):
        raise OutputError(f"--out {str(out)!r} is the input data; choose another --out")
    import pyarrow.parquet as pq

    with (
        atomic_file(out, overwrite) as tmp,
        pq.ParquetWriter(tmp, plan.schema, compression="zstd") as w,
    ):
        for table in outputs:
            w.write_table(table)
    return Prediction(out, plan.rows, plan.abstained, threshold)


def _model_path(student: StudentModel) -> str:
    if student.path is None:
        raise ConfigError(
            "--engine ray loads the student on every actor from its directory: pass the model "
            "directory (or run directory), not a StudentModel built in memory"
        )
    return str(student.path)


def _ray_input(data: Any, schema: pa.Schema) -> Path:
    """The Parquet file or directory Ray's actors read, each file holding every column."""
    from refine.learn.ray_data import row_groups

    if not isinstance(data, str | Path):
        raise ConfigError(
            "--engine ray reads the data where it lies: pass a Parquet file or directory, not "
            f"a table in memory ({type(data).__name__}), or use --engine local"
        )
    partitions = sorted(set(schema.names) - row_groups(Path(data))[1])
    if partitions:
        raise ConfigError(
            f"--engine ray reads each Parquet file by itself, and the column(s) "
            f"{', '.join(map(repr, partitions))} of {str(data)!r} are in none of them (hive "
            "partitions): use --engine local, or write those columns into the files"
        )
    return Path(data)


def _on_ray(plan: _Plan, path: Path, setup: tuple, address: str | None) -> Iterator[pa.Table]:
    """The output tables of ``path``'s row groups, predicted by Ray Data actors (``_Predict``
    with ``setup``) where the files lie, in row order, counted into ``plan``."""
    from refine.learn.ray_data import (
        checked,
        in_row_order,
        map_row_groups,
        raise_refine_cause,
        row_groups,
    )
    from refine.learn.ray_engine import ray_session

    groups = row_groups(path)[0]
    with ray_session(address) as ray:
        resources = ray.cluster_resources()
        gpus = 0 if setup[1] == "cpu" else int(resources.get("GPU", 0))
        mapped = map_row_groups(ray, groups, _Predict, setup, int(resources.get("CPU", 1)), gpus)
        with raise_refine_cause():
            arriving = checked(mapped.iter_batches(batch_size=None, batch_format="pyarrow"))
            for table in in_row_order(arriving, ROW):
                table = pa.Table.from_arrays(table.columns, schema=plan.schema)
                plan.rows += table.num_rows
                plan.abstained += int(pc.sum(table.column("abstain")).as_py() or 0)
                yield table


# The column a Ray actor numbers its output rows by, for them to be written in order.
ROW = "__refine_row"


class _Predict:
    """A Ray Data actor: the student at ``model`` loaded once (on a GPU where it holds one);
    each call reads the row groups its batch names (``file``, ``group``, ``start``) and
    predicts them ``batch_rows`` at a time, as ``predict`` does here, its rows numbered."""

    def __init__(
        self,
        model: str,
        device: str,
        embedding_cache: str,
        schema: pa.Schema,
        threshold: float | None,
        batch_rows: int,
    ):
        student = load_model_dir(model, "auto" if device != "cpu" else "cpu")
        if student.encoder.embedded:
            student.encoder.use_cache(embedding_cache)
        self.plan = _Plan(student, schema, threshold)
        self.batch_rows = batch_rows

    @carry_refine_errors
    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow.parquet as pq

        outputs = []
        named = (batch.column(c).to_pylist() for c in ("file", "group", "start"))
        for file, group, start in zip(*named, strict=True):
            table = pq.ParquetFile(file).read_row_group(group)
            for piece in table.to_batches(max_chunksize=self.batch_rows):
                first = self.plan.rows = start  # the row a category error names
                output = self.plan.apply(piece)
                start += output.num_rows
                rows = np.arange(first, start, dtype=np.int64)
                outputs.append(output.append_column(ROW, pa.array(rows)))
        return pa.concat_tables(outputs)


def _threshold(
    student: StudentModel, min_confidence: float | None, coverage: float | None
) -> float | None:
    if min_confidence is not None and coverage is not None:
        raise ConfigError("pass --min-confidence or --coverage, not both")
    if min_confidence is not None:
        if not 0 <= min_confidence <= 1:
            raise ConfigError(f"--min-confidence must be in [0, 1], got {min_confidence}")
        return float(min_confidence)
    if coverage is not None:
        if not 0 < coverage <= 1:
            raise ConfigError(f"--coverage must be in (0, 1], got {coverage}")
        return coverage_threshold(student.manifest.get("confidence_quantiles") or [], coverage)
    return None


def _batches(data: Any, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The data's schema and its rows in order, ``batch_rows`` at a time."""
    if isinstance(data, str | Path):
        path = Path(data)
        if not path.exists():
            raise InputError(f"data {str(path)!r} does not exist; pass a Parquet file or directory")
        try:
            if path.is_file():
                import pyarrow.parquet as pq

                file = pq.ParquetFile(path)
                schema = file.schema_arrow
                return schema, file.iter_batches(batch_rows)
            dataset = ds.dataset(path, format="parquet", partitioning="hive")
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read {str(path)!r} as Parquet: {exc}") from None
        return dataset.schema, iter(dataset.to_batches(batch_size=batch_rows, use_threads=False))
    table = as_table(data)
    return table.schema, iter(table.to_batches(max_chunksize=batch_rows))


class _Plan:
    """How each batch becomes the output's: the student's columns checked once against the
    data's schema (and cast where no value changes), categories checked in every batch."""

    def __init__(self, student: StudentModel, schema: pa.Schema, threshold: float | None):
        self.student = student
        self.threshold = threshold
        self.rows = 0
        self.abstained = 0
        problems = [
            f"column {name!r}: the data already has it, and refine predict adds it; rename it"
            for name in PREDICT_COLUMNS
            if name in schema.names
        ]
        self.casts: dict[str, pa.DataType] = {}
        for want in student.schema:
            if want.name not in schema.names:
                problems.append(
                    f"column {want.name!r} is missing: the student reads it ({want.type}); add it"
                )
                continue
            got = schema.field(want.name).type
            if got != want.type:
                if holds_values(got, want.type):
                    self.casts[want.name] = want.type
                else:
                    problems.append(
                        f"column {want.name!r} has type {got}, but the student was trained on "
                        f"{want.type}; cast it to {want.type}"
                    )
        if problems:
            raise InputError(
                "the data does not fit the student:\n" + "\n".join(f"  {p}" for p in problems)
            )
        metadata = dict(schema.metadata or {})
        metadata[b"refine.classes"] = json.dumps(student.classes.to_pylist()).encode()
        metadata[b"refine.predict"] = json.dumps(
            {"version": VERSION, "model": student.manifest.get("path"), "threshold": threshold}
        ).encode()
        self.schema = pa.schema(
            [
                *schema,
                pa.field("label_predicted", student.label_field.type),
                pa.field("label_proba", pa.list_(pa.float32())),
                pa.field("confidence", pa.float32()),
                pa.field("abstain", pa.bool_()),
            ],
            metadata=metadata,
        )

    def apply(self, batch: pa.RecordBatch) -> pa.Table:
        table = pa.Table.from_batches([batch])
        read = table.select(self.student.encoder.columns)
        for name, kind in self.casts.items():
            index = read.schema.get_field_index(name)
            read = read.set_column(index, name, cast_safely(read.column(name), kind))
        self._check_categories(read)
        proba = self.student.net.predict_proba(self.student.encoder.transform(read))
        best = proba.argmax(1)
        confidence = proba[np.arange(len(proba)), best]
        abstain = (
            confidence < self.threshold
            if self.threshold is not None
            else np.zeros(len(proba), bool)
        )
        self.rows += len(proba)
        self.abstained += int(abstain.sum())
        k = proba.shape[1]
        lists = pa.ListArray.from_arrays(
            pa.array(np.arange(0, (len(proba) + 1) * k, k, dtype=np.int32)),
            pa.array(proba.reshape(-1), pa.float32()),
        )
        columns = [
            *table.columns,
            self.student.classes.take(pa.array(best)),
            lists,
            pa.array(confidence, pa.float32()),
            pa.array(abstain, pa.bool_()),
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _check_categories(self, table: pa.Table) -> None:
        for encoder in self.student.encoder.encoders:
            if not isinstance(encoder, OneHotEncoder):
                continue
            column = table.column(encoder.name)
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            codes = pc.index_in(column, value_set=pa.array(encoder.categories, type=column.type))
            unknown = pc.and_(pc.is_null(codes), pc.is_valid(column))
            if pc.any(unknown).as_py():
                row = int(np.argmax(unknown.to_numpy(zero_copy_only=False)))
                known = ", ".join(repr(c) for c in encoder.categories[:10])
                more = " ..." if len(encoder.categories) > 10 else ""
                raise InputError(
                    f"column {encoder.name!r} holds {column[row].as_py()!r} (row "
                    f"{self.rows + row}), a category the student never saw in training (it "
                    f"knows {known}{more}); map it to a known category or to null"
                )


def export_model(
    model: str | Path, out: str | Path, fmt: str | None = None, overwrite: bool = False
) -> tuple[Path, Path]:
    """Export the student of ``model`` (a model directory, or a run with a ``student/``) to
    ``out`` as ``fmt`` (``onnx`` or ``torchscript``; None: from ``out``'s suffix). Returns the
    graph's path and its JSON input spec's."""
    out = Path(out)
    if fmt is None:
        fmt = GRAPH_SUFFIXES.get(out.suffix.lower())
        if fmt is None:
            raise ConfigError(
                f"--out {str(out)!r}: pass --format {' or '.join(FORMATS)} (or name a .onnx or "
                ".pt file)"
            )
    student = load_model_dir(model, "cpu")
    return out, export_graph(student, out, fmt, overwrite)


def exports_model(path: str | Path, out: str | Path, fmt: str | None) -> bool:
    """Whether ``refine export`` exports a student (else the data): ``path`` is a model directory,
    or a ``--format`` or a graph's suffix (``.onnx``, ``.pt``) asks for one. Raises
    ``InputError`` when one is asked for and ``path`` holds none."""
    graph = fmt is not None or Path(out).suffix.lower() in GRAPH_SUFFIXES
    if is_model_dir(path):
        return True
    if graph and student_dir_of(path) is None:
        what = (
            "a refine run without a student"
            if (Path(path) / "run.json").is_file()
            else "not a refine model directory"
        )
        raise InputError(
            f"{str(path)!r} is {what}, so there is no model to export; write one with refine "
            "distill RUN_DIR --out MODEL_DIR (or refine run ... --student), or export the data "
            "to a .parquet file"
        )
    return graph
