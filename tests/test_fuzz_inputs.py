"""Bad input never loses data: random Parquet files through ``refine run``.

Hypothesis writes Parquet files with random schemas and contents (nulls everywhere, NaN and
infinities, huge, empty, non-ASCII and invalid UTF-8 strings, dictionary, nested, temporal and
decimal columns, duplicated and clashing names, zero or one row, thousands of classes, classes
of one row, labels that look like numbers). For each, ``refine run`` either writes a valid run
that keeps every input column and row as it was, or exits 2 with one ``Error:`` line; never a
traceback, never a half-written output, never a changed input file.

``REFINE_FUZZ_EXAMPLES`` sets the number of cases (default 100: about 30 s here, one case in
sixteen with ``report.html``); the counts of what happened print at the end (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections import Counter
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

import refine
from refine.cli import cli

EXAMPLES = int(os.environ.get("REFINE_FUZZ_EXAMPLES", "100"))
FLAGS = ["--rounds", "1", "--max-epochs", "2", "--quiet"]

CONTRACT = {
    "label_soft": pa.list_(pa.float32()),
    "label_quality": pa.float32(),
    "is_label_issue": pa.bool_(),
    "label_source": pa.string(),
    "sample_weight": pa.float32(),
}

# Label values that trip naive parsing: numbers in strings, blanks, NaN spelled out, accents.
# Values at the edges of float64 and float32, where sums of squares overflow.
EXTREME_FLOATS = [1.7e308, -1.7e308, 5e-324, math.inf, -math.inf, math.nan, -0.0]
EXTREME_FLOAT32S = [3.4e38, -3.4e38, 1e-45, math.inf, -math.inf, math.nan]
TRICKY_STRINGS = ["1", "01", "1.0", "-0", "nan", "NaN", "inf", " 1", "", "é", "ß", "日本", "\x00"]


def _with_nulls(draw, values: list, null_share: float) -> list:
    """``values`` with about ``null_share`` of them (at random rows) made null."""
    if null_share <= 0:
        return values
    if null_share >= 1:
        return [None] * len(values)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    nulls = rng.random(len(values)) < null_share
    return [None if null else v for v, null in zip(values, nulls, strict=True)]


def _rows(draw, values: st.SearchStrategy, n: int) -> list:
    """``n`` values: up to 24 drawn, the rest repeat them in a drawn order, so that large
    tables stay cheap for hypothesis to generate and shrink."""
    drawn = draw(st.lists(values, min_size=min(n, 24), max_size=min(n, 24)))
    if n <= len(drawn):
        return drawn
    order = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, len(drawn), n)
    return [drawn[i] for i in order]


@st.composite
def feature_columns(draw, n: int) -> pa.Array:
    """One feature column of ``n`` rows, of a random type, with awkward values."""
    kind = _pick(
        draw,
        {
            "float": 6, "int": 3, "bool": 1, "string": 3, "large_string": 1, "string_view": 1,
            "invalid_utf8": 1, "binary": 1, "dictionary": 2, "list_float": 1, "fixed_list": 2,
            "nested_list": 1, "list_string": 1, "struct": 1, "timestamp": 1, "date": 1,
            "decimal": 1, "decimal256": 1, "duration": 1, "null": 1, "all_null": 1,
            "constant": 1, "float16": 1, "uint64": 1, "huge_string": 1,
        },
    )  # fmt: skip
    null_share = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]))
    ints = st.integers(-(2**63), 2**63 - 1)
    if kind == "float":
        values = _rows(draw, st.floats() | st.sampled_from(EXTREME_FLOATS), n)
        return pa.array(_with_nulls(draw, values, null_share), pa.float64())
    if kind == "float16":
        values = _rows(draw, st.floats(width=16), n)
        return pa.array(np.asarray(values, np.float16), pa.float16())
    if kind == "int":
        return pa.array(_with_nulls(draw, _rows(draw, ints, n), null_share))
    if kind == "uint64":
        values = _rows(draw, st.integers(0, 2**64 - 1), n)
        return pa.array(_with_nulls(draw, values, null_share), pa.uint64())
    if kind == "bool":
        values = _rows(draw, st.booleans(), n)
        return pa.array(_with_nulls(draw, values, null_share), pa.bool_())
    if kind in ("string", "large_string", "string_view", "dictionary"):
        pool = draw(
            st.lists(st.text(max_size=8) | st.sampled_from(TRICKY_STRINGS), min_size=1, max_size=6)
        )
        values = _with_nulls(draw, [pool[i % len(pool)] for i in range(n)], null_share)
        if kind == "dictionary":
            return pa.array(values, pa.string()).dictionary_encode()
        return pa.array(
            values,
            {
                "string": pa.string(),
                "large_string": pa.large_string(),
                "string_view": pa.string_view(),
            }[kind],
        )
    if kind == "huge_string":
        return pa.array([("x" * 50_000 + str(i % 3)) if i % 4 else "" for i in range(n)])
    if kind in ("invalid_utf8", "binary"):
        values = _rows(draw, st.binary(max_size=6) | st.just(b"\xff\xfe"), n)
        array = pa.array(_with_nulls(draw, values, null_share), pa.binary())
        return array.view(pa.string()) if kind == "invalid_utf8" else array
    if kind in ("list_float", "fixed_list"):
        dim = draw(st.integers(1, 3))
        floats = st.floats(width=32) | st.sampled_from(EXTREME_FLOAT32S)
        if kind == "fixed_list":
            flat = [v for row in _rows(draw, st.tuples(*[floats] * dim), n) for v in row]
            return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        rows = _rows(draw, st.none() | st.lists(st.none() | floats, max_size=3), n)
        return pa.array(rows, pa.list_(pa.float32()))
    if kind == "nested_list":
        nested = st.lists(st.lists(st.integers(-5, 5), max_size=2), max_size=2)
        rows = _rows(draw, st.none() | nested, n)
        return pa.array(rows, pa.list_(pa.list_(pa.int64())))
    if kind == "list_string":
        rows = _rows(draw, st.none() | st.lists(st.text(max_size=3), max_size=2), n)
        return pa.array(rows, pa.list_(pa.string()))
    if kind == "struct":
        values = _rows(draw, st.integers(-3, 3), n)
        return pa.StructArray.from_arrays([pa.array(values, pa.int8())], names=["a"])
    if kind == "timestamp":
        tz = draw(st.sampled_from([None, "UTC", "Asia/Kolkata"]))
        values = _rows(draw, st.integers(-(2**40), 2**40), n)
        return pa.array(_with_nulls(draw, values, null_share), pa.timestamp("us", tz=tz))
    if kind == "date":
        values = _rows(draw, st.integers(-100_000, 100_000), n)
        return pa.array(_with_nulls(draw, values, null_share), pa.date32())
    if kind in ("decimal", "decimal256"):
        values = _rows(draw, st.integers(-(10**30), 10**30), n)
        return _decimal(
            _with_nulls(draw, values, null_share),
            pa.decimal128(38, 4) if kind == "decimal" else pa.decimal256(60, 2),
        )
    if kind == "duration":
        values = _rows(draw, ints, n)
        return pa.array(values, pa.duration("s"))
    if kind == "null":
        return pa.nulls(n)
    if kind == "all_null":
        return pa.nulls(n, draw(st.sampled_from([pa.float64(), pa.string(), pa.int32()])))
    value = draw(st.floats(allow_nan=True) | st.text(max_size=4) | st.integers(-9, 9))
    return pa.array([value] * n)


def _decimal(values: list[int | None], kind: pa.DataType) -> pa.Array:
    return pa.array([None if v is None else Decimal(v).scaleb(-kind.scale) for v in values], kind)


def _pick(draw, weights: dict[str, int]) -> str:
    """One key of ``weights``, drawn in proportion to its weight."""
    return draw(st.sampled_from([key for key, weight in weights.items() for _ in range(weight)]))


USABLE_LABELS = {"int": 4, "string": 4, "large_string": 1, "string_view": 1, "dictionary": 2,
                 "bool": 1, "uint64": 1, "int8": 1}  # fmt: skip
OTHER_LABELS = {"float": 1, "decimal": 1, "timestamp": 1, "null": 1, "binary": 1, "list": 1}


@st.composite
def label_columns(draw, n: int, healthy: bool) -> pa.Array:
    """A label column. ``healthy``: of a label type, with 2 to 6 classes spread over the rows;
    otherwise anything, from one class or classes of one row to types refine cannot use."""
    if healthy:
        kind = _pick(draw, USABLE_LABELS)
        k = draw(st.integers(2, 6)) if n < 1000 else n // 2
        layout = _pick(draw, {"round_robin": 3, "random": 1}) if n < 1000 else "round_robin"
        null_share = float(_pick(draw, {"0": 3, "0.1": 1}))
    else:
        kind = _pick(draw, {**USABLE_LABELS, **OTHER_LABELS})
        k = {"two": 2, "few": draw(st.integers(3, 6)), "one": 1, "many": max(1, n // 2)}[
            _pick(draw, {"two": 4, "few": 4, "one": 1, "many": 1})
        ]
        layout = _pick(draw, {"round_robin": 4, "one_big": 1, "singletons": 1, "random": 2})
        null_share = float(_pick(draw, {"0": 8, "0.1": 2, "0.5": 1, "1": 1}))
    if layout == "round_robin":
        codes = [i % k for i in range(n)]
    elif layout == "one_big":  # every class but the first has one row
        codes = [max(0, i - (n - k)) for i in range(n)]
    elif layout == "singletons":
        codes = list(range(n))
    else:
        codes = _rows(draw, st.integers(0, k - 1), n)
    codes = _with_nulls(draw, codes, null_share)
    present = max([c for c in codes if c is not None], default=0) + 1
    if kind in ("string", "large_string", "string_view", "dictionary"):
        pool = st.text(max_size=5) | st.sampled_from(TRICKY_STRINGS)
        names = draw(st.lists(pool, min_size=1, max_size=8, unique=True))
        names += [f"c{i}" for i in range(max(0, present - len(names)))]
        values = [None if c is None else names[c] for c in codes]
        if kind == "dictionary":
            return pa.array(values, pa.string()).dictionary_encode()
        types = {"string": pa.string(), "large_string": pa.large_string()}
        return pa.array(values, types.get(kind, pa.string_view()))
    if kind == "bool":
        return pa.array([None if c is None else bool(c % 2) for c in codes], pa.bool_())
    if kind == "int8":
        return pa.array([None if c is None else (c % 256) - 128 for c in codes], pa.int8())
    if kind == "uint64":
        return pa.array([None if c is None else 2**64 - 1 - c for c in codes], pa.uint64())
    if kind == "int":
        offset = draw(st.sampled_from([0, -(2**62), 10**12]))
        return pa.array([None if c is None else c + offset for c in codes], pa.int64())
    if kind == "float":
        return pa.array([None if c is None else float(c) for c in codes], pa.float64())
    if kind == "decimal":
        return _decimal(codes, pa.decimal128(10, 0))
    if kind == "timestamp":
        return pa.array(codes, pa.timestamp("s"))
    if kind == "binary":
        return pa.array([None if c is None else bytes([c % 256]) for c in codes], pa.binary())
    if kind == "list":
        return pa.array([None if c is None else [c] for c in codes], pa.list_(pa.int64()))
    return pa.nulls(n)


@st.composite
def tables(draw) -> tuple[pa.Table, str, int]:
    """A table, the name of its label column, and the number of folds to ask for.

    Three in five are healthy: enough rows, a usable label and one clean numeric column, so
    that the awkward columns beside them reach the encoders and the written output; one in
    thirty of those has a thousand classes of two rows each.
    """
    healthy = _pick(draw, {"healthy": 3, "wild": 2}) == "healthy"
    if healthy:
        n = int(_pick(draw, {"30": 3, "60": 4, "200": 2, "2000": 1}))
        n = n if n < 2000 or draw(st.integers(0, 2)) == 0 else 200
        clean = pa.array(np.random.default_rng(n).normal(size=n))
        columns = [clean] + [draw(feature_columns(n)) for _ in range(draw(st.integers(0, 3)))]
    else:
        n = int(_pick(draw, {"0": 1, "1": 1, "2": 1, "3": 1, "5": 1, "8": 1, "13": 1, "60": 3}))
        width = int(_pick(draw, {"0": 1, "1": 3, "2": 3, "3": 2, "4": 1}))
        columns = [draw(feature_columns(n)) for _ in range(width)]
    names = [f"f{i}" for i in range(len(columns))]
    label = draw(st.sampled_from(["label", "label", "y", "é"]))
    odd_names = {"": 1, "é x": 1, "label_soft": 1, "__index_level_0__": 1, "dup": 1, "label": 1}
    for i in range(len(names)):
        odd = _pick(draw, {"plain": 40 if not healthy else 150, **odd_names})
        if odd != "plain":
            names[i] = {"dup": names[0], "label": label}.get(odd, odd)
    position = draw(st.integers(0, len(columns)))
    columns.insert(position, draw(label_columns(n, healthy)))
    names.insert(position, label)
    folds = 2 if n >= 2000 else draw(st.sampled_from([2, 3]))
    return pa.Table.from_arrays(columns, names=names), label, folds


def _known_cases() -> list[tuple[tuple[pa.Table, str, int], bool]]:
    """Cases every run tries first: each bug the fuzzer found, and a thousand classes."""
    n, k = 60, 1000
    x = pa.array(np.random.default_rng(0).normal(size=n))
    labels = pa.array(np.arange(n) % 2)
    huge = np.where(np.arange(n) % 7 == 0, 1.7e308, np.arange(n, dtype=float))
    huge[3] = -1.7e308
    extreme = np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32)
    extreme[0, 0], extreme[1, 0], extreme[2, 1] = 3.4e38, -3.4e38, np.inf
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(extreme.ravel()), 2)
    not_utf8 = pa.array([b"\xff\xfe", b"ok", b"fine"] * (n // 3)).view(pa.string())
    numbers_as_text = pa.array(["1", "01"] * (n // 2), pa.string_view())
    known = [
        pa.table({"x": np.arange(2 * k, dtype=float), "label": np.arange(2 * k) % k}),
        pa.table({"x": x, "s": not_utf8, "label": labels}),
        pa.table({"x": x, "label": not_utf8}),
        pa.table({"big": huge, "label": labels}),
        pa.table({"e": embedding, "label": labels}),
        pa.table({"x": x, "label": numbers_as_text}),
        pa.Table.from_arrays([x, x, labels], names=["x", "x", "label"]),
        pa.table({"x": x, "label": labels}).slice(0, 0),
    ]
    # The string_view run writes its report: report.py once failed on string_view labels.
    return [((t, "label", 2), pa.types.is_string_view(t.schema.field(-1).type)) for t in known]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plain(value):
    """A Python value in which NaN equals NaN, for comparing column contents."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _same(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    """Equal values, NaN equal to NaN (Arrow's equals says NaN != NaN)."""
    return a.type == b.type and (a.equals(b) or _values(a) == _values(b))


def _values(column: pa.ChunkedArray) -> list:
    """Python values to compare: strings as bytes (they may not be UTF-8), temporal values as
    integers (they may lie outside Python's datetime range)."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        column = column.cast(pa.large_binary())
    elif pa.types.is_temporal(kind):
        column = column.cast(pa.int32() if kind.bit_width == 32 else pa.int64())
    return _plain(column.to_pylist())


def check_case(
    table: pa.Table, label: str, folds: int, report: bool, base: Path, outcomes: Counter
) -> None:
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        data = work / "data.parquet"
        pq.write_table(table, data)
        before = _sha256(data)
        out = work / "out"
        args = ["run", str(data), "--out", str(out), "--label", label, "--folds", str(folds)]
        report_flag = "--report" if report else "--no-report"
        result = CliRunner().invoke(cli, [*args, *FLAGS, report_flag])
        note(f"exit {result.exit_code}: {result.output[:500]}")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert _sha256(data) == before, "the input file changed"
        assert sorted(p.name for p in work.iterdir()) == sorted(
            ["data.parquet"] + (["out"] if result.exit_code == 0 else [])
        ), "a partial output or a temporary file was left behind"
        if result.exit_code == 2:
            message = result.output.strip()
            assert message.startswith("Error: ") and "\n" not in message, message
            assert "Traceback" not in message
            outcomes["refused: " + _reason(message)] += 1
            return
        assert result.exit_code == 0, result.output
        classes = _check_run(out, data, label)
        assert (out / "report.html").exists() == report
        outcomes["completed" + (f" ({classes} classes)" if classes >= 100 else "")] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reason(message: str) -> str:
    """A short name for a refusal, for the summary."""
    text = message.removeprefix("Error: ")
    for key in (
        "has no rows",
        "has type",
        "fewer than 2 classes",
        "labelled row",
        "no usable feature",
        "has the name of a column",
        "columns named",
        "no label column",
        "not valid UTF-8",
        "cannot read",
    ):
        if key in text:
            return key
    return text[:40]


def _check_run(out: Path, data: Path, label: str) -> int:
    """Check the run in ``out`` against the contract; return its number of classes."""
    source = pq.read_table(data)
    refined = pq.read_table(out / "refined.parquet")
    n_in = source.num_columns
    assert refined.num_rows == source.num_rows
    assert refined.schema.names[:n_in] == source.schema.names
    for i, field in enumerate(source.schema):
        assert refined.schema.field(i).type == field.type, field.name
        assert _same(refined.column(i), source.column(i)), field.name
    label_type = source.schema.field(label).type
    extra = refined.schema.names[n_in:]
    assert extra == [
        "label_refined",
        "label_soft",
        "label_quality",
        "is_label_issue",
        "label_predicted",
        "label_source",
        "sample_weight",
    ]
    assert refined.schema.field("label_refined").type == label_type
    assert refined.schema.field("label_predicted").type == label_type
    for name, kind in CONTRACT.items():
        assert refined.schema.field(name).type == kind, name
    weights = refined.column("sample_weight").to_numpy()
    assert np.all(weights >= 0) and np.all(np.isfinite(weights))
    quality = refined.column("label_quality").drop_null().to_numpy()
    assert np.all((quality >= 0) & (quality <= 1))
    soft = refined.column("label_soft").to_pylist()
    assert all(s is not None and abs(sum(s) - 1) < 1e-3 for s in soft)
    return len(soft[0])


@pytest.fixture
def one_thread():
    """Tiny models train ~30x faster on one thread than on two busy ones (measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_random_parquet_files_run_or_exit_2(tmp_path, one_thread):
    outcomes: Counter = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    # One case in sixteen writes report.html too (about 2 s each here, matplotlib's start-up).
    @given(case=tables(), report=st.sampled_from([False] * 15 + [True]))
    def check(case: tuple[pa.Table, str, int], report: bool) -> None:
        check_case(*case, report, tmp_path, outcomes)

    for case, report in _known_cases():
        check = example(case=case, report=report)(check)

    check()
    summary = ", ".join(f"{k}: {v}" for k, v in outcomes.most_common())
    print(f"\nfuzz: {sum(outcomes.values())} cases ({summary})")
    completed = sum(v for k, v in outcomes.items() if k.startswith("completed"))
    assert completed > 0 and sum(outcomes.values()) >= min(EXAMPLES, 50)


# --- what the fuzzer found, pinned down with exact answers ------------------------------------


def _run_fails(tmp_path: Path, table: pa.Table, message: str) -> None:
    data = tmp_path / "data.parquet"
    pq.write_table(table, data)
    result = CliRunner().invoke(
        cli, ["run", str(data), "--out", str(tmp_path / "out"), "--folds", "2", *FLAGS]
    )
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.parquet"]


def test_duplicate_column_names_are_named(tmp_path):
    x = pa.array([1.0, 2.0, 3.0, 4.0])
    table = pa.Table.from_arrays([x, x, pa.array([0, 1, 0, 1])], names=["x", "x", "label"])
    _run_fails(
        tmp_path,
        table,
        "input has 2 columns named 'x'; Parquet allows that but refine needs distinct column "
        "names: rename all but one",
    )


def test_zero_rows(tmp_path):
    table = pa.table({"x": pa.array([], pa.float64()), "label": pa.array([], pa.int64())})
    _run_fails(
        tmp_path, table, "the input has no rows; refine needs labelled rows of at least two classes"
    )


def test_a_label_that_is_not_utf8(tmp_path):
    labels = pa.array([b"a", b"\xff", b"a", b"b"]).view(pa.string())
    _run_fails(
        tmp_path,
        pa.table({"x": [1.0, 2.0, 3.0, 4.0], "label": labels}),
        "label column 'label' holds bytes that are not valid UTF-8 in row 1; refine reads "
        "strings as UTF-8: fix the encoding of that column",
    )


def test_a_feature_that_is_not_utf8_is_skipped_and_kept(one_thread):
    n = 40
    text = pa.array([b"ok", b"\xff\xfe"] * (n // 2)).view(pa.string())
    table = pa.table({"x": np.arange(n, dtype=float), "s": text, "label": np.arange(n) % 2})
    result = refine.run(table, folds=2, rounds=1, max_epochs=2)
    assert result.skipped == {"s": "row 1 holds bytes that are not valid UTF-8"}
    kept = result.refined.column("s").cast(pa.binary()).to_pylist()
    assert kept == [b"ok", b"\xff\xfe"] * (n // 2)


def test_values_at_the_float_limits_give_finite_probabilities(one_thread):
    """1.7e308 in a numeric column and 3.4e38 or inf in a float32 embedding used to overflow the
    standardisation into NaN features, NaN probabilities and a NaN label_quality, written
    without a word."""
    n = 60
    rng = np.random.default_rng(0)
    big = rng.normal(size=n)
    big[[0, 1]] = 1.7e308, -1.7e308
    emb = rng.normal(size=(n, 2)).astype(np.float32)
    emb[0, 0], emb[1, 0], emb[2, 1] = 3.4e38, -3.4e38, np.inf
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 2)
    table = pa.table({"big": big, "emb": embedding, "label": np.arange(n) % 2})
    result = refine.run(table, folds=2, rounds=1, max_epochs=2)
    assert np.isfinite(result.proba).all()
    assert np.isfinite(result.refined.column("label_quality").to_numpy()).all()


def test_string_view_labels_keep_their_type(one_thread):
    n = 40
    labels = pa.array(["1", "01"] * (n // 2), pa.string_view())
    table = pa.table({"x": np.arange(n) % 2 * 1.0, "label": labels})
    result = refine.run(table, folds=2, rounds=1, max_epochs=2)
    assert result.refined.schema.field("label_refined").type == pa.string_view()
    assert result.refined.schema.field("label_predicted").type == pa.string_view()
    assert result.summary["classes"] == ["01", "1"]  # strings that look like numbers stay apart
