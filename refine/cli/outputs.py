"""Commands on a finished run's outputs: ``refine review``, ``query``, ``export`` and ``report``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from refine.cli.common import (
    CLIError,
    cell_text,
    count_rows,
    handle_refine_errors,
    listed,
)


@click.command("review")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--budget", required=True, type=int, help="Rows to pick for a person to check.")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="File to write: .csv (for a spreadsheet) or .parquet; refused if it exists, unless "
    "--overwrite.",
)
@click.option(
    "--key",
    default=None,
    help="Input column of unique values (such as an id) that names each row in the file. "
    "Default: a 'row' column of positions in the input.",
)
@click.option(
    "--strategy",
    type=click.Choice(["value", "random"]),
    default="value",
    show_default=True,
    help="value: the rows whose check would fix or steer the most labels; random: a uniform "
    "sample, to measure refine fairly.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of --strategy random.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@handle_refine_errors
def review_command(
    run_dir: Path,
    budget: int,
    out: Path,
    key: str | None,
    strategy: str,
    seed: int,
    overwrite: bool,
) -> None:
    """Pick rows of the run in RUN_DIR for a person to check, and write them to --out.

    The file holds each row's key, its given, predicted and refined labels, and an empty
    verified_label column to fill in (leave a cell empty to skip the row). Read it back with
    refine run DATA --verified-file FILE: verified rows are never changed, and refine measures
    and steers itself by them.

    \b
    Examples:
      refine review runs/first --budget 100 --out review.csv
      refine review runs/first --budget 200 --out sample.parquet --key id --strategy random
    """
    from refine.review import review

    result = review(
        run_dir, budget, out, key=key, strategy=strategy, seed=seed, overwrite=overwrite
    )
    rows = result.table.num_rows
    click.echo(f"wrote {rows} row{'' if rows == 1 else 's'} to review in {result.out}")
    for note in result.notes:
        click.echo(note)
    click.echo(
        f"next: fill in verified_label (leave a cell empty to skip a row), then\n"
        f"  {result.next_command}"
    )


@click.command("query")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
    help="csv and json are for scripts; parquet writes the result, with its types, to --out.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="The .parquet file --format parquet writes; refused if it exists, unless --overwrite.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@handle_refine_errors
def query_command(run_dir: Path, sql: str, fmt: str, out: Path | None, overwrite: bool) -> None:
    """Run SQL (DuckDB) over a run: views refined, flagged, rounds (and synthetic when present).

    \b
    Examples:
      refine query runs/first "SELECT * FROM flagged ORDER BY label_quality LIMIT 20"
      refine query runs/first "SELECT label, label_predicted, count(*) AS n FROM flagged
                               GROUP BY ALL ORDER BY n DESC" --format csv
      refine query runs/first "SELECT * FROM flagged" --format parquet --out flagged.parquet
    """
    from refine.io.query import query, write_query

    if fmt == "parquet":
        if out is None:
            raise CLIError("--format parquet writes a file: name it with --out FILE.parquet")
        written = write_query(run_dir, sql, out, overwrite=overwrite)
        click.echo(f"wrote {count_rows(written.num_rows)} to {out}")
        return
    if out is not None:
        raise CLIError(
            f"--out is for --format parquet; --format {fmt} prints to the terminal "
            "(redirect it to save it)"
        )
    result = query(run_dir, sql)
    rows = result.to_pylist()
    if fmt == "json":
        click.echo(json.dumps(rows, default=str, ensure_ascii=False))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.column_names)
        writer.writerows([[cell_text(row[c]) for c in result.column_names] for row in rows])
        click.echo(buffer.getvalue(), nl=False)
    else:
        table = Table()
        for field in result.schema:
            numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
            table.add_column(field.name, overflow="fold", justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*(cell_text(row[c]) for c in result.column_names))
        Console(width=max(Console().width, 120)).print(table)


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="File to write: .parquet, the refined data of a run; .onnx or .pt (or --format), the "
    "student of a model directory or of a run with one. Refused if it exists, unless --overwrite.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "torchscript"]),
    default=None,
    help="Export the student as this graph instead of the data (default: from --out's suffix); "
    "a JSON spec of its inputs is written beside it.",
)
@click.option(
    "--drop-excluded",
    is_flag=True,
    help="Leave out the rows refine excluded and those left without a label (label_refined null).",
)
@click.option(
    "--soft",
    is_flag=True,
    help="Keep label_soft too: class probabilities to train on, in the order of the file's "
    "refine.classes metadata.",
)
@click.option(
    "--as-label",
    is_flag=True,
    help="Write the refined label under the label column's name, in place of the given label, "
    "so the next job reads the file unchanged.",
)
@click.option(
    "--chain",
    is_flag=True,
    help="For a run written by refine update: export every batch of its chain of updates, "
    "oldest first, each row once.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@handle_refine_errors
def export_command(
    run_dir: Path,
    out: Path,
    fmt: str | None,
    drop_excluded: bool,
    soft: bool,
    as_label: bool,
    chain: bool,
    overwrite: bool,
) -> None:
    """Write the refined data of the run in RUN_DIR to a Parquet file for the next training job.

    The file holds the input's columns, with their types and order, then label_refined and
    sample_weight (the weight to train with). The run is only read, and the file is written
    whole or not at all.

    With a model directory (refine distill), or --format / a .onnx or .pt --out: write the
    student as an ONNX or TorchScript graph of calibrated probabilities, and FILE.json beside it.

    \b
    Examples:
      refine export runs/first --out clean.parquet
      refine export runs/first --out train.parquet --drop-excluded --as-label
      refine export runs/wednesday --out all.parquet --chain    # every batch of the updates
      refine export models/first --format onnx --out first.onnx
    """
    from refine.deploy import exports_model

    if exports_model(run_dir, out, fmt):
        from refine.deploy import export_model

        flags = {"--drop-excluded": drop_excluded, "--soft": soft, "--as-label": as_label}
        given = [name for name, on in {**flags, "--chain": chain}.items() if on]
        if given:
            raise CLIError(
                f"{listed(given)} apply to the data export only; a model export takes --out, --format and --overwrite"
            )

        graph, spec = export_model(run_dir, out, fmt, overwrite=overwrite)
        click.echo(f"wrote the student to {graph}, and its inputs' spec to {spec}")
        return
    from refine.io.export import export_data

    result = export_data(
        run_dir,
        out,
        drop_excluded=drop_excluded,
        soft=soft,
        as_label=as_label,
        chain=chain,
        overwrite=overwrite,
    )
    added = [c for c in result.columns if c in ("label_refined", "label_soft", "sample_weight")]
    inputs = len(result.columns) - len(added)
    label = f" with the refined label in {result.label!r}" if as_label else ""
    click.echo(
        f"wrote {count_rows(result.rows)} to {result.out}: the input's {inputs} "
        f"column{'' if inputs == 1 else 's'}{label}, then {listed(added)}"
    )
    if drop_excluded:
        click.echo(f"left out {count_rows(result.dropped)}: excluded, or without a refined label")
    if chain:
        click.echo(
            f"from {len(result.runs)} run{'' if len(result.runs) == 1 else 's'}, oldest first: "
            + ", ".join(f"{path} ({count_rows(n)})" for path, n in result.runs)
        )


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="HTML file to write.  [default: RUN_DIR/report.html]",
)
@handle_refine_errors
def report_command(run_dir: Path, out: Path | None) -> None:
    """Build the HTML report of the run in RUN_DIR from its files, and write it.

    One self-contained page (plots inlined, nothing fetched, printable): the summary, the
    estimated noise matrix, label quality, calibration, rounds, classes and the likely wrong
    labels, and scores against label_true / is_noisy where the data has them.

    \b
    Examples:
      refine report runs/first                       # rewrites runs/first/report.html
      refine report runs/first --out first.html
    """
    from refine.report.html import write_report

    click.echo(f"wrote {write_report(run_dir, out)}")
