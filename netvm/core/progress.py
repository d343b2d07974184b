"""How long-running work reports what it is doing: lines to a callback, and one status line
per step on a terminal.

Every function that takes one names it `progress`; the CLI prints each line on stderr.
A `Console` is such a callback that also knows whether stderr is a terminal: there a
step's `StepProgress` keeps one status line (done/total, elapsed, ETA) rewritten in place
with a carriage return, and each ordinary line is printed above it. Anywhere else (CI, a
pipe, a test) a `StepProgress` prints a plain line now and then instead: at every tenth of
a known total, and at least every 30 s.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

Progress = Callable[[str], None]
Clock = Callable[[], float]

CLEAR_TO_EOL = "\x1b[K"


def silent(_line: str) -> None:
    """The progress callback that reports nothing (the default)."""


def duration(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Console:
    """The progress callback of a task: lines to `stream`, plus, when `stream` is a
    terminal, one status line below them that `status` rewrites in place."""

    def __init__(self, stream: TextIO, *, interactive: bool | None = None) -> None:
        self.stream = stream
        self.interactive = _isatty(stream) if interactive is None else interactive
        self._status = ""  # the status line on the terminal now ("" when none)
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        """Print `line`; a status line on show moves below it."""
        with self._lock:
            if self._status:
                self.stream.write("\r" + CLEAR_TO_EOL)
            self.stream.write(line + "\n")
            if self._status:
                self.stream.write(self._status)
            self.stream.flush()

    def status(self, text: str) -> None:
        """Rewrite the status line (a terminal only; elsewhere there is none)."""
        if not self.interactive:
            return
        text = text[: max(self._width() - 1, 40)]
        with self._lock:
            self.stream.write("\r" + text + CLEAR_TO_EOL)
            self.stream.flush()
            self._status = text

    def end_status(self, *, keep: bool) -> None:
        """Take the status line off the screen, or (`keep`) leave it as an ordinary line."""
        with self._lock:
            if self._status:
                self.stream.write("\n" if keep else "\r" + CLEAR_TO_EOL)
                self.stream.flush()
            self._status = ""

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns or 80  # a terminal that does not say its size says 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):  # closed, or not a real file
        return False


def show_status(progress: Progress, text: str) -> None:
    """`text` as the status line on a terminal, else as an ordinary line."""
    if isinstance(progress, Console) and progress.interactive:
        progress.status(text)
    else:
        progress(text)


def end_status(progress: Progress, *, keep: bool = False) -> None:
    """End the status line `progress` shows, if it shows one (see `Console.end_status`)."""
    if isinstance(progress, Console):
        progress.end_status(keep=keep)


class StepProgress:
    """What one step is doing, for `progress`: an activity ("configuring") or counted
    work (objects compiled, out of a total when one is known), with the time since the
    step began and, for counted work with a total, an ETA.

    On a terminal (`progress` an interactive `Console`) it is one status line, redrawn on
    each change (at most every `refresh` seconds) and every `tick` seconds by a thread
    while the step is entered as a context. Elsewhere it is a plain line through
    `progress` each time the count passes another tenth of the total, and whenever
    `plain_every` seconds went by without one.
    """

    def __init__(
        self,
        progress: Progress,
        label: str,
        *,
        clock: Clock = time.monotonic,
        refresh: float = 0.2,
        plain_every: float = 30.0,
        tick: float | None = 1.0,
    ) -> None:
        self.progress = progress
        self.label = label
        self.interactive = isinstance(progress, Console) and progress.interactive
        self.clock = clock
        self.refresh = refresh
        self.plain_every = plain_every
        self.tick_seconds = tick
        self.start = clock()
        self.activity = ""
        self.unit = ""
        self.total: int | None = None
        self.done = 0
        self.counting = False
        self._count_start = self.start
        self._last_draw: float | None = None
        self._last_plain = self.start
        self._last_tenth = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what is going on ---------------------------------------------------------------

    def phase(self, activity: str) -> None:
        """An activity without a count, e.g. "configuring"."""
        with self._lock:
            self.activity, self.counting = activity, False
            self._draw(force=True)

    def count(self, unit: str, total: int | None) -> None:
        """Counted work starts: `total` units (None: not known), none done yet."""
        with self._lock:
            self.unit, self.total, self.done, self.counting = unit, total, 0, True
            self._count_start = self.clock()
            self._last_tenth = 0
            self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self.interactive:
                self._draw(force=self.done == self.total)
                return
            tenth = self._tenth()
            if tenth > self._last_tenth:
                self._last_tenth = tenth
                self._plain()
            else:
                self.tick()

    def tick(self) -> None:
        """The clock moved: redraw the status line, or print a plain line when it is due."""
        with self._lock:
            if self.interactive:
                self._draw(force=True)
            elif self.clock() - self._last_plain >= self.plain_every:
                self._plain()

    # --- the text -----------------------------------------------------------------------

    def text(self) -> str:
        now = self.clock()
        elapsed = f"{duration(now - self.start)} elapsed"
        if not self.counting:
            return f"[{self.label}] {self.activity}, {elapsed}"
        total = self.total
        if total is None or total <= 0 or self.done > total:
            return f"[{self.label}] {self.done} {self.unit}, {elapsed}"
        pct = self.done * 100 // total
        line = f"[{self.label}] {self.done}/{total} {self.unit} ({pct}%), {elapsed}"
        if 0 < self.done < total:
            rate = (now - self._count_start) / self.done
            line += f", ETA {duration(rate * (total - self.done))}"
        return line

    def _tenth(self) -> int:
        if self.total is None or self.total <= 0 or self.done > self.total:
            return 0
        return self.done * 10 // self.total

    def _draw(self, *, force: bool = False) -> None:
        if not self.interactive:
            return
        now = self.clock()
        if not force and self._last_draw is not None and now - self._last_draw < self.refresh:
            return
        self._last_draw = now
        show_status(self.progress, self.text())

    def _plain(self) -> None:
        self._last_plain = self.clock()
        self.progress(self.text())

    # --- the ticking thread -------------------------------------------------------------

    def __enter__(self) -> StepProgress:
        if self.tick_seconds is not None:
            self._thread = threading.Thread(target=self._run_ticks, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is not None:
            # Keep where the step got to; the error is printed below it.
            end_status(self.progress, keep=True)

    def _run_ticks(self) -> None:
        assert self.tick_seconds is not None
        while not self._stop.wait(self.tick_seconds):
            self.tick()
