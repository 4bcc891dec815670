"""A run directory on disk: the files a reader needs are there, and its run.json is sound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refine.config import check_summary
from refine.errors import InputError


def read_summary(path: Path, needed: tuple[str, ...]) -> dict[str, Any]:
    """``path``'s run.json, checked, once every file in ``needed`` is there; raises
    ``InputError`` naming the missing file and what to pass instead. Errors reading run.json
    propagate (``ValueError`` for bad JSON, ``OSError``) for the caller to word."""
    for name in needed:
        if not (path / name).is_file():
            raise InputError(
                f"{str(path)!r} is not a refine run: it has no {name}. "
                "Pass a directory written by refine run or refine update"
            )
    return check_summary(json.loads((path / "run.json").read_text()), path / "run.json")
