"""Instructions per frame: each driver under callgrind, a fixed number of frames per test.

Owns: the driver's command line under valgrind, the fixed-count RX and TX runs (the
generator sends exactly N frames in bursts slow enough for a driver tens of times slower
than native; the VMM lets exactly N frames through tx_active), one callgrind run per
driver (per test a warm-up, the counters zeroed, the frames, a dump) and its summary
(instructions per frame of both drivers and their ratio). Instruction counts do not depend
on what else runs on the host, unlike CPU time. Controlling valgrind itself is
netvm/bench/callgrind.py; this module runs the traffic around it.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netvm.bench import callgrind
from netvm.bench.measure import finish_generator, kill_generator, start_generator, wait_tx_home
from netvm.bench.options import DRIVER_CPU, DRIVERS, SIZES, TESTS, BenchOptions
from netvm.bench.rounds import driver_ahead, take_over
from netvm.bench.tools import Tools
from netvm.bench.vmm import BenchSimulation, BenchVmm
from netvm.board import load_board
from netvm.core.progress import Progress
from netvm.sim import SimOptions

CALLGRIND_BURST = 64  # frames per send() of the generator under callgrind
CALLGRIND_RX_RATE = 2000.0  # frames/s: one burst every 32 ms, time for a slow driver


def wait_count(
    sim: BenchSimulation, bench: BenchVmm, key: str, target: int, quiet: float = 2.0
) -> int:
    """A VMM counter once it reaches `target` or has not moved for `quiet` seconds."""
    last, since = -1, time.monotonic()
    while True:
        now = sim.call(bench.snapshot)[key]
        if now >= target:
            return now
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet:
            return now
        time.sleep(0.05)


def callgrind_rx(
    sim: BenchSimulation, bench: BenchVmm, tools: Tools, size: int, count: int
) -> tuple[int, int]:
    """`count` frames in fixed bursts into the driver; (frames that reached rx_active,
    frames sent)."""
    sim.call(lambda: setattr(bench, "expect_size", size))
    before = sim.call(bench.snapshot)["rx_frames"]
    seconds = count / CALLGRIND_RX_RATE + 30
    gen = start_generator(sim, tools, size, CALLGRIND_RX_RATE, seconds, count=count,
                          burst=CALLGRIND_BURST)  # fmt: skip
    try:
        sent = int(finish_generator(gen, seconds + 30)["sent"])
    finally:
        kill_generator(gen)
    return wait_count(sim, bench, "rx_frames", before + sent) - before, sent


def callgrind_tx(sim: BenchSimulation, bench: BenchVmm, size: int, count: int) -> tuple[int, int]:
    """Exactly `count` frames through tx_active (the VMM refills as buffers come back)."""
    before = sim.call(bench.snapshot)["tx_frames"]
    sim.call(lambda: bench.start_tx(size, budget=count))
    try:
        left = wait_tx_home(sim, bench, timeout=60 + count * 0.005)
    finally:
        sim.call(bench.stop_tx)
    if left:
        raise RuntimeError(f"the driver under callgrind kept {left} TX buffers")
    return int(sim.call(bench.snapshot)["tx_frames"]) - before, count


def callgrind_command(which: str, tools: Tools, opts: BenchOptions, out_dir: Path) -> str:
    """The driver's command line under valgrind. Ours gets `--rx-mode ring` unless an
    --rx-mode is given: "auto" picks the ring or the socket by the frame rate, which
    under valgrind (tens of times slower) would not be the one it picks natively."""
    vg = " ".join(shlex.quote(a) for a in callgrind.valgrind_prefix(out_dir))
    pin = f"taskset -c {DRIVER_CPU}"
    if which == "ours":
        args = list(opts.driver_args)
        if not any(a.startswith("--rx-mode") for a in args):
            args = ["--rx-mode", "ring", *args]
        extra = " ".join(shlex.quote(a) for a in args)
        return f"{pin} {vg} {shlex.quote(opts.python)} -m netvm_driver {extra}"
    return (
        f"{pin} {shlex.quote(sys.executable)} {shlex.quote(str(tools.launcher))} {vg} -- "
        f"{shlex.quote(str(tools.baseline))}"
    )


def callgrind_driver(
    which: str, tools: Tools, opts: BenchOptions, root: Path, progress: Progress
) -> dict[str, Any]:
    """Instructions per frame of one driver for each test, in one run under callgrind:
    per test a warm-up, the counters zeroed, `callgrind_frames` frames, a dump."""
    board = load_board(opts.board, root)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="netvm-callgrind-") as tmp:
        out_dir = Path(tmp)
        sim_opts = SimOptions(
            driver_cmd=callgrind_command(which, tools, opts, out_dir),
            stats_interval=86400.0,  # no periodic stats writes inside the measured frames
            ready_timeout=300.0,
        )
        sim = BenchSimulation(board, sim_opts, root, progress=progress)
        sim.start()
        try:
            pid = driver_ahead(sim)
            bench = take_over(sim)
            cg = callgrind.Callgrind(pid, out_dir)
            cg.instrument()
            for test in TESTS:
                direction, label = test.split("_")
                size = SIZES[label]
                progress(f"  {which} under callgrind: {test}")

                def run(n: int, direction: str = direction, size: int = size) -> tuple[int, int]:
                    if direction == "rx":
                        return callgrind_rx(sim, bench, tools, size, n)
                    return callgrind_tx(sim, bench, size, n)

                run(opts.callgrind_warmup)
                cg.zero()
                before = sim.call(bench.snapshot)
                frames, sent = run(opts.callgrind_frames)
                instructions = cg.dump(test)
                after = sim.call(bench.snapshot)
                doorbells = f"{direction}_doorbells"
                out[test] = {
                    "frames": frames,
                    "sent": sent,  # more than frames: some were lost before the driver
                    "instructions": instructions,
                    "instructions_per_frame": callgrind.per_frame(instructions, frames),
                    "doorbells": after[doorbells] - before[doorbells],
                }
        finally:
            result = sim.stop("bench callgrind")
    out["driver_exit"] = result.driver_exit
    return out


def summarize_callgrind(runs: dict[str, dict[str, Any]], frames: int) -> dict[str, Any]:
    out: dict[str, Any] = {"frames": frames, "burst": CALLGRIND_BURST}
    for which in DRIVERS:
        out[which] = {t: runs[which][t]["instructions_per_frame"] for t in TESTS}
    out["ratio"] = {
        t: round(out["ours"][t] / out["baseline"][t], 3)
        if out["ours"][t] and out["baseline"][t]
        else None
        for t in TESTS
    }
    out["runs"] = runs
    return out
