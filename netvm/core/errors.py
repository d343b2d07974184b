"""User-facing errors: findings as values first, text second.

A `Finding` names the file, the key path, what was wrong and a hint. A `UserError`
carries one or more findings; the task layer prints them without a traceback and
exits with `USER_ERROR_EXIT` (internal errors keep their traceback).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

USER_ERROR_EXIT = 2
INTERRUPT_EXIT = 130  # as a shell reports a command ended by SIGINT


@dataclass(frozen=True)
class Finding:
    # The file at fault as the user sees it (relative to the checkout when inside it);
    # empty for an error that is about no file (a flag, a missing tool).
    file: str
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = "".join(f"{part}: " for part in (self.file, self.key) if part)
        text = where + self.message
        if self.hint:
            # After quoted lines (a tool's output), the hint goes on a line of its own.
            text += "\n  " if "\n" in self.message else " "
            text += f"(hint: {self.hint})"
        return text

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "key": self.key, "message": self.message, "hint": self.hint}


class AddFinding(Protocol):
    """How a check reports a problem: the key (or node, or line), what, and a hint."""

    def __call__(self, key: str, message: str, hint: str = "") -> None: ...


class Findings:
    """The findings about one file, collected by checks that each call `add`."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.collected: list[Finding] = []

    def add(self, key: str, message: str, hint: str = "") -> None:
        self.collected.append(Finding(self.file, key, message, hint))

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.collected)

    def __len__(self) -> int:
        return len(self.collected)

    def raise_any(self) -> None:
        """Raise every finding so far as one UserError, if there is any."""
        if self.collected:
            raise UserError(self.collected)


class UserError(Exception):
    """Bad input from the user: printed as findings, exit status 2, no traceback."""

    def __init__(self, findings: Iterable[Finding] | str, *, hint: str = "") -> None:
        if isinstance(findings, str):
            findings = [Finding(file="", key="", message=findings, hint=hint)]
        self.findings: tuple[Finding, ...] = tuple(findings)
        super().__init__("\n".join(str(f) for f in self.findings))

    def render(self) -> str:
        lines = [f"error: {f}" for f in self.findings]
        if len(self.findings) > 1:
            lines.append(f"{len(self.findings)} errors")
        return "\n".join(lines)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM ended a long-running task: printed as what it stopped and in which
    phase, exit status `INTERRUPT_EXIT`, no traceback; clean-up has already run."""

    def __init__(self, what: str, phase: str) -> None:
        self.what = what
        self.phase = phase
        super().__init__(f"{what} stopped by interrupt during {phase}")
