"""The measurements of one driver in a running bench simulation.

Owns: reading the driver's CPU time (``/proc/PID/schedstat``, split into user and kernel
by /proc/PID/stat's ticks) and the VMM's counters into a ``Sample``; the rates between two
samples; starting, reading and stopping the C traffic generator in the peer namespace;
the RX-only run (the generator floods or paces frames at the driver), the TX-only run
(the VMM keeps tx_active full) and the latency run (pings through the driver against
pings of the driver-side veth itself); and the waits that let rings and counters settle
before a figure is read. Each run samples around a fixed window after a warm-up, so
start-up and draining are not in the figure (docs/bench.md).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from typing import Any

from netvm.bench.options import PEER_CPU, Sample
from netvm.bench.tools import Tools
from netvm.bench.vmm import BenchSimulation, BenchVmm

GEN_SRC_MAC = "02:00:00:00:00:ab"
DIRECT_ADDRESS = "10.0.0.250/24"
PING_TIME = re.compile(r"time=([\d.]+) ms")


def _schedstat(path: str) -> tuple[int, int]:
    """(ns run on a CPU, ns runnable but waiting for one) from a schedstat file."""
    with open(path) as f:
        run_ns, wait_ns = f.read().split()[:2]
    return int(run_ns), int(wait_ns)


def sched_times(pid: int) -> tuple[int, int]:
    """How long `pid` has run and how long it has been runnable but waiting for a CPU,
    in ns (/proc/PID/schedstat)."""
    return _schedstat(f"/proc/{pid}/schedstat")


def cpu_of(pid: int) -> tuple[int, int, int]:
    """(run time in ns from /proc/PID/schedstat, utime and stime in clock ticks)."""
    run_ns = sched_times(pid)[0]
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


def steal_ticks(cpu: int) -> int:
    """Clock ticks the hypervisor has taken from `cpu` for other guests (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8])
    return 0


def thread_cpu_ns(tid: int) -> int:
    """Run time of one thread of this process (the simulated VMM's) in ns."""
    return _schedstat(f"/proc/self/task/{tid}/schedstat")[0]
