"""``refine review``: the rows most worth a person's check, written to a file they fill in.

A row's worth is what verifying it would add to the refined labels. Directly, the chance that
its refined label is wrong now (verifying sets it right); and through its neighbours, since a
verified row trains the next run's model and steers its choices for rows like it. So a row
counts for its own doubt plus the mean doubt of its nearest neighbours (in the run's encoded
features), and once a row is picked its neighbours count for half: the queue spreads over the
uncertain regions instead of piling up near-duplicates. The lowest ``label_quality`` is not the
same thing: a label refine already corrected with confidence has little left to gain.

The file holds a stable key (``--key COL``, else ``row``: the position in ``refined.parquet``),
the given, predicted and refined labels, ``label_quality``, an empty ``verified_label`` column
for the person, and the input columns they need to judge the row. Filled in, it goes back with
``refine run DATA --verified-file FILE [--key COL]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine.errors import ConfigError, InputError
from refine.read import OUTPUT_COLUMNS, plain_values
from refine.verify import ROW_KEY, VERIFIED_LABEL

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
    doubts: np.ndarray, X: np.ndarray, budget: int, strategy: str = "value", seed: int = 0
) -> np.ndarray:
    """The ``budget`` rows to verify, in order: indices into ``doubts`` ``(N,)``, with ``X``
    ``(N, D)`` the encoded features for the neighbourhoods. ``strategy`` "random" draws a
    uniform sample of the rows not yet verified (doubt > 0 or any row left), for measuring
    refine on a fair sample rather than steering it."""
    eligible = np.flatnonzero(doubts > 0)
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
) -> pa.Table:
    """The review file's table for rows ``picked`` of ``refined`` (see the module docstring);
    input columns in ``skip`` (the run's own verified labels) are left out."""
    rows = pa.array(picked, pa.int64())
    taken = refined.take(rows)
    label_type = refined.schema.field(label).type
    keys = taken.column(key) if key is not None else rows
    columns: list[tuple[str, Any]] = [
        (key or ROW_KEY, keys),
        (label, taken.column(label)),
        ("label_predicted", taken.column("label_predicted")),
        ("label_refined", taken.column("label_refined")),
        ("label_quality", taken.column("label_quality")),
        ("label_source", taken.column("label_source")),
        ("review_doubt", pa.array(doubts[picked].astype(np.float32))),
        (VERIFIED_LABEL, pa.nulls(len(picked), plain_values(pa.array([], label_type)).type)),
    ]
    for name in refined.column_names:
        if name not in OUTPUT_COLUMNS and name not in (label, key, *skip):
            columns.append((name, taken.column(name)))
    return pa.table(dict(columns))


def review(
    run_dir: str | Path,
    budget: int,
    out: str | Path,
    key: str | None = None,
    strategy: str = "value",
    seed: int = 0,
) -> tuple[pa.Table, list[str]]:
    """Pick ``budget`` rows of the run in ``run_dir`` for a person to verify and write them to
    ``out`` (``.csv`` or ``.parquet``, written atomically).

    Returns the table written and notes for the user (columns left out of a CSV file).
    """
    from refine.update import load_run

    out = Path(out)
    fmt = _format(out)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget must be a whole number of rows >= 1, got {budget!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    run = load_run(run_dir, device="cpu")
    refined = run.refined
    label = run.config.label
    if key is not None:
        _check_key(refined, key, label)
    doubts = doubt(refined)
    X = run.encoder.transform(refined) if strategy == "value" else np.zeros((len(doubts), 0))
    picked = pick(doubts, X, min(budget, int((doubts > 0).sum())), strategy, seed)
    skip = tuple(c for c in (run.config.verified,) if c is not None)
    table = review_table(refined, picked, doubts, label, key, skip)
    notes = []
    if fmt == "csv":
        dropped = [f.name for f in table.schema if _unreadable_in_csv(f.type)]
        if dropped:
            table = table.drop_columns(dropped)
            notes.append(f"{_CSV_SKIPPED}: {', '.join(dropped)}; write .parquet to keep them")
    _write(table, out, fmt)
    return table, notes


def _check_key(refined: pa.Table, key: str, label: str) -> None:
    names = [n for n in refined.column_names if n not in OUTPUT_COLUMNS]
    if key not in names or key == label:
        raise InputError(
            f"--key {key!r} is not an input column of the run; its columns are: "
            f"{', '.join(repr(n) for n in names[:20])}"
        )
    column = refined.column(key)
    if column.null_count:
        raise InputError(f"key column {key!r} has nulls; a key must name every row")
    counts = pc.value_counts(plain_values(column))
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
    from refine.write import output_error

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
        raise output_error(out, exc) from None


def _standardise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    sd = X.std(0)
    return (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
