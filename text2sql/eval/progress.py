"""The console progress bar of generation and execution (Rich): one look, one place.

Used by generation (the EX callback, `text2sql predict`) and by the evaluator's execution. Lines logged while a bar
is on screen are printed above it (job/console.py's LiveStdoutHandler). Importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True,
                 transient: bool = False) -> Iterator[Callable[[int], None]]:
    """`description ━━━━━ done/total elapsed remaining` while the block runs; yields `advance(n)`, which any thread
    may call. Disabled, or with nothing to do, it shows nothing (and does not import Rich). `transient`: the bar is
    erased when the block ends."""
    if not (enabled and total):
        yield lambda n: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=transient) as bar:  # Progress.advance holds Rich's lock
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
