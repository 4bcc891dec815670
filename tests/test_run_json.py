"""A hand-edited run.json with values of the wrong type or shape: refine report, refine update
and refine run --config stop with one line naming the key (exit 2), never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from refine.cli import cli

EDITS = {
    "classes not a list": (lambda s: s.update(classes="abc"), '"classes" must be a JSON list'),
    "classes of objects": (
        lambda s: s.update(classes=[{"a": 1}, {"b": 2}, {"c": 3}]),
        '"classes" must be a list of strings or numbers',
    ),
    "classes not the file's": (
        lambda s: s.update(classes=[0]),
        '"classes" must be refined.parquet\'s classes [0, 1, 2], got [0]',
    ),
    "config not an object": (lambda s: s.update(config=[1]), '"config" must be a JSON object'),
    "rounds a string": (
        lambda s: s["config"].update(rounds="two"),
        '--rounds must be a whole number, got "two"',
    ),
    "seed a string": (lambda s: s["config"].update(seed="x"), "--seed must be a whole number"),
    "ignore a string": (
        lambda s: s["config"].update(ignore="id"),
        '--ignore must be a list of column names, got "id"',
    ),
    "hidden of strings": (
        lambda s: s["config"]["model"].update(hidden=["a"]),
        '--hidden must be a list of whole numbers, got ["a"]',
    ),
    "temperature a string": (
        lambda s: s["calibration"].update(temperature="x"),
        '"calibration.temperature" must be a positive number, got "x"',
    ),
    "timings a string": (lambda s: s.update(timings="x"), '"timings" must be a JSON object'),
}
CONFIG_EDITS = ("rounds a string", "seed a string", "ignore a string", "hidden of strings")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def edited(tmp_path, finished_run, request):
    edit, _ = EDITS[request.param]
    run = tmp_path / "run"
    shutil.copytree(finished_run[1], run)
    summary = json.loads((run / "run.json").read_text())
    edit(summary)
    (run / "run.json").write_text(json.dumps(summary))
    return run, request.param


@pytest.mark.parametrize("edited", list(EDITS), indirect=True)
def test_report_and_update_refuse_a_broken_run_json(edited, noisy_parquet, tmp_path):
    run, name = edited
    expected = EDITS[name][1]
    for args in (["report", run], ["update", run, noisy_parquet, "--out", tmp_path / "next"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert text.startswith("Error: ") and expected in text
        assert text.endswith(
            "restore the run.json that refine wrote, or rerun refine run to write the run again"
        )
    assert not (tmp_path / "next").exists()


@pytest.mark.parametrize("edited", CONFIG_EDITS, indirect=True)
def test_run_config_refuses_wrong_types(edited, tmp_path):
    run, name = edited
    result = invoke("run", "--config", run / "run.json", "--out", tmp_path / "again")
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: config file {str(run / 'run.json')!r}: {EDITS[name][1]}"
        + ("" if name != "seed a string" else ', got "x"')
    )
