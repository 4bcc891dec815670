"""benchmarks/compare.py: two bench reports side by side, on hand-made reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, _BENCHMARKS)
try:
    import compare
finally:
    sys.path.remove(_BENCHMARKS)


def _report(command: str, f1_margin: float, beat: int, label: float, dataset: str) -> dict:
    refine = {"label_accuracy_mean": label, "given_accuracy_mean": 0.8, "f1_mean": 0.9}
    return {
        "header": {"command": command},
        "summary": {
            "targets": {
                "f1_margin_over_best_baseline": f1_margin,
                "cases_refined_labels_beat_given": beat,
                "cases": 2,
                "mean_gap_recovered": 0.71,
            },
            "by_dataset": {dataset: {"refine": refine}},
        },
    }


def test_reports_side_by_side_with_a_dataset_only_one_of_them_ran(tmp_path):
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps(_report("refine bench", 0.089, 2, 0.95, "iris-sym20")))
    after.write_text(json.dumps(_report("refine bench --verified 0.05", 0.1, 1, 0.97, "wine")))
    out = tmp_path / "compare.md"
    compare.main([f"before={before}", f"after={after}", "--out", str(out)])
    text = out.read_text()
    assert "| | before | after |" in text
    assert "| F1 margin over the better baseline | +0.089 | +0.100 |" in text
    assert "| cases where refined labels beat the given ones | 2 of 2 | 1 of 2 |" in text
    assert "| noisy→clean gap recovered, mean of cases | 71% | 71% |" in text
    assert "AUPRC margin" not in text  # neither report has it
    # A dataset missing from one report shows a dash there, not a crash or a zero.
    assert "| iris-sym20 | 0.800 | 0.950 / – | 0.900 / – |" in text
    assert "| wine | 0.800 | – / 0.970 | – / 0.900 |" in text


def test_an_argument_without_a_name_or_a_file_that_is_not_a_report_is_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(SystemExit, match="NAME=PATH"):
        compare.main([str(other)])
    with pytest.raises(SystemExit, match="not a refine bench report"):
        compare.main([f"x={other}"])


def test_seeds_keeps_those_rows_and_summarises_them_again(tmp_path):
    def row(seed, method, label, f1):
        return {
            "dataset": "wine",
            "seed": seed,
            "method": method,
            "label_accuracy": label,
            "given_accuracy": 0.8,
            "f1": f1,
            "auprc": f1,
            "gap_recovered": 0.5,
            "noisy_test_accuracy": 0.8,
            "clean_test_accuracy": 0.9,
            "test_accuracy": 0.85,
            "seconds": 1.0,
            "memory_mb": 1.0,
        }

    rows = [row(0, "refine", 0.9, 0.8), row(1, "refine", 0.7, 0.4)]
    rows += [row(s, "cleanlab+LR", 0.8, 0.5) for s in (0, 1)]
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"header": {"command": "c"}, "summary": {}, "rows": rows}))
    out = tmp_path / "out.md"
    compare.main([f"r={report}", "--seeds", "0", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("Rows of seed(s) 0 only")
    assert "| F1 margin over the better baseline | +0.300 |" in text  # 0.8 - 0.5, seed 0 alone
    assert "| wine | 0.800 | 0.900 | 0.800 |" in text
    with pytest.raises(SystemExit, match="no rows at seeds"):
        compare.main([f"r={report}", "--seeds", "5"])
