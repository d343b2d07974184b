"""Driver counters, latency histograms and their JSON file.

Owns: the counter and histogram names (a stable interface: the simulation, the bench,
tests and operators read them) and writing them atomically. The data path bumps plain
int attributes once per batch, and adds to a histogram once per batch, so counting costs
next to nothing in the hot loop.
"""

from __future__ import annotations

import os
import time
from _bisect import bisect_left  # not bisect.py: one module fewer at start-up

from . import jsonio

COUNTERS = (
    "rx_frames",
    "rx_bytes",
    "tx_frames",
    "tx_bytes",
    "rx_dropped_no_buffer",  # dropped by the kernel: its socket queue or ring was full
    "rx_dropped_buffer_wait",  # of those, dropped while every rx_free buffer was in use
    "rx_dropped_oversize",  # larger than a 2048-byte buffer: dropped, never truncated
    "rx_bad_descriptor",  # rx_free entry outside rx_data or not on a buffer boundary
    "tx_bad_descriptor",  # tx_active entry outside every client region, len 0 or > 2048
    "bad_queue_index",  # a peer index more than capacity away from ours
    "tx_dropped",  # refused by the interface (link down, too big for the MTU, no memory)
    "rx_errors",  # socket errors on receive (e.g. the interface went down)
    "notifications_sent",  # guest -> VMM doorbell stores
    "irqs_handled",  # VMM -> guest interrupts read from the IRQ fds
    "tx_checksums_filled",
    "rx_buffer_waits",  # reading stopped: every rx_free buffer in use (virt_rx behind)
    "tx_send_waits",  # sending stopped: TX ring or send buffer full (the link behind)
)


# Bucket upper bounds of the latency histograms, in µs (docs/driver.md, "Counters").
LATENCY_BOUNDS_US = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000,
                     50000, 100000)  # fmt: skip
# The histograms in the stats file's "latency" object, by key: the Stats attribute.
LATENCIES = {
    "rx_kernel_to_publish_us": "rx_latency",
    "rx_wake_to_publish_us": "rx_wake",
    "tx_doorbell_to_send_us": "tx_latency",
    "rx_buffer_wait_us": "rx_wait",
}


class Histogram:
    """Counts of latencies in buckets with fixed upper bounds, and the largest one.

    counts[i] counts values <= bounds[i] (and above bounds[i - 1]); the last count is
    everything above the last bound. Values come in nanoseconds, so placing one is one
    bisect over the precomputed bounds; `n` frames that share a value are added at once.
    """

    __slots__ = ("bounds_ns", "bounds_us", "counts", "max_ns", "samples")

    def __init__(self, bounds_us: tuple[int, ...] = LATENCY_BOUNDS_US) -> None:
        self.bounds_us = bounds_us
        self.bounds_ns = [b * 1000 for b in bounds_us]
        self.counts = [0] * (len(bounds_us) + 1)
        self.samples = 0
        self.max_ns = 0

    def add(self, value_ns: int, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds_ns, value_ns)] += n
        self.samples += n
        if value_ns > self.max_ns:
            self.max_ns = value_ns

    def max_us(self) -> float | None:
        return round(self.max_ns / 1000, 1) if self.samples else None

    def percentile_us(self, pct: int) -> float | None:
        """The upper bound of the bucket holding the pct-th percentile (conservative): for
        the last, unbounded bucket the largest value seen. None without samples."""
        if not self.samples:
            return None
        rank = max(1, -(-pct * self.samples // 100))  # ceil(pct% of samples), at least 1
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank and i < len(self.bounds_us):
                return self.bounds_us[i]
        return self.max_us()

    def as_dict(self) -> dict[str, object]:
        return {
            "bounds_us": list(self.bounds_us),
            "counts": list(self.counts),
            "samples": self.samples,
            "p50_us": self.percentile_us(50),
            "p99_us": self.percentile_us(99),
            "max_us": self.max_us(),
        }


class Stats:
    """The counters as int attributes, named and ordered as COUNTERS, and the latency
    histograms (LATENCIES)."""

    __slots__ = (*COUNTERS, *LATENCIES.values(), "_seq", "_started")

    # The counters once more, as annotations, so checkers know each one is an int:
    # __init__ and as_dict go by COUNTERS, which the attributes must match name for name
    # and in order (tests/test_driver_support.py holds them to it). Annotations without
    # a value make no class attributes, which __slots__ would refuse.
    rx_frames: int
    rx_bytes: int
    tx_frames: int
    tx_bytes: int
    rx_dropped_no_buffer: int
    rx_dropped_buffer_wait: int
    rx_dropped_oversize: int
    rx_bad_descriptor: int
    tx_bad_descriptor: int
    bad_queue_index: int
    tx_dropped: int
    rx_errors: int
    notifications_sent: int
    irqs_handled: int
    tx_checksums_filled: int
    rx_buffer_waits: int
    tx_send_waits: int
    rx_latency: Histogram  # kernel receive timestamp -> rx_active tail published
    rx_wake: Histogram  # the driver's wake-up (or the publish before) -> the same publish
    tx_latency: Histogram  # TX wake-up (or batch start) -> the send() returned
    rx_wait: Histogram  # out of rx_free buffers -> virt_rx gave one back (one per wait)
    _seq: int
    _started: float

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.rx_latency = Histogram()
        self.rx_wake = Histogram()
        self.tx_latency = Histogram()
        self.rx_wait = Histogram()
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
            "latency": {key: getattr(self, attr).as_dict() for key, attr in LATENCIES.items()},
        }
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(jsonio.dumps(doc) + "\n")
        os.replace(tmp, path)
