"""Progress reporting: a tiny interface the pipeline calls, with a silent default.

The library never prints. The CLI passes a ``RichProgress`` when stderr is a terminal.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol


class Progress(Protocol):
    def start(self, key: str, description: str, total: int) -> Any: ...
    def update(self, task: Any, completed: int, total: int | None = None) -> None: ...
    def advance(self, task: Any, amount: int = 1) -> None: ...
    def finish(self, task: Any) -> None: ...
    def note(self, text: str) -> None: ...


class NullProgress:
    def start(self, key: str, description: str, total: int) -> None:
        return None

    def update(self, task: Any, completed: int, total: int | None = None) -> None:
        pass

    def advance(self, task: Any, amount: int = 1) -> None:
        pass

    def finish(self, task: Any) -> None:
        pass

    def note(self, text: str) -> None:
        pass


NULL_PROGRESS = NullProgress()


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
        return self._progress.add_task(description, total=total)

    def update(self, task: Any, completed: int, total: int | None = None) -> None:
        self._progress.update(task, completed=completed, total=total)

    def advance(self, task: Any, amount: int = 1) -> None:
        self._progress.advance(task, amount)

    def finish(self, task: Any) -> None:
        self._progress.remove_task(task)

    def note(self, text: str) -> None:
        # Not wrapped: notes name paths, which must survive a copy and paste.
        self._progress.console.print(text, highlight=False, soft_wrap=True)
