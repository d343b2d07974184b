"""`invoke bench`: the driver's data path measured on the host simulation.

Owns: one benchmark run: building the C tools, the rounds, each driver's simulation,
the measurements and their summary (medians, ratios, JSON, the human table). Method
(docs/bench.md): the driver under test is pinned to CPU 0, the traffic generator and the
simulated VMM to CPU 1, both sides in the simulation's namespaces. Per round and driver:
added latency first (real echo clients), then the fast bench VMM takes over for RX-only
runs (the generator floods or paces frames at the driver), the line-rate run, TX-only
runs (the VMM keeps tx_active full) and the full-duplex echo at line rate (the VMM sends
every received frame back out). CPU time is the driver process's own
(``/proc/PID/schedstat``, the run time /proc/PID/stat's utime+stime are scaled to),
sampled around a fixed window after a warm-up. Ours and the baseline run in the same
round, alternating which goes first; ratios are taken within a round, then the median.
After the rounds: instructions per frame under callgrind (one run per driver, fixed
frame counts; netvm/bench/callgrind.py) and, if asked, a soak of ours at full-duplex
line rate (loss, buffer conservation, RSS over time).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netvm.bench import callgrind
from netvm.bench.latency import round_latency, summarize_latency
from netvm.bench.tools import Tools, build_tools
from netvm.bench.vmm import BenchSimulation, BenchVmm
from netvm.board import load_board
from netvm.builder.manifest import MANIFEST_NAME, read_manifest
from netvm.core.errors import Interrupted, UserError
from netvm.core.progress import Progress, silent
from netvm.core.workspace import Workspace
from netvm.sim import SimOptions
from netvm.sim.netns import require_root
from netvm.sim.runner import sigterm_as_interrupt

LINE_RATE_1514 = 81274.0  # 1 GbE, 1514-byte frames (1538 bytes on the wire)
SIZES = {"64": 60, "1514": 1514}  # label (frame with FCS) -> bytes the driver handles
DRIVERS = ("ours", "baseline")
DRIVER_CPU = 0
PEER_CPU = 1
GEN_SRC_MAC = "02:00:00:00:00:ab"
DIRECT_ADDRESS = "10.0.0.250/24"
PING_TIME = re.compile(r"time=([\d.]+) ms")


CALLGRIND_BURST = 64  # frames per send() of the generator under callgrind
CALLGRIND_RX_RATE = 2000.0  # frames/s: one burst every 32 ms, time for a slow driver
SOAK_SAMPLE_S = 1.0  # RSS and counters sampled this often during a soak
SOAK_WARMUP_MAX_S = 30.0  # RSS growth is measured after min(this, a quarter of the soak)
RSS_GROWTH_TARGET_KIB = 1024


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


# ---------------------------------------------------------------------- measurements


def cpu_of(pid: int) -> tuple[int, int, int]:
    """(run time in ns from /proc/PID/schedstat, utime and stime in clock ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        run_ns = int(f.read().split()[0])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return run_ns, int(fields[11]), int(fields[12])


def sample(sim: BenchSimulation, bench: BenchVmm, pid: int) -> Sample:
    counters = sim.call(bench.snapshot)
    t = time.monotonic()
    run_ns, utime, stime = cpu_of(pid)
    return Sample(t, run_ns, utime + stime, counters, utime)


def settle(sim: BenchSimulation, bench: BenchVmm, key: str, timeout: float = 2.0) -> int:
    """Wait until a VMM counter stops moving (frames still in rings or blocks)."""
    last = -1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = sim.call(bench.snapshot)[key]
        if now == last:
            return now
        last = now
        time.sleep(0.05)
    return last


def rates(a: Sample, b: Sample, key: str) -> dict[str, float | None]:
    frames = b.counters[key] - a.counters[key]
    secs = b.t - a.t
    cpu = (b.cpu_ns - a.cpu_ns) / 1e9
    ticks = b.ticks - a.ticks
    # The process's own code vs the kernel working in its context (system calls, and on
    # TX the veth peer's receive softirq): the tick split applied to the exact run time.
    # No tick in the window (little CPU): no split to give, rather than a made-up one.
    user = (b.user_ticks - a.user_ticks) / ticks if ticks else None
    per_frame = cpu * 1e6 / frames if frames else 0.0
    return {
        "user_us_per_frame": None if user is None else round(per_frame * user, 4),
        "kernel_us_per_frame": None if user is None else round(per_frame * (1 - user), 4),
        "frames": frames,
        "seconds": round(secs, 3),
        "frames_per_s": round(frames / secs, 1),
        "cpu_s": round(cpu, 4),
        "cpu_fraction": round(cpu / secs, 4),
        "cpu_us_per_frame": round(cpu * 1e6 / frames, 4) if frames else float("inf"),
        "frames_per_cpu_s": round(frames / cpu, 1) if cpu > 0 else float("inf"),
        "stat_ticks": b.ticks - a.ticks,
    }


def start_generator(
    sim: BenchSimulation,
    tools: Tools,
    size: int,
    rate: float,
    seconds: float,
    count: int = 0,
    burst: int = 0,
) -> subprocess.Popen[str]:
    dst = sim.layout.clients[0].mac
    cmd = ["taskset", "-c", str(PEER_CPU), str(tools.gen), sim.net.peer_if, str(size),
           str(rate), f"{seconds:.3f}", dst, GEN_SRC_MAC, str(count), str(burst)]  # fmt: skip
    return subprocess.Popen(sim.peer_command(cmd), stdout=subprocess.PIPE, text=True)


def finish_generator(gen: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The generator's report once it ends."""
    out, _ = gen.communicate(timeout=timeout)
    report: dict[str, Any] = json.loads(out)
    return report


def kill_generator(gen: subprocess.Popen[str]) -> None:
    """After an error or an interrupt: no generator left flooding the peer."""
    if gen.poll() is None:
        gen.kill()
        gen.wait()


def rx_run(
    sim: BenchSimulation,
    bench: BenchVmm,
    tools: Tools,
    pid: int,
    size: int,
    *,
    rate: float,
    warmup: float,
    window: float,
) -> dict[str, Any]:
    """Frames from the generator through the driver onto rx_active, for `window` seconds."""
    sim.call(lambda: setattr(bench, "expect_size", size))
    before = sim.call(bench.snapshot)
    gen = start_generator(sim, tools, size, rate, warmup + window + 0.2)
    try:
        time.sleep(warmup)
        a = sample(sim, bench, pid)
        time.sleep(window)
        b = sample(sim, bench, pid)
        report = finish_generator(gen, warmup + window + 30)
    finally:
        kill_generator(gen)
    received = settle(sim, bench, "rx_frames") - before["rx_frames"]
    after = sim.call(bench.snapshot)
    sent = int(report["sent"])
    result: dict[str, Any] = dict(rates(a, b, "rx_frames"))
    result.update(
        generator_rate=round(float(report["rate"]), 1),
        sent=sent,
        received=received,
        loss=round(max(0.0, 1 - received / sent), 6) if sent else None,
        checked=after["rx_checked"] - before["rx_checked"],
        bad_frames=after["rx_bad"] - before["rx_bad"],
    )
    return result


def peer_rx_packets(sim: BenchSimulation) -> int:
    proc = subprocess.run(
        ["ip", "-n", sim.net.peer_ns, "-s", "-j", "link", "show", sim.net.peer_if],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(json.loads(proc.stdout)[0]["stats64"]["rx"]["packets"])


def tx_run(
    sim: BenchSimulation, bench: BenchVmm, pid: int, size: int, *, warmup: float, window: float
) -> dict[str, Any]:
    """The VMM keeps tx_active full of `size`-byte frames; the driver sends them out."""
    sim.call(lambda: bench.start_tx(size))
    try:
        time.sleep(warmup)
        pa = peer_rx_packets(sim)
        a = sample(sim, bench, pid)
        time.sleep(window)
        b = sample(sim, bench, pid)
        pb = peer_rx_packets(sim)
    finally:
        sim.call(bench.stop_tx)
        deadline = time.monotonic() + 10
        while sim.call(lambda: bench.tx_out) and time.monotonic() < deadline:
            time.sleep(0.02)
    result: dict[str, Any] = dict(rates(a, b, "tx_frames"))
    result["peer_received_per_s"] = round((pb - pa) / (b.t - a.t), 1)
    return result


def ping_rtts(sim: BenchSimulation, target: str, count: int, interval: float) -> list[float]:
    """Round-trip times in µs of `count` pings from the peer namespace."""
    sim.peer_run(["ping", "-n", "-q", "-c", "3", "-i", "0.05", "-W", "1", target])  # ARP
    proc = sim.peer_run(
        ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", target],
        timeout=count * interval + 30,
    )
    return [float(m) * 1000 for m in PING_TIME.findall(proc.stdout)]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_run(sim: BenchSimulation, count: int, interval: float) -> dict[str, Any]:
    """Ping a client through the driver and, for comparison, the driver-side veth itself."""
    drv = ["ip", "-n", sim.net.driver_ns, "addr"]
    dev = ["dev", sim.net.driver_if]
    subprocess.run([*drv, "add", DIRECT_ADDRESS, *dev], check=True, capture_output=True)
    try:
        direct = ping_rtts(sim, DIRECT_ADDRESS.split("/")[0], count, interval)
    finally:
        subprocess.run([*drv, "del", DIRECT_ADDRESS, *dev], check=False, capture_output=True)
    through = ping_rtts(sim, sim.layout.clients[0].ipv4, count, interval)
    if not direct or not through:
        return {"ok": False, "direct": len(direct), "through": len(through)}
    res: dict[str, Any] = {"ok": True, "count": count, "received": len(through)}
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        d, t = percentile(direct, q), percentile(through, q)
        res[f"direct_{name}_us"] = round(d, 1)
        res[f"through_{name}_us"] = round(t, 1)
        res[f"added_{name}_us"] = round(t - d, 1)
    return res


def fresh_stats(sim: BenchSimulation, timeout: float = 5.0) -> dict[str, Any] | None:
    """The driver's whole stats document, rewritten on request (SIGUSR1); None if the
    driver does not answer in time."""
    assert sim.driver is not None
    before = (sim.read_driver_stats() or {}).get("seq", 0)
    sim.driver.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = sim.read_driver_stats()
        if doc and doc.get("seq", 0) > before:
            return doc
        time.sleep(0.02)
    return None


def settle_peer(sim: BenchSimulation, timeout: float = 3.0) -> int:
    """The peer's receive counter once it stops moving."""
    last = -1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = peer_rx_packets(sim)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def wait_tx_home(sim: BenchSimulation, bench: BenchVmm, timeout: float = 10.0) -> int:
    """Wait until the driver has returned every TX buffer; the number still out."""
    deadline = time.monotonic() + timeout
    while (out := sim.call(lambda: bench.tx_out)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return int(out)


def loss(got: int, expected: int) -> float | None:
    return round(max(0.0, 1 - got / expected), 6) if expected else None


def echo_counts(
    before: dict[str, int], after: dict[str, int], sent: int, peer: int
) -> dict[str, Any]:
    """Loss each way of a full-duplex echo run, from the VMM's and the peer's counters.

    rx: generator -> driver -> rx_active; tx: tx_active -> driver -> the peer's veth;
    the VMM's own share (a frame it could not echo: every TX buffer out) is apart.
    """
    received = after["rx_frames"] - before["rx_frames"]
    echoed = after["echo_frames"] - before["echo_frames"]
    return {
        "sent": sent,
        "received": received,
        "echoed": echoed,
        "returned": after["tx_frames"] - before["tx_frames"],
        "peer_received": peer,
        "echo_no_buffer": after["echo_no_buffer"] - before["echo_no_buffer"],
        "rx_loss": loss(received, sent),
        "tx_loss": loss(peer, echoed),
        "loss": loss(peer, sent),
    }


def counter_deltas(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, int] | None:
    """How much each of the driver's counters moved between two stats documents."""
    if not before or not after:
        return None
    a, b = before.get("counters", {}), after.get("counters", {})
    return {k: int(b[k]) - int(a.get(k, 0)) for k in sorted(b) if isinstance(b[k], int)}


def thread_cpu_ns(tid: int) -> int:
    """Run time of one thread of this process (the simulated VMM's) in ns."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def echo_run(
    sim: BenchSimulation,
    bench: BenchVmm,
    tools: Tools,
    pid: int,
    *,
    rate: float,
    warmup: float,
    window: float,
) -> dict[str, Any]:
    """1514-byte frames at `rate` into the driver, every one echoed back out through TX."""
    sim.call(lambda: setattr(bench, "expect_size", 1514))
    vmm_tid = sim.call(threading.get_native_id)
    stats_before = fresh_stats(sim)
    sim.call(bench.start_echo)
    try:
        before = sim.call(bench.snapshot)
        peer_before = peer_rx_packets(sim)
        gen = start_generator(sim, tools, 1514, rate, warmup + window + 0.2)
        try:
            time.sleep(warmup)
            a = sample(sim, bench, pid)
            vmm_a = thread_cpu_ns(vmm_tid)
            time.sleep(window)
            b = sample(sim, bench, pid)
            vmm_b = thread_cpu_ns(vmm_tid)
            report = finish_generator(gen, warmup + window + 30)
        finally:
            kill_generator(gen)
        settle(sim, bench, "rx_frames")
        wait_tx_home(sim, bench)
    finally:
        sim.call(bench.stop_echo)
    after = sim.call(bench.snapshot)
    result: dict[str, Any] = dict(rates(a, b, "rx_frames"))
    result.update(echo_counts(before, after, int(report["sent"]), settle_peer(sim) - peer_before))
    moved = counter_deltas(stats_before, fresh_stats(sim)) or {}
    result.update(
        generator_rate=round(float(report["rate"]), 1),
        checked=after["rx_checked"] - before["rx_checked"],
        bad_frames=after["rx_bad"] - before["rx_bad"],
        # The simulated VMM's thread on CPU 1 (next to the generator and the kernel's
        # delivery): when it lags, rx_free runs dry and the driver has nowhere to put
        # frames, which is the harness's loss rather than the driver's.
        vmm_cpu_fraction=round((vmm_b - vmm_a) / 1e9 / (b.t - a.t), 4),
        driver_counters=moved,
        driver_rx_dropped_no_buffer=moved.get("rx_dropped_no_buffer"),
    )
    result["rx_loss_no_buffer"] = no_buffer_share(result)
    return result


def no_buffer_share(run: dict[str, Any]) -> float | None:
    """The part of the RX loss the driver dropped because rx_free was empty (the VMM had
    not given buffers back in time), where the driver counts it."""
    dropped, sent = run.get("driver_rx_dropped_no_buffer"), run.get("sent")
    return round(dropped / sent, 6) if dropped is not None and sent else None


# ---------------------------------------------------------------------- one round


def driver_command(which: str, tools: Tools, opts: BenchOptions) -> str:
    pin = f"taskset -c {DRIVER_CPU}"
    if which == "ours":
        extra = " ".join(shlex.quote(a) for a in opts.driver_args)
        return f"{pin} {shlex.quote(sys.executable)} -m netvm_driver {extra}".rstrip()
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
        assert sim.driver is not None
        pid = sim.driver.pid
        raise_priority(pid)
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


# ---------------------------------------------------------------------- instructions per frame


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
    python = shlex.quote(sys.executable)
    if which == "ours":
        args = list(opts.driver_args)
        if not any(a.startswith("--rx-mode") for a in args):
            args = ["--rx-mode", "ring", *args]
        extra = " ".join(shlex.quote(a) for a in args)
        return f"{pin} {vg} {python} -m netvm_driver {extra}"
    return (
        f"{pin} {python} {shlex.quote(str(tools.launcher))} {vg} -- "
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
            assert sim.driver is not None
            pid = sim.driver.pid
            raise_priority(pid)
            time.sleep(0.2)
            bench = sim.call(sim.take_over)
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


# ---------------------------------------------------------------------- soak


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def rss_summary(series: list[tuple[float, int]], warmup: float) -> dict[str, Any]:
    """RSS growth after the warm-up: the last sample against the first one after it."""
    after = [kib for t, kib in series if t >= warmup]
    out: dict[str, Any] = {
        "warmup_s": round(warmup, 1),
        "start_kib": series[0][1] if series else None,
        "after_warmup_kib": after[0] if after else None,
        "end_kib": after[-1] if after else None,
        "peak_kib": max(after) if after else None,
        "growth_kib": after[-1] - after[0] if len(after) >= 2 else None,
        "target_growth_kib": RSS_GROWTH_TARGET_KIB,
    }
    out["met"] = out["growth_kib"] is not None and out["growth_kib"] <= RSS_GROWTH_TARGET_KIB
    out["series"] = [[round(t, 1), kib] for t, kib in series]
    return out


def soak_warmup(seconds: float) -> float:
    return min(SOAK_WARMUP_MAX_S, seconds / 4)


def soak_run(tools: Tools, opts: BenchOptions, root: Path, progress: Progress) -> dict[str, Any]:
    """Ours at full-duplex line rate for `opts.soak` seconds: loss, RSS, conservation."""
    seconds = opts.soak
    board = load_board(opts.board, root)
    sim_opts = SimOptions(driver_cmd=driver_command("ours", tools, opts), stats_interval=10.0)
    sim = BenchSimulation(board, sim_opts, root, progress=progress)
    sim.start()
    series: list[tuple[float, int]] = []
    try:
        assert sim.driver is not None
        pid = sim.driver.pid
        raise_priority(pid)
        time.sleep(0.2)
        bench = sim.call(sim.take_over)
        sim.call(lambda: setattr(bench, "expect_size", 1514))
        vmm_tid = sim.call(threading.get_native_id)
        stats_before = fresh_stats(sim)
        sim.call(bench.start_echo)
        before = sim.call(bench.snapshot)
        peer_before = peer_rx_packets(sim)
        progress(f"soak: ours, echo 1514 B at {LINE_RATE_1514:.0f} frames/s for {seconds:g} s")
        gen = start_generator(sim, tools, 1514, LINE_RATE_1514, seconds)
        try:
            first = sample(sim, bench, pid)
            vmm_first = thread_cpu_ns(vmm_tid)
            t0 = first.t
            while (left := seconds - (time.monotonic() - t0)) > 0:
                time.sleep(min(SOAK_SAMPLE_S, left))
                kib = rss_kib(pid)
                if kib is not None:
                    series.append((time.monotonic() - t0, kib))
            last = sample(sim, bench, pid)
            vmm_last = thread_cpu_ns(vmm_tid)
            report = finish_generator(gen, 60)
        finally:
            kill_generator(gen)
        settle(sim, bench, "rx_frames")
        wait_tx_home(sim, bench)
        sim.call(bench.stop_echo)
        after = sim.call(bench.snapshot)
        peer = settle_peer(sim) - peer_before
        moved = counter_deltas(stats_before, fresh_stats(sim)) or {}
    finally:
        result = sim.stop("bench soak")
    conservation = sim.bench_conservation or {
        "ok": False, "note": "not taken: the simulated VMM had stopped",
    }  # fmt: skip
    out: dict[str, Any] = {"seconds": seconds, "rate": LINE_RATE_1514}
    out.update(echo_counts(before, after, int(report["sent"]), peer))
    out["cpu"] = rates(first, last, "rx_frames")
    out["vmm_cpu_fraction"] = round((vmm_last - vmm_first) / 1e9 / (last.t - first.t), 4)
    out["driver_counters"] = moved
    out["driver_rx_dropped_no_buffer"] = moved.get("rx_dropped_no_buffer")
    out["rx_loss_no_buffer"] = no_buffer_share(out)
    out["rss"] = rss_summary(series, soak_warmup(seconds))
    out["conservation"] = conservation
    out["driver_exit"] = result.driver_exit
    out["met"] = bool(
        out["loss"] == 0 and conservation.get("ok") and out["rss"]["met"]
        and result.driver_exit == 0
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------- summary

TESTS = ("rx_64", "rx_1514", "tx_64", "tx_1514")
RATE_TESTS = ("line_rate_1514", "echo_1514")  # fixed-rate runs: loss and CPU share
MEDIAN_KEYS = (
    "frames_per_s", "cpu_us_per_frame", "cpu_fraction", "frames_per_cpu_s", "generator_rate",
    "loss", "rx_loss", "tx_loss", "peer_received_per_s", "user_us_per_frame",
    "kernel_us_per_frame",
)  # fmt: skip
NAMES = {"rx_64": "RX 64 B", "rx_1514": "RX 1514 B", "tx_64": "TX 64 B",
         "tx_1514": "TX 1514 B"}  # fmt: skip


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else float("nan")


def median_or_none(values: list[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return median(present) if present else None


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each figure's median over the rounds, where every round has it."""
    return {
        key: median([float(run[key]) for run in runs])
        for key in MEDIAN_KEYS
        if key in runs[0] and all(run.get(key) is not None for run in runs)
    }


def _rate_summary(rounds: list[dict[str, dict[str, Any]]], test: str) -> dict[str, Any]:
    """A fixed-rate run (line rate, echo): loss and CPU of both drivers, medians."""
    out: dict[str, Any] = {"rate": LINE_RATE_1514}
    for which, prefix in (("ours", ""), ("baseline", "baseline_")):
        runs = [r[which][test] for r in rounds if test in r[which]]
        for key in ("loss", "rx_loss", "tx_loss", "rx_loss_no_buffer", "cpu_fraction",
                    "cpu_us_per_frame", "user_us_per_frame", "kernel_us_per_frame",
                    "vmm_cpu_fraction"):  # fmt: skip
            if runs and key in runs[0]:
                out[prefix + key] = median_or_none([run.get(key) for run in runs])
    return out


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"ratios": {}, "ratio_detail": {}, "ratio_per_round": {},
                               "medians": {}}  # fmt: skip
    for test in (*TESTS, *RATE_TESTS):
        present = [r for r in rounds if test in r["ours"] and test in r["baseline"]]
        if not present:
            continue
        per_round = [
            r["ours"][test]["frames_per_cpu_s"] / r["baseline"][test]["frames_per_cpu_s"]
            for r in present
        ]
        summary["ratio_per_round"][test] = [round(x, 3) for x in per_round]
        for which in DRIVERS:
            summary["medians"].setdefault(which, {})[test] = _medians(
                [r[which][test] for r in present]
            )
        if test in TESTS:
            summary["ratios"][test] = median(per_round)
            # The absolute figures the ratio comes from, beside it.
            summary["ratio_detail"][test] = {
                "ratio": median(per_round),
                "ours_cpu_us_per_frame": summary["medians"]["ours"][test]["cpu_us_per_frame"],
                "baseline_cpu_us_per_frame": summary["medians"]["baseline"][test][
                    "cpu_us_per_frame"
                ],
            }
    for test in RATE_TESTS:
        summary[test] = _rate_summary(rounds, test)
    lat: dict[str, Any] = {}
    for which in DRIVERS:
        ok = [r[which]["latency"] for r in rounds if r[which]["latency"].get("ok")]
        for key in ("added_p50_us", "added_p99_us", "through_p50_us", "through_p99_us",
                    "direct_p50_us", "direct_p99_us"):  # fmt: skip
            lat.setdefault(which, {})[key] = median([float(x[key]) for x in ok])
    summary["latency_us"] = {
        "p50": lat["ours"]["added_p50_us"],
        "p99": lat["ours"]["added_p99_us"],
        "ours": lat["ours"],
        "baseline": lat["baseline"],
        "note": "end-to-end round trip through the simulated VMM (Python, a thread wake-up "
        "and a pseudo-terminal per direction): harness-dominated, an upper bound of the "
        "driver's share; the driver's own figures are in driver_latency_us",
    }
    summary["driver_latency_us"] = summarize_latency(
        [r["ours"].get("driver_latency", {}) for r in rounds]
    )
    return summary


TARGETS = (
    ("RX 64 B: frames per CPU-second vs baseline", "rx_64", 3.0),
    ("RX 1514 B: frames per CPU-second vs baseline", "rx_1514", 2.5),
    ("TX 64 B: frames per CPU-second vs baseline", "tx_64", 1.5),
    ("TX 1514 B: frames per CPU-second vs baseline", "tx_1514", 1.5),
)
LINE_CPU_TARGET = 0.10


def _rate_target(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    lost, cpu = figures.get("loss"), figures.get("cpu_fraction")
    return {
        "target": name, "need": f"loss 0, cpu <= {LINE_CPU_TARGET:.2f}",
        "got": f"loss {lost}, cpu {cpu}",
        "met": lost == 0 and cpu is not None and cpu <= LINE_CPU_TARGET,
    }  # fmt: skip


def targets(summary: dict[str, Any], soak: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each target met (True), missed (False) or not measured (None)."""
    out = [
        {"target": name, "need": f">= {need}x", "got": summary["ratios"][key],
         "met": summary["ratios"][key] >= need}
        for name, key, need in TARGETS
    ]  # fmt: skip
    out.append(_rate_target("line rate 1514 B (RX): 0 loss, <= 10 % of a core",
                            summary["line_rate_1514"]))  # fmt: skip
    if "echo_1514" in summary["ratio_per_round"]:
        out.append(_rate_target("echo 1514 B at line rate, full duplex: 0 loss both ways, "
                                "<= 10 % of a core", summary["echo_1514"]))  # fmt: skip
    lat = summary["latency_us"]
    out.append(
        {"target": "added RTT at low rate (harness-dominated): p50 <= 200 us, p99 <= 1000 us",
         "need": "p50 <= 200, p99 <= 1000", "got": f"p50 {lat['p50']}, p99 {lat['p99']}",
         "met": lat["p50"] <= 200 and lat["p99"] <= 1000}
    )  # fmt: skip
    drv = summary["driver_latency_us"]
    got = (
        drv["note"]
        if drv["rx"] is None
        else (f"RX p50 {drv['rx']['p50']}, p99 {drv['rx']['p99']}; "
              f"TX p50 {drv['tx']['p50']}, p99 {drv['tx']['p99']}")
    )  # fmt: skip
    out.append(
        {"target": "driver latency at low load (RX kernel to publish, TX doorbell to send): "
         "p50 <= 50 us, p99 <= 500 us", "need": "p50 <= 50, p99 <= 500", "got": got,
         "met": drv["met"]}
    )  # fmt: skip
    if soak is not None:
        rss = soak["rss"]
        out.append(
            {"target": f"soak {soak['seconds']:g} s at full-duplex line rate: 0 loss, buffers "
             "conserved, RSS growth <= 1 MiB",
             "need": "loss 0, conservation ok, growth <= 1024 KiB",
             "got": f"loss {soak['loss']}, conservation "
             f"{'ok' if soak['conservation'].get('ok') else 'FAILED'}, "
             f"growth {rss['growth_kib']} KiB", "met": soak["met"]}
        )  # fmt: skip
    return out


def _us(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cpu_cell(run: dict[str, Any]) -> str:
    cell = f"{run['cpu_us_per_frame']:.3f}"
    if run.get("user_us_per_frame") is not None and run.get("kernel_us_per_frame") is not None:
        cell += f" ({run['user_us_per_frame']:.2f} + {run['kernel_us_per_frame']:.2f})"
    return cell


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4%}"


def _rate_row(label: str, f: dict[str, Any], both_ways: bool) -> str:
    def side(prefix: str) -> tuple[str, str]:
        if both_ways:
            starved = f.get(prefix + "rx_loss_no_buffer")
            lost = (f"loss RX {_loss(f.get(prefix + 'rx_loss'))}"
                    + ("" if starved is None else f" ({_loss(starved)} no rx_free buffer)")
                    + f", TX {_loss(f.get(prefix + 'tx_loss'))}")  # fmt: skip
        else:
            lost = f"loss {_loss(f.get(prefix + 'loss'))}"
        cpu = f.get(prefix + "cpu_fraction")
        split = ""
        if f.get(prefix + "user_us_per_frame") is not None:
            split = (f", {_us(f.get(prefix + 'cpu_us_per_frame'), 3)} µs/frame "
                     f"({_us(f.get(prefix + 'user_us_per_frame'))} + "
                     f"{_us(f.get(prefix + 'kernel_us_per_frame'))})")  # fmt: skip
        return lost, ("CPU n/a" if cpu is None else f"CPU {cpu:.1%} of a core") + split

    ours, base = side(""), side("baseline_")
    return f"| {label} | {ours[0]} | {ours[1]} | {base[0]} | {base[1]} | |"


def table(summary: dict[str, Any]) -> str:
    m = summary["medians"]
    lines = [
        "| test | ours frames/s | ours CPU µs/frame (user + kernel) | baseline frames/s "
        "| baseline CPU µs/frame (user + kernel) | ratio (frames per CPU-s; ours vs "
        "baseline CPU µs/frame) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for test in TESTS:
        o, b = m["ours"][test], m["baseline"][test]
        lines.append(
            f"| {NAMES[test]} | {o['frames_per_s']:,.0f} | {_cpu_cell(o)} "
            f"| {b['frames_per_s']:,.0f} | {_cpu_cell(b)} "
            f"| {summary['ratios'][test]:.2f}x ({o['cpu_us_per_frame']:.2f} vs "
            f"{b['cpu_us_per_frame']:.2f} µs) |"
        )
    line = summary["line_rate_1514"]
    lines.append(_rate_row(f"RX 1514 B at {line['rate']:,.0f} frames/s", line, False))
    if "echo_1514" in summary["ratio_per_round"]:
        lines.append(_rate_row(f"echo 1514 B at {line['rate']:,.0f} frames/s, full duplex "
                               "(µs per echoed frame)", summary["echo_1514"], True))  # fmt: skip
    lat = summary["latency_us"]
    lines.append(
        f"| added RTT, 100 pings/s (harness-dominated) | p50 {lat['ours']['added_p50_us']:.0f} µs "
        f"| p99 {lat['ours']['added_p99_us']:.0f} µs | p50 {lat['baseline']['added_p50_us']:.0f}"
        f" µs | p99 {lat['baseline']['added_p99_us']:.0f} µs | |"
    )
    drv = summary["driver_latency_us"]
    if drv["rx"] is None:
        lines.append(f"| driver latency, 100 pings/s | {drv['note']} | | | | |")
    else:
        lines.append(
            f"| driver latency, 100 pings/s (own histograms) | RX p50 {_us(drv['rx']['p50'], 0)}"
            f" µs, p99 {_us(drv['rx']['p99'], 0)} µs | TX p50 {_us(drv['tx']['p50'], 0)} µs, "
            f"p99 {_us(drv['tx']['p99'], 0)} µs | (not reported) | | |"
        )
    return "\n".join(lines)


def callgrind_table(cg: dict[str, Any]) -> str:
    lines = [
        f"| user-space instructions per frame (callgrind, {cg['frames']} frames) | ours "
        "| baseline | ours / baseline |",
        "| --- | ---: | ---: | ---: |",
    ]
    for test in TESTS:
        o, b, r = cg["ours"][test], cg["baseline"][test], cg["ratio"][test]
        lines.append(
            f"| {NAMES[test]} | {_us(o, 0)} | {_us(b, 0)} | {'n/a' if r is None else f'{r:.2f}x'} |"
        )
    return "\n".join(lines)


def soak_lines(soak: dict[str, Any]) -> list[str]:
    rss, cons = soak["rss"], soak["conservation"]
    cpu = soak["cpu"]
    pair = " ".join(
        f"{q} {cons[q]['free']}+{cons[q]['active']}+{cons[q]['vmm']}+{cons[q]['in_flight']}"
        f"/{cons[q]['total']}"
        for q in ("rx", "tx")
        if q in cons
    )
    return [
        f"soak: {soak['seconds']:g} s echo at {soak['rate']:,.0f} frames/s: sent "
        f"{soak['sent']:,}, loss RX {_loss(soak['rx_loss'])} ({_loss(soak['rx_loss_no_buffer'])}"
        f" no rx_free buffer), TX {_loss(soak['tx_loss'])}; driver CPU "
        f"{(cpu['cpu_fraction'] or 0):.1%} of a core, VMM {soak['vmm_cpu_fraction']:.1%}",
        f"  buffers (free+active+vmm+in flight/total): {pair} — "
        f"{'ok' if cons.get('ok') else 'FAILED'}",
        f"  RSS {rss['start_kib']} KiB at start, {rss['after_warmup_kib']} KiB after "
        f"{rss['warmup_s']} s warm-up, {rss['end_kib']} KiB at end (growth "
        f"{rss['growth_kib']} KiB, peak {rss['peak_kib']} KiB)",
    ]


# ---------------------------------------------------------------------- machine, build


def machine_info(tools: Tools) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    autogroup = ""
    with contextlib.suppress(OSError):
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "compiler": tools.compiler,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "autogroup": autogroup,
    }


def timed(cmd: list[str], cwd: Path) -> float:
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return round(time.monotonic() - t, 2)


def build_figures(root: Path, board: str, measure: bool, progress: Progress) -> dict[str, Any]:
    """Image/initramfs sizes and step times from the manifest; timed rebuilds if asked."""
    out: dict[str, Any] = {"measured": measure}
    file = Workspace.at(root).build_root / board / MANIFEST_NAME
    manifest = read_manifest(file, str(file), root)
    for key, name in (("kernel_image", "image_bytes"), ("initramfs", "initramfs_bytes"),
                      ("loader_img", "loader_img_bytes")):  # fmt: skip
        art = manifest.get(key)
        out[name] = art.bytes if art else None
    if manifest.step_seconds:
        out["manifest_steps_s"] = dict(manifest.step_seconds)
    if not measure:
        return out
    build = [sys.executable, "-m", "invoke", "build", "--board", board]
    progress("build figures: settling build, then no-op build")
    timed(build, root)
    out["noop_build_s"] = timed(build, root)
    probe = root / "driver" / "netvm_driver" / "_bench_probe.py"
    progress("build figures: driver-only change")
    probe.write_text('"""Temporary module written by `invoke bench --build-figures`."""\n')
    try:
        out["driver_change_build_s"] = timed(build, root)
    finally:
        probe.unlink()
        timed(build, root)  # back to the unchanged tree
    return out


# ---------------------------------------------------------------------- entry point


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
    with sigterm_as_interrupt():
        try:
            tools = build_tools(root)
            raise_priority(os.getpid())
            machine = machine_info(tools)
            started = time.time()
            with pinned(PEER_CPU):
                for r in range(opts.rounds):
                    order = DRIVERS if r % 2 == 0 else DRIVERS[::-1]
                    step(f"round {r + 1}/{opts.rounds}")
                    rounds.append(
                        {which: one_round(which, tools, opts, root, step) for which in order}
                    )
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
        "instructions_per_frame": (
            summarize_callgrind(cg_runs, opts.callgrind_frames) if cg_runs else None
        ),
        "soak": soak,
        "medians": summary["medians"],
        "targets": targets(summary, soak),
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


def report(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"netvm bench: {m['cpu']} x{m['cpus']}, kernel {m['kernel']}, Python {m['python']}, "
        f"{m['compiler']}; {doc['options']['rounds']} round(s), {doc['seconds']} s",
        "",
        doc["table"],
        "",
    ]
    if doc.get("callgrind_table"):
        lines += [doc["callgrind_table"], ""]
    if doc.get("soak"):
        lines += [*soak_lines(doc["soak"]), ""]
    lines.append("targets:")
    for t in doc["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  [{mark}] {t['target']}: {t['got']}")
    gen = doc["medians"]["baseline"]["rx_64"].get("generator_rate")
    if gen:
        lines.append(f"generator: {gen:,.0f} frames/s (median, 64 B, against the baseline)")
    b = doc["build"]
    lines.append(
        "build: image "
        + (f"{b.get('image_bytes'):,} B" if b.get("image_bytes") else "n/a")
        + ", initramfs "
        + (f"{b.get('initramfs_bytes'):,} B" if b.get("initramfs_bytes") else "n/a")
        + (
            f", no-op build {b['noop_build_s']} s, "
            f"driver-only change {b['driver_change_build_s']} s"
            if b.get("measured")
            else ""
        )
    )
    return "\n".join(lines)
