"""refine/ type-checks clean under mypy, with the [tool.mypy] settings in pyproject.toml; CI
runs the checker through this test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about half a minute without mypy's cache (a fresh clone), a second with it
def test_mypy_reports_no_errors():
    pytest.importorskip("mypy")
    done = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout}{done.stderr}"
