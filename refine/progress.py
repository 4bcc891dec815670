"""Progress reporting: a tiny interface the pipeline calls, with a quiet default.

The library never prints. The CLI passes a ``RichProgress``, which prints its notes. From
Python, notes, each round's line and the run's summary go to the ``refine`` logger at INFO,
silent until the user configures logging: ``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Protocol

logger = logging.getLogger("refine")
# A library leaves its output to the application: nothing shows until logging is configured.
logger.addHandler(logging.NullHandler())


class Progress(Protocol):
    def start(self, key: str, description: str, total: int) -> Any: ...
    def update(self, task: Any, completed: int, total: int | None = None) -> None: ...
    def advance(self, task: Any, amount: int = 1) -> None: ...
    def finish(self, task: Any) -> None: ...
    def note(self, text: str) -> None: ...


class NullProgress:
    """No bars; notes go to the ``refine`` logger (what the Python API uses)."""

    def start(self, key: str, description: str, total: int) -> None:
        return None

    def update(self, task: Any, completed: int, total: int | None = None) -> None:
        pass

    def advance(self, task: Any, amount: int = 1) -> None:
        pass

    def finish(self, task: Any) -> None:
        pass

    def note(self, text: str) -> None:
        logger.info(text)


NULL_PROGRESS = NullProgress()


def trust_lines(trust: dict[str, Any] | None) -> list[str]:
    """The trust verdict of a run's summary in a sentence, and what verified rows showed."""
    if not trust:
        return []
    lines = [f"{trust['reason'][0].upper()}{trust['reason'][1:]}."]
    measured = trust.get("measured")
    if measured:
        lines.append(
            f"On {measured['rows']:,} verified rows, scored out of fold: given labels "
            f"{_share(measured['given_accuracy'])} right, refined labels "
            f"{_share(measured['refined_accuracy'])}."
        )
    return lines


def _share(interval: dict[str, Any]) -> str:
    """``0.842 (95% CI 0.80-0.88)``."""
    if interval["value"] is None:
        return "n/a"
    return f"{interval['value']:.3f} (95% CI {interval['low']:.3f}-{interval['high']:.3f})"


class RichProgress:
    """Bars for rounds, folds and epochs on a rich ``Progress``; finished inner bars vanish."""

    def __init__(self, console: Any = None, bars: bool = True):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            _RateColumn(),
            console=console,
            transient=True,
            disable=not bars,
        )

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def start(self, key: str, description: str, total: int) -> Any:
        return self._progress.add_task(description, total=total, rate=key in RATE_TASKS)

    def update(self, task: Any, completed: int, total: int | None = None) -> None:
        self._progress.update(task, completed=completed, total=total)

    def advance(self, task: Any, amount: int = 1) -> None:
        self._progress.advance(task, amount)

    def finish(self, task: Any) -> None:
        self._progress.remove_task(task)

    def note(self, text: str) -> None:
        # Not wrapped: notes name paths, which must survive a copy and paste.
        self._progress.console.print(text, highlight=False, soft_wrap=True)


# Tasks whose bar shows its speed: encoding text or images, counted in rows
# (refine.encode.pretrained, refine.encode.vision).
RATE_TASKS = ("encode",)


def _RateColumn() -> Any:
    """A column showing ``N rows/s`` for the tasks started with ``rate``, blank for others."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if not task.fields.get("rate") or speed is None:
                return Text("")
            return Text(f"{speed:,.0f} rows/s")

    return RateColumn()
