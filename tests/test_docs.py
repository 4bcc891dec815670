"""The README documents every command, every option of `refine run` and every output column,
and its test command is the one CI runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine.cli import cli
from refine.io.read import OUTPUT_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_readme_documents_each_command(command):
    assert f"refine {command}" in README


@pytest.mark.parametrize(
    "option",
    sorted(opt for p in cli.commands["run"].params for opt in p.opts if opt.startswith("--")),
)
def test_readme_documents_each_run_option(option):
    assert f"`{option}" in README, f"README.md does not document {option}"


@pytest.mark.parametrize("column", OUTPUT_COLUMNS)
def test_readme_documents_each_output_column(column):
    assert f"`{column}`" in README


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = "./dev/setup.sh && .venv/bin/python -m pytest"
    assert command in README and command in ci
