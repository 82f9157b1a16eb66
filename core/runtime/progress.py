"""Rich progress bars on stderr (off with ``--quiet``, ``--json``, or when stderr is not a terminal),
and progress listeners (the web app's per-stage progress: :func:`listening`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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


_listeners: list[Callable[[str, int, int], None]] = []


@contextlib.contextmanager
def listening(listener: Callable[[str, int, int], None]) -> Iterator[None]:
    """While inside, every stage's progress (shown as a bar or not) is also told to
    ``listener(stage, done, total)``: when the stage starts and at each advance."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class _Told:
    def __init__(self, bar: _Bar | _NullBar, description: str, total: int):
        self.bar, self.description, self.total, self.done = bar, description, total, 0
        self._tell()

    def _tell(self) -> None:
        for listener in list(_listeners):
            listener(self.description, self.done, self.total)

    def advance(self, n: int = 1, description: str | None = None) -> None:
        self.bar.advance(n, description)
        self.done += n
        self._tell()


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar | _NullBar | _Told]:
    """A progress bar for one stage: ``with progress_bar("detect", n) as bar: bar.advance()``."""
    if not enabled or not console.is_terminal:  # no bars in logs and pipes
        yield _Told(_NullBar(), description, total) if _listeners else _NullBar()
        return
    with Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as p:
        bar = _Bar(p, p.add_task(description, total=total))
        yield _Told(bar, description, total) if _listeners else bar
