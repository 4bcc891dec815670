"""The Python API logs what the CLI prints, through the ``refine`` logger, quiet by default;
the CLI prints each line once, as before."""

from __future__ import annotations

import logging
import sys

import pyarrow as pa
import pyarrow.parquet as pq

import refine
from refine.progress import trust_lines
from tests.conftest import noisy_table
from tests.test_cli import invoke

SMALL = dict(rounds=2, folds=3, max_epochs=5, hidden=(16,), report=False)
SKIPPED = "skipped column const: constant (one distinct value)"


def table_with_notes(n: int = 120) -> pa.Table:
    """noisy_table with a constant column (skipped) and a text column with one long value."""
    table = noisy_table(n=n)[0]
    notes = [f"note {i} about row {i % 7}" for i in range(n)]
    notes[3] = "long " * 1_200
    return table.append_column("const", pa.array([1.0] * n)).append_column("notes", pa.array(notes))


def test_a_python_run_logs_notes_rounds_and_the_summary(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="refine")
    out = tmp_path / "run"
    result = refine.run(table_with_notes(), out, ignore=("id",), text=("notes",), **SMALL)
    said = [r.getMessage() for r in caplog.records if r.name == "refine"]
    s = result.summary
    rounds = [
        f"round {r['round']}: {r['flagged']} flagged, {r['corrected']} corrected, "
        f"{r['excluded']} excluded, {r['pseudo_labelled']} pseudo-labelled, {r['changed']} "
        f"labels changed, out-of-fold accuracy {r['oof_accuracy']:.3f}, policy {r['policy']}"
        for r in result.rounds.to_pylist()
    ]
    plural = "s" if s["rounds_run"] != 1 else ""
    # Which text block the labels choose on 120 near-duplicate notes turns on OpenBLAS's kernels
    # (the default block with OPENBLAS_CORETYPE=Haswell, word n-grams with the AVX-512 ones);
    # either way the column's note ends with the truncation.
    note = said.pop(1)
    assert note.startswith("text column 'notes': ")
    assert note.endswith("1 values longer than 5,000 characters were truncated")
    assert said == [
        SKIPPED,
        *rounds,
        f"120 rows (120 labelled): {s['flagged']} flagged, {s['corrected']} corrected, "
        f"{s['excluded']} excluded, 0 pseudo-labelled in {s['rounds_run']} round{plural}",
        *trust_lines(s["trust"]),
        f"wrote {out}; the refined labels are in {out / 'refined.parquet'}",
    ]
    assert len(rounds) == s["rounds_run"] and trust_lines(s["trust"])


def test_python_calls_are_quiet_until_logging_is_configured(capsys, monkeypatch):
    """As in a fresh notebook: no handler on the root logger, at its default level WARNING."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    table = table_with_notes()
    refine.run(table, ignore=("id",), **SMALL)
    assert capsys.readouterr() == ("", "")
    # logging.basicConfig(level=logging.INFO), by hand so that the monkeypatch undoes it.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.handlers.append(handler)
    root.setLevel(logging.INFO)
    refine.run(table, ignore=("id",), **SMALL)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0] == f"refine: {SKIPPED}"
    assert lines[1].startswith("refine: text column 'notes'")
    assert lines[2].startswith("refine: round 1: ")
    assert any(line.startswith("refine: 120 rows (120 labelled): ") for line in lines)


def test_the_cli_prints_each_note_once_and_no_logged_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="refine")
    data = tmp_path / "data.parquet"
    pq.write_table(table_with_notes(), data)
    flags = ["--rounds", "1", "--folds", "3", "--max-epochs", "5", "--no-report"]
    result = invoke("run", str(data), "--out", str(tmp_path / "out"), "--ignore", "id", *flags)
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped column") == 1 and SKIPPED in result.output
    assert result.output.count("truncated") == 1
    assert "round 1:" not in result.output and "refined labels are in" not in result.output
    assert any(r.getMessage().startswith("round 1:") for r in caplog.records)  # logged, not shown
