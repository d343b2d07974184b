"""How long-running work reports what it is doing: one line at a time, to a callback.

Every function that takes one names it `progress`; the CLI prints each line on stderr.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def silent(_line: str) -> None:
    """The progress callback that reports nothing (the default)."""
