"""The full-duplex echo run: every frame the driver receives goes back out through it.

Owns: ``echo_run`` (1514-byte frames from the generator at a fixed rate, the VMM copying
each into a TX buffer) and the figures of such a run: the loss each way from the VMM's and
the peer's counters, how far the driver's own counters moved, and the share of the RX
loss the driver dropped for want of an rx_free buffer (the harness's loss, not the
driver's). The soak (netvm/bench/soak.py) is a long echo run and reads the same figures.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from netvm.bench.measure import (
    finish_generator,
    fresh_stats,
    kill_generator,
    peer_rx_packets,
    rates,
    sample,
    settle,
    settle_peer,
    start_generator,
    thread_cpu_ns,
    wait_tx_home,
)
from netvm.bench.tools import Tools
from netvm.bench.vmm import BenchSimulation, BenchVmm


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
        vmm_nice=bench.nice,
        driver_counters=moved,
    )
    result.update(rx_loss_parts(moved, int(report["sent"])))
    return result


def rx_loss_parts(moved: dict[str, int], sent: int) -> dict[str, Any]:
    """The kernel's drops on the driver's socket, as the driver counted them, and two
    shares of `sent`: `rx_loss_no_buffer`, dropped while every rx_free buffer was in use
    (the VMM had not given buffers back in time: the harness's part), and
    `rx_loss_driver_behind`, dropped while the driver had buffers but did not read fast
    enough. None where the driver does not count them (the baseline)."""
    dropped, waiting = moved.get("rx_dropped_no_buffer"), moved.get("rx_dropped_buffer_wait")
    out: dict[str, Any] = {
        "driver_rx_dropped_no_buffer": dropped,
        "driver_rx_dropped_buffer_wait": waiting,
        "rx_loss_no_buffer": None,
        "rx_loss_driver_behind": None,
    }
    if dropped is not None and waiting is not None and sent > 0:
        out["rx_loss_no_buffer"] = round(waiting / sent, 6)
        out["rx_loss_driver_behind"] = round((dropped - waiting) / sent, 6)
    return out
