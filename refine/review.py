"""``refine review``: the rows most worth a person's check, written to a file they fill in.

A row's worth is what verifying it would add to the refined labels. Directly, the chance that
its refined label is wrong now (verifying sets it right); and through its neighbours, since a
verified row trains the next run's model and steers its choices for rows like it. So a row
counts for its own doubt plus the mean doubt of its nearest neighbours (in the run's encoded
features), and once a row is picked its neighbours count for half: the queue spreads over the
uncertain regions instead of piling up near-duplicates. The lowest ``label_quality`` is not the
same thing: a label refine already corrected with confidence has little left to gain.

The file holds a stable key (``--key COL``, else ``row``: the position in ``refined.parquet``),
the run's key columns (``refine.io.keys``: the ids a person finds the row by), the given,
predicted and refined labels, ``label_quality``, an empty ``verified_label`` column for the
person, and the input columns they need to judge the row. Filled in, it goes back with
``refine run DATA --verified-file FILE [--key COL]``.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine.config import recorded_path
from refine.errors import ConfigError, InputError, OutputError
from refine.io.keys import recorded_key, row_key
from refine.io.read import OUTPUT_COLUMNS, plain_values
from refine.io.verify import ROW_KEY, VERIFIED_LABEL

# A picked row's neighbours learn from it: their doubt counts for this much afterwards.
NEIGHBOUR_SHARE = 0.5
NEIGHBOURS = 10
# Rows whose neighbourhoods are compared: the most doubtful, this many per row asked for.
CANDIDATES_PER_PICK = 20
MIN_CANDIDATES = 2_000
STRATEGIES = ("value", "random")
# Columns a person cannot read in a spreadsheet; the Parquet file keeps them.
_CSV_SKIPPED = "binary, list and struct columns (image bytes, embeddings) are left out of CSV"


def doubt(refined: pa.Table) -> np.ndarray:
    """The chance ``(N,)`` that each row's refined label is wrong, from ``refined.parquet``: a
    kept given label is right with probability ``label_quality``, a correction or pseudo-label
    with its ``sample_weight`` (the probability refine gave it), an excluded or unlabelled row
    with the model's top probability in ``label_soft``. Verified rows: 0."""
    source = np.asarray(refined.column("label_source").to_pylist(), dtype=object)
    quality = refined.column("label_quality").to_numpy(zero_copy_only=False).astype(np.float64)
    weight = refined.column("sample_weight").to_numpy(zero_copy_only=False).astype(np.float64)
    n = refined.num_rows
    soft = pc.list_flatten(refined.column("label_soft")).to_numpy(zero_copy_only=False)
    top = soft.reshape(n, -1).max(1) if n else np.zeros(0)
    right = np.where(
        source == "given",
        np.nan_to_num(quality, nan=1.0),
        np.where(np.isin(source, ["corrected", "pseudo"]), weight, top),
    )
    right[source == "verified"] = 1.0
    return np.clip(1.0 - right, 0.0, 1.0)


def pick(
    doubts: np.ndarray,
    X: np.ndarray,
    budget: int,
    strategy: str = "value",
    seed: int = 0,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """The ``budget`` rows to verify (all ``eligible`` rows if fewer), in order: indices into
    ``doubts`` ``(N,)``, with ``X`` ``(N, D)`` the encoded features for the neighbourhoods and
    ``eligible`` ``(N,)`` the rows that may be picked (default: all; ``review`` leaves out
    verified rows). ``strategy`` "random" draws a uniform sample of the eligible rows, for
    measuring refine on a fair sample rather than steering it."""
    # Every eligible row, doubt 0 included: refine is sure of most rows of easy data (float32
    # label_quality of 1.0), and a random sample without them would not be fair.
    eligible = np.arange(len(doubts)) if eligible is None else np.flatnonzero(eligible)
    if budget < 1 or not len(eligible):
        return np.zeros(0, np.int64)
    if strategy == "random":
        rng = np.random.default_rng([seed, 6])
        return np.sort(rng.permutation(eligible)[:budget])
    from sklearn.neighbors import NearestNeighbors

    count = max(MIN_CANDIDATES, CANDIDATES_PER_PICK * budget)
    order = eligible[np.argsort(-doubts[eligible], kind="stable")]
    candidates = order[:count]
    if len(candidates) <= budget:
        return candidates
    features = _standardise(X[candidates])
    k = min(NEIGHBOURS + 1, len(candidates))
    neighbours = NearestNeighbors(n_neighbors=k).fit(features).kneighbors(features)[1][:, 1:]
    left = doubts[candidates].astype(np.float64)
    picked: list[int] = []
    available = np.ones(len(candidates), bool)
    for _ in range(budget):
        score = np.where(available, left + left[neighbours].mean(1), -np.inf)
        best = int(np.argmax(score))
        picked.append(int(candidates[best]))
        available[best] = False
        left[best] = 0.0
        left[neighbours[best]] *= NEIGHBOUR_SHARE
    return np.asarray(picked, np.int64)


def review_table(
    refined: pa.Table,
    picked: np.ndarray,
    doubts: np.ndarray,
    label: str,
    key: str | None,
    skip: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
) -> pa.Table:
    """The review file's table for rows ``picked`` of ``refined`` (see the module docstring),
    with the input columns ``names`` (the run's key) after the file's key; input columns in
    ``skip`` (the run's own verified labels, names the file's own columns take) are left
    out."""
    rows = pa.array(picked, pa.int64())
    taken = refined.take(rows)
    label_type = refined.schema.field(label).type
    keys = taken.column(key) if key is not None else rows
    shown = [n for n in names if n not in (label, key, *skip)]
    columns: list[tuple[str, Any]] = [
        (key or ROW_KEY, keys),
        *((name, taken.column(name)) for name in shown),
        (label, taken.column(label)),
        ("label_predicted", taken.column("label_predicted")),
        ("label_refined", taken.column("label_refined")),
        ("label_quality", taken.column("label_quality")),
        ("label_source", taken.column("label_source")),
        ("review_doubt", pa.array(doubts[picked].astype(np.float32))),
        (VERIFIED_LABEL, pa.nulls(len(picked), plain_values(pa.array([], label_type)).type)),
    ]
    for name in refined.column_names:
        if name not in OUTPUT_COLUMNS and name not in (label, key, *skip, *shown):
            columns.append((name, taken.column(name)))
    return pa.table(dict(columns))


@dataclass(frozen=True)
class Review:
    """What ``review`` wrote: the ``table`` in the file ``out``, notes for the user (columns
    left out), and the command that reads the file back once a person has filled it in."""

    table: pa.Table
    out: Path
    notes: list[str]
    next_command: str


def review(
    run_dir: str | Path,
    budget: int,
    out: str | Path,
    key: str | None = None,
    strategy: str = "value",
    seed: int = 0,
    overwrite: bool = False,
) -> Review:
    """Pick ``budget`` rows of the run in ``run_dir`` for a person to verify and write them to
    ``out`` (``.csv`` or ``.parquet``, written atomically; an existing file is refused unless
    ``overwrite``: it may hold a person's answers).

    Rows already verified are never picked; fewer than ``budget`` rows are written when fewer
    are left. ``key`` names an input column of unique values that identifies each row (else
    the file's ``row`` column holds positions). ``strategy`` "value" picks the rows whose check
    adds most (see the module docstring), "random" a uniform sample (``seed``): figures
    measured on value-picked rows describe those hard rows, not the whole table.
    """
    from refine.update import load_run

    out = Path(out)
    fmt = _format(out)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget must be a whole number of rows >= 1, got {budget!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if out.exists() and not overwrite:
        raise OutputError(
            f"review file {str(out)!r} already exists (it may hold answers); pass --overwrite "
            "to replace it, or choose another --out"
        )
    run = load_run(run_dir, device="cpu")
    refined = run.refined
    label = run.config.label
    if key is not None:
        _check_key(refined, key, label)
    doubts = doubt(refined)
    eligible = np.asarray(refined.column("label_source").to_pylist(), dtype=object) != "verified"
    X = run.encoder.transform(refined) if strategy == "value" else np.zeros((len(doubts), 0))
    picked = pick(doubts, X, budget, strategy, seed, eligible)
    notes = []
    own = (key or ROW_KEY, "review_doubt", VERIFIED_LABEL)
    clashes = [c for c in refined.column_names if c in own and c not in (key, run.config.verified)]
    if clashes:
        notes.append(
            "input columns named like the review file's own columns are left out: "
            + ", ".join(clashes)
        )
    skip = tuple(c for c in (run.config.verified, *clashes) if c is not None)
    names = recorded_key(run.summary, refined.column_names)
    if names is None:  # a run from before refine recorded its key
        try:
            names = row_key(refined, label, run.config.key, run.config.ignore).columns
        except InputError:
            names = ()
    table = review_table(refined, picked, doubts, label, key, skip, names)
    if not eligible.any():
        notes.append("every row of the run is verified already: nothing is left to review")
    if fmt == "csv":
        dropped = [f.name for f in table.schema if _unreadable_in_csv(f.type)]
        if dropped:
            table = table.drop_columns(dropped)
            notes.append(f"{_CSV_SKIPPED}: {', '.join(dropped)}; write .parquet to keep them")
    _write(table, out, fmt)
    return Review(table, out, notes, _next_command(run, Path(run_dir), out, key))


def _next_command(run: Any, run_dir: Path, out: Path, key: str | None) -> str:
    """``refine run`` on the run's input with the filled-in file. It reruns the run's recorded
    options (``--config``) where they do not clash with the file: not when the run read
    verified labels from a column, or joined another file by another key."""
    data = recorded_path(run.summary) or "DATA"
    words = ["refine", "run", data]
    if run.config.verified is None and run.config.key in (None, key):
        words += ["--config", str(run_dir / "run.json")]
    words += ["--verified-file", str(out)]
    if key is not None:
        words += ["--key", key]
    return shlex.join([*words, "--out", f"{run_dir}-verified"])


def _check_key(refined: pa.Table, key: str, label: str) -> None:
    names = [n for n in refined.column_names if n not in OUTPUT_COLUMNS]
    if key == label:
        raise InputError(
            f"--key names the label column {key!r}; a key is a column of unique values that "
            "identifies each row, such as an id"
        )
    if key not in names:
        raise InputError(
            f"--key {key!r} is not an input column of the run; its columns are: "
            f"{', '.join(repr(n) for n in names[:20])}"
        )
    column = plain_values(refined.column(key))
    if pa.types.is_nested(column.type) or pa.types.is_null(column.type):
        raise InputError(
            f"--key names {key!r}, a column of type {column.type}; a key must hold single "
            "values, such as the integers or strings of an id column"
        )
    if column.null_count:
        row = int(np.argmax(pc.is_null(column).to_numpy(zero_copy_only=False)))
        raise InputError(
            f"key column {key!r} is null in row {row} ({column.null_count} null in all); a key "
            "must name every row (or leave --key out to key rows by their position)"
        )
    counts = pc.value_counts(column)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        raise InputError(
            f"key column {key!r} holds {json.dumps(repeated[0].as_py(), default=str)} more than "
            "once; --key must name a column of unique values (or leave it out to key rows by "
            "their position)"
        )


def _format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ConfigError(
        f"--out {str(out)!r}: name a .csv file (to fill in a spreadsheet) or a .parquet file"
    )


def _unreadable_in_csv(kind: pa.DataType) -> bool:
    return (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_struct(kind)
        or pa.types.is_map(kind)
    )


def _write(table: pa.Table, out: Path, fmt: str) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            import pyarrow.csv as csv

            csv.write_csv(table, tmp)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        raise OutputError(
            f"cannot write the review file {str(out)!r}: {reason}; choose another --out"
        ) from None


def _standardise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    sd = X.std(0)
    return (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
