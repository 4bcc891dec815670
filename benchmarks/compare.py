"""Two or more ``refine bench`` reports side by side: refine's figures per dataset and the
targets, one column per report, so a change's trade shows on one table.

    python benchmarks/compare.py before=reports/benchmarks.json after=/tmp/after/benchmarks.json \
        [--seeds 0] [--out reports/compare.md]

Each argument is ``NAME=PATH`` to a ``benchmarks.json``. Figures are refine's means over seeds
(``refine bench`` already summarised them); the F1 and AUPRC margins are over the better
cleanlab baseline of the same report, so a report whose baselines saw verified rows is compared
with its own baselines. ``--seeds`` keeps only those seeds' rows and summarises them again (with
``refine.bench.summary.summarise``), to set a one-seed run beside a two-seed one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# (key in a dataset's summary, heading)
PER_DATASET = (
    ("label_accuracy_mean", "refined labels right"),
    ("f1_mean", "F1"),
    ("auprc_mean", "AUPRC"),
    ("gap_recovered_mean", "gap recovered"),
)
# (key in the targets, heading, format)
TARGETS = (
    ("f1_margin_over_best_baseline", "F1 margin over the better baseline", "{:+.3f}"),
    ("auprc_margin_over_best_baseline", "AUPRC margin over the better baseline", "{:+.3f}"),
    ("cases_refined_labels_beat_given", "cases where refined labels beat the given ones", "{}"),
    ("mean_gap_recovered", "noisy→clean gap recovered, mean of cases", "{:.0%}"),
    ("pooled_gap_recovered", "noisy→clean gap recovered, pooled", "{:.0%}"),
    ("mean_ece_true_before", "ECE against the truth, before turning to the true class", "{:.3f}"),
    ("mean_ece_true_after", "ECE against the truth, after", "{:.3f}"),
)


def load(path: Path, seeds: set[int] | None = None) -> dict[str, Any]:
    report = json.loads(path.read_text())
    if "summary" not in report or "header" not in report:
        raise SystemExit(f"{path}: not a refine bench report (no 'summary' or 'header')")
    if seeds is not None:
        from refine.bench.summary import summarise

        rows = [r for r in report.get("rows", []) if r["seed"] in seeds]
        if not rows:
            raise SystemExit(f"{path}: no rows at seeds {sorted(seeds)}")
        report = {**report, "rows": rows, "summary": summarise(rows)}
    return report


def render(reports: dict[str, dict[str, Any]]) -> str:
    """The Markdown table of ``reports`` (name -> a loaded ``benchmarks.json``)."""
    names = list(reports)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append(
        "| command | " + " | ".join(f"`{reports[n]['header']['command']}`" for n in names) + " |"
    )
    for key, heading, form in TARGETS:
        cells = [_target(reports[n]["summary"]["targets"], key, form) for n in names]
        if any(cells):
            lines.append(f"| {heading} | " + " | ".join(cells) + " |")
    datasets = sorted({d for r in reports.values() for d in r["summary"]["by_dataset"]})
    lines += ["", "Per dataset, refine's means over seeds (" + " / ".join(names) + "):", ""]
    lines.append("| dataset | given labels right | " + " | ".join(h for _, h in PER_DATASET) + " |")
    lines.append("|---|---|" + "---|" * len(PER_DATASET))
    for dataset in datasets:
        runs = [
            reports[n]["summary"]["by_dataset"].get(dataset, {}).get("refine", {}) for n in names
        ]
        given = next((_fmt(r.get("given_accuracy_mean")) for r in runs if r), "")
        cells = [" / ".join(_fmt(r.get(key)) for r in runs) for key, _ in PER_DATASET]
        lines.append(f"| {dataset} | {given} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _target(targets: dict[str, Any], key: str, form: str) -> str:
    value = targets.get(key)
    if value is None:
        return ""
    if key == "cases_refined_labels_beat_given":
        return f"{value} of {targets.get('cases')}"
    return form.format(value)


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--seeds", help="comma-separated seeds to keep, e.g. 0; default all")
    parser.add_argument("--out", type=Path, help="write the Markdown here, else print it")
    args = parser.parse_args(argv)
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    reports = {}
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(
                f"{item!r}: give each report as NAME=PATH, e.g. before=reports/benchmarks.json"
            )
        reports[name] = load(Path(path), seeds)
    text = render(reports)
    if seeds is not None:
        text = (
            f"Rows of seed(s) {', '.join(map(str, sorted(seeds)))} only, summarised again.\n\n"
            + text
        )
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
