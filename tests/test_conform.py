"""``refine.io.conform``: a batch's column types that hold the run's values are cast to the run's
types; every other difference is refused in one error that lists each with its fix."""

from __future__ import annotations

import pyarrow as pa
import pytest

from refine.errors import InputError
from refine.io.conform import conform

HEAD = (
    "the new batch does not fit the run's input ({}); refine casts a column itself only where "
    "no value changes (string and large_string, int32 to int64, int to float, a dictionary to "
    "its values). Fix the batch and update again:\n"
)


def one_column(values: pa.Array, want: pa.DataType, unchecked: tuple[str, ...] = ()):
    return conform(pa.schema([("c", want)]), pa.table({"c": values}), unchecked)


@pytest.mark.parametrize(
    ("values", "want"),
    [
        (pa.array(["a", None, "b"]), pa.large_string()),
        (pa.array(["a", None, "b"], pa.large_string()), pa.string()),
        (pa.array(["a", "b"], pa.string_view()), pa.large_string()),
        (pa.array([b"\x89P", None], pa.binary()), pa.large_binary()),
        (pa.array([b"\x89P", None], pa.large_binary()), pa.binary()),
        (pa.array([[1.5], None, []], pa.list_(pa.float32())), pa.large_list(pa.float32())),
        (pa.array([["a"], None], pa.large_list(pa.string())), pa.list_(pa.large_string())),
        (pa.array(["u", "v", "u"]).dictionary_encode(), pa.string()),
        (pa.array(["u", "v", "u"]), pa.dictionary(pa.int8(), pa.large_string())),
        (pa.array(["u", "v"]).dictionary_encode(), pa.dictionary(pa.int8(), pa.string())),
        (pa.array([1, None, -3], pa.int32()), pa.int64()),
        (pa.array([1, 200], pa.uint8()), pa.int16()),
        (pa.array([1, 200], pa.uint8()), pa.uint32()),
        (pa.array([127, None, 2**40], pa.int64()), pa.float64()),
        (pa.array([127, None, -(2**20)], pa.int64()), pa.float32()),
        (pa.array([0.5, None], pa.float32()), pa.float64()),
        (pa.array([None, None]), pa.float64()),
        (pa.array([[1, 2], None], pa.list_(pa.int64())), pa.list_(pa.float64())),
    ],
)
def test_a_type_that_holds_the_same_values_is_cast_to_the_runs(values, want):
    table = one_column(values, want).table
    assert table.schema.field("c").type == want
    assert table.column("c").to_pylist() == values.to_pylist()


@pytest.mark.parametrize(
    ("values", "want", "sql_type", "arrow_type"),
    [
        (pa.array([0.5]), pa.int64(), "BIGINT", "pa.int64()"),
        (pa.array(["7"]), pa.int64(), "BIGINT", "pa.int64()"),
        (pa.array([7]), pa.string(), "VARCHAR", "pa.string()"),
        (pa.array([7], pa.int64()), pa.int32(), "INTEGER", "pa.int32()"),
        (pa.array([7], pa.int64()), pa.uint64(), "UBIGINT", "pa.uint64()"),
        (pa.array([0.5], pa.float64()), pa.float32(), "FLOAT", "pa.float32()"),
        (
            pa.array([[0.5, 1.0]]),
            pa.list_(pa.float64(), 2),
            "DOUBLE[2]",
            "pa.list_(pa.float64(), 2)",
        ),
        (
            pa.array([0], pa.timestamp("us")),
            pa.timestamp("ns"),
            "TIMESTAMP_NS",
            "pa.timestamp('ns')",
        ),
    ],
)
def test_a_type_that_could_change_a_value_is_refused_with_its_cast(
    values, want, sql_type, arrow_type
):
    with pytest.raises(InputError) as caught:
        one_column(values, want)
    assert str(caught.value) == HEAD.format("1 problem") + (
        f"  column 'c': {values.type} in the batch, {want} in the run's input; cast it: "
        f"CAST(\"c\" AS {sql_type}) in DuckDB, batch['c'].cast({arrow_type}) in pyarrow"
    )


def test_a_widening_whose_value_does_not_fit_is_refused():
    """int64 to double is accepted, but not for an integer double cannot hold exactly."""
    with pytest.raises(InputError) as caught:
        one_column(pa.array([1, 2**53 + 1]), pa.float64())
    assert str(caught.value) == HEAD.format("1 problem") + (
        "  column 'c': int64 in the batch, double in the run's input, and a value does not fit "
        "(Integer value 9007199254740993 not in range: -9007199254740992 to 9007199254740992); "
        "cast it: CAST(\"c\" AS DOUBLE) in DuckDB, batch['c'].cast(pa.float64()) in pyarrow"
    )


def test_every_problem_is_listed_at_once():
    expected = pa.schema(
        [("id", pa.int64()), ("Price ($)", pa.float64()), ("n", pa.int32()), ("when", pa.date32())]
    )
    batch = pa.table({"Price ($)": ["1.5"], "n": pa.array([1], pa.int64()), "extra": [1]})
    batch = batch.append_column("n", pa.array([2], pa.int32()))
    with pytest.raises(InputError) as caught:
        conform(expected, batch)
    assert str(caught.value) == HEAD.format("5 problems") + (
        "  column 'n': 2 columns of the batch have this name; keep one\n"
        "  column 'id': not in the batch, int64 in the run's input; add it, with nulls where the "
        'values are unknown: CAST(NULL AS BIGINT) AS "id" in DuckDB, '
        "pa.nulls(batch.num_rows, pa.int64()) in pyarrow\n"
        "  column 'Price ($)': string in the batch, double in the run's input; cast it: "
        "CAST(\"Price ($)\" AS DOUBLE) in DuckDB, batch['Price ($)'].cast(pa.float64()) in "
        "pyarrow\n"
        "  column 'when': not in the batch, date32[day] in the run's input; add it, with nulls "
        'where the values are unknown: CAST(NULL AS DATE) AS "when" in DuckDB, '
        "pa.nulls(batch.num_rows, pa.date32()) in pyarrow\n"
        "  column 'extra': in the batch, not in the run's input; drop it (SELECT * EXCLUDE "
        "(\"extra\") in DuckDB, batch.drop_columns(['extra']) in pyarrow), or start a new run "
        "with refine run"
    )


def test_a_column_the_run_does_not_read_may_hold_any_type():
    """Ignored and skipped columns are not type-checked: kept where no cast holds their values,
    cast like the others where one does."""
    expected = pa.schema([("id", pa.int64()), ("notes", pa.large_string()), ("x", pa.float64())])
    batch = pa.table({"x": [1.0], "notes": ["a"], "id": ["w-1"]})
    conformed = conform(expected, batch, unchecked={"id", "notes"})
    assert conformed.table.schema == pa.schema(
        [("id", pa.string()), ("notes", pa.large_string()), ("x", pa.float64())]
    )
    assert conformed.kept == {"id": pa.string()}
    with pytest.raises(InputError, match="column 'id': not in the batch"):
        conform(expected, batch.drop_columns(["id"]), unchecked={"id"})


def test_a_batch_of_the_runs_types_comes_back_as_it_was():
    """So an update whose batch matches the run writes the same refined.parquet as before."""
    fields = [pa.field("x", pa.float64(), nullable=False, metadata={"unit": "cm"})]
    schema = pa.schema(fields, metadata={"pandas": "{}"})
    batch = pa.Table.from_arrays([pa.chunked_array([[1.0], [2.0]])], schema=schema)
    assert conform(pa.schema([("x", pa.float64())]), batch).table.equals(batch, check_metadata=True)
    cast = conform(pa.schema([("x", pa.float32())]), batch.cast(pa.schema([("x", pa.int64())])))
    assert cast.table.schema.field("x").type == pa.float32()
