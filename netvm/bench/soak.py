"""The soak: ours at full-duplex line rate for a long time, if asked (``--soak``).

Owns: ``soak_run`` (one echo run of ``opts.soak`` seconds with the driver's RSS, its
counters and both sides' CPU sampled every second), the RSS figures (growth measured
after a warm-up, so the allocator settling early is not counted as a leak), where the
loss came from (``short_seconds`` and ``behind``: the VMM, the host or the driver;
``steady_losses``: after the warm-up) and the verdict: no loss, every buffer of both
queue pairs accounted for at the end, RSS growth within its target, a clean driver exit.
Short rounds cannot show a slow leak or a lost buffer; this can.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from netvm.bench.echo import counter_deltas, echo_counts, rx_loss_parts
from netvm.bench.measure import (
    finish_generator,
    fresh_stats,
    kill_generator,
    peer_rx_packets,
    rates,
    sample,
    sched_times,
    settle,
    settle_peer,
    start_generator,
    steal_ticks,
    thread_cpu_ns,
    wait_tx_home,
)
from netvm.bench.options import DRIVER_CPU, LINE_RATE_1514, BenchOptions
from netvm.bench.rounds import driver_ahead, driver_command, take_over
from netvm.bench.tools import Tools
from netvm.bench.vmm import BenchSimulation
from netvm.board import load_board
from netvm.core.progress import Progress
from netvm.sim import SimOptions

SOAK_SAMPLE_S = 1.0  # RSS and counters sampled this often during a soak
SOAK_WARMUP_MAX_S = 30.0  # RSS growth is measured after min(this, a quarter of the soak)
RSS_GROWTH_TARGET_KIB = 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/stat's unit, per second
SHORT_SHARE = 0.95  # a sample moving less than this share of the rate is reported


RSS_PARTS = {"RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}


def rss_kib(pid: int) -> tuple[int, dict[str, int]] | None:
    """VmRSS of a process in KiB and its parts (None once it has gone): anon (heap,
    stack), file (the interpreter, libraries, the packet rings), shmem (here the
    simulated device regions in /dev/shm; the guest's UIO maps are PFN maps, which RSS
    does not count)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE))
    if "VmRSS" not in fields:
        return None
    parts = {name: int(fields[key]) for key, name in RSS_PARTS.items() if key in fields}
    return int(fields["VmRSS"]), parts


def rss_summary(
    series: list[tuple[float, int]],
    warmup: float,
    parts: list[tuple[float, dict[str, int]]] | None = None,
) -> dict[str, Any]:
    """RSS growth after the warm-up: the last sample against the first one after it;
    with `parts`, the same for each part of it (which one grew)."""
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
    split = [p for t, p in parts or () if t >= warmup]
    out["growth_parts_kib"] = (
        {k: split[-1].get(k, 0) - split[0].get(k, 0) for k in split[0]} if len(split) >= 2 else None
    )
    out["series"] = [[round(t, 1), kib] for t, kib in series]
    return out


class Tick(NamedTuple):
    """One soak sample: the VMM's counters, both sides' CPU time, the driver's counters."""

    t: float  # seconds since the soak started
    rx_frames: int  # frames the VMM took off rx_active
    echo_no_buffer: int  # echoes skipped: every TX buffer on tx_active or with the driver
    driver_cpu_ns: int
    vmm_cpu_ns: int
    counters: dict[str, int]  # the driver's, freshly written ({} if it did not answer)
    driver_wait_ns: int = 0  # the driver runnable but not running (waiting for its CPU)
    steal_ticks: int = 0  # clock ticks the hypervisor took from the driver's CPU


# Driver counters a short second reports, under the names it reports them by.
TICK_COUNTERS = {
    "rx_dropped_no_buffer": "kernel_drops",
    "rx_dropped_buffer_wait": "drops_buffer_wait",
    "rx_buffer_waits": "rx_buffer_waits",
    "tx_send_waits": "tx_send_waits",
}


HOST_STALL_MS = 10.0  # a driver kept from its CPU this long in a second: the host's doing


def behind(drops: int, waiting: int, skipped: int, kept_ms: float = 0.0) -> str:
    """Which side lost frames in a sample: "vmm" when most kernel drops came while every
    rx_free buffer was in use; "host" when they came while the driver had buffers (or
    echoes were skipped) but the driver spent HOST_STALL_MS or more of the second
    runnable and not running, or its CPU was stolen by the hypervisor (`kept_ms`);
    "driver" for the same loss without that (the TX buffers sat on tx_active when an
    echo was skipped: the VMM takes back what is on tx_free first); "none" when nothing
    was lost (the generator sent fewer, or frames were still in flight at the sample)."""
    if drops and 2 * waiting >= drops:
        return "vmm"
    if drops or skipped:
        return "host" if kept_ms >= HOST_STALL_MS else "driver"
    return "none"


def short_seconds(ticks: list[Tick], rate: float) -> list[dict[str, Any]]:
    """The samples in which the VMM took fewer than SHORT_SHARE of the frames sent at
    `rate` off rx_active, or had no free TX buffer for an echo: when, how many frames a
    second, echoes skipped, each side's CPU share in that second, the driver's counters
    that moved (kernel drops, those while it waited for RX buffers, the waits for RX
    buffers and for the socket to take TX) and which side was behind."""
    out = []
    for a, b in itertools.pairwise(ticks):
        span = b.t - a.t
        if span <= 0:
            continue
        per_s, skipped = (b.rx_frames - a.rx_frames) / span, b.echo_no_buffer - a.echo_no_buffer
        if per_s < SHORT_SHARE * rate or skipped:
            moved = {
                name: b.counters[key] - a.counters[key]
                for key, name in TICK_COUNTERS.items()
                if key in a.counters and key in b.counters
            }
            waited = (b.driver_wait_ns - a.driver_wait_ns) / 1e6
            stolen = (b.steal_ticks - a.steal_ticks) * 1000 / CLOCK_TICKS
            out.append({
                "t": round(b.t, 1), "frames_per_s": round(per_s), "echo_no_buffer": skipped,
                "driver_cpu": round((b.driver_cpu_ns - a.driver_cpu_ns) / 1e9 / span, 3),
                "vmm_cpu": round((b.vmm_cpu_ns - a.vmm_cpu_ns) / 1e9 / span, 3),
                "driver_wait_ms": round(waited, 1), "steal_ms": round(stolen),
                **moved,
                "behind": behind(moved.get("kernel_drops", 0),
                                 moved.get("drops_buffer_wait", 0), skipped, waited + stolen),
            })  # fmt: skip
    return out


def steady_losses(ticks: list[Tick], warmup: float) -> dict[str, Any] | None:
    """What was lost after the warm-up, between the first sample past it and the last:
    the kernel's drops on the driver's socket (and those while it waited for rx_free
    buffers) and the echoes skipped. None without two samples with the driver's counters.
    Start-up loss (the first seconds at line rate) counts in the soak's loss all the
    same; this tells it from loss that keeps coming."""
    later = [t for t in ticks if t.t >= warmup and "rx_dropped_no_buffer" in t.counters]
    if len(later) < 2:
        return None
    a, b = later[0], later[-1]
    return {
        "from_s": round(a.t, 1),
        "to_s": round(b.t, 1),
        "frames": b.rx_frames - a.rx_frames,
        "kernel_drops": b.counters["rx_dropped_no_buffer"] - a.counters["rx_dropped_no_buffer"],
        "drops_buffer_wait": b.counters.get("rx_dropped_buffer_wait", 0)
        - a.counters.get("rx_dropped_buffer_wait", 0),
        "echo_no_buffer": b.echo_no_buffer - a.echo_no_buffer,
    }


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
    parts: list[tuple[float, dict[str, int]]] = []
    ticks: list[Tick] = []
    try:
        pid = driver_ahead(sim)
        bench = take_over(sim)
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

            def tick(t: float) -> Tick:
                now = sim.call(bench.snapshot)
                doc = fresh_stats(sim, timeout=0.5) or {}
                ran, waited = sched_times(pid)
                return Tick(t, now["rx_frames"], now["echo_no_buffer"], ran,
                            thread_cpu_ns(vmm_tid), doc.get("counters", {}), waited,
                            steal_ticks(DRIVER_CPU))  # fmt: skip

            ticks = [tick(0.0)]
            while (left := seconds - (time.monotonic() - t0)) > 0:
                time.sleep(min(SOAK_SAMPLE_S, left))
                got = rss_kib(pid)
                if got is not None:
                    series.append((time.monotonic() - t0, got[0]))
                    parts.append((series[-1][0], got[1]))
                    ticks.append(tick(time.monotonic() - t0))
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
        stats_after = fresh_stats(sim)
        moved = counter_deltas(stats_before, stats_after) or {}
    finally:
        result = sim.stop("bench soak")
    conservation = sim.bench_conservation or {
        "ok": False, "note": "not taken: the simulated VMM had stopped",
    }  # fmt: skip
    out: dict[str, Any] = {"seconds": seconds, "rate": LINE_RATE_1514}
    out.update(echo_counts(before, after, int(report["sent"]), peer))
    out["cpu"] = rates(first, last, "rx_frames")
    out["vmm_cpu_fraction"] = round((vmm_last - vmm_first) / 1e9 / (last.t - first.t), 4)
    out["vmm_nice"] = bench.nice
    out["driver_counters"] = moved
    out.update(rx_loss_parts(moved, int(report["sent"])))
    out["rx_buffer_waits"] = moved.get("rx_buffer_waits")
    out["tx_send_waits"] = moved.get("tx_send_waits")
    # How long each wait for an rx_free buffer lasted (the driver started with the soak).
    wait = ((stats_after or {}).get("latency") or {}).get("rx_buffer_wait_us")
    out["rx_buffer_wait_us"] = (
        {k: wait.get(k) for k in ("samples", "p50_us", "p99_us", "max_us")} if wait else None
    )
    out["rss"] = rss_summary(series, soak_warmup(seconds), parts)
    out["short_seconds"] = short_seconds(ticks, LINE_RATE_1514)
    out["steady"] = steady_losses(ticks, soak_warmup(seconds))
    out["conservation"] = conservation
    out["driver_exit"] = result.driver_exit
    out["met"] = bool(
        out["loss"] == 0 and conservation.get("ok") and out["rss"]["met"]
        and result.driver_exit == 0
    )  # fmt: skip
    return out
