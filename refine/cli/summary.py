"""What ``refine run`` and ``refine update`` print when a run is written: the counts, the
trust policy and why, the calibration, and where to look next."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from refine.progress import trust_lines


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


def print_summary(console: Console, s: dict[str, Any], out: Path) -> None:
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
    console.print(look_at_flagged(out, s), soft_wrap=True, markup=False, highlight=False)
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


def look_at_flagged(out: Path, summary: dict[str, Any]) -> str:
    """The command that shows the run's flagged rows by their key, ready to paste in a shell."""
    from refine.io.query import flagged_query

    key = (summary.get("key") or {}).get("columns") or []
    sql = flagged_query(summary["config"]["label"], key)
    # Double quotes as in the README where the shell leaves the SQL alone; else shlex's.
    quoted = f'"{sql}"' if not set(sql) & set('"$`\\!') else shlex.quote(sql)
    return f"Look at the flagged rows: refine query {shlex.quote(str(out))} {quoted}"
