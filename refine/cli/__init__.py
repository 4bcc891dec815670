"""The command line: each command parses options, makes one library call, and prints.

Errors the user can fix (``RefineError``) print one line and exit with code 2. The commands
live by concern: a run (``run``), a run's outputs (``outputs``), the deployable student
(``model``) and measuring refine (``bench``); what they share is in ``common``.
"""

from __future__ import annotations

import sys

import click

from refine.cli.bench import bench_command, datasets_group, demo_command
from refine.cli.model import distill_command, predict_command
from refine.cli.outputs import export_command, query_command, report_command, review_command
from refine.cli.run import run_command, update_command
from refine.config import VERSION


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="refine")
def cli() -> None:
    """refine finds and fixes wrong labels in Parquet datasets.

    \b
    refine demo                                   # digits with 20% wrong labels
    refine run data.parquet --label y --out runs/first
    refine query runs/first "SELECT * FROM flagged ORDER BY label_quality LIMIT 20"
    refine review runs/first --budget 100 --out review.csv   # rows to check by hand
    refine export runs/first --out clean.parquet             # for the next training job
    """


for command in (
    run_command,
    update_command,
    review_command,
    query_command,
    export_command,
    distill_command,
    predict_command,
    report_command,
    demo_command,
    bench_command,
    datasets_group,
):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(prog_name="refine", standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted; no output was written", err=True)
        sys.exit(130)
