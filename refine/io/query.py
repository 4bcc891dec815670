"""SQL over a run directory through DuckDB: views ``refined``, ``flagged``, ``verified`` (rows
whose label a person verified), ``rounds`` and,
when present, ``synthetic`` (``--augment``), ``history`` (``refine update``) and ``embeddings``
(``--text-model``: one row per row of ``refined``, joined on ``row_number``).

The views of ``refined.parquet``'s rows (``refined``, ``flagged``, ``verified``) start with
``row_number``, the row's position in ``refined.parquet`` from 0 (its position in the input,
and the ``row`` of a review file), then the run's key columns (``refine.io.keys``), then the
file's other columns in order.

A query only reads. DuckDB's parser classifies each statement, and anything but a ``SELECT``
(``CREATE``, ``COPY``, ``INSERT``, ``ATTACH``, ``EXPORT``, ``INSTALL``/``LOAD``, ``SET``, ...)
is refused before it runs. DuckDB's own settings then hold in whatever a ``SELECT`` can reach:
files outside the run directory cannot be opened (``enable_external_access`` off, with the run
directory as the only ``allowed_directories``), no extension is installed or loaded on demand,
and ``lock_configuration`` keeps a query from turning any of that back. ``write_query`` saves
a result as Parquet: refine writes that file itself, outside the run directory, not DuckDB.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from refine.errors import ConfigError, InputError, OutputError
from refine.io.keys import recorded_key
from refine.io.write import atomic_file, check_file_output, write_parquet

# The views of refined.parquet's rows, each with its condition.
ROW_VIEWS = {
    "refined": "",
    "flagged": " WHERE is_label_issue",
    "verified": " WHERE label_source = 'verified'",
}
VIEWS = {
    **{view: ("refined.parquet", "{rows}" + where) for view, where in ROW_VIEWS.items()},
    "rounds": ("rounds.parquet", "SELECT * FROM read_parquet({path})"),
    "synthetic": ("synthetic.parquet", "SELECT * FROM read_parquet({path})"),
    "history": ("history.parquet", "SELECT * FROM read_parquet({path})"),
    "annotators": ("annotators.parquet", "SELECT * FROM read_parquet({path})"),
    "embeddings": ("embeddings.parquet", "SELECT * FROM read_parquet({path})"),
}
REQUIRED = ("refined.parquet", "rounds.parquet")
ROW_NUMBER = "row_number"
# Key columns the suggested query after a run shows, so that its table fits a terminal.
SHOWN_KEYS = 3

# SELECT covers WITH, FROM-first queries, VALUES, DESCRIBE, SUMMARIZE, SHOW and PIVOT in a
# subquery. EXPLAIN is left out: EXPLAIN ANALYZE runs the statement it explains.
READ_ONLY = (duckdb.StatementType.SELECT,)

# Applied in this order after the views exist: allowed_directories cannot change once external
# access is off, and nothing can change once the configuration is locked.
SETTINGS = (
    ("allowed_directories", "[{directory}]"),
    ("enable_external_access", "false"),
    ("autoinstall_known_extensions", "false"),
    ("autoload_known_extensions", "false"),
    ("lock_configuration", "true"),
)


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the run's views defined, that reads only the files
    of ``run_dir`` and cannot change its settings (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(
            f"run directory {str(run_dir)!r} does not exist; pass the --out of a refine run"
        )
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise InputError(f"{str(run_dir)!r} is not a refine run directory: {missing[0]} is missing")
    con = duckdb.connect()
    rows = _rows_select(run_dir)
    for view, (filename, sql) in VIEWS.items():
        path = run_dir / filename
        if path.is_file():
            text = sql.format(rows=rows, path=_literal(path.resolve()))
            con.execute(f"CREATE VIEW {view} AS " + text)
    # The trailing separator keeps a sibling such as run_dir + "-old" out.
    directory = _literal(str(run_dir.resolve()).rstrip("/") + "/")
    try:
        for name, value in SETTINGS:
            con.execute(f"SET {name} = " + value.format(directory=directory))
    except duckdb.Error as exc:
        con.close()
        raise InputError(
            f"this DuckDB ({duckdb.__version__}) cannot restrict a query to the run directory "
            f"({exc}); upgrade it with pip install -U duckdb"
        ) from None
    return con


def query(run_dir: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` against the run's views and return the result as an Arrow table.

    Raises
    ------
    InputError
        The run directory is missing or incomplete, the SQL is not valid, a statement is not
        a ``SELECT``, or the query reaches outside the run directory.
    """
    con = connect(run_dir)
    try:
        _check_read_only(con, sql)
        relation = con.sql(sql)
        if relation is None:  # a statement without a result
            return pa.table({})
        # DuckDB >= 1.4 names it to_arrow_table; older releases call it arrow.
        to_arrow = getattr(relation, "to_arrow_table", None) or relation.arrow
        return to_arrow()
    except duckdb.PermissionException as exc:
        raise InputError(
            f"query failed: {exc}. refine query reads only the run directory "
            f"{str(Path(run_dir))!r}; to query other files, open them with DuckDB itself"
        ) from None
    except duckdb.Error as exc:
        raise InputError(f"query failed: {exc}") from None
    finally:
        con.close()


def write_query(
    run_dir: str | Path, sql: str, out: str | Path, overwrite: bool = False
) -> pa.Table:
    """Run ``sql`` as ``query`` does and write its result to the Parquet file ``out``, with
    the result's column types, atomically; return the result.

    ``out`` is checked before the query runs: a ``.parquet`` file outside the run directory,
    which must not exist unless ``overwrite``.
    """
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise ConfigError(f"--out {str(out)!r}: --format parquet writes a .parquet file; name one")
    directory = Path(run_dir).resolve()
    target = out.resolve()
    if target == directory or directory in target.parents:
        raise OutputError(
            f"--out {str(out)!r} lies in the run directory {str(run_dir)!r}; refine query never "
            "changes a run: write the file outside it"
        )
    check_file_output(out, overwrite)
    result = query(run_dir, sql)
    with atomic_file(out, overwrite) as tmp:
        write_parquet(result, tmp)
    return result


def flagged_query(label: str, key: Sequence[str] = (), limit: int = 10) -> str:
    """The SQL that shows a run's flagged rows, most likely wrong first: ``row_number``, the
    first ``SHOWN_KEYS`` key columns, the label, ``label_predicted`` and ``label_quality``."""
    columns = [ROW_NUMBER, *key[:SHOWN_KEYS], label, "label_predicted", "label_quality"]
    return (
        f"SELECT {', '.join(identifier(c) for c in columns)} FROM flagged "
        f"ORDER BY label_quality LIMIT {limit}"
    )


def identifier(name: str) -> str:
    """``name`` as DuckDB reads it in SQL: as it is when it is a plain word, else quoted."""
    if _PLAIN.fullmatch(name) and name.lower() not in _keywords():
        return name
    return '"' + name.replace('"', '""') + '"'


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.cache
def _keywords() -> frozenset[str]:
    """DuckDB's keywords that cannot name a column unquoted everywhere."""
    con = duckdb.connect()
    try:
        found = con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved'"
        ).fetchall()
    finally:
        con.close()
    return frozenset(str(name).lower() for (name,) in found)


def _rows_select(run_dir: Path) -> str:
    """The SELECT of refined.parquet's rows: ``row_number`` first, then the key columns that
    run.json records, then the rest. An input column named ``row_number`` (or DuckDB's
    ``file_row_number``) keeps its place, and no position is added."""
    path = run_dir / "refined.parquet"
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid):
        names = []  # DuckDB names the problem when the view is used
    try:
        summary = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    recorded = recorded_key(summary, names) if isinstance(summary, dict) else None
    key = [identifier(c) for c in recorded or ()]
    source = f"read_parquet({_literal(path.resolve())}"
    if ROW_NUMBER in names or "file_row_number" in names:
        source += ")"
        first, moved = key, key
    else:
        first = [f"file_row_number AS {ROW_NUMBER}", *key]
        moved = ["file_row_number", *key]
        source += ", file_row_number = true)"
    if not first:
        return f"SELECT * FROM {source}"
    return f"SELECT {', '.join(first)}, * EXCLUDE ({', '.join(moved)}) FROM {source}"


def _check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse every statement of ``sql`` that is not a ``SELECT``, before any of them runs."""
    try:
        statements = con.extract_statements(sql)
    except ValueError:  # a statement type this duckdb's Python enum does not know
        raise InputError(
            "refine query only reads the run, and this SQL holds a statement DuckDB cannot "
            "classify; use SELECT (WITH, FROM, DESCRIBE and SUMMARIZE work too)"
        ) from None
    for statement in statements:
        if statement.type not in READ_ONLY:
            text = " ".join(statement.query.split())
            text = text if len(text) <= 60 else text[:57] + "..."
            raise InputError(
                f"refine query only reads the run: {statement.type.name} statements are refused "
                f"({text!r}). Use SELECT (WITH, FROM, DESCRIBE and SUMMARIZE work too); to save a "
                "result, use --format parquet --out FILE, or --format csv or json and redirect the output"
            )


def _literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"
