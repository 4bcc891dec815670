"""A run's refined rows as one Parquet file for the next training job (``refine export``).

The file holds the input's columns, with their names, types, order and the input's own
metadata (pandas reads its dtypes back), then ``label_refined`` (or, with ``as_label``, the
refined label under the label column's name), ``label_soft`` when asked for, and
``sample_weight``. Its schema depends on those options alone, never on the run: with ``chain``
the rows of every batch of a chain of ``refine update`` runs follow one another, oldest batch
first, and which rows came from which run is recorded in the file's ``refine.export``
metadata rather than in a column a training job would take for a feature.

This module exports the data (``.parquet``); the same verb exports a student model as a graph
(``.onnx``, ``.pt``: ``refine.deploy.export_model``), told apart by the directory and suffix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from refine.config import VERSION, recorded_path
from refine.errors import ConfigError, InputError, OutputError
from refine.io.read import OUTPUT_COLUMNS
from refine.io.rundir import read_summary
from refine.io.write import atomic_file, check_file_output

DATA_SUFFIX = ".parquet"
# Rows read and written at a time: a run of any size is exported in bounded memory.
BATCH_ROWS = 65_536


@dataclass(frozen=True)
class RunFiles:
    """What an export reads of one run directory: its label, its recorded input and parent,
    and the schema of its ``refined.parquet``."""

    path: Path
    label: str
    input: str | None
    parent: str | None
    schema: pa.Schema

    @property
    def input_names(self) -> list[str]:
        return [name for name in self.schema.names if name not in OUTPUT_COLUMNS]


@dataclass
class Export:
    """What ``export_data`` wrote: the file, its rows and columns, and each run it read,
    oldest first, with the rows taken from it."""

    out: Path
    rows: int
    columns: list[str]
    label: str
    runs: list[tuple[Path, int]] = field(default_factory=list)
    dropped: int = 0


def export_data(
    run_dir: str | Path,
    out: str | Path,
    *,
    drop_excluded: bool = False,
    soft: bool = False,
    as_label: bool = False,
    chain: bool = False,
    overwrite: bool = False,
) -> Export:
    """Write the refined rows of the run in ``run_dir`` to the Parquet file ``out``.

    Parameters
    ----------
    run_dir : path
        A directory written by ``refine run`` or ``refine update``. It is only read.
    out : path
        The ``.parquet`` file to write, atomically; it must not exist unless ``overwrite``,
        and may not lie in a run directory or replace a run's input.
    drop_excluded : bool
        Leave out the rows refine excluded and the rows left without a label
        (``label_refined`` null: unlabelled rows no pseudo-label reached).
    soft : bool
        Keep ``label_soft``, the class probabilities to train on; their order is the file's
        ``refine.classes`` metadata.
    as_label : bool
        Write the refined label under the label column's name, in its place, instead of the
        given label and ``label_refined``: the next job reads the file unchanged.
    chain : bool
        For a run written by ``refine update``: follow ``run.json``'s parent links to the
        first run and write every batch's rows, oldest first, each row once (an update run
        holds only its own batch).

    Returns
    -------
    Export
        The file, its row count and columns, and the runs read with the rows each gave.

    Raises
    ------
    ConfigError
        ``out`` is not a ``.parquet`` file.
    InputError
        A run directory of the chain is missing or not a refine run, or the runs' columns
        do not match.
    OutputError
        ``out`` exists (without ``overwrite``), is a directory, lies in a run directory, is a
        run's input, or cannot be written.
    """
    out = Path(out)
    if out.suffix.lower() != DATA_SUFFIX:
        raise ConfigError(
            f"--out {str(out)!r}: refine export writes a run's refined data to a .parquet file "
            "(a student model to .onnx or .pt, with --format); name a .parquet file, such as "
            "clean.parquet"
        )
    runs = run_chain(run_dir) if chain else [open_run(run_dir)]
    _check_out(out, runs, overwrite)
    first = runs[0]
    for run in runs[1:]:
        if run.label != first.label or run.input_names != first.input_names:
            raise InputError(
                f"the run {str(run.path)!r} has other columns than the first run of its chain "
                f"{str(first.path)!r} (label {run.label!r}, input columns {run.input_names}); "
                "export each run without --chain"
            )
    plan = _Plan(first, drop_excluded, soft, as_label)
    counts = [_count_rows(run, drop_excluded) for run in runs]  # (rows, rows kept) of each run
    export = {
        "version": VERSION,
        "runs": [
            {"run": str(run.path.resolve()), "rows": kept}
            for run, (_, kept) in zip(runs, counts, strict=True)
        ],
        "label": first.label,
        "drop_excluded": drop_excluded,
        "soft": soft,
        "as_label": as_label,
    }
    schema = plan.schema(export)
    with atomic_file(out, overwrite) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as w:
        for run in runs:
            for batch in pq.ParquetFile(run.path / "refined.parquet").iter_batches(BATCH_ROWS):
                w.write_table(plan.apply(pa.Table.from_batches([batch]), run))
    return Export(
        out=out,
        rows=sum(kept for _, kept in counts),
        columns=schema.names,
        label=first.label,
        runs=[(run.path, kept) for run, (_, kept) in zip(runs, counts, strict=True)],
        dropped=sum(rows - kept for rows, kept in counts),
    )


def open_run(run_dir: str | Path) -> RunFiles:
    """The ``run.json`` and ``refined.parquet`` schema of a run directory, checked."""
    path = Path(run_dir)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise InputError(
            f"run directory {str(path)!r} {what}; pass the --out of a refine run or refine update"
        )
    try:
        summary = read_summary(path, ("run.json", "refined.parquet"))
        schema = pq.read_schema(path / "refined.parquet")
    except InputError:
        raise
    except (ValueError, OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read the run {str(path)!r}: {exc}") from None
    config = summary.get("config")
    label = config.get("label") if isinstance(config, dict) else None
    needed = ("label_refined", "label_soft", "label_source", "sample_weight")
    missing = [c for c in needed if c not in schema.names]
    if not isinstance(label, str) or label not in schema.names or missing:
        lacking = repr(missing[0]) if missing else f"the label column {label!r}"
        raise InputError(
            f"{str(path)!r} is not a complete refine run: refined.parquet has no {lacking}. "
            "Rerun refine run to write it again"
        )
    parent = summary.get("parent")
    parent_run = parent.get("run") if isinstance(parent, dict) else None
    if parent is not None and not isinstance(parent_run, str):
        raise InputError(
            f'{str(path / "run.json")!r}: "parent" must name the run it updated ("run": PATH); '
            "restore the run.json that refine wrote"
        )
    return RunFiles(
        path=path,
        label=label,
        input=recorded_path(summary),
        parent=parent_run,
        schema=schema,
    )


def run_chain(run_dir: str | Path) -> list[RunFiles]:
    """The run in ``run_dir`` and every run it was updated from, oldest first."""
    runs = [open_run(run_dir)]
    seen = {runs[0].path.resolve()}
    while runs[-1].parent is not None:
        child, parent = runs[-1], Path(runs[-1].parent)
        if not parent.is_dir():
            raise InputError(
                f"the run {str(child.path)!r} was updated from {str(parent)!r}, which does not "
                "exist (moved or deleted?); --chain needs every run of the chain. Put it back, "
                "or export without --chain for this run's rows alone"
            )
        if parent.resolve() in seen:
            raise InputError(
                f"the run {str(child.path)!r} names {str(parent)!r} as its parent, which is a "
                "later run of the same chain; restore the run.json files that refine wrote"
            )
        seen.add(parent.resolve())
        runs.append(open_run(parent))
    return runs[::-1]


class _Plan:
    """How each batch of ``refined.parquet`` becomes the export's: the rows kept, the columns
    and their types (the first run's, so every batch of a chain writes one schema)."""

    def __init__(self, first: RunFiles, drop_excluded: bool, soft: bool, as_label: bool) -> None:
        self.first = first
        self.drop_excluded = drop_excluded
        self.as_label = as_label
        names = list(first.input_names)
        if not as_label:
            names.append("label_refined")
        if soft:
            names.append("label_soft")
        names.append("sample_weight")
        self.names = names

    def schema(self, export: dict[str, Any]) -> pa.Schema:
        metadata = {
            k: v for k, v in (self.first.schema.metadata or {}).items() if k != b"refine.run"
        }
        metadata[b"refine.export"] = json.dumps(export).encode()
        return pa.schema([self.first.schema.field(n) for n in self.names], metadata=metadata)

    def apply(self, table: pa.Table, run: RunFiles) -> pa.Table:
        if self.drop_excluded:
            table = table.filter(_keep(table))
        if self.as_label:
            label = self.first.label
            table = table.set_column(
                table.schema.get_field_index(label), label, table.column("label_refined")
            )
        table = table.select(self.names)
        target = pa.schema([self.first.schema.field(n) for n in self.names])
        if table.schema.remove_metadata() == target:
            return table.replace_schema_metadata(None)
        try:
            return table.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise InputError(
                f"the run {str(run.path)!r} stores its columns with other types than the first "
                f"run of its chain {str(self.first.path)!r} ({exc}); export each run without "
                "--chain"
            ) from None


def _keep(table: pa.Table) -> pa.ChunkedArray:
    """Rows with a refined label that refine did not exclude."""
    return pc.and_(
        pc.not_equal(table.column("label_source"), "excluded"),
        pc.is_valid(table.column("label_refined")),
    )


def _count_rows(run: RunFiles, drop_excluded: bool) -> tuple[int, int]:
    """The rows of the run's ``refined.parquet``, and how many of them the export keeps."""
    file = pq.ParquetFile(run.path / "refined.parquet")
    rows = int(file.metadata.num_rows)
    if not drop_excluded:
        return rows, rows
    kept = 0
    for batch in file.iter_batches(BATCH_ROWS, columns=["label_source", "label_refined"]):
        kept += pc.sum(_keep(pa.Table.from_batches([batch]))).as_py() or 0
    return rows, kept


def _check_out(out: Path, runs: list[RunFiles], overwrite: bool) -> None:
    """Refuse an ``out`` that would change a run or its input, then an existing one."""
    target = out.resolve()
    for run in runs:
        directory = run.path.resolve()
        if target == directory or directory in target.parents:
            raise OutputError(
                f"--out {str(out)!r} lies in the run directory {str(run.path)!r}; refine export "
                "never changes a run: write the file outside it"
            )
        if run.input is not None:
            source = Path(run.input).resolve()
            if target == source or source in target.parents:
                raise OutputError(
                    f"--out {str(out)!r} is the input of the run {str(run.path)!r}; refine "
                    "export never replaces the data a run read: choose another --out"
                )
    check_file_output(out, overwrite)
