"""Numbers and durations typed on the command line, read as user input: a bad one is a
finding.

invoke converts an `int`-typed flag itself and raises a bare ValueError on "abc"; the
tasks therefore take such flags as text and read them here, where a bad value names the
flag, what was expected and what was given.

A duration is one grammar everywhere a task takes one (`--duration`, `--timeout`,
`--boot-timeout`): plain seconds (``90``, ``1.5``) or numbers with a unit, largest
first (``15s``, ``5m``, ``1h``, ``1m30s``).
"""

from __future__ import annotations

import math
import re

from netvm.core.errors import UserError

# Seconds per unit, largest first: the order parts of a duration must come in.
UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
DURATION_FORMS = "seconds (90, 1.5) or with a unit (15s, 5m, 1h, 1m30s)"
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_PLAIN = re.compile(_NUMBER)
_PART = re.compile(rf"({_NUMBER})\s*([hms])")


def parse_int(flag: str, text: str, low: int, high: int) -> int:
    """`text` as an integer in [low, high] (decimal, or 0x hex)."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise UserError(f"{flag}: expected an integer {low}-{high}, got {text!r}")
    return value


def duration_seconds(text: str) -> float | None:
    """`text` as seconds: a plain number, or number-unit parts largest unit first, each
    unit at most once ("1h30m", "5m", "15s"); None for anything else."""
    text = text.strip().lower()
    if _PLAIN.fullmatch(text):
        return float(text)
    total, pos, units = 0.0, 0, list(UNITS)
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None or m.group(2) not in units:
            return None
        units = units[units.index(m.group(2)) + 1 :]  # each smaller than the one before
        total += float(m.group(1)) * UNITS[m.group(2)]
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return total if pos else None


def format_seconds(seconds: float) -> str:
    """`seconds` as the shortest duration text that reads back to it: 86400 -> "24h"."""
    for unit, size in UNITS.items():
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_seconds(
    flag: str, value: str | float, low: float = 0.0, high: float = 7 * 24 * 3600.0
) -> float:
    """A duration in (low, high] seconds: text as `duration_seconds` reads it, or a number
    (an int or float given by a caller rather than typed; never a bool)."""
    seconds: float | None = None
    if isinstance(value, str):
        seconds = duration_seconds(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = None
    if seconds is None or not (math.isfinite(seconds) and low < seconds <= high):
        shown = repr(value) if isinstance(value, str) else str(value)
        bound = f"above {format_seconds(low)}" if low else "above 0"
        raise UserError(
            f"{flag}: expected a duration {bound} and at most {format_seconds(high)}, got {shown}",
            hint=DURATION_FORMS,
        )
    return seconds
