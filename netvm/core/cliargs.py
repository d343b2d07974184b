"""Numbers typed on the command line, read as user input: a bad one is a finding.

invoke converts an `int`-typed flag itself and raises a bare ValueError on "abc"; the
tasks therefore take such flags as text and read them here, where a bad value names the
flag, what was expected and what was given.
"""

from __future__ import annotations

import math

from netvm.core.errors import UserError


def parse_int(flag: str, text: str, low: int, high: int) -> int:
    """`text` as an integer in [low, high] (decimal, or 0x hex)."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise UserError(f"{flag}: expected an integer {low}-{high}, got {text!r}")
    return value


def parse_seconds(flag: str, text: str, low: float = 0.0, high: float = 7 * 24 * 3600.0) -> float:
    """`text` as a number of seconds in (low, high]."""
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low < value <= high):
        raise UserError(
            f"{flag}: expected seconds, more than {low:g} and at most {high:g}, got {text!r}"
        )
    return value
