"""A new batch's columns, checked against a run's input schema and cast to its types.

``conform`` accepts a batch column whose type holds the same values as the run's (``string`` and
``large_string``, ``binary`` and ``large_binary``, ``list`` and ``large_list``, a dictionary and
its values) or a wider one without changing a value (``int32`` to ``int64``, any integer to
float, ``float32`` to ``float64``, an all-null column to anything), and casts it to the run's
type, so every run of an update chain has one schema. Anything else is refused, every problem in
one ``InputError``, each with the cast that fixes it in DuckDB and in pyarrow.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import pyarrow as pa

from refine.errors import InputError

# What the error says refine does on its own, so a user sees why it stopped at the rest.
_ACCEPTED = (
    "refine casts a column itself only where no value changes (string and large_string, "
    "int32 to int64, int to float, a dictionary to its values)"
)


@dataclass
class Conformed:
    """The batch with the run's columns in the run's order and types, and the columns the run
    does not read whose type was kept as the batch had it (``kept``: name -> the batch's type)."""

    table: pa.Table
    kept: dict[str, pa.DataType]


def conform(expected: pa.Schema, table: pa.Table, unchecked: Collection[str] = ()) -> Conformed:
    """``table``'s columns in ``expected``'s order, each cast to ``expected``'s type.

    Columns in ``unchecked`` are never read by the run's model (ignored or skipped), so they may
    hold any type: they are cast like the others where no value changes, and kept as they are
    otherwise. Every column must be present, and no other. A column keeps the batch's
    nullability and metadata, and the table its schema metadata.

    Raises ``InputError`` listing every missing, extra, repeated or mistyped column at once,
    each with a DuckDB and a pyarrow expression that fixes it.
    """
    names = table.column_names
    problems = [
        f"column {name!r}: {names.count(name)} columns of the batch have this name; keep one"
        for name in dict.fromkeys(n for n in names if names.count(n) > 1)
    ]
    fields, columns, kept = [], [], {}
    for want in expected:
        if names.count(want.name) != 1:
            if want.name not in names:
                problems.append(_missing(want))
            continue
        got = table.schema.field(want.name)
        column = table.column(want.name)
        if got.type != want.type:
            reason = None
            if holds_values(got.type, want.type):
                try:
                    column = cast_safely(column, want.type)
                except pa.ArrowException as exc:
                    reason = f"and a value does not fit ({exc})"
            else:
                reason = ""
            if reason is not None:
                if want.name in unchecked:
                    kept[want.name] = got.type
                else:
                    problems.append(_mistyped(want, got.type, reason))
        fields.append(pa.field(want.name, column.type, got.nullable, got.metadata))
        columns.append(column)
    problems += [_extra(name) for name in dict.fromkeys(names) if name not in expected.names]
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise InputError(
            f"the new batch does not fit the run's input ({count}); {_ACCEPTED}. Fix the batch "
            "and update again:\n" + "\n".join(f"  {p}" for p in problems)
        )
    schema = pa.schema(fields, metadata=table.schema.metadata)
    return Conformed(pa.Table.from_arrays(columns, schema=schema), kept)


def holds_values(got: pa.DataType, want: pa.DataType) -> bool:
    """Every value of type ``got`` has the same value in type ``want``."""
    got, want = _plain(got), _plain(want)
    if got == want or pa.types.is_null(got):
        return True
    if pa.types.is_integer(got) and pa.types.is_floating(want):
        return True  # the cast itself refuses an integer the float cannot hold exactly
    if pa.types.is_integer(got) and pa.types.is_integer(want):
        wider = got.bit_width < want.bit_width
        return wider and (pa.types.is_signed_integer(want) or pa.types.is_unsigned_integer(got))
    if pa.types.is_floating(got) and pa.types.is_floating(want):
        return got.bit_width < want.bit_width
    if pa.types.is_list(got) and pa.types.is_list(want):
        return holds_values(got.value_type, want.value_type)
    return False


def _plain(kind: pa.DataType) -> pa.DataType:
    """``kind`` with the encodings that hold the same values folded together: a dictionary as its
    values, ``large_``/``_view`` strings, binaries and lists as the plain ones."""
    if pa.types.is_dictionary(kind):
        return _plain(kind.value_type)
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    if any(
        test(kind)
        for test in (
            pa.types.is_list,
            pa.types.is_large_list,
            pa.types.is_list_view,
            pa.types.is_large_list_view,
        )
    ):
        return pa.list_(_plain(kind.value_type))
    return kind


def cast_safely(column: pa.ChunkedArray, want: pa.DataType) -> pa.ChunkedArray:
    """``column`` as ``want``, refusing any value that would change (Arrow's safe cast). Arrow
    casts to and from a dictionary only through its value type."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_dictionary(want):
        return column.cast(want.value_type).cast(want)
    return column.cast(want)


def _mistyped(want: pa.Field, got: pa.DataType, reason: str) -> str:
    why = f", {reason}" if reason else ""
    return (
        f"column {want.name!r}: {got} in the batch, {want.type} in the run's input{why}; "
        "cast it: "
        + _fixes(
            want,
            lambda sql_type: f"CAST({_sql_name(want.name)} AS {sql_type})",
            lambda column, arrow_type: f"{column}.cast({arrow_type})",
        )
    )


def _missing(want: pa.Field) -> str:
    return (
        f"column {want.name!r}: not in the batch, {want.type} in the run's input; add it, with "
        "nulls where the values are unknown: "
        + _fixes(
            want,
            lambda sql_type: f"CAST(NULL AS {sql_type}) AS {_sql_name(want.name)}",
            lambda column, arrow_type: f"pa.nulls(batch.num_rows, {arrow_type})",
        )
    )


def _extra(name: str) -> str:
    return (
        f"column {name!r}: in the batch, not in the run's input; drop it "
        f"(SELECT * EXCLUDE ({_sql_name(name)}) in DuckDB, batch.drop_columns([{name!r}]) in "
        "pyarrow), or start a new run with refine run"
    )


def _fixes(want: pa.Field, sql: Callable[[str], str], arrow: Callable[[str, str], str]) -> str:
    """The DuckDB expression ``sql(type)`` and the pyarrow one ``arrow(column, type)`` for
    ``want``'s type; DuckDB's is left out where it has no such type."""
    in_arrow = arrow(f"batch[{want.name!r}]", _arrow_type(want.type)) + " in pyarrow"
    duckdb = _duckdb_type(want.type)
    return in_arrow if duckdb is None else f"{sql(duckdb)} in DuckDB, {in_arrow}"


def _sql_name(name: str) -> str:
    """``name`` quoted for DuckDB: always, so a keyword (``when``) or a capital stays a name."""
    return '"' + name.replace('"', '""') + '"'


_ARROW_NAMES = {"float": "float32", "double": "float64", "halffloat": "float16", "bool": "bool_"}
_PLAIN_ARROW = {
    "null", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "halffloat", "float", "double", "string", "large_string", "string_view", "binary",
    "large_binary", "binary_view",
}  # fmt: skip


def _arrow_type(kind: pa.DataType) -> str:
    """The pyarrow expression that makes ``kind``: ``pa.float64()``, ``pa.list_(pa.float32())``."""
    name = str(kind)
    if name in _PLAIN_ARROW:
        return f"pa.{_ARROW_NAMES.get(name, name)}()"
    if pa.types.is_date32(kind):
        return "pa.date32()"
    if pa.types.is_timestamp(kind):
        zone = f", tz={kind.tz!r}" if kind.tz else ""
        return f"pa.timestamp({kind.unit!r}{zone})"
    if pa.types.is_decimal128(kind):
        return f"pa.decimal128({kind.precision}, {kind.scale})"
    if pa.types.is_dictionary(kind):
        return f"pa.dictionary({_arrow_type(kind.index_type)}, {_arrow_type(kind.value_type)})"
    if pa.types.is_fixed_size_list(kind):
        return f"pa.list_({_arrow_type(kind.value_type)}, {kind.list_size})"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        maker = "list_" if pa.types.is_list(kind) else "large_list"
        return f"pa.{maker}({_arrow_type(kind.value_type)})"
    return f"pa.type_for_alias({name!r})"


_DUCKDB_NAMES = {
    "bool": "BOOLEAN", "int8": "TINYINT", "int16": "SMALLINT", "int32": "INTEGER",
    "int64": "BIGINT", "uint8": "UTINYINT", "uint16": "USMALLINT", "uint32": "UINTEGER",
    "uint64": "UBIGINT", "float": "FLOAT", "double": "DOUBLE", "string": "VARCHAR",
    "large_string": "VARCHAR", "string_view": "VARCHAR", "binary": "BLOB",
    "large_binary": "BLOB", "binary_view": "BLOB", "date32[day]": "DATE",
}  # fmt: skip
_DUCKDB_TIMESTAMPS = {
    "s": "TIMESTAMP_S",
    "ms": "TIMESTAMP_MS",
    "us": "TIMESTAMP",
    "ns": "TIMESTAMP_NS",
}


def _duckdb_type(kind: pa.DataType) -> str | None:
    """DuckDB's name for the type whose Parquet column reads back as ``kind`` (a dictionary as
    its values, which is how refine reads it), or None where DuckDB has none."""
    if pa.types.is_dictionary(kind):
        return _duckdb_type(kind.value_type)
    if str(kind) in _DUCKDB_NAMES:
        return _DUCKDB_NAMES[str(kind)]
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ" if kind.tz else _DUCKDB_TIMESTAMPS[kind.unit]
    if pa.types.is_decimal128(kind) and kind.precision <= 38:
        return f"DECIMAL({kind.precision}, {kind.scale})"
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _duckdb_type(kind.value_type)
        size = str(kind.list_size) if pa.types.is_fixed_size_list(kind) else ""
        return None if inner is None else f"{inner}[{size}]"
    return None
