"""``refine run`` and ``refine update``, and the summary they print."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console

from refine.cli.common import (
    DEFAULTS,
    MODEL_DEFAULTS,
    command_line,
    engine_options,
    execution_options,
    handle_refine_errors,
    split_columns,
)
from refine.cli.summary import print_summary
from refine.config import (
    AUGMENT_METHODS,
    DEVICES,
    FILTER_METHODS,
    ModelConfig,
    RunConfig,
    load_config,
    recorded_input,
    version_differences,
)
from refine.progress import RichProgress


@click.command("run")
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
@click.option("--label", "-l", default=DEFAULTS.label, show_default=True, help="Label column.")
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
    default=DEFAULTS.student_size,
    show_default=True,
    help="The student's hidden widths (64, 128,64), a parameter budget (params:20000), or auto: "
    "the teacher's widths, one network in place of the ensemble.",
)
@click.option(
    "--student-temperature",
    default=DEFAULTS.student_temperature,
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
    default=DEFAULTS.embedding_cache,
    show_default=True,
    metavar="auto|off|DIR",
    help="Where --text-model's and an --image-model directory's embeddings are kept, so reruns "
    "and updates encode only new values: auto is ~/.cache/refine (or $REFINE_CACHE_DIR).",
)
@click.option(
    "--image-size",
    default=DEFAULTS.image_size,
    show_default=True,
    help="Side in pixels images are resized to; 0: their own size up to 28 (224 with a "
    "TorchScript --image-model; a model directory's processor sizes its own).",
)
@click.option("--folds", default=DEFAULTS.folds, show_default=True, help="Cross-fitting folds.")
@click.option(
    "--rounds",
    default=DEFAULTS.rounds,
    show_default=True,
    help="Most rounds of refine-and-retrain.",
)
@click.option(
    "--min-changes",
    default=DEFAULTS.min_changes,
    show_default=True,
    help="Stop when a round changes fewer labels than this.",
)
@click.option(
    "--seeds",
    default=DEFAULTS.seeds,
    show_default=True,
    help="Models per fold, each with its own seed.",
)
@click.option(
    "--filter-by",
    type=click.Choice(FILTER_METHODS),
    default=DEFAULTS.filter_by,
    show_default=True,
    help="cleanlab's method for find_label_issues (which to choose: docs/options.md).",
)
@click.option(
    "--flag-confident/--no-flag-confident",
    default=DEFAULTS.flag_confident,
    show_default=True,
    help="Also flag rows every ensemble member confidently gives another class.",
)
@click.option(
    "--one-way-noise/--no-one-way-noise",
    default=DEFAULTS.one_way_noise,
    show_default=True,
    help="Between two classes whose noise runs one way, never flag a row against that direction "
    "(how the direction is read: docs/options.md).",
)
@click.option(
    "--relabel-threshold",
    default=DEFAULTS.relabel_threshold,
    show_default=True,
    help="Probability that the predicted class is the true one, needed to correct a flagged label.",
)
@click.option(
    "--relabel-odds",
    default=DEFAULTS.relabel_odds,
    show_default=True,
    help="Also correct a flagged label below the threshold when the predicted class is this "
    "many times as likely as the given one (0 = off). For strong models on many classes, not "
    "small data (docs/options.md).",
)
@click.option(
    "--exclude-threshold",
    default=DEFAULTS.exclude_threshold,
    show_default=True,
    help="Flagged rows with label quality below this and no confident fix are excluded.",
)
@click.option(
    "--soft-mix",
    default=DEFAULTS.soft_mix,
    show_default=True,
    help="Weight of the prediction in label_soft (0 = one-hot label, 1 = prediction).",
)
@click.option(
    "--pseudo/--no-pseudo",
    "pseudo_label",
    default=DEFAULTS.pseudo_label,
    show_default=True,
    help="Pseudo-label unlabelled rows the ensemble is confident and unanimous about.",
)
@click.option(
    "--pseudo-threshold",
    default=DEFAULTS.pseudo_threshold,
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
    default=DEFAULTS.augment_ratio,
    show_default=True,
    help="Synthetic rows per trusted row, with --augment.",
)
@click.option(
    "--max-categories",
    default=DEFAULTS.max_categories,
    show_default=True,
    help="Most distinct values for a string column to be one-hot encoded.",
)
@click.option(
    "--report/--no-report",
    default=DEFAULTS.report,
    show_default=True,
    help="Write report.html, a self-contained page of plots and tables, into the run.",
)
@click.option("--max-epochs", default=MODEL_DEFAULTS.max_epochs, show_default=True)
@click.option(
    "--max-rows-seen",
    default=MODEL_DEFAULTS.max_rows_seen,
    show_default=True,
    help="Rows a model trains on at most (epochs x rows), which bounds a fit on large data.",
)
@click.option(
    "--batch-size",
    default=MODEL_DEFAULTS.batch_size,
    show_default=True,
    help="Rows per training step; 0 chooses from the data size.",
)
@click.option(
    "--device", type=click.Choice(DEVICES), default=MODEL_DEFAULTS.device, show_default=True
)
@click.option(
    "--mixup",
    default=MODEL_DEFAULTS.mixup,
    show_default=True,
    help="Train every model on mixup blends of its batches, mixing weights from "
    "Beta(MIXUP, MIXUP); 0 = off. It can hurt small, low-dimensional tables (docs/options.md).",
)
@click.option("--seed", default=DEFAULTS.seed, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option(
    "--resume",
    is_flag=True,
    help="Go on from the checkpoint an interrupted run to --out left (.OUT.partial beside it); "
    "same result as an uninterrupted run.",
)
@execution_options
@engine_options("Where folds train: this machine's --workers, or Ray tasks, one per fold")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@handle_refine_errors
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
        features=split_columns(features) or None,
        ignore=split_columns(ignore),
        text=split_columns(text),
        image=split_columns(image),
        image_model=str(image_model) if image_model is not None else None,
        verified_file=str(verified_file) if verified_file is not None else None,
        annotations=str(annotations) if annotations is not None else None,
        teacher_features=split_columns(teacher_features) if teacher_features else None,
        student_features=split_columns(student_features) if student_features else None,
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
            command=command_line(),
            resume=resume,
            workers=workers,
            memory=memory,
            engine=engine,
            address=address,
        )
    if not quiet:
        print_summary(Console(), result.summary, out)


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


@click.command("update")
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
@execution_options
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@handle_refine_errors
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
            command=command_line(),
            workers=workers,
            memory=memory,
            **options,
        )
    if not quiet:
        print_summary(Console(), result.summary, out)
