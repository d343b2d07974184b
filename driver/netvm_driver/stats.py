"""Driver counters and their JSON file.

Owns: the counter names (a stable interface: the simulation, tests and operators read
them) and writing them atomically. The data path bumps plain int attributes once per
batch, so counting costs next to nothing in the hot loop.
"""

from __future__ import annotations

import os
import time

from . import jsonio

COUNTERS = (
    "rx_frames",
    "rx_bytes",
    "tx_frames",
    "tx_bytes",
    "rx_dropped_no_buffer",  # dropped by the kernel while no RX buffer was free
    "rx_dropped_oversize",  # larger than a 2048-byte buffer: dropped, never truncated
    "rx_bad_descriptor",  # rx_free entry outside rx_data or not on a buffer boundary
    "tx_bad_descriptor",  # tx_active entry outside every client region, len 0 or > 2048
    "bad_queue_index",  # a peer index more than capacity away from ours
    "tx_dropped",  # refused by the interface (link down, too big for the MTU, no memory)
    "rx_errors",  # socket errors on receive (e.g. the interface went down)
    "notifications_sent",  # guest -> VMM doorbell stores
    "irqs_handled",  # VMM -> guest interrupts read from the IRQ fds
    "tx_checksums_filled",
)


class Stats:
    """The counters as int attributes, named and ordered as COUNTERS."""

    __slots__ = (*COUNTERS, "_seq", "_started")

    # The counters once more, as annotations, so checkers know each one is an int:
    # __init__ and as_dict go by COUNTERS, which the attributes must match name for name
    # and in order (tests/test_driver_support.py holds them to it). Annotations without
    # a value make no class attributes, which __slots__ would refuse.
    rx_frames: int
    rx_bytes: int
    tx_frames: int
    tx_bytes: int
    rx_dropped_no_buffer: int
    rx_dropped_oversize: int
    rx_bad_descriptor: int
    tx_bad_descriptor: int
    bad_queue_index: int
    tx_dropped: int
    rx_errors: int
    notifications_sent: int
    irqs_handled: int
    tx_checksums_filled: int
    _seq: int
    _started: float

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self._seq = 0
        self._started = time.monotonic()

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def write(self, path: str, reason: str) -> None:
        """Replace `path` atomically, so a reader never sees half a file."""
        self._seq += 1
        doc = {
            "seq": self._seq,
            "reason": reason,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "counters": self.as_dict(),
        }
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(jsonio.dumps(doc) + "\n")
        os.replace(tmp, path)
