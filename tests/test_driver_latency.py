"""The driver's own latency histograms, from real frames through the host simulation.

Pings and UDP echoes go from the peer namespace through the veth, the driver (real
packet sockets, default modes and the ring modes) and the simulated VMM's echo clients
and back. The stats file must then hold both histograms in the documented shape
(docs/driver.md, "Counters"), one sample per frame, with percentiles that are bucket
bounds and a maximum that is sane. No assert on how fast: the numbers are printed for
the record, the bench reports them.
"""

from __future__ import annotations

from typing import Any

import pytest
from netvm_driver.stats import LATENCY_BOUNDS_US

from netvm.board import Board
from netvm.sim import SimOptions, Simulation
from tests.harness import ROOT, ping_probes

pytestmark = pytest.mark.netns

KEYS = {"bounds_us", "counts", "samples", "p50_us", "p99_us", "max_us"}


def check_histogram(h: dict[str, Any], frames: int) -> None:
    assert set(h) == KEYS
    assert h["bounds_us"] == list(LATENCY_BOUNDS_US)
    assert len(h["counts"]) == len(h["bounds_us"]) + 1 and min(h["counts"]) >= 0
    assert sum(h["counts"]) == h["samples"] == frames  # every frame counted exactly once
    for key in ("p50_us", "p99_us"):
        assert h[key] in h["bounds_us"] or h[key] == h["max_us"]
    assert h["p50_us"] <= h["p99_us"]
    # The largest sample lies in the highest non-empty bucket, and under a few seconds
    # (a clock mix-up, e.g. monotonic against real time, would give decades).
    top = max(i for i, c in enumerate(h["counts"]) if c)
    low = h["bounds_us"][top - 1] if top else 0
    high = h["bounds_us"][top] if top < len(h["bounds_us"]) else 5_000_000
    assert low < h["max_us"] <= high, h


@pytest.mark.parametrize(
    "modes", [(), ("--rx-mode", "ring", "--tx-mode", "ring")], ids=["default", "ring"]
)
def test_histograms_count_every_frame_of_real_traffic(
    odroidc4: Board, modes: tuple[str, ...]
) -> None:
    sim = Simulation(odroidc4, SimOptions(driver_args=modes, stats_interval=0.5), ROOT)
    sim.start()
    try:
        for client in sim.layout.clients:
            pings = ping_probes(sim.peer_command([]), client.ipv4, 20, wait=10.0)
            assert pings.received == 20, pings.output
            report = sim.peer_tool("udp-echo", "--target", client.ipv4, "--sizes", "1-40")
            assert report["echoed"] == 40, report
    finally:
        result = sim.stop("test end")
    assert result.driver_exit == 0, "\n".join(result.driver_log_tail)
    final = result.driver_stats  # the stats file the driver wrote at exit
    assert final is not None and final["reason"] == "exit"
    counters, latency = final["counters"], final["latency"]
    assert counters["rx_frames"] >= 2 * (20 + 40) and counters["tx_frames"] >= 2 * (20 + 40)
    rx, tx = latency["rx_kernel_to_publish_us"], latency["tx_doorbell_to_send_us"]
    own = latency["rx_wake_to_publish_us"]
    check_histogram(rx, counters["rx_frames"])
    check_histogram(own, counters["rx_frames"])
    check_histogram(tx, counters["tx_frames"])
    print(
        f"{' '.join(modes) or 'default modes'}: RX p50 {rx['p50_us']} p99 {rx['p99_us']} "
        f"max {rx['max_us']} µs; TX p50 {tx['p50_us']} p99 {tx['p99_us']} max {tx['max_us']} µs"
    )
