"""What a run shows on a terminal while it runs, on stderr (contract §1). Imported only when stderr is a
terminal, so that a cron run never loads rich."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

if TYPE_CHECKING:
    from lspos_sync.engine import RunSummary, Window
    from lspos_sync.salesforce.client import SalesforceClient


class WindowBar:
    """`sync` and `backfill`: the share of the window covered, by update time (every sale changed up to there is
    written or parked), sales read and written, Salesforce calls, time elapsed and an estimate of the time left."""

    def __init__(self, command: str, account_id: str, window: "Window", salesforce: "SalesforceClient") -> None:
        self.window = window
        self.salesforce = salesforce
        self.summary: RunSummary | None = None  # the engine's, from its first batch on: its counts, as they move
        self._progress = Progress(
            TextColumn(f"{command} account {account_id}"), BarColumn(bar_width=30),
            TextColumn("{task.percentage:>3.0f}% of the window"), _Counts(self),
            TimeElapsedColumn(), TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
            console=Console(stderr=True), redirect_stdout=False, redirect_stderr=True)
        self._length = max((window.until - window.since).total_seconds(), 1.0)  # a window of no time is one second
        self._task = self._progress.add_task(command, total=self._length)
        self._streams: list[tuple[logging.StreamHandler, object]] = []

    def __enter__(self) -> "WindowBar":
        stderr = sys.stderr
        self._progress.start()
        # Log lines go above the bar, through the stderr rich now stands in for, instead of through it.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stderr:
                self._streams.append((handler, handler.setStream(sys.stderr)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._progress.stop()  # the bar stays, as it ended, above the summary line

    def advance(self, sales: int, summary: "RunSummary") -> None:
        self.summary = summary
        self._progress.refresh()

    def tracking(self, progress: Callable[[datetime], None] | None) -> Callable[[datetime], None] | None:
        """`progress`, moving the bar too."""
        if progress is None:
            return None

        def moved(moment: datetime) -> None:
            progress(moment)
            covered = (max(moment, self.window.since) - self.window.since).total_seconds()
            self._progress.update(self._task, completed=self._length if moment >= self.window.until else covered)

        return moved


class _Counts(ProgressColumn):
    """Sales read and written, and Salesforce calls, read as the run moves them."""

    def __init__(self, bar: WindowBar) -> None:
        super().__init__()
        self._bar = bar

    def render(self, task: Task) -> Text:
        summary = self._bar.summary
        read, written = (summary.sales_read, summary.written) if summary else (0, 0)
        return Text(f"{read:,} sales read, {written:,} written, {self._bar.salesforce.api_calls:,} Salesforce calls")


class Spinner:
    """The other commands (and any with --json): a spinner with the count of sales processed."""

    def __init__(self, command: str) -> None:
        self._command = command
        self._count = 0
        self._status = Console(stderr=True).status(f"{command}: reading Lightspeed…")

    def __enter__(self) -> "Spinner":
        self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._status.__exit__(None, None, None)

    def advance(self, sales: int, summary: "RunSummary") -> None:
        self._count += sales
        self._status.update(f"{self._command}: {self._count} sale(s) processed…")

    def tracking(self, progress: Callable[[datetime], None] | None) -> Callable[[datetime], None] | None:
        return progress
