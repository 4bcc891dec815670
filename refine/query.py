"""SQL over a run directory through DuckDB: views ``refined``, ``flagged``, ``rounds`` and,
when present, ``synthetic`` (``--augment``) and ``history`` (``refine update``)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from refine.errors import InputError

VIEWS = {
    "refined": ("refined.parquet", "SELECT * FROM read_parquet({path})"),
    "flagged": ("refined.parquet", "SELECT * FROM read_parquet({path}) WHERE is_label_issue"),
    "rounds": ("rounds.parquet", "SELECT * FROM read_parquet({path})"),
    "synthetic": ("synthetic.parquet", "SELECT * FROM read_parquet({path})"),
    "history": ("history.parquet", "SELECT * FROM read_parquet({path})"),
}
REQUIRED = ("refined.parquet", "rounds.parquet")


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the run's views defined."""
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
            literal = "'" + str(path.resolve()).replace("'", "''") + "'"
            con.execute(f"CREATE VIEW {view} AS " + sql.format(path=literal))
    return con


def query(run_dir: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` against the run's views and return the result as an Arrow table."""
    con = connect(run_dir)
    try:
        relation = con.sql(sql)
        if relation is None:  # a statement without a result
            return pa.table({})
        # DuckDB >= 1.4 names it to_arrow_table; older releases call it arrow.
        to_arrow = getattr(relation, "to_arrow_table", None) or relation.arrow
        return to_arrow()
    except duckdb.Error as exc:
        raise InputError(f"query failed: {exc}") from None
    finally:
        con.close()
