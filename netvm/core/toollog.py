"""The external tools a build step runs, and the log that keeps all they print.

Owns running a tool for a step with its whole output (stdout and stderr) written to the
step's ``build.log`` (a fresh log each time the step runs), echoed to the terminal when
the user asked for it (`invoke build --verbose`), and a tool that fails as a `ToolFailed`:
a user error naming the log and quoting the last lines of what the tool printed. A tool
whose failure would be netvm's own fault (e.g. readelf on a file of a verified package)
fails as a `ToolBroke` instead, which keeps its traceback.
"""

from __future__ import annotations

import collections
import contextlib
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from netvm.core.errors import Finding, UserError
from netvm.core.progress import Progress

LOG_NAME = "build.log"  # in the step's own directory: build/<board>/<step>/build.log
TAIL_LINES = 15  # how much of a failing tool's output a ToolFailed quotes
NOT_FOUND = 127  # the status a shell gives a command it cannot find


class ToolFailed(UserError):
    """A tool exited non-zero: its last lines, and where the whole output is."""

    def __init__(
        self, what: str, status: int, log: str, tail: Sequence[str], hint: str = ""
    ) -> None:
        self.what = what
        self.status = status
        self.log = log
        self.tail = tuple(tail)
        quoted = "".join(f"\n  {line}" for line in self.tail)
        if self.tail:
            message = f"{what} failed (exit status {status}); the last lines of its output:"
        else:
            message = f"{what} failed (exit status {status}) and printed nothing"
        super().__init__([Finding(log, "", message + quoted, hint)])


class ToolBroke(RuntimeError):
    """A tool netvm runs on its own inputs failed: not the user's doing, so a traceback."""


@dataclass(frozen=True)
class ToolRun:
    """How one run of a tool ended. `stdout`/`stderr` are kept for a captured run only."""

    cmd: tuple[str, ...]
    status: int
    tail: tuple[str, ...]  # the last TAIL_LINES lines it printed
    stdout: str = ""
    stderr: str = ""


class ToolLog:
    """The log of one step's tools: created empty, then every run appended to it.

    `path` None keeps no file (a function called outside a build); `display` is how a
    failure names the log (relative to the checkout when inside it); `echo` also gets
    every line the tools print (`--verbose`).
    """

    def __init__(
        self, path: Path | None, *, display: str | None = None, echo: Progress | None = None
    ) -> None:
        self.path = path
        self.display = display or (str(path) if path is not None else "")
        self.echo = echo
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def _open(self) -> contextlib.AbstractContextManager[TextIO | None]:
        """The log, line-buffered (so it can be followed while a tool runs)."""
        if self.path is None:
            return contextlib.nullcontext()
        return self.path.open("a", buffering=1)

    def _write(self, f: TextIO | None, line: str) -> None:
        """One line (without its newline) to the log and, if asked, the terminal."""
        if f is not None:
            f.write(line + "\n")
        if self.echo is not None:
            self.echo(line)

    def stream(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> ToolRun:
        """Run `cmd` with stdout and stderr merged, each line logged as it comes and
        passed to `on_line` (e.g. to count objects)."""
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        with self._open() as f:
            self._write(f, "$ " + shlex.join(cmd))
            try:
                proc = subprocess.Popen(
                    list(cmd),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                )
            except OSError as exc:
                return self._not_run(f, cmd, exc)
            with proc:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    line = raw.rstrip("\n")
                    tail.append(line)
                    self._write(f, line)
                    if on_line is not None:
                        on_line(line)
            return ToolRun(tuple(cmd), proc.returncode, tuple(tail))

    def capture(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_stdout: bool = True,
    ) -> ToolRun:
        """Run `cmd` to the end, keeping stdout and stderr apart for the caller to read;
        both go to the log (stdout only as a line count when not `log_stdout`)."""
        with self._open() as f:
            self._write(f, "$ " + shlex.join(cmd))
            try:
                proc = subprocess.run(
                    list(cmd),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    errors="replace",
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    check=False,
                )
            except OSError as exc:
                return self._not_run(f, cmd, exc)
            out_lines = proc.stdout.splitlines()
            if log_stdout:
                for line in out_lines:
                    self._write(f, line)
            elif out_lines:
                self._write(f, f"({len(out_lines)} lines of output, read by netvm)")
            err_lines = proc.stderr.splitlines()
            for line in err_lines:
                self._write(f, line)
            tail = (err_lines or out_lines)[-TAIL_LINES:]
            return ToolRun(tuple(cmd), proc.returncode, tuple(tail), proc.stdout, proc.stderr)

    def _not_run(self, f: TextIO | None, cmd: Sequence[str], exc: OSError) -> ToolRun:
        line = f"netvm: cannot run {cmd[0]}: {exc.strerror or exc}"
        self._write(f, line)
        return ToolRun(tuple(cmd), NOT_FOUND, (line,), "", line)

    def check(self, run: ToolRun, what: str, hint: str = "", *, internal: bool = False) -> ToolRun:
        """`run`, or, when it exited non-zero, a ToolFailed naming this log (a ToolBroke
        for an `internal` run, one whose failure would not be the user's doing)."""
        if run.status == 0:
            return run
        if internal:
            quoted = "".join(f"\n  {line}" for line in run.tail)
            where = f" (log: {self.display})" if self.display else ""
            raise ToolBroke(f"{what} failed (exit status {run.status}){where}:{quoted}")
        raise ToolFailed(what, run.status, self.display or run.cmd[0], run.tail, hint)
