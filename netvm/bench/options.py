"""What one benchmark run is: its options, the drivers, tests and CPUs it uses.

Owns: ``BenchOptions`` (rounds, windows, ping count, callgrind frames, soak, the driver's
extra options; ``quick_options`` for ``invoke bench --quick``), ``Sample`` (one reading of
the driver's CPU time and the VMM's counters), and the constants every part of the bench
shares: the frame sizes, the line rate, the two drivers and the CPU each side is pinned to
(docs/bench.md, "What runs where"). They sit here, below the measurements, the rounds and
the summary, so that each of those imports them and none imports another for a constant.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LINE_RATE_1514 = 81274.0  # 1 GbE, 1514-byte frames (1538 bytes on the wire)
SIZES = {"64": 60, "1514": 1514}  # label (frame with FCS) -> bytes the driver handles
DRIVERS = ("ours", "baseline")
TESTS = ("rx_64", "rx_1514", "tx_64", "tx_1514")
DRIVER_CPU = 0
PEER_CPU = 1
# The guest runs Debian's CPython 3.11 (built with profile-guided optimisation and LTO);
# the same build on the host measures the interpreter the driver really runs under.
GUEST_PYTHON = "/usr/bin/python3.11"


def driver_python() -> str:
    """The interpreter for ours: Debian's python3.11 where it is installed, else the one
    running the bench (a self-built CPython without PGO runs the driver ~25 % slower)."""
    return GUEST_PYTHON if os.access(GUEST_PYTHON, os.X_OK) else sys.executable


@dataclass(frozen=True)
class BenchOptions:
    board: str = "odroidc4"
    rounds: int = 5
    window: float = 3.0  # seconds measured per throughput run
    warmup: float = 0.5
    line_window: float = 4.0
    ping_count: int = 300
    ping_interval: float = 0.01  # 100 pings/s: "low rate"
    quick: bool = False
    json_path: Path | None = None
    build_figures: bool = False
    driver_args: tuple[str, ...] = ()  # extra options for netvm_driver
    callgrind_frames: int = 4096  # frames per test under callgrind (0: no callgrind runs)
    callgrind_warmup: int = 512
    soak: float = 0.0  # seconds of full-duplex line rate through ours (0: no soak)
    python: str = field(default_factory=driver_python)  # runs ours (the driver is stdlib-only)

    @classmethod
    def quick_options(cls, **kw: Any) -> BenchOptions:
        base: dict[str, Any] = {
            "rounds": 1, "window": 1.0, "warmup": 0.3, "line_window": 1.5,
            "ping_count": 100, "quick": True, "callgrind_frames": 1024,
            "callgrind_warmup": 256,
        }  # fmt: skip
        base.update(kw)
        return cls(**base)


@dataclass
class Sample:
    t: float
    cpu_ns: int
    ticks: int
    counters: dict[str, int] = field(default_factory=dict)
    user_ticks: int = 0  # the utime share of `ticks`; the rest is stime (kernel)
