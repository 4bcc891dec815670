"""SQL over a run directory through DuckDB: views ``refined``, ``flagged``, ``verified`` (rows
whose label a person verified), ``rounds`` and,
when present, ``synthetic`` (``--augment``) and ``history`` (``refine update``).

A query only reads. DuckDB's parser classifies each statement, and anything but a ``SELECT``
(``CREATE``, ``COPY``, ``INSERT``, ``ATTACH``, ``EXPORT``, ``INSTALL``/``LOAD``, ``SET``, ...)
is refused before it runs. DuckDB's own settings then hold in whatever a ``SELECT`` can reach:
files outside the run directory cannot be opened (``enable_external_access`` off, with the run
directory as the only ``allowed_directories``), no extension is installed or loaded on demand,
and ``lock_configuration`` keeps a query from turning any of that back. ``write_query`` saves
a result as Parquet: refine writes that file itself, outside the run directory, not DuckDB.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from refine.errors import ConfigError, InputError, OutputError
from refine.io.write import atomic_file, check_file_output, write_parquet

VIEWS = {
    "refined": ("refined.parquet", "SELECT * FROM read_parquet({path})"),
    "flagged": ("refined.parquet", "SELECT * FROM read_parquet({path}) WHERE is_label_issue"),
    "verified": (
        "refined.parquet",
        "SELECT * FROM read_parquet({path}) WHERE label_source = 'verified'",
    ),
    "rounds": ("rounds.parquet", "SELECT * FROM read_parquet({path})"),
    "synthetic": ("synthetic.parquet", "SELECT * FROM read_parquet({path})"),
    "history": ("history.parquet", "SELECT * FROM read_parquet({path})"),
}
REQUIRED = ("refined.parquet", "rounds.parquet")

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
    for view, (filename, sql) in VIEWS.items():
        path = run_dir / filename
        if path.is_file():
            con.execute(f"CREATE VIEW {view} AS " + sql.format(path=_literal(path.resolve())))
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
