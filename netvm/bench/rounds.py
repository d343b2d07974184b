"""One round of one driver: a fresh simulation, every measurement, the driver's exit.

Owns: the driver's command line (pinned to its CPU; ours with the extra options given,
the baseline through its start-up shim), the best-effort autogroup priority, and
``one_round``, the order of the runs within a round: added latency first (real echo
clients, the driver's first traffic, so its latency histograms are the low-load ones),
then the fast bench VMM takes over for RX-only runs, the line-rate run, TX-only runs and
the full-duplex echo at line rate. A fresh simulation per round and driver keeps one
driver's state out of the other's figures.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from netvm.bench.echo import echo_run
from netvm.bench.latency import round_latency
from netvm.bench.measure import fresh_stats, latency_run, rx_run, tx_run
from netvm.bench.options import DRIVER_CPU, LINE_RATE_1514, SIZES, BenchOptions
from netvm.bench.tools import Tools
from netvm.bench.vmm import BenchSimulation, BenchVmm
from netvm.board import load_board
from netvm.core.progress import Progress
from netvm.sim import SimOptions


def driver_command(which: str, tools: Tools, opts: BenchOptions) -> str:
    pin = f"taskset -c {DRIVER_CPU}"
    if which == "ours":
        extra = " ".join(shlex.quote(a) for a in opts.driver_args)
        return f"{pin} {shlex.quote(opts.python)} -m netvm_driver {extra}".rstrip()
    return (
        f"{pin} {shlex.quote(sys.executable)} {shlex.quote(str(tools.launcher))} "
        f"{shlex.quote(str(tools.baseline))}"
    )


def raise_priority(pid: int) -> None:
    """Best effort: our autogroup ahead of other sessions' (e.g. a build's) on this host.

    Autogroups share the CPU equally whatever the nice value of their tasks, so a busy
    session elsewhere would otherwise take half of the driver's core. This touches only
    the autogroup of `pid`'s session.
    """
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text("-20")


def driver_ahead(sim: BenchSimulation) -> int:
    """The started simulation's driver PID, its autogroup raised (`raise_priority`)."""
    assert sim.driver is not None
    pid = sim.driver.pid
    raise_priority(pid)
    return pid


def take_over(sim: BenchSimulation) -> BenchVmm:
    """The fast VMM side in place of the simulation's echo clients, once the driver has
    had a moment past start-up."""
    time.sleep(0.2)
    return sim.call(sim.take_over)


def one_round(
    which: str, tools: Tools, opts: BenchOptions, root: Path, progress: Progress
) -> dict[str, Any]:
    board = load_board(opts.board, root)
    sim_opts = SimOptions(driver_cmd=driver_command(which, tools, opts), stats_interval=1.0)
    sim = BenchSimulation(board, sim_opts, root, progress=progress)
    sim.start()
    out: dict[str, Any] = {}
    low_load: dict[str, Any] | None = None
    try:
        pid = driver_ahead(sim)
        progress(f"  {which}: latency")
        out["latency"] = latency_run(sim, opts.ping_count, opts.ping_interval)
        # The driver's own histograms so far: the ping run is its first traffic.
        low_load = fresh_stats(sim)
        time.sleep(0.2)  # the echo path goes quiet before the bench VMM takes over
        bench = sim.call(sim.take_over)
        for label, size in SIZES.items():
            progress(f"  {which}: RX {label} B")
            out[f"rx_{label}"] = rx_run(
                sim, bench, tools, pid, size, rate=0, warmup=opts.warmup, window=opts.window
            )
        progress(f"  {which}: RX 1514 B at {LINE_RATE_1514:.0f} frames/s")
        out["line_rate_1514"] = rx_run(
            sim, bench, tools, pid, 1514, rate=LINE_RATE_1514, warmup=opts.warmup,
            window=opts.line_window,
        )  # fmt: skip
        for label, size in SIZES.items():
            progress(f"  {which}: TX {label} B")
            out[f"tx_{label}"] = tx_run(sim, bench, pid, size, warmup=opts.warmup,
                                        window=opts.window)  # fmt: skip
        progress(f"  {which}: echo 1514 B at {LINE_RATE_1514:.0f} frames/s, full duplex")
        out["echo_1514"] = echo_run(
            sim, bench, tools, pid, rate=LINE_RATE_1514, warmup=opts.warmup,
            window=opts.line_window,
        )  # fmt: skip
    finally:
        result = sim.stop("bench")
    out["driver_exit"] = result.driver_exit
    out["driver_counters"] = (result.driver_stats or {}).get("counters", {})
    out["driver_latency"] = round_latency(low_load, result.driver_stats)
    if result.driver_exit not in (0, None):
        out["driver_log_tail"] = list(result.driver_log_tail)
    return out
