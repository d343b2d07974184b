"""Runs on a shared host (netvm.sim.runs): every run's namespaces and run directory carry
its own tag, so simulations and boots run side by side with no lock and no shared name,
and a dead run's leftovers are removed by the next run while a live run's are kept.

The parallel simulations run the real driver with real ping and UDP traffic (marker
netns, root). The whole-system boots run QEMU on a stand-in for loader.img (marker qemu):
a few instructions that print a line on the serial port and then echo what they receive
there, a control character C as "^C". That is enough for the namespace, tap and DHCP
server of each run, and for `invoke run --sel4`'s console on a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netvm.board import Board
from netvm.core.workspace import Workspace
from netvm.sim import SimOptions, Simulation
from netvm.sim import netns as netns_lib
from netvm.sim.netns import exists, ns_pids
from netvm.sim.runs import RunTag, list_namespaces, new_tag, owner_pid, remove_stale
from netvm.target.sel4_run import RUN_PREFIX as SEL4_RUN_PREFIX
from netvm.target.sel4_run import TAP, Sel4Options, Sel4Paths, Sel4Run
from tests.harness import HAVE_QEMU, INVOKE, ROOT, PtyTerminal, needs_root, ping_probes

HINT = re.compile(r"try: ip netns exec (\S+) ping (\S+)")


def test_tags_are_the_pid_and_a_counter_of_their_own() -> None:
    tags = [new_tag() for _ in range(3)]
    assert len({str(t) for t in tags}) == 3
    assert all(t.pid == os.getpid() for t in tags)
    tag = RunTag(4242, 7)
    assert tag.name("netvm-peer") == "netvm-peer-4242-7"
    assert owner_pid("netvm-peer-4242-7") == 4242
    assert owner_pid("netvm-sel4-peer-4242-7") == 4242
    assert owner_pid("netvm-sim-4242") == 4242  # a run directory of an earlier version
    assert owner_pid("netvm-peer") is None  # untagged: never anyone's leftover
    assert owner_pid("netvm-offloads-test") is None


def wait_until(cond: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.netns
@needs_root
def test_dead_runs_leftovers_go_and_live_runs_stay(tmp_path: Path) -> None:
    dead = dead_pid()
    sleeper = subprocess.Popen(["sleep", "300"])  # a live process that is not us
    stale_ns, live_ns, own_ns = (
        f"netvm-peer-{dead}-1",
        f"netvm-peer-{sleeper.pid}-1",
        f"netvm-drv-{os.getpid()}-999999",
    )
    untagged = f"netvm-runs-test-{os.getpid()}"
    orphan = None
    try:
        for ns in (stale_ns, live_ns, own_ns, untagged):
            netns_lib.run(["ip", "netns", "add", ns])
        # What a SIGKILLed run leaves running in its namespace (an orphaned QEMU, say).
        orphan = subprocess.Popen(netns_lib.in_ns(stale_ns, ["sleep", "300"]))
        assert wait_until(lambda: ns_pids(stale_ns))
        dirs = {
            name: tmp_path / name
            for name in (f"netvm-sim-{dead}-3", f"netvm-qemu-{dead}", f"netvm-sim-{sleeper.pid}-1")
        }
        for path in dirs.values():
            path.mkdir()
        removed = remove_stale(tmp_path)
        assert not exists(stale_ns)
        assert orphan.wait(timeout=10) != 0  # killed with its namespace
        assert exists(live_ns) and exists(own_ns) and exists(untagged)
        assert not dirs[f"netvm-sim-{dead}-3"].exists()
        assert not dirs[f"netvm-qemu-{dead}"].exists()
        assert dirs[f"netvm-sim-{sleeper.pid}-1"].exists()
        assert stale_ns in removed and live_ns not in removed
    finally:
        if orphan is not None:
            orphan.kill()
        sleeper.kill()
        sleeper.wait()
        for ns in (stale_ns, live_ns, own_ns, untagged):
            netns_lib.remove(ns)


# --- simulations side by side ----------------------------------------------------------


@pytest.mark.netns
@needs_root
def test_two_simulations_in_parallel_threads_both_carry_traffic(odroidc4: Board) -> None:
    """Two simulations in one process, started at the same time, with traffic while both
    run: their own names, their own clients' echoes, both clean."""
    sims = [Simulation(odroidc4, SimOptions(stats_interval=0.5), ROOT) for _ in range(2)]
    both_running = threading.Barrier(2, timeout=120)
    both_done = threading.Barrier(2, timeout=300)
    seen: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        # The whole run on this thread: the driver dies with the thread that started it
        # (PR_SET_PDEATHSIG), as it dies with `invoke sim`.
        sim = sims[i]
        try:
            sim.start()
            both_running.wait()
            names = set(list_namespaces())
            seen[i] = {"both_namespaces": {sim.net.driver_ns, sim.net.peer_ns} <= names}
            for client in sim.layout.clients:
                pings = ping_probes(sim.peer_command([]), client.ipv4, 3)
                assert pings.received == 3, pings.output
                echo = sim.peer_tool("udp-echo", "--target", client.ipv4, "--sizes", "1-300")
                assert echo["echoed"] == 300 and not echo["mismatched"], echo
            seen[i]["clients"] = sim.sim_stats()["clients"]
            both_done.wait()
        except BaseException as exc:
            errors.append(exc)
            both_running.abort()
            both_done.abort()
        finally:
            seen.setdefault(i, {})["result"] = sim.stop("test end")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    a, b = sims
    assert {a.net.driver_ns, a.net.peer_ns}.isdisjoint({b.net.driver_ns, b.net.peer_ns})
    assert a.run_dir != b.run_dir
    for i, sim in enumerate(sims):
        result = seen[i]["result"]
        assert result.ok, result.summary()
        assert seen[i]["both_namespaces"]
        for name, client in seen[i]["clients"].items():
            # Exactly this run's pings: none reached the other run's clients.
            assert client["echoed"]["icmp"] == 3, (name, client)
            assert client["echoed"]["udp"] == 300, (name, client)
        assert not exists(sim.net.driver_ns) and not exists(sim.net.peer_ns)
        assert not sim.run_dir.exists()


def sim_process(stats: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "sim", "--duration", "600", "--stats-json", str(stats)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_hint(proc: subprocess.Popen[str]) -> tuple[str, str, list[str]]:
    """The namespace and address of the run's "try:" line, and the lines so far."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = HINT.search(line)
        if m:
            return m[1], m[2], lines
    raise AssertionError("no hint line:\n" + "".join(lines))


@pytest.mark.netns
@needs_root
def test_two_invoke_sims_side_by_side_print_and_use_their_own_names(tmp_path: Path) -> None:
    procs = [sim_process(tmp_path / f"stats{i}.json") for i in range(2)]
    try:
        hints = [read_hint(p) for p in procs]
        for proc, (ns, target, lines) in zip(procs, hints, strict=True):
            assert ns == f"netvm-peer-{proc.pid}-1", lines
            assert f"peer peer0 10.0.0.1/24 in netns {ns};" in "".join(lines)
            assert "waiting" not in "".join(lines)  # nobody waits for anybody
            # The user's ping, from the namespace the hint names, reaches this run only.
            pings = ping_probes(["ip", "netns", "exec", ns], target, 2)
            assert pings.received == 2, pings.output
        outs = []
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            outs.append(out)
    finally:
        for proc in procs:
            proc.kill()
    for i, (proc, out) in enumerate(zip(procs, outs, strict=True)):
        assert proc.returncode == 0, out
        assert "stopped by interrupt while running" in out and "conservation: ok" in out
        doc = json.loads((tmp_path / f"stats{i}.json").read_text())
        assert doc["sim"]["clients"]["client0"]["echoed"]["icmp"] == 2  # its own pings only
        left = [ns for ns in list_namespaces() if f"-{proc.pid}-" in ns]
        assert left == [] and not list(Path("/dev/shm").glob(f"netvm-sim-{proc.pid}-*"))


# --- whole-system boots side by side ---------------------------------------------------

# The stand-in for loader.img, loaded at the loader's address and run from there by
# QEMU: print STANDIN_READY on the PL011 at 0x09000000, then echo every byte received
# there, a control character C as "^" + (C + 0x40).
#   movz x1, #0x0900, lsl #16; adr x4, banner
#   print: ldrb w3, [x4], #1; cbz w3, poll; str w3, [x1]; b print
#   poll:  ldr w2, [x1, #0x18]; tbnz w2, #4, poll      // UARTFR.RXFE
#          ldr w3, [x1]; and w3, w3, #0xff; cmp w3, #0x20; b.hs plain
#          mov w5, #'^'; str w5, [x1]; add w3, w3, #0x40
#   plain: str w3, [x1]; b poll
#   banner: .asciz "standin-guest ready\r\n"
STANDIN_LOADER = (
    bytes.fromhex(
        "0120a1d2040200108314403863000034230000b9fdffff17221840b9e2ff2737230040b9631c0012"
        "7f80007182000054c50b8052250000b963000111230000b9f6ffff17"
    )
    + b"standin-guest ready\r\n\0"
)
STANDIN_READY = "standin-guest ready"
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-system-aarch64 not installed")


@pytest.mark.qemu
@pytest.mark.netns
@needs_root
@needs_qemu
def test_two_sel4_boots_have_their_own_namespace_tap_and_dhcp_server(
    qemu_board: Board, tmp_path: Path
) -> None:
    """The network of `invoke run --sel4`, twice at once, with QEMU on the stand-in
    loader: each run its own namespace holding a tap and dnsmasq, its own console socket
    and leases, and nothing left after either."""
    variant = qemu_board.sel4
    assert variant is not None
    loader = tmp_path / "standin-loader.img"
    loader.write_bytes(STANDIN_LOADER)
    boots = []
    for i in range(2):
        tag = new_tag()
        paths = Sel4Paths(Path("/dev/shm") / f"{SEL4_RUN_PREFIX}{tag}", tmp_path / f"build{i}")
        # Interactive: QEMU waits for the console (without a terminal attached here), so
        # the stand-in's first line is not lost before netvm connects.
        boots.append(Sel4Run(variant, loader, paths, Sel4Options(), tag=tag, interactive=True))
    try:
        for boot in boots:
            boot.start()
        a, b = boots
        assert a.namespace != b.namespace and a.paths.dir != b.paths.dir
        for boot in boots:
            assert boot.namespace == f"netvm-sel4-peer-{boot.tag}"
            addr = subprocess.run(
                ["ip", "-n", boot.namespace, "-j", "addr", "show", TAP],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            (link,) = json.loads(addr.stdout)
            assert [f"{x['local']}/{x['prefixlen']}" for x in link["addr_info"]] == [
                variant.sim.peer_address
            ]
            comms = {Path(f"/proc/{p}/comm").read_text().strip() for p in ns_pids(boot.namespace)}
            assert {"dnsmasq", "qemu-system-aar"} <= comms, comms
            assert boot.paths.console.is_socket() and boot.console is not None
            boot.console.wait_for(STANDIN_READY, 30)  # each console is its own QEMU's
            assert boot.proc is not None and boot.proc.poll() is None
    finally:
        for boot in boots:
            boot.stop()
    for boot in boots:
        assert not exists(boot.namespace) and not boot.paths.dir.exists()


@pytest.mark.qemu
@pytest.mark.netns
@needs_root
@needs_qemu
def test_interactive_sel4_run_has_the_same_console_keys(qemu_board: Board, tmp_path: Path) -> None:
    """`invoke run --sel4` as a user starts it, in a pseudo-terminal, on the stand-in
    loader: its own namespace in the hint, Ctrl-C and Ctrl-A Ctrl-A arrive at the guest
    (which shows them as ^C and ^A), Ctrl-A X quits with status 0, the terminal's
    settings as before and nothing left."""
    variant = qemu_board.sel4
    assert variant is not None
    build_root = tmp_path / "build"
    loader = Workspace.at(ROOT, build_root).build_dir(variant) / "microkit/build/loader.img"
    loader.parent.mkdir(parents=True)
    loader.write_bytes(STANDIN_LOADER)
    env = {**os.environ, "NETVM_BUILD_DIR": str(build_root)}
    child, fd = pty.fork()
    if child == 0:
        try:
            os.chdir(ROOT)
            os.execve(INVOKE, [INVOKE, "run", "--board", qemu_board.name, "--sel4"], env)
        finally:
            os._exit(127)
    cooked = termios.tcgetattr(fd)
    term = PtyTerminal(fd)
    status = None
    try:
        hint = term.expect(r"try: ip netns exec (\S+) ping (\S+)\r?\n", 120)
        namespace = hint[1]
        assert re.fullmatch(rf"netvm-sel4-peer-{child}-\d+", namespace), namespace
        assert hint[2] == variant.net.clients[0].ipv4
        term.expect(STANDIN_READY, 60)  # QEMU waited for the console: the first line shows
        assert "Ctrl-A X quits" in term.text
        comms = {Path(f"/proc/{p}/comm").read_text().strip() for p in ns_pids(namespace)}
        assert "dnsmasq" in comms, comms
        term.type(b"zq\x03")
        term.expect(r"zq\^C", 30)  # Ctrl-C reached the guest as 0x03
        status = term.wait_exit(child, 0)
        assert status is None, term.text[-2000:]  # and the run goes on
        term.type(b"\x01\x01")
        term.expect(r"\^A", 30)  # Ctrl-A Ctrl-A: one Ctrl-A
        term.type(b"\x01h")
        term.expect(r"Ctrl-A X", 10)
        term.type(b"\x01x")
        status = term.wait_exit(child, 60)
        assert status == 0, f"exit status {status}:\n{term.text[-2000:]}"
        assert termios.tcgetattr(fd) == cooked
    finally:
        if status is None:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        os.close(fd)
    assert not exists(namespace)
    assert not list(Path("/dev/shm").glob(f"{SEL4_RUN_PREFIX}{child}-*"))
    log = Workspace.at(ROOT, build_root).build_dir(variant) / "run" / "console.log"
    assert "standin-guest ready" in log.read_text()
