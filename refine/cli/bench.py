"""Measuring refine: ``refine demo``, ``refine bench`` and ``refine datasets``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from refine.cli.common import (
    CLIError,
    command_line,
    handle_refine_errors,
)
from refine.cli.summary import look_at_flagged
from refine.progress import RichProgress


@click.command("demo")
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
@handle_refine_errors
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
        report = run_demo(out, seed=seed, progress=p, command=command_line())
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
        look_at_flagged(out, report.result.summary), soft_wrap=True, markup=False, highlight=False
    )


@click.command("bench")
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
@handle_refine_errors
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


@click.group("datasets")
def datasets_group() -> None:
    """Benchmark and sample datasets with known label noise, built from recipes in datasets/."""


@datasets_group.command("list")
@click.option(
    "--suite",
    type=click.Choice(["quick", "full", "text", "image"]),
    default=None,
    help="Only the recipes of this suite.",
)
@handle_refine_errors
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
@handle_refine_errors
def datasets_build(name: str, out: Path, seed: int | None) -> None:
    """Build the dataset of recipe NAME into --out (noisy label, truth beside it) and a test file.

    The training file has the features, the noisy `label`, and the truth in `label_true` and
    `is_noisy`: run refine with `--ignore label_true,is_noisy` so the truth is not a feature.

    \b
    Examples:
      refine datasets build digits-sym20 --out digits.parquet
      refine run digits.parquet --ignore label_true,is_noisy --out runs/digits
    """
    from refine.bench.crowds import VOTES_COLUMN
    from refine.bench.recipes import build_dataset, write_dataset

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
