"""The command line: each command parses options, makes one library call, and prints.

Errors the user can fix (``RefineError``) print one line and exit with code 2.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from refine.config import (
    AUGMENT_METHODS,
    DEVICES,
    FILTER_METHODS,
    VERSION,
    ModelConfig,
    RunConfig,
    load_config,
    recorded_input,
    version_differences,
)
from refine.errors import RefineError
from refine.progress import RichProgress, trust_lines

_DEFAULTS = RunConfig()
_MODEL = ModelConfig()


class CLIError(click.ClickException):
    exit_code = 2


def _errors(function):
    """Turn a ``RefineError`` into ``Error: <message>`` and exit code 2."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RefineError as exc:
            raise CLIError(str(exc)) from None

    return wrapper


def _command_line() -> str:
    """The command as the user typed it, for run.json: ``refine`` and its arguments."""
    return shlex.join(["refine", *sys.argv[1:]])


def _columns(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--features a,b --features c`` -> ``("a", "b", "c")``."""
    return tuple(c.strip() for v in values for c in v.split(",") if c.strip())


def _execution_options(function):
    """--workers and --memory: how a run uses the machine, which never changes its output."""
    function = click.option(
        "--memory",
        default=None,
        metavar="SIZE",
        help="Memory budget, such as 4GB (default: half the machine's). Features that would "
        "not fit stream from a file in the run's working directory; same output either way.",
    )(function)
    return click.option(
        "--workers",
        default="auto",
        show_default=True,
        metavar="N|auto",
        help="Processes training folds side by side: auto = as many as the cores, folds and "
        "--memory allow (1 for a small table). The output is the same for any number.",
    )(function)


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


@cli.command("run")
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="Rerun a recorded run: its run.json (or a JSON object of options). Options given "
    "here override the file's; DATA defaults to the run's input.",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Run directory to write; must not exist unless --overwrite.",
)
@click.option("--label", "-l", default=_DEFAULTS.label, show_default=True, help="Label column.")
@click.option(
    "--verified",
    default=None,
    help="Column of verified labels (the label's values; null where nobody checked the row). "
    "Verified rows are never changed, and refine measures and steers itself by them.",
)
@click.option(
    "--verified-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Parquet or CSV of verified labels kept apart from the data: a verified_label column "
    "and the --key column (without --key, a 'row' column of positions, as refine review "
    "writes it).",
)
@click.option(
    "--key",
    default=None,
    help="Column of unique values (such as an id) that names each row: shown first in the "
    "query views, the report and review files, never a feature, and joining --verified-file. "
    "Default: the --ignore'd columns, else columns named like an id.",
)
@click.option(
    "--votes",
    default=None,
    help="List column of votes per row (annotators or labelling functions; null or -1 = "
    "abstain): refine starts from their majority vote, written as label_vote; each round, "
    "where held-out votes choose it, the annotator model's posterior (votes and features) "
    "gives the labels. Writes annotators.parquet. --label is then optional (it only gives the "
    "classes).",
)
@click.option(
    "--annotations",
    type=click.Path(path_type=Path),
    default=None,
    help="Parquet or CSV of votes, one row per item and annotator: the --key column, "
    "'annotator' and 'label' (a crowd tool's export). Used as --votes is.",
)
@click.option(
    "--features",
    multiple=True,
    help="Feature columns (comma-separated or repeated). Default: every usable column.",
)
@click.option("--ignore", multiple=True, help="Columns never used as features, such as ids.")
@click.option(
    "--teacher-features",
    multiple=True,
    help="Columns the refining teacher trains on, instead of --features (cross-modal "
    "distillation; comma-separated or repeated).",
)
@click.option(
    "--student-features",
    multiple=True,
    help="Columns of a student trained on the teacher's refined labels; model.pt keeps the "
    "student. Needs --teacher-features.",
)
@click.option(
    "--student",
    is_flag=True,
    help="Also train one small calibrated student on the final soft labels, in RUN_DIR/student/ "
    "for refine predict and refine export (as refine distill does).",
)
@click.option(
    "--student-size",
    default=_DEFAULTS.student_size,
    show_default=True,
    help="The student's hidden widths (64, 128,64), a parameter budget (params:20000), or auto: "
    "the teacher's widths, one network in place of the ensemble.",
)
@click.option(
    "--student-temperature",
    default=_DEFAULTS.student_temperature,
    show_default=True,
    help="Softens (above 1) or sharpens (below 1) the soft labels the student learns.",
)
@click.option(
    "--text",
    multiple=True,
    help="String columns to read as free text (comma-separated or repeated). "
    "Default: string columns of many distinct values, most with spaces.",
)
@click.option(
    "--image",
    multiple=True,
    help="Binary columns to read as encoded images (comma-separated or repeated). "
    "Default: binary columns of PNG, JPEG, GIF, BMP or WebP bytes, and {bytes, path} structs.",
)
@click.option(
    "--image-model",
    type=click.Path(path_type=Path),
    default=None,
    help="A TorchScript file (torch.jit.save) turning images into features, or a Hugging Face "
    "transformers vision model directory (pip install 'refine[image]') or timm one (pip install "
    "'refine[timm]') embedding them, in place of the small CNN trained from scratch. TorchScript "
    "is code: name only a file you trust.",
)
@click.option(
    "--text-model",
    default=None,
    metavar="NAME_OR_PATH",
    help="A sentence-transformers model directory (or a Hugging Face name) embedding each "
    "text column in place of TF-IDF n-grams. Needs pip install 'refine[text]'.",
)
@click.option(
    "--embedding-cache",
    default=_DEFAULTS.embedding_cache,
    show_default=True,
    metavar="auto|off|DIR",
    help="Where --text-model's and an --image-model directory's embeddings are kept, so reruns "
    "and updates encode only new values: auto is ~/.cache/refine (or $REFINE_CACHE_DIR).",
)
@click.option(
    "--image-size",
    default=_DEFAULTS.image_size,
    show_default=True,
    help="Side in pixels images are resized to; 0: their own size up to 28 (224 with a "
    "TorchScript --image-model; a model directory's processor sizes its own).",
)
@click.option("--folds", default=_DEFAULTS.folds, show_default=True, help="Cross-fitting folds.")
@click.option(
    "--rounds",
    default=_DEFAULTS.rounds,
    show_default=True,
    help="Most rounds of refine-and-retrain.",
)
@click.option(
    "--min-changes",
    default=_DEFAULTS.min_changes,
    show_default=True,
    help="Stop when a round changes fewer labels than this.",
)
@click.option(
    "--seeds",
    default=_DEFAULTS.seeds,
    show_default=True,
    help="Models per fold, each with its own seed.",
)
@click.option(
    "--filter-by",
    type=click.Choice(FILTER_METHODS),
    default=_DEFAULTS.filter_by,
    show_default=True,
    help="cleanlab's method for find_label_issues (which to choose: docs/options.md).",
)
@click.option(
    "--flag-confident/--no-flag-confident",
    default=_DEFAULTS.flag_confident,
    show_default=True,
    help="Also flag rows every ensemble member confidently gives another class.",
)
@click.option(
    "--one-way-noise/--no-one-way-noise",
    default=_DEFAULTS.one_way_noise,
    show_default=True,
    help="Between two classes whose noise runs one way, never flag a row against that direction "
    "(how the direction is read: docs/options.md).",
)
@click.option(
    "--relabel-threshold",
    default=_DEFAULTS.relabel_threshold,
    show_default=True,
    help="Probability that the predicted class is the true one, needed to correct a flagged label.",
)
@click.option(
    "--relabel-odds",
    default=_DEFAULTS.relabel_odds,
    show_default=True,
    help="Also correct a flagged label below the threshold when the predicted class is this "
    "many times as likely as the given one (0 = off). For strong models on many classes, not "
    "small data (docs/options.md).",
)
@click.option(
    "--exclude-threshold",
    default=_DEFAULTS.exclude_threshold,
    show_default=True,
    help="Flagged rows with label quality below this and no confident fix are excluded.",
)
@click.option(
    "--soft-mix",
    default=_DEFAULTS.soft_mix,
    show_default=True,
    help="Weight of the prediction in label_soft (0 = one-hot label, 1 = prediction).",
)
@click.option(
    "--pseudo/--no-pseudo",
    "pseudo_label",
    default=_DEFAULTS.pseudo_label,
    show_default=True,
    help="Pseudo-label unlabelled rows the ensemble is confident and unanimous about.",
)
@click.option(
    "--pseudo-threshold",
    default=_DEFAULTS.pseudo_threshold,
    show_default=True,
    help="Probability of the true class needed to pseudo-label an unlabelled row.",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENT_METHODS),
    default=None,
    help="Add synthetic rows made from trusted rows each round: interpolate (SMOTE-like, "
    "same class), mixup, or noise. Off by default.",
)
@click.option(
    "--augment-ratio",
    default=_DEFAULTS.augment_ratio,
    show_default=True,
    help="Synthetic rows per trusted row, with --augment.",
)
@click.option(
    "--max-categories",
    default=_DEFAULTS.max_categories,
    show_default=True,
    help="Most distinct values for a string column to be one-hot encoded.",
)
@click.option(
    "--report/--no-report",
    default=_DEFAULTS.report,
    show_default=True,
    help="Write report.html, a self-contained page of plots and tables, into the run.",
)
@click.option("--max-epochs", default=_MODEL.max_epochs, show_default=True)
@click.option(
    "--max-rows-seen",
    default=_MODEL.max_rows_seen,
    show_default=True,
    help="Rows a model trains on at most (epochs x rows), which bounds a fit on large data.",
)
@click.option(
    "--batch-size",
    default=_MODEL.batch_size,
    show_default=True,
    help="Rows per training step; 0 chooses from the data size.",
)
@click.option("--device", type=click.Choice(DEVICES), default=_MODEL.device, show_default=True)
@click.option(
    "--mixup",
    default=_MODEL.mixup,
    show_default=True,
    help="Train every model on mixup blends of its batches, mixing weights from "
    "Beta(MIXUP, MIXUP); 0 = off. It can hurt small, low-dimensional tables (docs/options.md).",
)
@click.option("--seed", default=_DEFAULTS.seed, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option(
    "--resume",
    is_flag=True,
    help="Go on from the checkpoint an interrupted run to --out left (.OUT.partial beside it); "
    "same result as an uninterrupted run.",
)
@_execution_options
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where folds train: this machine's --workers, or Ray tasks, one per fold "
    "(pip install 'refine[ray]'; docs/ray.md). The output is the same.",
)
@click.option(
    "--address",
    default=None,
    help="With --engine ray: the Ray cluster to join (ray://HEAD:10001, or auto); "
    "without it a local Ray instance is started for the run.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@_errors
def run_command(
    data: Path | None,
    config_file: Path | None,
    out: Path,
    label: str,
    features: tuple[str, ...],
    ignore: tuple[str, ...],
    teacher_features: tuple[str, ...],
    student_features: tuple[str, ...],
    text: tuple[str, ...],
    image: tuple[str, ...],
    image_model: Path | None,
    verified_file: Path | None,
    annotations: Path | None,
    max_epochs: int,
    max_rows_seen: int,
    batch_size: int,
    device: str,
    mixup: float,
    overwrite: bool,
    resume: bool,
    workers: str,
    memory: str | None,
    engine: str,
    address: str | None,
    quiet: bool,
    **options: Any,
) -> None:
    """Find and fix wrong labels in DATA and write a run to --out.

    DATA is a Parquet file or directory, or a .csv, .tsv or .jsonl file (chosen by suffix).

    \b
    Examples:
      refine run data.parquet --label label --out runs/first
      refine run events/ --label intent --ignore id --rounds 2 --out runs/intents
      refine run data.csv --label label --out runs/from-csv
      refine run --config runs/first/run.json --out runs/again
      refine run data.parquet --out runs/first --resume     # after an interrupted run
      refine run shards/ --label y --out runs/big --engine ray --address auto
    """
    from refine.pipeline import run

    model = ModelConfig(
        max_epochs=max_epochs,
        max_rows_seen=max_rows_seen,
        batch_size=batch_size,
        device=device,
        mixup=mixup,
    )
    config = RunConfig(
        label=label,
        features=_columns(features) or None,
        ignore=_columns(ignore),
        text=_columns(text),
        image=_columns(image),
        image_model=str(image_model) if image_model is not None else None,
        verified_file=str(verified_file) if verified_file is not None else None,
        annotations=str(annotations) if annotations is not None else None,
        teacher_features=_columns(teacher_features) if teacher_features else None,
        student_features=_columns(student_features) if student_features else None,
        model=model,
        **options,
    )
    if config_file is not None:
        config, data = _from_config_file(config_file, config, data, quiet=quiet)
    elif data is None:
        raise click.UsageError(
            "Missing argument 'DATA': pass the input, or --config RUN_DIR/run.json to rerun a run",
            click.get_current_context(),
        )
    console = Console(stderr=True, quiet=quiet)
    with RichProgress(console, bars=console.is_terminal and not quiet) as progress:
        result = run(
            data,
            out,
            config=config,
            overwrite=overwrite,
            progress=progress,
            command=_command_line(),
            resume=resume,
            workers=workers,
            memory=memory,
            engine=engine,
            address=address,
        )
    if not quiet:
        _print_summary(Console(), result.summary, out)


def _from_config_file(
    path: Path, flags: RunConfig, data: Path | None, *, quiet: bool
) -> tuple[RunConfig, Path]:
    """The configuration of ``refine run --config``: the file's, with each option the user typed
    on the command line in place of the file's value, and DATA defaulting to the run's input."""
    from refine.finish import versions

    recorded_config, recorded = load_config(path)
    ctx = click.get_current_context()
    typed = {
        name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)} - {"model"}
    model = dataclasses.replace(
        recorded_config.model, **{name: getattr(flags.model, name) for name in typed & model_fields}
    )
    config = dataclasses.replace(
        recorded_config, model=model, **{name: getattr(flags, name) for name in typed & run_fields}
    )
    differences = version_differences(recorded.get("versions") or {}, versions())
    if differences and not quiet:
        click.echo(
            f"Warning: the run was recorded with other versions, so its results may not be "
            f"reproduced exactly: {', '.join(differences)}",
            err=True,
        )
    return config, data if data is not None else recorded_input(path, recorded)


def _ece(calibration: dict[str, Any]) -> str:
    before, after = calibration["ece_before"], calibration["ece_after"]
    if before is None or after is None:
        return "no labels to measure"
    return f"{before:.3f} / {after:.3f}"


def _print_trust(console: Console, trust: dict[str, Any] | None) -> None:
    """One line on whether refine changed labels and why; with verified rows, what they show."""
    if not trust:
        return
    verdict, *measured = trust_lines(trust)
    console.print(f"[{'yellow' if trust['policy'] == 'keep' else 'green'}]{verdict}[/]")
    for line in measured:
        console.print(line)


def _rounds(s: dict[str, Any]) -> str:
    """``3``, or for an update ``3 after the earlier run's judgement``: its teacher round is not
    one of the ``--rounds``."""
    if s.get("teacher_round"):
        return f"{s['rounds_run']} after the earlier run's judgement"
    return str(s["rounds_run"])


def _print_summary(console: Console, s: dict[str, Any], out: Path) -> None:
    table = Table(title=f"refine: {out}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    labelled = max(s["labelled"], 1)
    rows = [
        ("rows", f"{s['rows']:,}"),
        ("labelled / unlabelled", f"{s['labelled']:,} / {s['unlabelled']:,}"),
        ("flagged", f"{s['flagged']:,} ({s['flagged'] / labelled:.1%})"),
        ("corrected", f"{s['corrected']:,}"),
        ("excluded", f"{s['excluded']:,}"),
        ("pseudo-labelled", f"{s['pseudo_labelled']:,}"),
        ("synthetic rows", f"{s['synthetic_rows']:,}"),
        ("kept with doubt (weight < 1)", f"{s['down_weighted']:,}"),
        ("rounds", _rounds(s)),
        ("ECE before / after calibration", _ece(s["calibration"])),
        ("device", s["device"]),
        ("seconds", f"{sum(s['timings'].values()):.1f}"),
    ]
    if s.get("execution"):
        e = s["execution"]
        budget = f"{e['memory_budget_bytes'] / 2**30:.1f} GB budget"
        rows.insert(-1, ("fold processes / features", f"{e['workers']} / {e['features']}"))
        rows.insert(-1, ("memory", f"~{e['in_memory_estimate_bytes'] / 2**30:.2f} GB of {budget}"))
    if s.get("verified"):
        rows.insert(2, ("verified", f"{s['verified']:,}"))
    if s.get("annotators"):
        a = s["annotators"]
        accuracy = "n/a" if a["mean_accuracy"] is None else f"{a['mean_accuracy']:.3f}"
        rows.insert(2, ("annotators (mean accuracy)", f"{a['annotators']:,} ({accuracy})"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    _print_trust(console, s.get("trust"))
    if s["top_confusions"]:
        confusions = Table(
            title="most common given → predicted among flagged rows", title_justify="left"
        )
        for column in ("given", "predicted", "rows"):
            confusions.add_column(column, justify="right" if column == "rows" else "left")
        for c in s["top_confusions"][:5]:
            confusions.add_row(str(c["given"]), str(c["predicted"]), str(c["rows"]))
        console.print(confusions)
    console.print(_look_at_flagged(out, s), soft_wrap=True, markup=False, highlight=False)
    if (out / "report.html").is_file():
        console.print(f"Report: {out / 'report.html'}")
    if s.get("student_model"):
        student = s["student_model"]
        console.print(
            f"Student: {out / student['path']} ({student['parameters']:,} parameters); "
            f"predict with: refine predict {out} DATA --out PRED.parquet",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )


def _look_at_flagged(out: Path, summary: dict[str, Any]) -> str:
    """The command that shows the run's flagged rows by their key, ready to paste in a shell."""
    from refine.io.query import flagged_query

    key = (summary.get("key") or {}).get("columns") or []
    sql = flagged_query(summary["config"]["label"], key)
    # Double quotes as in the README where the shell leaves the SQL alone; else shlex's.
    quoted = f'"{sql}"' if not set(sql) & set('"$`\\!') else shlex.quote(sql)
    return f"Look at the flagged rows: refine query {shlex.quote(str(out))} {quoted}"


@cli.command("update")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Run directory to write for the new rows; must not exist unless --overwrite.",
)
@click.option(
    "--replay",
    default=1.0,
    show_default=True,
    help="Rows from earlier batches replayed in training per new row (0: the new rows alone).",
)
@click.option(
    "--rounds",
    type=int,
    default=None,
    help="Retraining rounds after the earlier model judges the batch. Default: the run's.",
)
@click.option("--seed", type=int, default=None, help="Default: the run's seed.")
@click.option(
    "--verified-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Verified labels for the batch's rows (as for refine run); the run's --verified "
    "column, if any, is read from the batch as it is.",
)
@click.option(
    "--key",
    default=None,
    help="Column joining --verified-file to the batch, and naming its rows. Default: the run's.",
)
@click.option(
    "--embedding-cache",
    default=None,
    metavar="auto|off|DIR",
    help="Where --text-model's (or an --image-model directory's) embeddings are kept. "
    "Default: the run's.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@_execution_options
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@_errors
def update_command(
    run_dir: Path,
    data: Path,
    out: Path,
    replay: float,
    rounds: int | None,
    seed: int | None,
    verified_file: Path | None,
    key: str | None,
    embedding_cache: str | None,
    overwrite: bool,
    workers: str,
    memory: str | None,
    quiet: bool,
) -> None:
    """Refine a new batch DATA with the run in RUN_DIR as the teacher, and write a new run.

    The earlier run's model flags and pseudo-labels the new rows; refine then retrains on them
    plus a replayed sample of the earlier refined rows, so the model does not forget them.
    The batch must have the run's input columns; a type that holds the same values (string for
    large_string, int64 for double) is cast to the run's.

    \b
    Examples:
      refine update runs/monday tuesday.parquet --out runs/tuesday
      refine update runs/tuesday wednesday/ --out runs/wednesday --replay 2
    """
    from refine.update import update

    options = {
        k: v
        for k, v in (
            ("rounds", rounds),
            ("seed", seed),
            ("verified_file", str(verified_file) if verified_file is not None else None),
            ("key", key),
            ("embedding_cache", embedding_cache),
        )
        if v is not None
    }
    console = Console(stderr=True, quiet=quiet)
    with RichProgress(console, bars=console.is_terminal and not quiet) as progress:
        result = update(
            run_dir,
            data,
            out,
            replay=replay,
            overwrite=overwrite,
            progress=progress,
            command=_command_line(),
            workers=workers,
            memory=memory,
            **options,
        )
    if not quiet:
        _print_summary(Console(), result.summary, out)


@cli.command("review")
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
@_errors
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


@cli.command("query")
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
@_errors
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
        click.echo(f"wrote {_rows(written.num_rows)} to {out}")
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
        writer.writerows([[_cell(row[c]) for c in result.column_names] for row in rows])
        click.echo(buffer.getvalue(), nl=False)
    else:
        table = Table()
        for field in result.schema:
            numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
            table.add_column(field.name, overflow="fold", justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*(_cell(row[c]) for c in result.column_names))
        Console(width=max(Console().width, 120)).print(table)


def _rows(n: int) -> str:
    return f"{n:,} row{'' if n == 1 else 's'}"


@cli.command("export")
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
@_errors
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
                f"{_listed(given)} apply to the data export only; a model export takes --out, --format and --overwrite"
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
        f"wrote {_rows(result.rows)} to {result.out}: the input's {inputs} "
        f"column{'' if inputs == 1 else 's'}{label}, then {_listed(added)}"
    )
    if drop_excluded:
        click.echo(f"left out {_rows(result.dropped)}: excluded, or without a refined label")
    if chain:
        click.echo(
            f"from {len(result.runs)} run{'' if len(result.runs) == 1 else 's'}, oldest first: "
            + ", ".join(f"{path} ({_rows(n)})" for path, n in result.runs)
        )


def _listed(words: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return json.dumps([round(v, 4) if isinstance(v, float) else v for v in value])
    return str(value)


@cli.command("distill")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Model directory to write; refused if it exists, unless --overwrite.",
)
@click.option(
    "--student-size",
    "size",
    default=_DEFAULTS.student_size,
    show_default=True,
    help="Hidden widths (64, 128,64), a parameter budget (params:20000), or auto: the "
    "teacher's widths, one network in place of the ensemble.",
)
@click.option(
    "--student-temperature",
    "soft_temperature",
    default=_DEFAULTS.student_temperature,
    show_default=True,
    help="Softens (above 1) or sharpens (below 1) the soft labels the student learns.",
)
@click.option(
    "--seed", type=int, default=None, help="Seed of the student's fits.  [default: the run's]"
)
@click.option(
    "--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="Device."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
@_errors
def distill_command(
    run_dir: Path,
    out: Path,
    size: str,
    soft_temperature: float,
    seed: int | None,
    device: str,
    overwrite: bool,
) -> None:
    """Train one small calibrated student on the soft labels of the run in RUN_DIR.

    The student learns label_soft and sample_weight on every row; it is calibrated, and its
    risk-coverage curve measured, on its own out-of-fold predictions. --out holds its weights,
    the feature encoder and model.json (classes, input schema, versions, hashes).

    \b
    Examples:
      refine distill runs/first --out models/first
      refine distill runs/first --out models/tiny --student-size params:20000
    """
    from refine.deploy import distill

    student = distill(
        run_dir,
        out,
        size=size,
        soft_temperature=soft_temperature,
        seed=seed,
        device=device,
        overwrite=overwrite,
    )
    m = student.manifest
    calibration = m["calibration"]
    click.echo(
        f"wrote the student to {out}: hidden {m['hidden']}, {m['parameters']:,} parameters "
        f"({m['parameter_share']:.1%} of the teacher ensemble's), out-of-fold accuracy "
        f"{calibration['oof_accuracy']} against the refined labels, ECE {calibration['ece_after']}"
    )


@cli.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Parquet file to write; refused if it exists, unless --overwrite.",
)
@click.option(
    "--min-confidence",
    type=float,
    default=None,
    help="Abstain (abstain = true) where the calibrated confidence is below this.",
)
@click.option(
    "--coverage",
    type=float,
    default=None,
    help="Answer this share of rows, abstaining on the rest: the threshold is chosen on the "
    "student's out-of-fold confidences. Instead of --min-confidence.",
)
@click.option(
    "--batch-rows",
    default=65_536,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows read and predicted at a time.",
)
@click.option(
    "--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="Device."
)
@click.option(
    "--embedding-cache",
    default=_DEFAULTS.embedding_cache,
    show_default=True,
    metavar="auto|off|DIR",
    help="Where a --text-model (or --image-model DIR) student finds embeddings already "
    "computed and keeps new ones: auto is ~/.cache/refine (or $REFINE_CACHE_DIR).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@_errors
def predict_command(
    model: Path,
    data: Path,
    out: Path,
    min_confidence: float | None,
    coverage: float | None,
    batch_rows: int,
    device: str,
    embedding_cache: str,
    overwrite: bool,
) -> None:
    """Predict the rows of DATA with the student in MODEL (a model directory, or a run
    directory with a student/).

    DATA is a Parquet file or directory, read in batches. --out holds every input row and
    column, then label_predicted, label_proba (calibrated, in the order of the refine.classes
    metadata), confidence and abstain.

    \b
    Examples:
      refine predict models/first new.parquet --out predicted.parquet
      refine predict runs/first new.parquet --out predicted.parquet --coverage 0.9
    """
    from refine.deploy import predict

    result = predict(
        model,
        data,
        out,
        min_confidence=min_confidence,
        coverage=coverage,
        batch_rows=batch_rows,
        overwrite=overwrite,
        device=device,
        embedding_cache=embedding_cache,
    )
    abstained = (
        f"; {_rows(result.abstained)} abstain (confidence below {result.threshold:.4g})"
        if result.threshold is not None
        else ""
    )
    click.echo(f"wrote {_rows(result.rows)} to {result.out}{abstained}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="HTML file to write.  [default: RUN_DIR/report.html]",
)
@_errors
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


@cli.command("demo")
@click.option(
    "--out",
    "-o",
    default="runs/demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Run directory for the demo (replaced if it holds an earlier run).",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print only the results.")
@_errors
def demo_command(out: Path, seed: int, quiet: bool) -> None:
    """Run refine on scikit-learn's digits with 20% of labels flipped, next to cleanlab.

    The baseline is cleanlab's find_label_issues on 5-fold out-of-fold probabilities of a
    standardised LogisticRegression, computed in the same run on the same data.
    """
    from refine.bench.demo import NOISE_RATE, run_demo
    from refine.io.write import check_output

    check_output(out, overwrite=True)  # before the first line, not after it
    console = Console()
    if not quiet:
        console.print(
            f"digits (1,797 rows, 10 classes), {NOISE_RATE:.0%} of labels flipped; "
            f"writing the run to {out}"
        )
    errors = Console(stderr=True, quiet=quiet)
    with RichProgress(errors, bars=errors.is_terminal and not quiet) as p:
        report = run_demo(out, seed=seed, progress=p, command=_command_line())
    table = Table(title="finding the flipped labels", title_justify="left")
    table.add_column("method")
    for column in ("precision", "recall", "F1", "AUPRC", "label accuracy", "seconds"):
        table.add_column(column, justify="right")
    for method, s in report.scores.items():
        table.add_row(
            method,
            f"{s['precision']:.3f}",
            f"{s['recall']:.3f}",
            f"{s['f1']:.3f}",
            f"{s['auprc']:.3f}",
            f"{s['label_accuracy']:.3f}",
            f"{s['seconds']:.1f}",
        )
    console.print(table)
    console.print(
        "cleanlab+LR: cleanlab's find_label_issues on 5-fold out-of-fold probabilities of a "
        "standardised LogisticRegression.\nlabel accuracy: refine's label_refined against "
        "the true labels (excluded rows count as wrong); for cleanlab+LR, the given labels'."
    )
    console.print(
        _look_at_flagged(out, report.result.summary), soft_wrap=True, markup=False, highlight=False
    )


@cli.command("bench")
@click.option(
    "--suite",
    type=click.Choice(["quick", "full", "text", "image"]),
    default="quick",
    show_default=True,
    help="quick: a few small datasets (minutes); full: every generated and bundled recipe "
    "(under 30 minutes); text: text recipes, the real WRENCH sets when ../shared/data has them; "
    "image: digits rendered to PNG bytes.",
)
@click.option(
    "--seeds", default=1, show_default=True, help="Seeds per dataset; means and stds over them."
)
@click.option("--dataset", "datasets", multiple=True, help="Run only these recipes (repeatable).")
@click.option(
    "--verified",
    type=float,
    default=0.0,
    show_default=True,
    help="Reveal the true label of this share of each dataset's labelled training rows, in [0, "
    "1): refine reads them as verified labels, the baselines train on them fixed.",
)
@click.option(
    "--review",
    type=float,
    default=0.0,
    show_default=True,
    help="Also run the review loop: after refine's first run, verify this share of the training "
    "rows more, chosen by refine.review.pick and at random, and rerun refine with each.",
)
@click.option(
    "--out",
    "-o",
    default="reports",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for benchmarks.md and benchmarks.json.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only where the report went.")
@_errors
def bench_command(
    suite: str,
    seeds: int,
    datasets: tuple[str, ...],
    verified: float,
    review: float,
    out: Path,
    quiet: bool,
) -> None:
    """Measure refine against cleanlab baselines, side by side, on the dataset recipes.

    \b
    Examples:
      refine bench                          # quick suite, one seed
      refine bench --suite full --seeds 3   # what reports/benchmarks.md holds
      refine bench --dataset digits-sym20 --out /tmp/bench
      refine bench --verified 0.05          # 5% of the labels checked by a person
      refine bench --review 0.02            # then 2% more, reviewed against random
    """
    from refine.bench.suite import run_bench
    from refine.bench.summary import write_report

    if seeds < 1:
        raise CLIError(f"--seeds must be at least 1, got {seeds}")
    console = Console(stderr=True, quiet=quiet)
    with RichProgress(console, bars=console.is_terminal and not quiet) as progress:
        report = run_bench(
            suite,
            seeds,
            recipes=datasets or None,
            progress=progress,
            verified=verified,
            review=review,
        )
    md, js = write_report(report, out)
    t = report.summary["targets"]
    if not quiet:
        Console().print(
            f"F1 margin over the better baseline {t['f1_margin_over_best_baseline']}, "
            f"AUPRC margin {t['auprc_margin_over_best_baseline']}, refined labels beat the given "
            f"ones in {t['cases_refined_labels_beat_given']} of {t['cases']} cases, "
            f"gap recovered {t['mean_gap_recovered']}"
        )
        if report.review_loop is not None:
            r = report.review_loop["summary"]
            Console().print(
                "review loop, mean label accuracy: "
                + ", ".join(f"{run} {v['mean_label_accuracy']}" for run, v in r["runs"].items())
                + f"; review beat random in {r['cases_review_beat_random']} of {r['cases']} cases"
            )
    click.echo(f"wrote {md} and {js}")


@cli.group("datasets")
def datasets_group() -> None:
    """Benchmark and sample datasets with known label noise, built from recipes in datasets/."""


@datasets_group.command("list")
@click.option(
    "--suite",
    type=click.Choice(["quick", "full", "text", "image"]),
    default=None,
    help="Only the recipes of this suite.",
)
@_errors
def datasets_list(suite: str | None) -> None:
    """List the dataset recipes with a one-line description each.

    \b
    Examples:
      refine datasets list
      refine datasets list --suite quick
    """
    from refine.bench.recipes import list_recipes

    table = Table()
    for column in ("name", "suites", "noise", "description"):
        table.add_column(column)
    for recipe in list_recipes(suite):
        noise = recipe.noise.get("model", "none")
        if recipe.noise.get("rate"):
            noise += f" {recipe.noise['rate']:.0%}"
        if recipe.unlabelled:
            noise += f", {recipe.unlabelled:.0%} unlabelled"
        table.add_row(recipe.name, ",".join(recipe.suites), noise, recipe.description)
    Console(width=max(Console().width, 120)).print(table)


@datasets_group.command("build")
@click.argument("name")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Parquet file for the training rows; the clean test split goes beside it.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed for the split and the noise (default: the recipe's).",
)
@_errors
def datasets_build(name: str, out: Path, seed: int | None) -> None:
    """Build the dataset of recipe NAME into --out (noisy label, truth beside it) and a test file.

    The training file has the features, the noisy `label`, and the truth in `label_true` and
    `is_noisy`: run refine with `--ignore label_true,is_noisy` so the truth is not a feature.

    \b
    Examples:
      refine datasets build digits-sym20 --out digits.parquet
      refine run digits.parquet --ignore label_true,is_noisy --out runs/digits
    """
    from refine.bench.recipes import VOTES_COLUMN, build_dataset, write_dataset

    built = build_dataset(name, seed=seed)
    train_path, test_path = write_dataset(built, out)
    click.echo(
        f"wrote {train_path} (training rows, noisy labels) and {test_path} (clean test split)"
    )
    votes = f" --votes {VOTES_COLUMN}" if VOTES_COLUMN in built.train.column_names else ""
    click.echo(
        f"next: refine run {train_path}{votes} --ignore label_true,is_noisy "
        f"--out runs/{Path(name).stem}"
    )


def main() -> None:
    try:
        cli.main(prog_name="refine", standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted; no output was written", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
