"""What the commands share: the error that exits with code 2, the options every run takes,
and small formatting helpers."""

from __future__ import annotations

import functools
import json
import shlex
import sys
from typing import Any

import click

from refine.config import ModelConfig, RunConfig
from refine.errors import RefineError

DEFAULTS = RunConfig()
MODEL_DEFAULTS = ModelConfig()


class CLIError(click.ClickException):
    exit_code = 2


def handle_refine_errors(function):
    """Turn a ``RefineError`` into ``Error: <message>`` and exit code 2."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RefineError as exc:
            raise CLIError(str(exc)) from None

    return wrapper


def command_line() -> str:
    """The command as the user typed it, for run.json: ``refine`` and its arguments."""
    return shlex.join(["refine", *sys.argv[1:]])


def split_columns(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--features a,b --features c`` -> ``("a", "b", "c")``."""
    return tuple(c.strip() for v in values for c in v.split(",") if c.strip())


def execution_options(function):
    """--workers and --memory: how a run uses the machine, which never changes its output."""
    function = click.option(
        "--memory",
        default=None,
        metavar="SIZE",
        help="Memory budget, such as 4GB (default: half the machine's). Features that would "
        "not fit stream from a file in the run's working directory; same output either way.",
    )(function)
    return click.option(
        "--workers",
        default="auto",
        show_default=True,
        metavar="N|auto",
        help="Processes training folds side by side: auto = as many as the cores, folds and "
        "--memory allow (1 for a small table). The output is the same for any number.",
    )(function)


def engine_options(engine_help: str):
    """--engine and --address, with ``engine_help`` saying what each engine runs."""

    def add(function):
        function = click.option(
            "--address",
            default=None,
            help="With --engine ray: the Ray cluster to join (ray://HEAD:10001, or auto); "
            "without it a local Ray instance is started.",
        )(function)
        return click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help=f"{engine_help} (pip install 'refine[ray]'; docs/ray.md). The output is the same.",
        )(function)

    return add


def count_rows(n: int) -> str:
    return f"{n:,} row{'' if n == 1 else 's'}"


def listed(words: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return json.dumps([round(v, 4) if isinstance(v, float) else v for v in value])
    return str(value)
