"""The columns that name a run's rows: the *key*, shown first wherever refine lists rows (the
query views, the report's row tables, the review file) so a flagged row can be found in the
user's own records.

The key is ``--key COL`` when given; else the ``--ignore``d columns; else the columns whose name
looks like an id (``id``, ``key``, ``uuid``, or ending in ``_id``, ``-id`` or ``Id``) and whose
non-null values are unique; else none. Only columns of single values count (not lists, structs
or bytes). The key only names rows: an explicit ``--key`` is also kept out of the features (it
is an id), but a key found by its name stays whatever it was.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from refine.errors import InputError
from refine.io.read import OUTPUT_COLUMNS, plain_values

# Where a run's key came from, as run.json records it ("from").
FROM_KEY, FROM_IGNORE, FROM_NAME = "--key", "--ignore", "id-like name"
_ID_NAMES = ("id", "key", "uuid")
# wine_id, user-id, USER_ID; camelCase wineId or customerID, but not "paid", "valid" or "VALID".
_ID_SUFFIX = re.compile(r"(?i:.+[_-]id)|.*[a-z0-9](?:Id|ID)")


@dataclass(frozen=True)
class RowKey:
    """The key columns of a table, in table order (``--key``: that one column), and where they
    came from: ``"--key"``, ``"--ignore"``, ``"id-like name"``, or None when there is no key."""

    columns: tuple[str, ...] = ()
    source: str | None = None

    def describe(self) -> dict[str, Any]:
        """What run.json records under ``"key"``."""
        return {"columns": list(self.columns), "from": self.source}


def looks_like_id(name: str) -> bool:
    """Whether a column's name says it holds ids: ``id``, ``key`` or ``uuid`` (any case), or a
    name ending in ``_id``, ``-id`` (any case) or a camelCase ``Id``/``ID``."""
    return name.lower() in _ID_NAMES or _ID_SUFFIX.fullmatch(name) is not None


def row_key(
    table: pa.Table, label: str, key: str | None = None, ignore: tuple[str, ...] = ()
) -> RowKey:
    """The key of ``table`` (see the module docstring). An explicit ``key`` must be a column
    of single, unique values (nulls allowed); raises ``InputError`` naming the column and the
    fix otherwise. ``label`` is never a key."""
    if key is not None:
        check_key(table, key, label)
        return RowKey((key,), FROM_KEY)
    names = table.column_names
    usable = [n for n in names if names.count(n) == 1 and n != label and n not in OUTPUT_COLUMNS]
    ignored = tuple(n for n in usable if n in ignore and _single_values(table.column(n)))
    if ignored:
        return RowKey(ignored, FROM_IGNORE)
    named = tuple(n for n in usable if looks_like_id(n) and _is_unique_key(table.column(n)))
    return RowKey(named, FROM_NAME) if named else RowKey()


def recorded_key(summary: dict[str, Any], names: list[str]) -> tuple[str, ...] | None:
    """The key columns a run's ``run.json`` records that are among ``names`` (the columns of
    its refined.parquet), or None when it records none (a run from before refine did)."""
    recorded = summary.get("key")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("columns"), list):
        return None
    return tuple(c for c in recorded["columns"] if isinstance(c, str) and c in names)


def check_key(table: pa.Table, key: str, label: str) -> None:
    """``--key`` names a column of ``table`` that holds single values, unique where not null."""
    if key == label:
        raise InputError(
            f"--key names the label column {key!r}; a key is a column of unique values that "
            "names each row, such as an id"
        )
    names = [n for n in table.column_names if n not in OUTPUT_COLUMNS]
    if key not in names:
        raise InputError(
            f"--key names {key!r}, which is not a column of the input; its columns are: "
            f"{', '.join(repr(n) for n in names[:20])}. Name a column of unique values, such "
            "as an id"
        )
    column = plain_values(table.column(key))
    comparable, repeated = _single_values(column), None
    if comparable:
        try:
            repeated = _repeated(column)
        except pa.ArrowNotImplementedError:  # values Arrow cannot count
            comparable = False
    if not comparable:
        raise InputError(
            f"--key names {key!r}, a column of type {column.type}; a key must hold single "
            "values, such as the integers or strings of an id column"
        )
    if repeated is not None:
        raise InputError(
            f"the input's key column {key!r} holds {json.dumps(repeated, default=str)} more "
            "than once; --key must name a column of unique values (or leave it out)"
        )


def _single_values(column: pa.ChunkedArray | pa.Array) -> bool:
    kind = column.type
    kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    binary = (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_binary_view(kind)
    )
    return not (pa.types.is_nested(kind) or pa.types.is_null(kind) or binary)


def _is_unique_key(column: pa.ChunkedArray) -> bool:
    if not _single_values(column) or column.null_count == len(column):
        return False
    try:
        return _repeated(plain_values(column)) is None
    except pa.ArrowNotImplementedError:  # a type Arrow cannot count: no key
        return False


def _repeated(column: pa.ChunkedArray | pa.Array) -> Any:
    """A value ``column`` holds more than once (nulls aside), or None. Extension types (such
    as ``arrow.uuid``) are counted by their storage."""
    if isinstance(column.type, pa.BaseExtensionType):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        column = pa.chunked_array([c.storage for c in chunks], column.type.storage_type)
    counts = pc.value_counts(pc.drop_null(column))
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    return repeated[0].as_py() if len(repeated) else None
