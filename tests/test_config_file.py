"""`refine run --config`: rerun a recorded run exactly, options typed on the command line win."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import refine
from refine.config import RunConfig, load_config
from tests.test_cli import invoke

# Small settings for speed; --no-report so the rerun shows report=False came from the file.
FLAGS = ["--ignore", "id", "--rounds", "1", "--folds", "3", "--max-epochs", "5", "--no-report"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, noisy_parquet):
    out = tmp_path_factory.mktemp("config") / "first"
    result = invoke("run", str(noisy_parquet), "--out", str(out), *FLAGS, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def run_json(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def doctored(tmp_path, run_dir, **changes):
    """A copy of the run's run.json with top-level keys replaced."""
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**run_json(run_dir), **changes}))
    return path


def test_rerun_from_run_json_is_byte_identical(tmp_path, first_run):
    out = tmp_path / "again"
    result = invoke("run", "--config", str(first_run / "run.json"), "--out", str(out), "--quiet")
    assert result.exit_code == 0 and result.output == ""
    assert (out / "refined.parquet").read_bytes() == (first_run / "refined.parquet").read_bytes()
    first, again = run_json(first_run), run_json(out)
    assert again["config"] == first["config"]
    assert again["input"] == first["input"]
    assert again["config"]["rounds"] == 1 and again["config"]["ignore"] == ["id"]
    assert not (out / "report.html").exists()


def test_same_command_twice_gives_identical_refined_parquet(tmp_path, noisy_parquet, first_run):
    # The README's claim for --seed: same input, same seed, same versions, same bytes on CPU.
    out = tmp_path / "twice"
    result = invoke("run", str(noisy_parquet), "--out", str(out), *FLAGS, "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "refined.parquet").read_bytes() == (first_run / "refined.parquet").read_bytes()


def test_options_typed_on_the_command_line_override_the_file(tmp_path, first_run):
    out = tmp_path / "seed1"
    config = str(first_run / "run.json")
    result = invoke(
        "run", "--config", config, "--out", str(out), "--seed", "1", "--max-epochs", "3", "-q"
    )
    assert result.exit_code == 0, result.output
    recorded, rerun = run_json(first_run), run_json(out)
    assert rerun["seed"] == 1 and rerun["config"]["seed"] == 1
    assert rerun["config"]["model"]["max_epochs"] == 3
    # Everything not typed keeps the file's value, the defaults of the flags included.
    expected = {**recorded["config"], "seed": 1}
    expected["model"] = {**recorded["config"]["model"], "max_epochs": 3}
    assert rerun["config"] == expected


def test_data_on_the_command_line_replaces_the_recorded_input(tmp_path, first_run):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"ignore": ["id"], "rounds": 1, "folds": 3, "report": False}))
    # A plain configuration records no input: DATA is required ...
    result = invoke("run", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: config file {str(config)!r} records no input path; pass DATA: "
        f"refine run DATA --config {config} --out ..."
    )
    # ... and fields it leaves out keep their defaults.
    loaded, recorded = load_config(config)
    assert recorded == {}
    assert loaded == RunConfig(ignore=("id",), rounds=1, folds=3, report=False)


def test_load_config_reads_a_run_json(first_run, noisy_parquet):
    config, recorded = load_config(first_run / "run.json")
    assert json.loads(json.dumps(config.to_dict())) == run_json(first_run)["config"]
    assert recorded["input"] == str(noisy_parquet)
    assert recorded["versions"]["torch"] == torch.__version__


def test_a_version_mismatch_warns_and_still_runs(tmp_path, first_run):
    versions = {**run_json(first_run)["versions"], "torch": "0.0.1", "numpy": "0.0.2"}
    path = doctored(tmp_path, first_run, versions=versions)
    out = tmp_path / "out"
    result = invoke("run", "--config", str(path), "--out", str(out))
    assert result.exit_code == 0, result.output
    warning = (
        "Warning: the run was recorded with other versions, so its results may not be "
        f"reproduced exactly: torch 0.0.1 (now {torch.__version__}), "
        f"numpy 0.0.2 (now {np.__version__})"
    )
    assert result.output.splitlines()[0] == warning
    assert [line for line in result.output.splitlines() if "Warning" in line] == [warning]
    assert (out / "refined.parquet").read_bytes() == (first_run / "refined.parquet").read_bytes()


def test_the_same_versions_give_no_warning(tmp_path, first_run):
    # Only the reproducibility-relevant packages count: another platform string is fine.
    path = doctored(tmp_path, first_run, input="/nonexistent/data.parquet")
    document = json.loads(path.read_text())
    document["versions"]["platform"] = "another-os"
    path.write_text(json.dumps(document))
    result = invoke("run", "--config", str(path), "--out", str(tmp_path / "out"))
    # The run stops at the missing input, after the (absent) warning would have printed.
    assert result.exit_code == 2
    assert "Warning" not in result.output
    assert result.output.strip().startswith(
        f"Error: config file {str(path)!r} records the input '/nonexistent/data.parquet', which "
        "no longer exists"
    )


def config_error(tmp_path, path, message, *extra):
    out = tmp_path / "out"
    result = invoke("run", *extra, "--config", str(path), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: {message}"
    assert not out.exists()


def test_a_missing_config_file_is_refused(tmp_path):
    path = tmp_path / "nope" / "run.json"
    config_error(
        tmp_path,
        path,
        f"config file {str(path)!r} does not exist; pass the run.json of an earlier run",
    )


def test_a_run_directory_instead_of_its_run_json_is_refused(tmp_path, first_run):
    config_error(
        tmp_path,
        first_run,
        f"config file {str(first_run)!r} is a directory; pass the run.json inside it",
    )


def test_a_config_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{rounds: 2}")
    config_error(
        tmp_path,
        path,
        f"config file {str(path)!r} is not valid JSON: Expecting property name enclosed in "
        "double quotes at line 1, column 2",
    )


def test_a_config_file_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("[1, 2]")
    config_error(
        tmp_path,
        path,
        f"config file {str(path)!r} holds a JSON list; expected an object: a run's run.json, "
        'or configuration keys such as {"rounds": 2}',
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"rounds": 1, "colour": "red"},
            "unknown configuration keys: colour; the keys are the fields of RunConfig, as in "
            "a run's run.json",
        ),
        (
            {"model": {"epochs": 3}},
            "unknown configuration keys: model.epochs; the model's keys are the fields of "
            "ModelConfig",
        ),
        ({"rounds": 0}, "--rounds must be at least 1, got 0"),
    ],
)
def test_unknown_keys_and_bad_values_in_a_run_json_are_refused(
    tmp_path, first_run, config, message
):
    path = doctored(tmp_path, first_run, config=config)
    config_error(tmp_path, path, f"config file {str(path)!r}: {message}")


def test_a_value_of_the_wrong_type_is_refused(tmp_path):
    path = tmp_path / "options.json"
    path.write_text(json.dumps({"rounds": "two"}))
    config_error(
        tmp_path,
        path,
        f'config file {str(path)!r}: --rounds must be a whole number, got "two"',
        "data.parquet",
    )


def test_a_run_of_an_arrow_table_needs_data(tmp_path, first_run, noisy_data):
    result = refine.run(
        noisy_data[0],
        tmp_path / "table",
        ignore=("id",),
        rounds=1,
        folds=3,
        max_epochs=3,
        report=False,
    )
    path = tmp_path / "table" / "run.json"
    assert result.summary["input"] == "pyarrow.Table (360 rows)"
    assert result.summary["input_in_memory"] is True
    config_error(
        tmp_path,
        path,
        f"config file {str(path)!r} records its input as pyarrow.Table (360 rows), a table in "
        f"memory, not a file; pass DATA: "
        f"refine run DATA --config {path} --out ...",
    )


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (
            "refine demo --out runs/demo",
            "it was the demo's temporary file; rerun the demo with refine demo --out NEW, or",
        ),
        ("refine run gone.parquet --out runs/first", "it was moved or removed since the run;"),
    ],
)
def test_a_run_whose_input_is_gone_says_so_and_takes_data(
    tmp_path, first_run, noisy_parquet, command, why
):
    """The demo reads a temporary file, removed once it has run: --config alone cannot rerun it."""
    gone = tmp_path / "tmpdemo" / "digits_noisy.parquet"
    path = doctored(tmp_path, first_run, input=str(gone), command=command)
    config_error(
        tmp_path,
        path,
        f"config file {str(path)!r} records the input {str(gone)!r}, which no longer exists: "
        f"{why} pass DATA: refine run DATA --config {path} --out ...",
    )
    out = tmp_path / "again"
    result = invoke("run", str(noisy_parquet), "--config", str(path), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert (out / "refined.parquet").read_bytes() == (first_run / "refined.parquet").read_bytes()
    assert run_json(out)["input"] == str(noisy_parquet)


def test_run_without_data_or_config_is_a_usage_error(tmp_path):
    result = invoke("run", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: Missing argument 'DATA': pass the input, or --config RUN_DIR/run.json to rerun "
        "a run"
    )
