"""The deployable student: ``refine distill`` and ``refine predict``."""

from __future__ import annotations

from pathlib import Path

import click

from refine.cli.common import (
    DEFAULTS,
    count_rows,
    engine_options,
    handle_refine_errors,
)
from refine.config import (
    DEVICES,
)


@click.command("distill")
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
    default=DEFAULTS.student_size,
    show_default=True,
    help="Hidden widths (64, 128,64), a parameter budget (params:20000), or auto: the "
    "teacher's widths, one network in place of the ensemble.",
)
@click.option(
    "--student-temperature",
    "soft_temperature",
    default=DEFAULTS.student_temperature,
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
@handle_refine_errors
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


@click.command("predict")
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
    default=DEFAULTS.embedding_cache,
    show_default=True,
    metavar="auto|off|DIR",
    help="Where a --text-model (or --image-model DIR) student finds embeddings already "
    "computed and keeps new ones: auto is ~/.cache/refine (or $REFINE_CACHE_DIR).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@engine_options(
    "Where the rows are predicted: here, or by Ray Data actors that read the Parquet row "
    "groups where they lie"
)
@handle_refine_errors
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
    engine: str,
    address: str | None,
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
      refine predict models/first shards/ --out predicted.parquet --engine ray --address auto
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
        engine=engine,
        address=address,
    )
    abstained = (
        f"; {count_rows(result.abstained)} abstain (confidence below {result.threshold:.4g})"
        if result.threshold is not None
        else ""
    )
    click.echo(f"wrote {count_rows(result.rows)} to {result.out}{abstained}")
