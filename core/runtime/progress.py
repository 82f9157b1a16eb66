"""Rich progress bars on stderr (off with ``--quiet``, ``--json``, or when stderr is not a terminal)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class _NullBar:
    def advance(self, n: int = 1, description: str | None = None) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task: int):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, description: str | None = None) -> None:
        """Advance by ``n``; ``description`` replaces the label (e.g. running loss values)."""
        if description is not None:
            self.progress.update(self.task, description=description)
        self.progress.advance(self.task, n)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar | _NullBar]:
    """A progress bar for one stage: ``with progress_bar("detect", n) as bar: bar.advance()``."""
    if not enabled or not console.is_terminal:  # no bars in logs and pipes
        yield _NullBar()
        return
    with Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total))
