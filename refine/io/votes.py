"""Votes: several labels per row, from annotators or labelling functions.

Read from a list column of the data (``--votes COL``: one vote per annotator, in a fixed
order; null or -1 = abstain), or from a long table joined to the data by a key
(``--annotations FILE --key COL``: one row per key, annotator and label, as crowd tools
export them).

Out: ``Votes``: the votes ``(N, A)`` as class indices (-1 = no vote), the annotators' names
and the classes. The pipeline turns them into the given label (``label_vote``, the majority
vote, which each round's annotator model may overrule, refine.crowd) and into
``annotators.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from refine.errors import InputError
from refine.io.read import plain_values
from refine.io.verify import (
    _cast_keys,
    _count,
    _file_row,
    _plain_key,
    _shown,
    _try_cast,
    _value,
    read_side_file,
)

# The column refine writes the majority vote to, and refines from.
VOTE_LABEL = "label_vote"
# The columns of an annotations file beside the key.
ANNOTATOR, LABEL = "annotator", "label"


@dataclass(frozen=True)
class Votes:
    """``votes`` ``(N, A)``: each annotator's class index per row, -1 = no vote;
    ``annotators`` ``(A,)`` names (strings); ``classes``: the class values, sorted."""

    votes: np.ndarray
    annotators: list[str]
    classes: pa.Array


def read_votes(
    table: pa.Table,
    column: str | None,
    file: str | Path | None,
    key: str | None,
    label: str | None,
) -> Votes | None:
    """The votes from ``column`` of ``table``, or from ``file`` joined by ``key``; None when
    neither is given. The classes are those of the ``label`` column when the table has it
    (a vote outside them is an error), else the distinct vote values."""
    if column is None and file is None:
        return None
    classes = None
    if label is not None and label in table.column_names:
        classes = pc.unique(plain_values(table.column(label))).drop_null()
        classes = classes.take(pc.sort_indices(classes))
    if column is not None:
        rows, annotators, values, names = _from_column(table, column)
        where = f"votes column {column!r}"

        def named(i: int) -> str:
            return f"row {int(rows[i])}"
    else:
        assert file is not None
        if key is None:
            raise InputError(
                "--annotations needs --key: name the column of the input that the annotations "
                f"file's rows refer to (the file needs that column, {ANNOTATOR!r} and {LABEL!r})"
            )
        rows, annotators, values, names = _from_file(table, Path(file), key)
        where = f"annotations file {str(file)!r}"

        def named(i: int) -> str:
            return _file_row(i)

    values = plain_values(values)
    if classes is None:
        classes = pc.unique(values).drop_null()
        classes = classes.take(pc.sort_indices(classes))
    else:
        cast, failed = _try_cast(values, classes.type)
        if cast is None:
            _refuse_vote(values[failed[0]], named(failed[0]), len(failed), where, classes, label)
        values = cast
    codes = pc.index_in(values, value_set=classes)
    unknown = np.flatnonzero(pc.is_null(codes).to_numpy(zero_copy_only=False))
    if len(unknown):
        i = int(unknown[0])
        _refuse_vote(values[i], named(i), len(unknown), where, classes, label)
    if len(classes) < 2:
        raise InputError(
            f"{where}: the votes hold fewer than 2 classes ({classes.to_pylist()!r}); refine "
            "needs at least two classes to tell labels apart"
        )
    matrix = np.full((table.num_rows, len(names)), -1, np.int64)
    matrix[rows, annotators] = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    return Votes(matrix, names, classes)


def _refuse_vote(
    value: pa.Scalar, row: str, count: int, where: str, classes: pa.Array, label: str | None
) -> None:
    raise InputError(
        f"{where}: vote {_value(value)} in {row} is not a class of the label column "
        f"{label!r} ({_count(count, 'vote')} like it; the classes are "
        f"{_shown(classes.to_pylist(), json_values=True)}). Fix the vote, or make it null "
        "(an abstention)"
    )


def _from_column(
    table: pa.Table, column: str
) -> tuple[np.ndarray, np.ndarray, pa.Array, list[str]]:
    """Rows, annotator positions and values of the votes in a list column (nulls and -1 left
    out), and the annotators' names (``vote_0``, ``vote_1``, ... by position)."""
    if column not in table.column_names:
        raise InputError(
            f"input has no votes column {column!r}; its columns are: "
            f"{_shown(table.column_names)}. Name the list column of votes with --votes"
        )
    votes = table.column(column).combine_chunks()
    if not (pa.types.is_list(votes.type) or pa.types.is_large_list(votes.type)):
        raise InputError(
            f"votes column {column!r} has type {votes.type}; --votes needs a list column, one "
            "vote per annotator or labelling function in each row (null or -1 = abstain)"
        )
    lengths = pc.fill_null(pc.list_value_length(votes), 0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(votes)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    positions = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
    values = pc.list_flatten(votes)
    keep = pc.is_valid(values)
    if pa.types.is_integer(values.type):
        keep = pc.and_(keep, pc.not_equal(values, -1))
    keep_np = keep.to_numpy(zero_copy_only=False).astype(bool)
    width = int(lengths.max()) if len(lengths) else 0
    names = [f"vote_{j}" for j in range(width)]
    return rows[keep_np], positions[keep_np], values.filter(keep), names


def _from_file(
    table: pa.Table, path: Path, key: str
) -> tuple[np.ndarray, np.ndarray, pa.Array, list[str]]:
    """Rows (by ``key``), annotator positions and values of an annotations file's votes (null
    labels left out), and the annotators' names in sorted order."""
    where = f"annotations file {str(path)!r}"
    if not path.is_file():
        raise InputError(
            f"{where} does not exist; pass a Parquet or CSV file with the columns {key!r}, "
            f"{ANNOTATOR!r} and {LABEL!r}"
        )
    try:
        votes = read_side_file(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read {where}: {exc}. An annotations file is Parquet, or CSV with a header "
            "row (name it .csv)"
        ) from None
    for name in (key, ANNOTATOR, LABEL):
        if name not in votes.column_names:
            raise InputError(
                f"{where} has no column {name!r}; its columns are: "
                f"{_shown(votes.column_names)}. It needs the key column {key!r} (named by "
                f"--key), {ANNOTATOR!r} and {LABEL!r}: one row per item and annotator"
            )
    if key not in table.column_names:
        raise InputError(
            f"--key names {key!r}, which is not a column of the input; its columns are: "
            f"{_shown(table.column_names)}. Name the column the annotations file refers to"
        )
    column = plain_values(table.column(key)).combine_chunks()
    if not _plain_key(column.type):
        raise InputError(
            f"--key names {key!r}, a column of type {column.type}; a key must hold single "
            "values, such as the integers or strings of an id column"
        )
    for name in (key, ANNOTATOR):
        null = pc.is_null(votes.column(name)).to_numpy(zero_copy_only=False)
        if null.any():
            raise InputError(
                f"{where}: {_file_row(int(np.argmax(null)))} has no {name!r} value; give every "
                f"row its {name}, or delete the row"
            )
    keys = _cast_keys(
        plain_values(votes.column(key)).combine_chunks(),
        column.type,
        where,
        key,
        f"of the input's type {column.type}",
        "check that the file belongs to this data",
    )
    positions = pc.index_in(keys, value_set=column)
    if positions.null_count:
        missing = np.flatnonzero(pc.is_null(positions).to_numpy(zero_copy_only=False))
        raise InputError(
            f"{where}: {key} {_value(keys[int(missing[0])])} in {_file_row(int(missing[0]))} is "
            f"not in the input's column {key!r} ({_count(len(missing), 'key')} not found); check "
            "that the file belongs to this data"
        )
    counts = pc.value_counts(column)
    if pc.max(counts.field("counts")).as_py() > 1:
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        raise InputError(
            f"the input's key column {key!r} holds {_value(repeated[0])} more than once; "
            "--key must name a column of unique values"
        )
    rows = positions.to_numpy(zero_copy_only=False).astype(np.int64)
    annotator = pc.cast(plain_values(votes.column(ANNOTATOR)), pa.string()).combine_chunks()
    names = sorted(set(annotator.to_pylist()))
    index = pc.index_in(annotator, value_set=pa.array(names, pa.string()))
    annotators = index.to_numpy(zero_copy_only=False).astype(np.int64)
    pair = rows * len(names) + annotators
    _, first, counted = np.unique(pair, return_index=True, return_counts=True)
    if (counted > 1).any():
        twice = int(first[np.argmax(counted > 1)])
        again = int(np.flatnonzero(pair == pair[twice])[1])
        raise InputError(
            f"{where}: annotator {json_name(names[annotators[twice]])} labels {key} "
            f"{_value(keys[twice])} twice ({_file_row(twice)} and row {again}); keep one label "
            "per item and annotator"
        )
    labels = plain_values(votes.column(LABEL)).combine_chunks()
    keep = pc.is_valid(labels).to_numpy(zero_copy_only=False).astype(bool)
    return rows[keep], annotators[keep], labels.filter(pa.array(keep)), names


def json_name(name: str) -> str:
    import json

    return json.dumps(name)
