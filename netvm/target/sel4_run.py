"""`invoke run --sel4`: the whole seL4 system of a QEMU board booted under QEMU (TCG).

Owns the machine of that boot (the Microkit loader image at its load address, the NIC a
virtio-net device that the VMM passes through to the Linux driver VM), the network it
talks to (a tap in a peer namespace holding the host's address and a DHCP server that
gives the sDDF echo clients the board's addresses), and the end-to-end check: leases,
ping, byte-exact UDP and TCP echo through both clients, then the driver stopped from the
guest's shell, reporting its counters and where every buffer is.

Nothing here simulates seL4: the VMM, the virtualisers, the copiers and the lwIP echo
clients are the real ones in loader.img (built by `invoke build` with the Microkit
inputs, netvm.microkit.system). The netvm-sim boot (`invoke run` without --sel4) is
netvm.target.qemu; the interactive console is its `attach_terminal` (Ctrl-A X quits).

The namespace and the run directory (the console socket, the DHCP leases) carry the
run's tag (netvm.sim.runs), so whole-system boots on one host do not meet; the tap and
dnsmasq live inside the run's namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netvm.board import Board
from netvm.core.errors import Finding, Interrupted, UserError
from netvm.core.progress import Progress, silent
from netvm.core.workspace import Workspace
from netvm.guest.qemu_machine import VIRTIO_NIC, qemu_binary
from netvm.sim import driverlog, netns, runs
from netvm.sim.runner import sigterm_as_interrupt
from netvm.target.qemu import (
    CONSOLE_BANNER,
    ConsolePaths,
    GuestConsole,
    attach_terminal,
    connect_unix,
    create_peer_namespace,
)
from netvm.target.qemu import remove_peer_namespace as remove_namespace

# The Microkit SDK's qemu_virt_aarch64 platform: 2 GiB of RAM, and the loader linked to
# run at 0x70000000 (QEMU jumps there: -device loader with cpu-num).
SYSTEM_MEMORY = "2G"
LOADER_ADDRESS = 0x70000000
NIC_MAC = "52:54:00:12:34:56"  # the wire MAC of the passed-through NIC (promiscuous)
# Frames reach the guest as they were on the wire, as from the C4's MAC: without these,
# QEMU hands the guest the host's coalesced TCP segments (up to 64 KiB), which no
# 2048-byte sDDF buffer holds.
NIC_OPTIONS = "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"
NAMESPACE = "netvm-sel4-peer"  # tagged with the run: netvm-sel4-peer-<pid>-<n>
RUN_PREFIX = "netvm-sel4-"  # the run directory in /dev/shm: netvm-sel4-<pid>-<n>
TAP = "tap0"  # inside the run's namespace
TCP_ECHO_PORT = 1237  # sDDF's echo server: TCP echo
LEASE_LINE = re.compile(r"IP address for netif (\S+) is: (\d+\.\d+\.\d+\.\d+)")
STOP_DRIVER = "kill $(pidof netvm-driver)"  # SIGTERM: the driver finishes its batch, reports


@dataclass(frozen=True)
class Sel4Options:
    boot_timeout: float = 240.0  # QEMU start -> the driver's event loop, and -> the leases
    ping_count: int = 20
    udp_sizes: str = "1-1472:29"  # start-stop:step, see _sizes
    tcp_bytes: int = 100 * 1024
    command_timeout: float = 30.0
    run_root: Path = Path("/dev/shm")  # the run directory (console socket, leases) goes here


@dataclass(frozen=True)
class Sel4Paths(ConsolePaths):
    """The whole-system boot: dir is /dev/shm/netvm-sel4-<tag>, log_dir build/<board>/sel4/run."""

    @property
    def leases(self) -> Path:
        return self.dir / "dnsmasq.leases"

    @property
    def dnsmasq_log(self) -> Path:
        return self.log_dir / "dnsmasq.log"


def sel4_board(board: Board, ws: Workspace) -> Board:
    """The board's whole-system variant; a user error for a board without one."""
    if board.sel4 is None or board.sel4.microkit is None or board.sel4.microkit.system is None:
        raise UserError(
            [
                Finding(
                    ws.display(board.file),
                    "sel4",
                    f"{board.name} has no whole seL4 system to boot under QEMU",
                    "--sel4 is for QEMU boards with a sel4 section (qemu_virt_aarch64); a "
                    "physical board's loader.img is flashed (invoke flash)",
                )
            ]
        )
    return board.sel4


def loader_image(board: Board, ws: Workspace) -> Path:
    """The loader.img `invoke build` made for the board's seL4 system."""
    image = ws.build_dir(sel4_board(board, ws)) / "microkit" / "build" / "loader.img"
    if not image.is_file():
        raise UserError(
            [
                Finding(
                    ws.display(image),
                    "",
                    "no loader.img to boot",
                    f"invoke build --board {board.name} --microkit-sdk DIR --libvmm DIR "
                    "--sddf DIR (docs/sel4-qemu.md)",
                )
            ]
        )
    return image


def qemu_command(variant: Board, loader: Path, paths: Sel4Paths, *, interactive: bool) -> list[str]:
    """QEMU for the whole system: the machine the SDK is built for, the loader, one NIC.

    The NIC is the only virtio device, so it takes the highest virtio-mmio transport,
    the one the system passes through (microkit.system.ethernet).
    """
    base = variant.devicetree.base_qemu
    assert base is not None
    # The console is a socket netvm connects to, interactive or not (a user's terminal
    # is put on it by netvm.target.qemu.attach_terminal); interactive, QEMU waits for
    # that, so the user sees the whole boot.
    console = [
        "-display", "none", "-monitor", "none",
        "-chardev",
        f"socket,id=con,path={paths.console},server=on,wait={'on' if interactive else 'off'}",
        "-serial", "chardev:con",
    ]  # fmt: skip
    return [
        qemu_binary(variant),
        "-machine", base.machine,
        "-cpu", base.cpu,
        "-m", SYSTEM_MEMORY,
        "-nodefaults",
        *console,
        "-device", f"loader,file={loader},addr={LOADER_ADDRESS:#x},cpu-num=0",
        "-global", "virtio-mmio.force-legacy=false",
        "-device", f"{VIRTIO_NIC},netdev=net0,mac={NIC_MAC},{NIC_OPTIONS}",
        "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
    ]  # fmt: skip


def dnsmasq_command(variant: Board, paths: Sel4Paths) -> list[str]:
    """A DHCP server on the tap that gives each echo client its address from the board.

    Static leases only (`static` range): a client whose MAC the board does not name gets
    nothing, so a wrong MAC shows up as a missing lease, not a surprise address.
    """
    net = ipaddress.ip_interface(variant.sim.peer_address).network
    cmd = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",  # no DNS
        f"--interface={TAP}",
        "--bind-interfaces",
        f"--dhcp-range={net.network_address},static,{net.netmask}",
        f"--dhcp-leasefile={paths.leases}",
        "--pid-file=",  # none: the default is one file for every dnsmasq on the host
        f"--log-facility={paths.dnsmasq_log}",
        "--log-dhcp",
    ]
    cmd += [f"--dhcp-host={c.mac},{c.ipv4}" for c in variant.net.clients]
    return cmd


def _env() -> dict[str, str]:
    """The peer's tools are netvm's: run them from this checkout in any namespace."""
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))


@dataclass
class Sel4Run:
    """One whole-system boot: namespace, tap, DHCP server and QEMU; torn down on exit."""

    board: Board  # the sel4 variant
    loader: Path
    paths: Sel4Paths
    options: Sel4Options
    tag: runs.RunTag = field(default_factory=runs.new_tag)  # paths.dir carries it too
    interactive: bool = False
    proc: subprocess.Popen[bytes] | None = None
    dhcp: subprocess.Popen[bytes] | None = None
    console: GuestConsole | None = None
    t0: float = 0.0
    t0_epoch: float = 0.0

    @property
    def namespace(self) -> str:
        """This run's namespace: netvm-sel4-peer-<pid>-<n>."""
        return self.tag.name(NAMESPACE)

    @property
    def net(self) -> netns.NetnsConfig:
        return netns.NetnsConfig(
            driver_ns=self.namespace + "-unused",
            peer_ns=self.namespace,
            driver_if="unused",
            peer_if=TAP,
            peer_address=self.board.sim.peer_address,
        )

    def __enter__(self) -> Sel4Run:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        netns.require_root()
        for tool in (qemu_binary(self.board), "dnsmasq"):
            if shutil.which(tool) is None:
                raise UserError(f"{tool} is not installed", hint="run ./bootstrap")
        runs.remove_stale(self.paths.dir.parent)
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        for old in (self.paths.dnsmasq_log, self.paths.log_dir / "check.json"):
            old.unlink(missing_ok=True)  # an earlier run's (dnsmasq appends to its log)
        shutil.rmtree(self.paths.dir, ignore_errors=True)
        self.paths.dir.mkdir(parents=True)
        create_peer_namespace(self.net)
        self.dhcp = subprocess.Popen(
            netns.in_ns(self.namespace, dnsmasq_command(self.board, self.paths)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cmd = netns.in_ns(
            self.namespace,
            qemu_command(self.board, self.loader, self.paths, interactive=self.interactive),
        )
        (self.paths.log_dir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        self.t0, self.t0_epoch = time.monotonic(), time.time()
        with (self.paths.log_dir / "qemu.stderr").open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        sock = connect_unix(self.paths.console, self.options.command_timeout, self.proc)
        echo = sys.stdout.fileno() if self.interactive else None
        self.console = GuestConsole(sock, self.t0, self.paths.console_log, echo=echo)

    def peer(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            netns.in_ns(self.namespace, cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(),
        )

    def peer_tool(self, args: list[str]) -> subprocess.Popen[str]:
        """netvm.sim.peer `args` in the peer namespace, started (its JSON on stdout)."""
        return subprocess.Popen(
            netns.in_ns(self.namespace, [sys.executable, "-m", "netvm.sim.peer", *args]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )

    def peer_json(self, args: list[str], timeout: float) -> dict[str, Any]:
        proc = self.peer([sys.executable, "-m", "netvm.sim.peer", *args], timeout)
        if proc.returncode:
            return {"error": proc.stderr.strip()[-500:]}
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.console is not None:
            self.console.close()
            self.console = None
        remove_namespace(self.net)  # kills dnsmasq (and QEMU, were it still there)
        if self.dhcp is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.dhcp.wait(timeout=10)
        shutil.rmtree(self.paths.dir, ignore_errors=True)


# ---------------------------------------------------------------------------- check


@dataclass
class Sel4Report:
    board: str
    ok: bool = False
    reason: str = ""
    driver_ready_s: float | None = None  # QEMU start -> the driver's event loop
    leases_s: dict[str, float] = field(default_factory=dict)  # client -> lease on console
    first_echo_s: float | None = None  # QEMU start -> first UDP echo from any client
    all_echo_s: float | None = None  # ... from every client
    ping: list[dict[str, Any]] = field(default_factory=list)
    ping_rtt_ms: dict[str, float] = field(default_factory=dict)  # p50/p99 over all clients
    udp_echo: list[dict[str, Any]] = field(default_factory=list)
    tcp_echo: list[dict[str, Any]] = field(default_factory=list)
    driver_counters: dict[str, int] = field(default_factory=dict)
    queues: dict[str, int] = field(default_factory=dict)
    console_log: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        lines = [f"seL4 system {self.board}: {'PASS' if self.ok else 'FAIL'}"]
        if self.reason:
            lines.append(f"reason: {self.reason}")
        if self.driver_ready_s is not None:
            lines.append(f"QEMU start -> driver event loop: {self.driver_ready_s:.1f} s")
        for name, s in sorted(self.leases_s.items()):
            lines.append(f"QEMU start -> {name} DHCP lease: {s:.1f} s")
        if self.first_echo_s is not None:
            lines.append(f"QEMU start -> first echo: {self.first_echo_s:.1f} s")
        for p in self.ping:
            lines.append(f"ping {p['target']}: {p['received']}/{p['sent']} replies")
        if self.ping_rtt_ms:
            r = self.ping_rtt_ms
            lines.append(f"ping RTT: p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms")
        for u in self.udp_echo:
            lines.append(
                f"udp echo {u.get('target')}: {u.get('echoed', 0)}/{u.get('sent', '?')} "
                f"echoed byte-exact{' (' + u['error'] + ')' if u.get('error') else ''}"
            )
        for t in self.tcp_echo:
            lines.append(
                f"tcp echo {t.get('target')}:{TCP_ECHO_PORT}: {t.get('echoed', 0)}/"
                f"{t.get('sent', '?')} bytes, {'exact' if t.get('exact') else 'NOT exact'}"
                f"{' (' + t['error'] + ')' if t.get('error') else ''}"
            )
        if self.driver_counters:
            lines.append(
                "driver: " + ", ".join(f"{k} {v}" for k, v in self.driver_counters.items())
            )
        if self.queues:
            lines.append("queues at stop: " + ", ".join(f"{k} {v}" for k, v in self.queues.items()))
        if self.console_log:
            lines.append(f"console log: {self.console_log}")
        return "\n".join(lines)


def _pairs(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


def _rtts(ping_output: str) -> list[float]:
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", ping_output)]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _udp_sizes(spec: str) -> str:
    """ "1-1472:29" -> "1,30,59,..." (netvm.sim.peer's --sizes list)."""
    span, _, step = spec.partition(":")
    lo, _, hi = span.partition("-")
    return ",".join(str(n) for n in range(int(lo), int(hi or lo) + 1, int(step or 1)))


def prepare(
    board: Board,
    ws: Workspace,
    options: Sel4Options,
    *,
    interactive: bool,
) -> Sel4Run:
    """The (not yet started) boot of `board`'s whole system, from its build's loader.img."""
    variant = sel4_board(board, ws)
    loader = loader_image(board, ws)
    tag = runs.new_tag()
    paths = Sel4Paths(options.run_root / f"{RUN_PREFIX}{tag}", ws.build_dir(variant) / "run")
    return Sel4Run(variant, loader, paths, options, tag=tag, interactive=interactive)


def run_sel4_check(
    board: Board,
    ws: Workspace,
    options: Sel4Options,
    progress: Progress = silent,
) -> Sel4Report:
    """Boot the whole system and check it end to end; see the module docstring."""
    run = prepare(board, ws, options, interactive=False)
    variant, paths = run.board, run.paths
    report = Sel4Report(board.name, console_log=str(paths.console_log))
    phase = "boot"
    try:
        with sigterm_as_interrupt(), run:
            progress(f"booting the seL4 system of {board.name} under QEMU (TCG)")
            console = run.console
            assert console is not None
            targets = [c.ipv4 for c in variant.net.clients]
            # Probe from the start: the first echo marks when the whole path works.
            port = str(variant.sim.udp_echo_port)
            fe_args = ["first-echo", "--port", port, "--deadline", str(options.boot_timeout)]
            for t in targets:
                fe_args += ["--target", t]
            prober = run.peer_tool(fe_args)
            _, line = console.wait_for(driverlog.READY, options.boot_timeout, what="the driver")
            report.driver_ready_s = round(line.seconds, 2)
            progress(f"driver in its event loop {line.seconds:.1f} s after QEMU start")
            out, _err = prober.communicate(timeout=options.boot_timeout + 30)
            first = json.loads(out) if out.strip() else {}
            epochs = first.get("first_echo_epoch", {})
            if epochs:
                report.first_echo_s = round(min(epochs.values()) - run.t0_epoch, 2)
            if len(epochs) == len(targets):
                report.all_echo_s = round(max(epochs.values()) - run.t0_epoch, 2)
            for ln in list(console.lines):
                m = LEASE_LINE.search(ln.text)
                if m:
                    report.leases_s.setdefault(m[1], round(ln.seconds, 2))
            if len(epochs) < len(targets):
                missing = sorted(set(targets) - set(epochs))
                raise TimeoutError(
                    f"no UDP echo from {', '.join(missing)} within {options.boot_timeout:.0f} s "
                    f"(leases: {report.leases_s or 'none'}; see {paths.dnsmasq_log})"
                )
            progress(f"first echo {report.first_echo_s} s after QEMU start; running traffic")
            phase = "traffic"
            rtts: list[float] = []
            for t in targets:
                proc = run.peer(
                    ["ping", "-n", "-c", str(options.ping_count), "-i", "0.2", "-W", "3", t],
                    options.command_timeout + 3 * options.ping_count,
                )
                got = _rtts(proc.stdout)
                rtts += got
                report.ping.append({"target": t, "sent": options.ping_count, "received": len(got)})
                report.udp_echo.append(
                    dict(
                        run.peer_json(
                            ["udp-echo", "--target", t, "--port", port,
                             "--sizes", _udp_sizes(options.udp_sizes), "--timeout", "2"],
                            options.command_timeout * 3,
                        ),
                        target=t,
                    )
                )  # fmt: skip
                report.tcp_echo.append(
                    dict(
                        run.peer_json(
                            ["tcp-echo", "--target", t, "--port", str(TCP_ECHO_PORT),
                             "--size", str(options.tcp_bytes)],
                            options.command_timeout * 3,
                        ),
                        target=t,
                    )
                )  # fmt: skip
            if rtts:
                report.ping_rtt_ms = {
                    "p50": round(statistics.median(rtts), 3),
                    "p99": round(_quantile(rtts, 0.99), 3),
                    "samples": len(rtts),
                }
            phase = "driver stop"
            # Quiet now: every RX buffer should be back in rx_free, TX queues empty.
            time.sleep(1.0)
            console.send(f"\n{STOP_DRIVER}\n")
            _, line = console.wait_for(
                driverlog.STOPPED, options.command_timeout, what="the driver's stop report"
            )
            m = driverlog.STOPPED.search(line.text)
            assert m is not None
            report.driver_counters = _pairs(m[1])
            report.queues = _pairs(m[2])
    except KeyboardInterrupt:
        raise Interrupted("invoke run --sel4 --check", phase) from None
    except (TimeoutError, ConnectionError, RuntimeError, subprocess.TimeoutExpired) as exc:
        report.reason = f"{phase}: {exc}"
    if not report.reason:
        report.reason = check_failures(variant, report)
    report.ok = not report.reason
    (paths.log_dir / "check.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def check_failures(variant: Board, report: Sel4Report) -> str:
    reasons = []
    for p in report.ping:
        if p["received"] < p["sent"]:
            reasons.append(f"ping {p['target']}: {p['received']}/{p['sent']} replies")
    for u in report.udp_echo:
        if u.get("error") or u.get("echoed", 0) != u.get("sent", -1) or u.get("mismatched"):
            reasons.append(f"udp echo {u['target']}: {u.get('echoed', 0)}/{u.get('sent')} echoed")
    for t in report.tcp_echo:
        if t.get("error") or not t.get("exact"):
            reasons.append(f"tcp echo {t['target']}: {t.get('error') or 'bytes differ'}")
    want = {"rx_free": variant.net.rx_buffers, "rx_active": 0, "tx_active": 0, "tx_free": 0}
    if report.queues != want:
        reasons.append(
            f"buffers not conserved: queues at stop {report.queues}, expected {want} "
            "(at rest every RX buffer is back in rx_free)"
        )
    return "; ".join(reasons)


def run_sel4_interactive(
    board: Board,
    ws: Workspace,
    options: Sel4Options,
    progress: Progress = silent,
) -> int:
    """The system's console on this terminal (netvm.target.qemu.attach_terminal: Ctrl-C
    goes to the guest, Ctrl-A X quits); QEMU's exit code, 0 for the user's quit."""
    run = prepare(board, ws, options, interactive=True)
    variant = run.board
    with sigterm_as_interrupt(), run:
        clients = ", ".join(f"{c.name} {c.ipv4}" for c in variant.net.clients)
        progress(
            f"seL4 system booting; echo clients {clients} (DHCP); peer namespace "
            f"{run.namespace}; try: ip netns exec {run.namespace} ping "
            f"{variant.net.clients[0].ipv4}"
        )
        progress(CONSOLE_BANNER)
        assert run.console is not None
        with contextlib.suppress(KeyboardInterrupt):  # SIGTERM, SIGHUP: clean up all the same
            attach_terminal(run.console, sys.stdin.fileno(), sys.stdout.fileno())
        progress("\nstopping")
    code = run.proc.returncode if run.proc is not None else 1
    return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else int(code or 1)
