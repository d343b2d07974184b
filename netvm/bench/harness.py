"""`invoke bench`: the driver's data path measured on the host simulation.

Owns: one benchmark run from start to end: building the C tools, the rounds, the
callgrind runs and the soak in their order, with this process pinned to the generator's
CPU; then the JSON document (options, machine, summary, targets, build figures, every
round's raw figures) and its tables. Method (docs/bench.md): the driver under test is
pinned to CPU 0, the traffic generator and the simulated VMM to CPU 1, both sides in the
simulation's namespaces. Ours and the baseline run in the same round, alternating which
goes first; ratios are taken within a round, then the median. After the rounds:
instructions per frame under callgrind (one run per driver, fixed frame counts) and, if
asked, a soak of ours at full-duplex line rate (loss, buffer conservation, RSS over time).

The parts live beside it: options.py (the options and shared constants), measure.py and
echo.py (the runs), rounds.py (one round), callgrind_runs.py, soak.py, summary.py
(medians, ratios, targets), report.py (tables, the printed report), figures.py (machine
and build). ``BenchOptions`` and ``report`` are re-exported here for ``invoke bench``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from netvm.bench import callgrind
from netvm.bench.callgrind_runs import callgrind_driver, summarize_callgrind
from netvm.bench.figures import build_figures, machine_info
from netvm.bench.options import DRIVERS, PEER_CPU, BenchOptions
from netvm.bench.report import callgrind_table, report, table
from netvm.bench.rounds import one_round, raise_priority
from netvm.bench.soak import soak_run
from netvm.bench.summary import summarize, targets
from netvm.bench.tools import build_tools
from netvm.bench.wakefloor import wake_floor
from netvm.core.errors import Interrupted, UserError
from netvm.core.progress import Progress, silent
from netvm.sim.netns import require_root
from netvm.sim.runner import sigterm_as_interrupt

__all__ = ["BenchOptions", "report", "run_bench"]


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """This process (and the simulated VMM thread it starts) on `cpu`."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def run_bench(opts: BenchOptions, root: Path, progress: Progress = silent) -> dict[str, Any]:
    require_root()
    if (os.cpu_count() or 1) < 2:
        raise RuntimeError("the benchmark needs two CPUs (driver and generator)")
    phase = ["building the tools"]  # what the bench is doing: an interrupt names it

    def step(msg: str) -> None:
        phase[0] = msg.strip()
        progress(msg)

    rounds: list[dict[str, dict[str, Any]]] = []
    cg_runs: dict[str, dict[str, Any]] = {}
    soak: dict[str, Any] | None = None
    wake: dict[str, Any] | None = None
    with sigterm_as_interrupt():
        try:
            tools = build_tools(root)
            raise_priority(os.getpid())
            machine = machine_info(tools, opts.python)
            started = time.time()
            with pinned(PEER_CPU):
                for r in range(opts.rounds):
                    order = DRIVERS if r % 2 == 0 else DRIVERS[::-1]
                    step(f"round {r + 1}/{opts.rounds}")
                    rounds.append(
                        {which: one_round(which, tools, opts, root, step) for which in order}
                    )
                step("wake-up floor: a C reader blocked in recvmsg, pinged")
                wake = wake_floor(tools, opts)
                if opts.callgrind_frames > 0:
                    if not callgrind.available():
                        raise UserError(
                            "valgrind (callgrind) is not installed",
                            hint="apt-get install valgrind, or --no-callgrind",
                        )
                    for which in DRIVERS:
                        step(f"instructions per frame: {which} under callgrind")
                        cg_runs[which] = callgrind_driver(which, tools, opts, root, step)
                if opts.soak > 0:
                    step(f"soak: {opts.soak:g} s")
                    soak = soak_run(tools, opts, root, step)
        except KeyboardInterrupt:
            raise Interrupted("invoke bench", phase[0]) from None
    summary = summarize(rounds)
    doc: dict[str, Any] = {
        "command": " ".join(["invoke", "bench", *(["--quick"] if opts.quick else [])]),
        "options": {
            "rounds": opts.rounds,
            "window_s": opts.window,
            "warmup_s": opts.warmup,
            "line_window_s": opts.line_window,
            "ping_count": opts.ping_count,
            "ping_interval_s": opts.ping_interval,
            "driver_args": list(opts.driver_args),
            "quick": opts.quick,
            "callgrind_frames": opts.callgrind_frames,
            "callgrind_warmup": opts.callgrind_warmup,
            "soak_s": opts.soak,
        },
        "machine": machine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "ratios": summary["ratios"],
        "ratio_detail": summary["ratio_detail"],
        "ratio_per_round": summary["ratio_per_round"],
        "line_rate_1514": summary["line_rate_1514"],
        "echo_1514": summary["echo_1514"],
        "latency_us": summary["latency_us"],
        "driver_latency_us": summary["driver_latency_us"],
        "wake_floor_us": wake,
        "instructions_per_frame": (
            summarize_callgrind(cg_runs, opts.callgrind_frames) if cg_runs else None
        ),
        "soak": soak,
        "medians": summary["medians"],
        "targets": targets(summary, soak, wake),
        "build": build_figures(root, opts.board, opts.build_figures, progress),
        "rounds": rounds,
    }
    doc["table"] = table(summary)
    if doc["instructions_per_frame"]:
        doc["callgrind_table"] = callgrind_table(doc["instructions_per_frame"])
    if opts.json_path:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc
