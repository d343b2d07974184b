"""The host's wake-up floor: from the kernel's receive timestamp to a sleeping reader running.

Owns: one measurement per bench run, in namespaces of its own while no driver runs: a
veth pair, the C probe (wake.c) blocked in ``recvmsg()`` on one end, pinned to the
driver's CPU, and pings at the latency run's rate from the other end, pinned to the
peer's CPU, as the simulation places them (docs/bench.md, "What runs where").

Why: the driver's RX latency histogram counts from the kernel's timestamp to the
rx_active publish, and no driver that sleeps until a frame comes can publish before the
scheduler has run it at all. This figure is that floor on the host the bench ran on, so
the driver's own figures can be read against it (on a VM the wake-up of an idle vCPU
alone is tens of µs).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from netvm.bench.options import DRIVER_CPU, PEER_CPU, BenchOptions
from netvm.bench.tools import Tools
from netvm.sim import netns

PROBE_ADDRESS = "10.250.0.1/24"  # on the probe's end; the pings' target
PEER_ADDRESS = "10.250.0.2/24"
PROBE_IDLE_S = 5  # the probe gives up after this long without a frame


def wake_floor(tools: Tools, opts: BenchOptions) -> dict[str, Any]:
    """{"count", "p50_us", "p99_us", "min_us", "max_us"} of the probe at opts' ping rate."""
    tag = os.getpid()
    cfg = netns.NetnsConfig(
        driver_ns=f"netvm-wake-{tag}", peer_ns=f"netvm-wake-peer-{tag}",
        driver_if="wake0", peer_if="wake1", peer_address=PEER_ADDRESS,
    )  # fmt: skip
    netns.create(cfg)
    try:
        netns.run(netns.in_ns(cfg.driver_ns, ["ip", "addr", "add", PROBE_ADDRESS, "dev", "wake0"]))
        # ARP and the probe's socket settle before the counted pings start.
        ping = ["taskset", "-c", str(PEER_CPU), "ping", "-n", "-q", "-W", "1"]
        target = PROBE_ADDRESS.split("/")[0]
        netns.run(netns.in_ns(cfg.peer_ns, [*ping, "-c", "2", "-i", "0.05", target]))
        probe = subprocess.Popen(
            netns.in_ns(cfg.driver_ns, ["taskset", "-c", str(DRIVER_CPU), str(tools.wake),
                                        cfg.driver_if, str(opts.ping_count), str(PROBE_IDLE_S)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            subprocess.run(
                netns.in_ns(cfg.peer_ns, [*ping, "-c", str(opts.ping_count + 5), "-i",
                                          str(opts.ping_interval), target]),
                capture_output=True, text=True, check=False,
                timeout=opts.ping_count * opts.ping_interval + 30,
            )  # fmt: skip
            out, err = probe.communicate(timeout=PROBE_IDLE_S + 10)
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
        if probe.returncode:
            raise RuntimeError(f"{tools.wake.name} failed: {err.strip()[-300:]}")
        result: dict[str, Any] = json.loads(out)
        return result
    finally:
        netns.teardown(cfg)
