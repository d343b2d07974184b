"""Driver logging on stderr with upstream's prefixes, and rate-limited warnings.

Owns: the wording of log lines. Start-up steps use ``UIO(NET): ``; warnings and errors
use ``UIO(NET)|WARN: `` and ``UIO(NET)|ERROR: `` like the upstream C driver. After the
event loop starts the driver only warns (rate-limited) or answers a stats request.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    from collections.abc import Callable

PREFIX = "UIO(NET): "
WARN_PREFIX = "UIO(NET)|WARN: "
ERROR_PREFIX = "UIO(NET)|ERROR: "


def info(msg: str) -> None:
    print(PREFIX + msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(WARN_PREFIX + msg, file=sys.stderr, flush=True)


def error(msg: str) -> None:
    print(ERROR_PREFIX + msg, file=sys.stderr, flush=True)


class RateLimitedLog:
    """At most one warning per key per `interval` seconds, with a count of the suppressed.

    A hostile or broken peer can produce a bad descriptor per frame; logging each would
    turn a data-path problem into a console flood.
    """

    __slots__ = ("_clock", "_interval", "_last", "_sink", "_suppressed")

    def __init__(
        self,
        interval: float = 5.0,
        sink: Callable[[str], None] = warn,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._sink = sink
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, msg: str) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        self._sink(msg + (f" ({n} similar suppressed)" if n else ""))
