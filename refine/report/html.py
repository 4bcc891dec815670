"""The run report: one self-contained HTML page built from a run directory's files alone.

``build_report(run_dir)`` reads ``run.json``, ``rounds.parquet``, ``refined.parquet`` (and counts
``synthetic.parquet``) and returns the page; ``write_report`` writes it, by default to
``RUN_DIR/report.html``. ``refine run`` writes it inside the run's temporary directory, and
``refine report RUN_DIR`` rebuilds it later, byte for byte the same.

This module decides what each section says from the run as ``refine.report.reading`` loads it,
but for the trust and annotator sections (``refine.report.trust``), the columns
(``refine.report.columns``) and the student (``refine.report.student``);
``refine.report.cells`` writes values into cells, ``refine.report.plots`` draws the figures (SVG
``data:`` URLs) and ``refine.report.page`` holds the HTML frame, stylesheet and escaping.
The page fetches nothing, runs no script, and escapes every value from the data.

The run stores ``refine.judge.detect.confident_joint`` in
``run.json`` so the report needs no probabilities.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from refine.errors import OutputError
from refine.report import plots
from refine.report.cells import NOT_RECORDED, cell, decimal, ece_pair, integer, number, plain, short
from refine.report.columns import columns_section
from refine.report.metrics import flag_scores, label_accuracy
from refine.report.page import document, escape, figure, note, table
from refine.report.reading import TRUTH_COLUMNS, ReportRun, class_codes, load_run_dir
from refine.report.student import student_section
from refine.report.trust import annotators_section, consensus_note, trust_section

REPORT_NAME = "report.html"
TOP_ROWS = 50  # rows in the table of likely wrong labels
KEY_COLUMNS = 3  # key columns shown per likely wrong row
HEATMAP_CLASSES = 20  # above this many classes the noise matrix shows the noisiest ones
TABLE_CLASSES = 30  # rows of the per-class table above which it shows the most flagged ones


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build the report of the run in ``run_dir`` and write it to ``out``.

    Parameters
    ----------
    run_dir : path
        A directory written by ``refine run`` or ``refine update``.
    out : path, optional
        The HTML file to write; default ``RUN_DIR/report.html``. Replaced atomically.

    Returns
    -------
    Path
        Where the report went.
    """
    page = build_report(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write the report to {str(out)!r}: {exc.strerror}; choose another --out"
        ) from None
    return out


def build_report(run_dir: str | Path) -> str:
    """The report of the run in ``run_dir`` as one HTML page (a string), from its files alone.

    Sections: summary, columns (the key, the features and how each was read, the ignored and
    skipped columns), trust (whether refine changed labels and why; what the verified rows
    show), estimated noise matrix (plot and counts), label quality, calibration, rounds, classes,
    the likely wrong labels, the student of ``refine run --student`` and, when ``refined.parquet`` has the truth (``label_true``,
    ``is_noisy``, as ``refine datasets build`` writes them), scores against it. A field an
    older run did not record shows as "not recorded".
    """
    run = load_run_dir(Path(run_dir))
    with plots.style():
        sections = [
            ("summary", "Summary", _summary_section(run)),
            ("columns", "Columns", columns_section(run.summary, run.key, run.key_source)),
            ("trust", "Trust", trust_section(run.summary)),
            ("noise", "Estimated label noise", _noise_section(run)),
            ("quality", "Label quality", _quality_section(run)),
            ("calibration", "Calibration", _calibration_section(run)),
            ("rounds", "Rounds", _rounds_section(run)),
            ("classes", "Classes", _classes_section(run)),
            ("rows", "Likely wrong labels", _rows_section(run)),
        ]
        if run.annotators is not None:
            consensus = (run.summary.get("annotators") or {}).get("consensus")
            section = consensus_note(consensus) + annotators_section(run.annotators)
            sections.insert(3, ("annotators", "Annotators", section))
        if run.summary.get("student_model"):
            sections.append(("student", "Student", student_section(run.summary["student_model"])))
        truth = _truth_section(run)
        if truth is not None:
            sections.append(("truth", "Against the true labels", truth))
    return _page(run, sections)


# --- sections ----------------------------------------------------------------------------------


def _summary_section(run: ReportRun) -> str:
    s = run.summary
    counts = run.counts
    labelled, flagged = counts["labelled"], counts["flagged"]
    share = f"{flagged / labelled:.1%} of labelled" if labelled else ""
    cards = [
        ("rows", f"{counts['rows']:,}", f"{len(run.classes):,} classes"),
        ("labelled", f"{labelled:,}", f"{counts['unlabelled']:,} unlabelled"),
        ("flagged", f"{flagged:,}", share),
        ("corrected", f"{counts['corrected']:,}", ""),
        ("excluded", f"{counts['excluded']:,}", ""),
        ("pseudo-labelled", f"{counts['pseudo_labelled']:,}", ""),
    ]
    if counts["verified"]:
        cards.insert(2, ("verified", f"{counts['verified']:,}", "checked by a person"))
    card_html = "".join(
        f'<div class="card"><div class="name">{escape(name)}</div>'
        f'<div class="value">{escape(value)}</div><div class="sub">{escape(sub)}</div></div>'
        for name, value, sub in cards
    )
    timings = s.get("timings")
    calibration = s.get("calibration") or {}
    rows = [
        ("kept with doubt (weight < 1)", integer(s.get("down_weighted"))),
        ("synthetic rows", integer(run.synthetic_rows if run.synthetic_rows is not None else 0)),
        ("rounds run", integer(s.get("rounds_run", run.rounds.num_rows or None)) + _teacher(s)),
        ("time", f"{sum(timings.values()):.1f} s" if timings else NOT_RECORDED),
        ("ECE before / after calibration", ece_pair(calibration)),
        ("temperature", decimal(calibration.get("temperature"), 3)),
        ("device", plain(s.get("device"))),
        ("refine version", plain(s.get("refine_version"))),
        ("seed", plain(s.get("seed"))),
        ("input", plain(s.get("input"))),
    ]
    details = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    if "command" not in s:  # a run from before refine recorded it
        command = escape(NOT_RECORDED)
    elif s["command"] is None:
        command = escape(f"{NOT_RECORDED} (run from Python)")
    else:
        command = f"<code>{escape(s['command'])}</code>"
    details += f"<tr><th>command</th><td>{command}</td></tr>"
    student = s.get("student")
    if isinstance(student, dict):  # cross-modal distillation: model.pt keeps the student
        teacher = ", ".join(str(c) for c in (s.get("config") or {}).get("teacher_features") or [])
        details += (
            f"<tr><th>teacher columns</th><td>{escape(teacher or NOT_RECORDED)}</td></tr>"
            "<tr><th>student columns (the model kept)</th>"
            f"<td>{escape(', '.join(str(c) for c in student.get('features') or []))}</td></tr>"
            "<tr><th>student out-of-fold accuracy, refined / given labels</th>"
            f"<td>{escape(decimal(student.get('oof_accuracy_vs_refined'), 3))} / "
            f"{escape(decimal(student.get('oof_accuracy_vs_given'), 3))}</td></tr>"
            "<tr><th>student temperature</th>"
            f"<td>{escape(decimal(student.get('temperature'), 3))}</td></tr>"
        )
    parent = s.get("parent")
    if isinstance(parent, dict):
        details += (
            f"<tr><th>updated from</th><td><code>{escape(parent.get('run'))}</code> "
            f"({escape(integer(s.get('replayed_rows')))} rows replayed)</td></tr>"
        )
    warning = ""
    if s.get("teacher_reliable") is False and "trust" not in s:  # the trust section says it now
        warning = (
            '<p class="warn">The model barely beats chance on these labels, so every label was '
            "kept. More data or better features would help.</p>"
        )
    return f'{warning}<div class="cards">{card_html}</div><table class="keyvalue">{details}</table>'


def _noise_section(run: ReportRun) -> str:
    joint = (run.summary.get("noise_matrix") or {}).get("confident_joint")
    if joint is None:
        if "noise_matrix" in run.summary:
            return note("No noise matrix: fewer than two classes have labelled rows.")
        return note(f"Noise matrix {NOT_RECORDED} (the run predates it).")
    joint = np.asarray(joint, dtype=np.int64)
    off = joint.copy()
    np.fill_diagonal(off, 0)
    total = max(int(joint.sum()), 1)
    k = len(joint)
    shown = np.arange(k)
    said = ""
    if k > HEATMAP_CLASSES:
        mass = off.sum(0) + off.sum(1)
        shown = np.sort(np.argsort(-mass, kind="stable")[:HEATMAP_CLASSES])
        kept = int(off[np.ix_(shown, shown)].sum())
        said = (
            f" Showing the {HEATMAP_CLASSES} of {k:,} classes with the most estimated "
            f"off-diagonal rows (given or estimated true); they hold {kept:,} of the "
            f"{int(off.sum()):,} off-diagonal rows."
        )
    image = plots.noise_heatmap(joint[np.ix_(shown, shown)], [run.names[i] for i in shown])
    caption = (
        "cleanlab's confident joint on the last round's calibrated out-of-fold probabilities: "
        "labelled rows counted by their given label (rows) and the class they most likely "
        "belong to (columns). The diagonal, labels estimated right, is grey, so the colour "
        "scale belongs to the off-diagonal cells: the estimated label noise. Estimated noise: "
        f"{int(off.sum()):,} of {total:,} labelled rows ({off.sum() / total:.1%}).{said}"
    )
    names = [short(run.names[i], 24) for i in shown]
    counts = table(
        ["given \\ estimated true", *names],
        [
            [name, *(f"{n:,}" for n in joint[i, shown])]
            for name, i in zip(names, shown, strict=True)
        ],
        numeric=range(1, len(shown) + 1),
        caption="The plot's counts: labelled rows by given label (rows) and estimated true "
        "class (columns); off the diagonal, the estimated wrong labels.",
        scroll=True,
    )
    title = "Estimated noise matrix, given label by estimated true label"
    return figure(image, title, caption) + counts


def _quality_section(run: ReportRun) -> str:
    labelled = run.labelled & ~np.isnan(run.quality)
    if not labelled.any():
        return note("No labelled rows, so no label quality to show.")
    quality, flagged = run.quality[labelled], run.is_issue[labelled]
    threshold = (run.summary.get("config") or {}).get("exclude_threshold")
    image = plots.quality_histogram(quality[~flagged], quality[flagged], threshold)
    caption = (
        f"label_quality of the {int(labelled.sum()):,} labelled rows (low: the given label is "
        f"likely wrong), on a log scale; the {int(flagged.sum()):,} flagged rows in orange. "
        f"Median {np.median(quality):.3f}."
    )
    return figure(image, "Histogram of label quality, flagged rows highlighted", caption)


def _calibration_section(run: ReportRun) -> str:
    calibration = run.summary.get("calibration") or {}
    before, after = calibration.get("ece_before"), calibration.get("ece_after")
    text = (
        f"Expected calibration error (15 equal-width confidence bins) before temperature "
        f"scaling {decimal(before, 3)}, after {decimal(after, 3)}; temperature "
        f"{decimal(calibration.get('temperature'), 3)}."
    )
    reliability = calibration.get("reliability")
    if not reliability:
        why = "no labelled rows to measure" if "reliability" in calibration else NOT_RECORDED
        return f"<p>{escape(text)}</p>" + note(f"Reliability diagram: {why}.")
    titles = (f"before calibration: ECE {decimal(before, 3)}", f"after: ECE {decimal(after, 3)}")
    image = plots.reliability_diagram(reliability["before"], reliability["after"], titles)
    caption = (
        "The last round's out-of-fold probabilities of labelled rows, against their given "
        "labels: bars are each bin's accuracy, the hatched part the gap to its mean confidence; "
        "the dashed line is perfect calibration. Below: rows per bin. Label noise lowers "
        "accuracy against given labels, so some gap remains by design."
    )
    return f"<p>{escape(text)}</p>" + figure(
        image, "Reliability diagrams before and after calibration", caption
    )


def _rounds_section(run: ReportRun) -> str:
    rounds = run.rounds
    if rounds.num_rows == 0:
        return note("No rounds recorded.")
    columns = {n: rounds.column(n).to_pylist() for n in rounds.column_names}
    image = plots.round_curves(columns)
    heads = [
        ("round", "round", 0),
        ("flagged", "flagged", 0),
        ("corrected", "corrected", 0),
        ("excluded", "excluded", 0),
        ("pseudo_labelled", "pseudo", 0),
        ("changed", "changed", 0),
        ("policy", "policy", 0),
        ("votes_temper", "votes t", 2),
        ("annotator_accuracy", "annotator accuracy", 3),
        ("oof_accuracy", "OOF accuracy", 3),
        ("ece_before", "ECE before", 3),
        ("ece_after", "ECE after", 3),
        ("seconds", "seconds", 1),
    ]
    # The annotator model's columns are null in a run without votes: shown only where filled.
    voted = ("votes_temper", "annotator_accuracy")
    heads = [
        h
        for h in heads
        if h[0] in columns and (h[0] not in voted or any(v is not None for v in columns[h[0]]))
    ]
    body = [
        [number(columns[key][i], digits) for key, _, digits in heads] for i in range(len(rounds))
    ]
    return figure(
        image,
        "Per-round curves: flagged and changed rows, out-of-fold accuracy, ECE",
        "Each round retrains on the previous round's refined labels. Changed: rows whose "
        "refined label differs from the previous round's. Out-of-fold accuracy is against "
        "the given labels.",
    ) + table([h[1] for h in heads], body, numeric=range(len(heads)))


def _classes_section(run: ReportRun) -> str:
    k = len(run.classes)
    labelled = run.labelled
    given = run.given[labelled]
    rows = np.bincount(given, minlength=k)
    flagged_given = run.given[run.is_issue & labelled]
    flagged = np.bincount(flagged_given, minlength=k)
    corrected = np.bincount(run.given[labelled & (run.source == "corrected")], minlength=k)
    excluded = np.bincount(run.given[labelled & (run.source == "excluded")], minlength=k)
    pairs = flagged_given * k + run.predicted[run.is_issue & labelled]
    values, counts = np.unique(
        pairs[run.predicted[run.is_issue & labelled] >= 0], return_counts=True
    )
    confusions: dict[int, list[tuple[int, int]]] = {}
    for pair, n in sorted(zip(values.tolist(), counts.tolist(), strict=True), key=lambda x: -x[1]):
        confusions.setdefault(pair // k, []).append((pair % k, n))
    order = np.arange(k)
    shown = ""
    if k > TABLE_CLASSES:
        order = np.argsort(-flagged, kind="stable")[:TABLE_CLASSES]
        shown = note(f"The {TABLE_CLASSES} of {k:,} classes with the most flagged rows.")
    body = []
    for c in order:
        top = ", ".join(
            f"→ {short(run.names[p])} ({n:,})" for p, n in confusions.get(int(c), [])[:3]
        )
        body.append(
            [
                short(run.names[c]),
                f"{rows[c]:,}",
                f"{flagged[c]:,}",
                f"{flagged[c] / rows[c]:.1%}" if rows[c] else "–",
                f"{corrected[c]:,}",
                f"{excluded[c]:,}",
                top or "–",
            ]
        )
    heads = ["given class", "rows", "flagged", "flagged share", "corrected", "excluded"]
    return shown + table(
        [*heads, "flagged as (top 3)"],
        body,
        numeric=range(1, 6),
        caption="Labelled rows by given label.",
    )


def _rows_section(run: ReportRun) -> str:
    labelled = run.labelled & ~np.isnan(run.quality)
    pool = run.is_issue & labelled
    intro = f"The {TOP_ROWS} flagged rows with the lowest label quality"
    if not pool.any():
        pool = labelled
        intro = f"No row was flagged; the {TOP_ROWS} labelled rows with the lowest label quality"
    if not pool.any():
        return note("No labelled rows.")
    candidates = np.flatnonzero(pool)
    order = candidates[np.argsort(run.quality[candidates], kind="stable")[:TOP_ROWS]]
    key = list(run.key[:KEY_COLUMNS])
    shown = [*key, *run.features]
    taken = run.refined.select(shown).take(pa.array(order)) if shown else None
    values = {n: taken.column(n).to_pylist() for n in shown} if taken else {}
    heads = ["row_number", *key, "given", "predicted", "refined", "source", "quality"]
    body = []
    for i, row in enumerate(order.tolist()):
        body.append(
            [
                str(row),
                *("" if values[n][i] is None else short(str(values[n][i])) for n in key),
                _class_name(run, run.given[row]),
                _class_name(run, run.predicted[row]),
                _class_name(run, run.refined_codes[row]),
                str(run.source[row]),
                f"{run.quality[row]:.4f}",
                *(cell(values[n][i]) for n in run.features),
            ]
        )
    named = f"; {', '.join(key)}: the run's key" if key else ""
    text = (
        f"{intro}, lowest first. row_number: the row's position in refined.parquet and in the "
        f"input, from 0, as in refine query's views{named}; refined: the label to train on "
        "(empty where the row is excluded); then the first feature columns."
    )
    k = len(key)
    numeric = [
        0,
        *(1 + j for j, n in enumerate(key) if _is_numeric(run.refined, n)),
        5 + k,
        *(6 + k + j for j, n in enumerate(run.features) if _is_numeric(run.refined, n)),
    ]
    heads += run.features
    return f"<p>{escape(text)}</p>" + table(
        heads, body, numeric=numeric, scroll=True, words=[4 + k]
    )


def _truth_section(run: ReportRun) -> str | None:
    names = run.refined.column_names
    if not any(c in names for c in TRUTH_COLUMNS):
        return None
    labelled = run.labelled
    truth = (
        class_codes(run.refined.column("label_true"), run.classes)
        if "label_true" in names
        else None
    )
    if "is_noisy" in names:
        is_noisy = run.refined.column("is_noisy").fill_null(False).to_numpy(zero_copy_only=False)
    else:
        is_noisy = run.given != truth
    parts = []
    if labelled.any():
        quality = np.nan_to_num(run.quality[labelled], nan=1.0)
        scores = flag_scores(run.is_issue[labelled], is_noisy[labelled], quality)
        heads = ["rows", "truly wrong", "flagged", "precision", "recall", "F1", "AUPRC", "AUROC"]
        body = [
            [
                f"{int(labelled.sum()):,}",
                f"{int(is_noisy[labelled].sum()):,}",
                f"{int(run.is_issue[labelled].sum()):,}",
                *(decimal(scores.get(key), 3) for key in ("precision", "recall", "f1")),
                *(decimal(scores.get(key), 3) for key in ("auprc", "auroc")),
            ]
        ]
        parts.append(
            table(
                heads,
                body,
                numeric=range(len(heads)),
                caption="is_label_issue against is_noisy on labelled rows; AUPRC and AUROC rank "
                "rows by 1 − label_quality.",
            )
        )
    if truth is not None and labelled.any():
        refined = label_accuracy(run.refined_codes[labelled], truth[labelled])
        given = float((run.given[labelled] == truth[labelled]).mean())
        body = [
            ["given label", f"{given:.3f}", "–", "–"],
            [
                "label_refined",
                f"{refined['accuracy']:.3f}",
                f"{refined['accuracy_kept']:.3f}",
                f"{refined['kept']:.1%}",
            ],
        ]
        pseudo = run.source == "pseudo"
        if pseudo.any():
            right = float((run.refined_codes[pseudo] == truth[pseudo]).mean())
            body.append(
                ["pseudo-labels", f"{right:.3f}", f"{right:.3f}", f"{int(pseudo.sum()):,} rows"]
            )
        parts.append(
            table(
                ["labels", "accuracy", "accuracy of kept rows", "kept"],
                body,
                numeric=range(1, 4),
                caption="Against label_true, on labelled rows (excluded rows count as wrong in "
                "accuracy); pseudo-labels on the unlabelled rows that got one.",
            )
        )
    return "".join(parts) or note("The truth columns hold nothing to score against.")


# --- the page ----------------------------------------------------------------------------------


def _page(run: ReportRun, sections: list[tuple[str, str, str]]) -> str:
    s = run.summary
    source = s.get("input")
    header = (
        "<h1>refine report</h1>"
        f'<p class="meta">{escape(plain(source))} · {len(run.given):,} rows, '
        f"{len(run.classes):,} classes, label column <code>{escape(run.label)}</code> · "
        f"refine {escape(plain(s.get('refine_version')))}</p>"
    )
    versions = s.get("versions") or {}
    listed = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")
    footer = (
        '<p class="meta">Built from run.json, rounds.parquet and refined.parquet by '
        f"<code>refine report</code>. Versions: {escape(listed or NOT_RECORDED)}.</p>"
    )
    title = f"refine report: {source}" if source else "refine report"
    return document(title, header, sections, footer)


def _class_name(run: ReportRun, code: int) -> str:
    return short(run.names[code]) if code >= 0 else ""


def _is_numeric(data: pa.Table, column: str) -> bool:
    t = data.schema.field(column).type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _teacher(s: dict[str, Any]) -> str:
    """An update's round 1 is the earlier run's judgement, not one of its ``--rounds``."""
    return (
        " after the earlier run's judgement (round 1 under Rounds)"
        if s.get("teacher_round")
        else ""
    )
