"""Build the output tables with their declared schemas, and write a run directory atomically."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from refine.errors import OutputError
from refine.io.decisions import SOURCES, Decisions
from refine.io.read import LabelledTable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, output_lock does nothing
    fcntl = None  # type: ignore[assignment]

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # a full disk, or quota
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}

# annotators.parquet, one row per annotator of a run with votes (refine.judge.annotators).
ANNOTATORS_SCHEMA = pa.schema(
    [
        ("annotator", pa.string()),
        ("labels_given", pa.int64()),
        ("accuracy", pa.float32()),
        ("accuracy_low", pa.float32()),
        ("accuracy_high", pa.float32()),
        ("confusion", pa.list_(pa.list_(pa.float32()))),
        ("agreement", pa.float32()),
    ]
)
ROUNDS_SCHEMA = pa.schema(
    [
        ("round", pa.int32()),
        ("flagged", pa.int64()),
        ("corrected", pa.int64()),
        ("excluded", pa.int64()),
        ("pseudo_labelled", pa.int64()),
        ("changed", pa.int64()),
        ("oof_accuracy", pa.float64()),
        ("ece_before", pa.float64()),
        ("ece_after", pa.float64()),
        ("temperature", pa.float64()),
        ("reliable", pa.bool_()),
        ("policy", pa.string()),
        ("seconds", pa.float64()),
        # With votes: the model prior's power the held-out votes chose (null: the majority
        # vote), and the annotators' mean estimated accuracy.
        ("votes_temper", pa.float64()),
        ("annotator_accuracy", pa.float64()),
    ]
)


def output_schema(data: LabelledTable) -> pa.Schema:
    """The input schema followed by refine's columns (see DESIGN.md's output contract)."""
    label_type = data.table.schema.field(data.label).type
    return (
        data.table.schema.append(pa.field("label_refined", label_type))
        .append(pa.field("label_soft", pa.list_(pa.float32())))
        .append(pa.field("label_quality", pa.float32()))
        .append(pa.field("is_label_issue", pa.bool_()))
        .append(pa.field("label_predicted", label_type))
        .append(pa.field("label_source", pa.string()))
        .append(pa.field("sample_weight", pa.float32()))
    )


def refined_table(
    data: LabelledTable,
    decisions: Decisions,
    proba: np.ndarray,
    is_issue: np.ndarray,
    quality: np.ndarray,
    metadata: dict[str, Any],
) -> pa.Table:
    """The input table, unchanged, with refine's columns appended."""
    n, k = proba.shape
    labelled = data.labels >= 0
    label_type = data.table.schema.field(data.label).type
    soft = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), pa.array(decisions.soft.reshape(-1))
    )
    columns = [
        _class_column(data, decisions.refined, label_type),
        soft,
        pa.array(quality.astype(np.float32), mask=~labelled),
        pa.array(labelled & is_issue),
        _class_column(data, proba.argmax(1), label_type),
        pa.array(np.asarray(SOURCES, dtype=object)[decisions.source], type=pa.string()),
        pa.array(decisions.weight.astype(np.float32)),
    ]
    table = data.table
    schema = output_schema(data)
    for field, column in zip(list(schema)[len(table.schema) :], columns, strict=True):
        table = table.append_column(field, column)
    existing = dict(data.table.schema.metadata or {})
    existing.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
    return table.replace_schema_metadata(existing)


def write_refined_from(
    path: Path,
    batches: Iterator[pa.RecordBatch],
    data: LabelledTable,
    decisions: Decisions,
    proba: np.ndarray,
    is_issue: np.ndarray,
    quality: np.ndarray,
    metadata: dict[str, Any],
) -> None:
    """Write ``refined_table``'s file to ``path`` from ``batches``, the input read again (its
    rows in order), a row group at a time; ``data`` may hold only the input's schema. The bytes
    are those of ``write_parquet(refined_table(...))``: the same row groups of
    ``ROW_GROUP_ROWS`` rows, the same chunks within them."""
    start, writer = 0, None
    try:
        for batch in _row_groups(batches, data.table.schema):
            n = batch.num_rows
            rows = slice(start, start + n)
            piece = LabelledTable(batch, data.label, data.labels[rows], data.classes)
            part = Decisions(*(getattr(decisions, f)[rows] for f in _DECISION_FIELDS))
            table = refined_table(piece, part, proba[rows], is_issue[rows], quality[rows], metadata)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
            start += n
    finally:
        if writer is not None:
            writer.close()
    if start != len(data.labels):
        raise OutputError(
            f"the input has {start:,} rows now but had {len(data.labels):,} when read; "
            "leave the input unchanged while refine runs"
        )


# Rows per row group of every Parquet file refine writes, in memory or from the input read
# again: pyarrow's writer holds a row group whole until it closes, and pyarrow's default (1Mi
# rows) made the write the peak of a 1M-row streaming run (+0.54 GiB, reports/scale.md). The
# size of a batch of pyarrow.dataset, and close to DuckDB's own row groups (122,880 rows).
ROW_GROUP_ROWS = 1 << 17
_DECISION_FIELDS = ("refined", "source", "weight", "soft")


def _row_groups(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.Table]:
    """``batches`` regrouped into tables of ``ROW_GROUP_ROWS`` rows (the last one shorter),
    each keeping the batches' own boundaries inside it."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while count + batch.num_rows >= ROW_GROUP_ROWS:
            take = ROW_GROUP_ROWS - count
            yield pa.Table.from_batches([*held, batch.slice(0, take)], schema=schema)
            held, count, batch = [], 0, batch.slice(take)
        if batch.num_rows:
            held.append(batch)
            count += batch.num_rows
    if held:
        yield pa.Table.from_batches(held, schema=schema)


def _class_column(data: LabelledTable, index: np.ndarray, label_type: pa.DataType) -> pa.Array:
    """Class values for class indices ``(N,)``; -1 gives null. Keeps the label's Arrow type."""
    column = data.classes.take(pa.array(index, mask=index < 0))
    if pa.types.is_dictionary(label_type):
        column = column.dictionary_encode().cast(label_type)
    elif column.type != label_type:  # classes of a string_view label are plain strings
        column = column.cast(label_type)
    return column


@contextlib.contextmanager
def atomic_directory(
    out: Path, overwrite: bool, check: Callable[[Path, bool], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success rename it to ``out``.

    Nothing appears at ``out`` until every file is written. With ``overwrite``, an existing run
    directory is replaced only after the new one is complete, and is put back if the new one
    cannot take its place. Any failure removes the temporary directory; an ``OSError`` (no
    space, permission denied) becomes an ``OutputError`` that names ``out``. Hold
    ``output_lock(out)`` around it so that no other refine process writes ``out`` meanwhile.
    ``check`` refuses an ``out`` it may not replace (``check_output``, for a run directory).
    """
    out = Path(out)
    (check or check_output)(out, overwrite)
    # Left by a run killed while writing: under output_lock no other process writes one.
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        # mkdtemp makes it 0700; a run directory is shared like any folder the user makes.
        tmp.chmod(0o777 & ~umask())
    except OSError as exc:
        raise output_error(out, exc) from None
    try:
        yield tmp
        _move_into_place(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(out, exc) from None
        raise


def umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's /proc).

    Elsewhere it is read by setting it and putting it back; the brief value set is 0o077, so a
    file another thread creates meanwhile is more private, never less.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # the earlier run stays where it was
        raise
    shutil.rmtree(old, ignore_errors=True)


def output_error(out: Path, exc: OSError) -> OutputError:
    """An ``OutputError`` that names ``out`` for ``exc``, raised while writing it."""
    where = str(Path(out).parent.resolve())
    failed = f"cannot write the output directory {str(out)!r}"
    if exc.errno in _NO_SPACE or "No space left" in str(exc):
        return OutputError(
            f"{failed}: no space left on the device holding {where!r}; "
            "free space or choose another --out"
        )
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_PERMISSION:
        return OutputError(
            f"{failed}: {reason} in {where!r}; "
            "choose another --out, or get write permission on that directory"
        )
    return OutputError(f"{failed}: {reason}; choose another --out")


@contextlib.contextmanager
def output_lock(out: str | Path | None) -> Iterator[None]:
    """Hold an exclusive lock on the output location ``out`` (nothing when ``out`` is None).

    The lock is ``flock`` on ``.<name>.lock`` beside ``out``, taken without waiting: a second
    refine process writing the same ``out`` stops at once with an ``OutputError`` instead of
    racing the first one to the rename. The lock file is removed on release; the kernel drops
    the lock of a process that dies, so a crash never leaves ``out`` locked. On platforms
    without ``fcntl`` (Windows) nothing is locked.
    """
    if out is None or fcntl is None:
        yield
        return
    out = Path(out)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock_file(out)
    except OSError as exc:
        _remove_empty(created)
        if isinstance(exc, OutputError):
            raise
        raise output_error(out, exc) from None
    path = _lock_path(out)
    try:
        yield
    finally:
        # Unlink while still holding the lock: a process that opened the old file finds, once
        # it gets the lock, that the path no longer names it, and starts again (_lock_file).
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        if not out.exists():
            _remove_empty(created)


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _lock_file(out: Path) -> int:
    """An open descriptor of ``out``'s lock file, locked by this process."""
    path = _lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"another refine process is writing {str(out)!r}; "
                "wait for it or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed this file as we opened it: lock the new one


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories this process created for an output it did not write."""
    for directory in directories:  # deepest first
        try:
            directory.rmdir()
        except OSError:
            return


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` named like a Parquet file, an existing ``out`` unless ``overwrite``, and
    anything that is not a run directory even then (saying so, not suggesting ``--overwrite``)."""
    out = Path(out)
    if out.suffix.lower() == ".parquet":
        name = out.with_suffix("")
        raise OutputError(
            f"--out {str(out)!r} ends in .parquet, but --out names a run directory (the cleaned "
            f"data is refined.parquet inside it): pass --out {str(name)} and read "
            f"{str(name / 'refined.parquet')}"
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(
            f"output {str(out)!r} exists and is not a directory; remove it or choose another --out"
        )
    if any(out.iterdir()) and not (out / "run.json").exists():
        raise OutputError(
            f"output {str(out)!r} is a folder that is not a refine run (no run.json), and refine "
            "never replaces one; choose another --out, or remove the folder yourself"
        )
    if not overwrite:
        raise OutputError(
            f"output {str(out)!r} already exists; pass --overwrite to replace it, "
            "or choose another --out"
        )


def check_file_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing file ``out`` unless ``overwrite``, and a directory ``out`` always."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(
            f"output {str(out)!r} is a directory; name the file to write, or choose another --out"
        )
    if out.exists() and not overwrite:
        raise OutputError(
            f"output {str(out)!r} already exists; pass --overwrite to replace it, "
            "or choose another --out"
        )


@contextlib.contextmanager
def atomic_file(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside the file ``out``; on success rename it to ``out``.

    Nothing appears at ``out`` until the file is complete, and an existing ``out`` (allowed
    only with ``overwrite``) stays as it was until then. Any failure removes the temporary
    file; an ``OSError`` becomes an ``OutputError`` that names ``out``. The file is created
    with the process's umask, as any other file the user writes.
    """
    out = Path(out)
    check_file_output(out, overwrite)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _file_error(out, exc) from None
        raise


def _file_error(out: Path, exc: OSError) -> OutputError:
    failed = f"cannot write {str(out)!r}"
    if exc.errno in _NO_SPACE or "No space left" in str(exc):
        return OutputError(
            f"{failed}: no space left on the device; free space or choose another --out"
        )
    return OutputError(f"{failed}: {exc.strerror or exc}; choose another --out")


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
