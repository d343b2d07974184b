"""The real driver against the host simulation, with real namespaces, veth, ping and UDP.

Each test runs its own simulation (netvm.sim.Simulation) and ends by stopping it and
checking that the driver exited cleanly and every buffer is accounted for. What cannot
run here (the seL4 VMM and the board) is simulated at the device seam; see docs/sim.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netvm.board import Board
from netvm.sim import SimOptions, Simulation
from netvm.sim.netns import exists
from netvm.sim.runs import list_namespaces
from tests.harness import ROOT, Pings, ping_probes

pytestmark = pytest.mark.netns


def run_namespaces(pid: int) -> list[str]:
    """The namespaces of the runs of process `pid` (their names carry it)."""
    return [ns for ns in list_namespaces() if re.fullmatch(rf"netvm-.+-{pid}-\d+", ns)]


def finish(sim: Simulation) -> dict[str, Any]:
    """Stop the simulation; the driver must exit 0 and every buffer must be accounted for."""
    result = sim.stop("test end")
    assert result.driver_exit == 0, "\n".join(result.driver_log_tail)
    assert result.conservation["ok"], result.conservation
    assert result.conservation["rx"]["accounted"] == 512
    assert result.conservation["tx"]["accounted"] == 1024
    assert not exists(sim.net.driver_ns) and not exists(sim.net.peer_ns)
    assert not sim.run_dir.exists()
    return result.as_dict()


@pytest.fixture
def sim(odroidc4: Board) -> Iterator[Simulation]:
    s = Simulation(odroidc4, SimOptions(stats_interval=0.5), ROOT)
    s.start()
    yield s
    s.stop("fixture teardown")


def ping(sim: Simulation, target: str, *extra: str, count: int = 3, wait: float = 5.0) -> Pings:
    return ping_probes(sim.peer_command([]), target, count, *extra, wait=wait)


def test_ping_through_each_client(sim: Simulation) -> None:
    for client in sim.layout.clients:
        pings = ping(sim, client.ipv4)
        assert pings.received == 3, pings.output
        print(f"ping {client.ipv4}: avg rtt {sum(pings.rtts_ms) / 3:.3f} ms")
    clients = sim.sim_stats()["clients"]
    assert clients["client0"]["echoed"]["icmp"] == 3
    assert clients["client1"]["echoed"]["icmp"] == 3
    counters = sim.driver_stats()
    assert counters["rx_frames"] >= 8 and counters["tx_frames"] >= 8  # ARP + 6 echoes
    assert counters["irqs_handled"] > 0 and counters["notifications_sent"] > 0
    finish(sim)


def test_udp_echo_is_byte_exact_for_every_size(sim: Simulation) -> None:
    for client in sim.layout.clients:
        report = sim.peer_tool("udp-echo", "--target", client.ipv4, "--sizes", "1-1472")
        assert report["sent"] == 1472
        assert report["lost"] == [] and report["mismatched"] == []
        assert report["echoed"] == 1472
        print(f"udp echo {client.ipv4}: rtt µs {report['rtt_us']}")
    assert sim.sim_stats()["clients"]["client1"]["echoed"]["udp"] == 1472
    finish(sim)


def test_both_clients_at_once_under_load(sim: Simulation) -> None:
    report = sim.peer_tool(
        "udp-load", "--target", "10.0.0.2", "--target", "10.0.0.3",
        "--count", "3000", "--size", "1024", "--window", "48", "--timeout", "2",
    )  # fmt: skip
    for target in ("10.0.0.2", "10.0.0.3"):
        flow = report["flows"][target]
        assert flow == {"sent": 3000, "received": 3000, "lost": 0, "corrupt": 0}, report
    rate, mbit, rtt = report["echoes_per_s"], report["mbit_s"], report["rtt_us"]
    print(f"load: {rate} echoes/s, {mbit} Mbit/s, rtt {rtt}")
    counters = sim.driver_stats()
    assert counters["rx_frames"] >= 6000 and counters["tx_frames"] >= 6000
    assert counters["rx_bad_descriptor"] == counters["tx_bad_descriptor"] == 0
    # A torn index store on either side would show up here as an impossible index.
    assert counters["bad_queue_index"] == 0
    clients = sim.sim_stats()["clients"]
    assert clients["client0"]["echoed"]["udp"] == clients["client1"]["echoed"]["udp"] == 3000
    out = finish(sim)
    assert out["driver"]["counters"]["rx_frames"] >= 6000


def test_hostile_queue_contents_are_counted_and_good_traffic_flows(sim: Simulation) -> None:
    virt = sim.virt
    assert virt is not None
    # Bad descriptors first; the load below walks rx_free round several times.
    for kind in ("outside", "below", "misaligned"):
        sim.call(lambda k=kind: virt.inject_rx_free(k))
    for kind in ("outside", "len0", "oversize", "over_mtu"):
        sim.call(lambda k=kind: virt.inject_tx_active(k))
    load = subprocess.Popen(
        sim.peer_command(
            [sys.executable, "-m", "netvm.sim.peer", "udp-load", "--target", "10.0.0.2",
             "--target", "10.0.0.3", "--seconds", "3", "--size", "256", "--window", "16",
             "--timeout", "5"]
        ),
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        # Jump the indices while the load is flowing, not before it started.
        assert wait_until(lambda: sim.driver_stats()["rx_frames"] > 0)
        for ring in ("tx_active", "rx_free"):
            seen = sim.driver_stats()["bad_queue_index"]
            sim.call(lambda r=ring: virt.jump_index(r))
            # Restore only once the driver has seen it, however loaded the machine is.
            assert wait_until(lambda n=seen: sim.driver_stats()["bad_queue_index"] > n)
            sim.call(lambda r=ring: virt.restore_index(r))
        out, _ = load.communicate(timeout=60)
    finally:
        load.kill()
    report = json.loads(out)
    for flow in report["flows"].values():
        assert flow["sent"] > 500 and flow["received"] == flow["sent"], report
        assert flow["lost"] == flow["corrupt"] == 0, report
    assert sim.driver_running()
    counters = sim.driver_stats()
    assert counters["rx_bad_descriptor"] == 3  # outside, below, misaligned
    assert counters["tx_bad_descriptor"] == 3  # outside, len 0, len 4000
    assert counters["tx_dropped"] == 1  # len 1600: its buffer, not the link's MTU
    assert counters["bad_queue_index"] >= 2  # each jump seen at least once
    # And afterwards the path is still whole.
    after = sim.peer_tool("udp-echo", "--target", "10.0.0.2", "--sizes", "1-64,1400-1472")
    assert after["echoed"] == after["sent"]
    result = finish(sim)
    assert result["conservation"]["violations"] == []


def test_jumbo_frame_from_the_peer_is_dropped_and_counted(odroidc4: Board) -> None:
    sim = Simulation(odroidc4, SimOptions(mtu=9000, stats_interval=0.5), ROOT)
    sim.start()
    try:
        big = ping(sim, "10.0.0.2", "-s", "8972", "-M", "do", count=2, wait=2)
        assert big.received == 0, big.output
        counters = sim.driver_stats()
        assert counters["rx_dropped_oversize"] == 2
        assert sim.sim_stats()["counters"]["rx_bytes"] < 2048 * counters["rx_frames"]
        small = ping(sim, "10.0.0.2", "-s", "1400", count=2)
        assert small.received == 2, small.output
    finally:
        finish(sim)


def test_link_down_and_up_mid_stream_recovers(sim: Simulation) -> None:
    load = subprocess.Popen(
        sim.peer_command(
            [sys.executable, "-m", "netvm.sim.peer", "udp-load", "--target", "10.0.0.2",
             "--seconds", "3", "--size", "512", "--window", "8", "--timeout", "0.5"]
        ),
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    link = ["ip", "-n", sim.net.driver_ns, "link", "set", sim.net.driver_if]
    try:
        assert wait_until(lambda: sim.driver_stats()["rx_frames"] > 0)  # mid-stream
        subprocess.run([*link, "down"], check=True)
        time.sleep(0.7)  # how long the link stays down: a duration, not a wait
        subprocess.run([*link, "up"], check=True)
        out, _ = load.communicate(timeout=30)
    finally:
        load.kill()
    report = json.loads(out)["flows"]["10.0.0.2"]
    assert report["received"] > 0 and report["corrupt"] == 0
    assert sim.driver_running()
    after = sim.peer_tool("udp-echo", "--target", "10.0.0.2", "--sizes", "1-200")
    assert after["echoed"] == 200, after
    finish(sim)


def test_another_driver_command_runs_against_the_same_simulation(
    odroidc4: Board, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    wrapper = tmp_path / "driver.sh"
    wrapper.write_text(
        f'#!/bin/sh\necho "$@" > {marker}\nexec {sys.executable} -m netvm_driver --batch 4 "$@"\n'
    )
    wrapper.chmod(0o755)
    sim = Simulation(odroidc4, SimOptions(driver_cmd=str(wrapper)), ROOT)
    sim.start()
    try:
        assert ping(sim, "10.0.0.3").received == 3
        assert "--sim-devices" in marker.read_text()
    finally:
        finish(sim)


def sim_process(stats: Path, driver_cmd: str | None = None) -> subprocess.Popen[str]:
    extra = ["--driver-cmd", driver_cmd] if driver_cmd else []
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "sim", "--duration", "120",
         "--stats-json", str(stats), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def slow_starting_driver(tmp_path: Path) -> str:
    """A driver command that stays in start-up (it sleeps before it becomes the driver),
    so a test can act during that phase however fast or loaded the machine is."""
    script = tmp_path / "slow-driver.sh"
    script.write_text(f'#!/bin/sh\nsleep 100\nexec {sys.executable} -m netvm_driver "$@"\n')
    script.chmod(0o755)
    return str(script)


def run_dirs(sim_pid: int) -> list[Path]:
    """The run directories of the simulations of process `sim_pid` (netvm-sim-<pid>-<n>)."""
    return sorted(Path("/dev/shm").glob(f"netvm-sim-{sim_pid}-*"))


def wait_phase(sim_pid: int, phase: str, timeout: float = 60.0) -> int:
    """Wait until the run of `sim_pid` is in `phase` (its state file); the driver's pid."""
    state: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal state
        try:
            state = json.loads((run_dirs(sim_pid)[0] / "state.json").read_text())
        except (OSError, ValueError, IndexError):
            return False
        return state.get("phase") == phase

    assert wait_until(reached, timeout), f"the run never reached {phase}: {state}"
    pid: int = state["driver_pid"]
    return pid


def driver_pids(sim_pid: int) -> list[int]:
    """Processes started as the driver of the simulation `sim_pid` (a wrapper included),
    found by its run directory in their arguments."""
    tag = f"netvm-sim-{sim_pid}-".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != sim_pid:
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if tag in cmd:
                pids.append(int(proc.name))
    return pids


def wait_until(cond: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def nothing_left(pid: int) -> bool:
    return not run_namespaces(pid) and not driver_pids(pid) and not run_dirs(pid)


@pytest.mark.parametrize("phase", ["start-up", "running"])
def test_sigterm_is_an_interrupt_and_leaves_nothing(tmp_path: Path, phase: str) -> None:
    stats = tmp_path / "stats.json"
    proc = sim_process(stats, slow_starting_driver(tmp_path) if phase == "start-up" else None)
    try:
        wait_phase(proc.pid, phase)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    said = "interrupt during start-up" if phase == "start-up" else "interrupt while running"
    assert f"stopped by {said}," in out, out
    assert "buffer conservation: ok" in out
    assert proc.returncode == 0, out  # the user's stop of a clean run
    assert nothing_left(proc.pid)
    doc = json.loads(stats.read_text())
    assert doc["ok"] and doc["stopped_by"] == said and doc["conservation"]["ok"]
    if phase == "running":
        assert doc["driver_exit"] == 0  # it had its handler: a clean exit


@pytest.mark.parametrize("phase", ["start-up", "running"])
def test_driver_death_ends_the_run_and_cleans_up(tmp_path: Path, phase: str) -> None:
    proc = sim_process(
        tmp_path / "stats.json", slow_starting_driver(tmp_path) if phase == "start-up" else None
    )
    try:
        driver = wait_phase(proc.pid, phase)
        os.kill(driver, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    said = "during start-up" if phase == "start-up" else "while running"
    assert f"stopped by driver exited {said}, driver exit -9" in out, out
    assert "driver log:" in out  # its last lines, whatever they were
    assert proc.returncode == 1  # not a clean run
    assert nothing_left(proc.pid)
