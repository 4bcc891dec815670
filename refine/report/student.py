"""The report's "Student" section: the deployable student of ``refine run --student`` (its size
against the teacher ensemble's, its calibration, and its risk-coverage curve on out-of-fold data,
which ``refine predict --coverage`` reads), from ``run.json``'s ``student_model``."""

from __future__ import annotations

from typing import Any

from refine.report import plots
from refine.report.page import escape, figure, table

# Coverages listed in the section's table (the plot shows every recorded one).
LISTED = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5)


def student_section(student: dict[str, Any]) -> str:
    """The section's HTML for run.json's ``student_model``."""
    calibration = student.get("calibration") or {}
    share = student.get("parameter_share")
    text = (
        f"One network of hidden widths {student.get('hidden')}, {student.get('parameters'):,} "
        f"parameters ({share:.1%} of the teacher ensemble's), in {student.get('path')}/ for "
        f"refine predict and refine export. Out of fold, against the refined labels: accuracy "
        f"{calibration.get('oof_accuracy')}, ECE {calibration.get('ece_before')} before and "
        f"{calibration.get('ece_after')} after temperature scaling "
        f"(T = {student.get('temperature', 0):.3g})."
    )
    curve = student.get("risk_coverage") or []
    if not curve:
        return f"<p>{escape(text)}</p>"
    image = plots.risk_coverage(curve)
    body = [
        [f"{p['coverage']:.0%}", f"{p['threshold']:.4f}", f"{p['accuracy']:.4f}"]
        for p in curve
        if any(abs(p["coverage"] - c) < 1e-9 for c in LISTED)
    ]
    caption = (
        "Accuracy of the student's out-of-fold predictions against the refined labels when it "
        "answers only its most confident rows; refine predict --coverage takes its threshold "
        "from these confidences."
    )
    return (
        f"<p>{escape(text)}</p>"
        + figure(image, "Risk-coverage curve of the student", caption)
        + table(["coverage", "confidence threshold", "accuracy"], body, numeric=range(3))
    )
