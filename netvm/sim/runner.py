"""Running the host simulation: namespaces, simulated devices, the VMM loop and the driver.

Owns: the life cycle of one simulation run and its clean-up. Start-up order: remove
the leftovers of dead runs (netvm.sim.runs), create the run's own namespaces and veth
pair, create the simulated devices and queues, start the driver inside the driver
namespace, start the VMM loop. Every host-wide name of a run carries its tag (pid and
counter, netvm.sim.runs), so any number of runs share a host without waiting for each
other.
A run is in one of two phases, start-up (until the driver reaches its event loop) and
running; `<run dir>/state.json` says which, with the driver's pid, so that whoever
watches a run (a test, a script) waits on it rather than on a guessed sleep. Whatever
ends the run (its duration, Ctrl-C/SIGTERM, the driver exiting, an error in the
simulator) is reported with the phase it came in (`stopped_by`, e.g. "interrupt during
start-up", "driver exited while running"). `Simulation.stop` stops the driver (SIGTERM,
then SIGKILL for its process group), lets the VMM side take back what the driver
returned, checks buffer conservation, and removes the namespaces (killing anything left
in them) and the shared files.

The VMM side runs on one thread; tests reach it through `Simulation.call`, which runs a
function on that thread, so shared-memory indices always have a single writer.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from netvm.board import Board
from netvm.core.errors import UserError
from netvm.core.progress import Progress, silent
from netvm.guest.drivercheck import check_driver_rules
from netvm.sim import driverlog, netns, runs
from netvm.sim.calls import LoopCalls
from netvm.sim.layout import SimLayout, sim_layout
from netvm.sim.virt import VirtNet
from netvm.sim.vmm import SimDevices, SimIrq, create_devices

T = TypeVar("T")
RUN_PREFIX = "netvm-sim-"
# The phases of a run, as they read in its `stopped_by`.
IN_PHASE = {"start-up": "during start-up", "running": "while running"}
PR_SET_PDEATHSIG = 1


class DoorbellHandler(Protocol):
    """The VMM side of the driver's two notifications."""

    def on_rx_doorbell(self) -> None: ...

    def on_tx_doorbell(self) -> None: ...


@dataclass(frozen=True)
class SimOptions:
    duration: float | None = None  # seconds; None = until interrupted
    stats_json: Path | None = None
    driver_cmd: str | None = None  # another driver; see docs/sim.md for placeholders
    driver_args: tuple[str, ...] = ()  # extra arguments for the default driver
    peer_address: str | None = None  # CIDR; default from the board's sim settings
    mtu: int | None = None  # MTU of both veth ends (default: the kernel's 1500)
    stats_interval: float = 1.0  # how often the driver rewrites its stats file
    run_root: Path = Path("/dev/shm")
    python: str = sys.executable
    ready_timeout: float = 15.0


@dataclass(frozen=True)
class SimResult:
    board: str
    seconds: float
    stopped_by: str
    driver_exit: int | None
    driver_stats: dict[str, Any] | None
    sim: dict[str, Any]
    conservation: dict[str, Any]
    driver_log_tail: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Buffers conserved and the driver ended cleanly. A driver interrupted during its
        start-up may not have its SIGTERM handler yet: its death by that signal is the
        interrupt's, not a failure."""
        clean = self.driver_exit == 0 or (
            self.stopped_by == f"interrupt {IN_PHASE['start-up']}"
            and self.driver_exit == -signal.SIGTERM
        )
        return bool(self.conservation.get("ok")) and clean

    def as_dict(self) -> dict[str, Any]:
        return {
            "board": self.board,
            "seconds": round(self.seconds, 3),
            "stopped_by": self.stopped_by,
            "ok": self.ok,
            "driver_exit": self.driver_exit,
            "driver": self.driver_stats,
            "sim": self.sim,
            "conservation": self.conservation,
        }

    def summary(self) -> str:
        counters = (self.driver_stats or {}).get("counters", {})
        lines = [
            f"simulation of {self.board}: {self.seconds:.1f} s, stopped by {self.stopped_by}, "
            f"driver exit {self.driver_exit}",
            "driver: "
            + (", ".join(f"{k} {v}" for k, v in counters.items() if v) or "all counters 0")
            if counters
            else "driver: no stats",
        ]
        for name, c in self.sim.get("clients", {}).items():
            lines.append(f"{name}: echoed {c['frames_echoed']} {c['echoed']}")
        cons = self.conservation
        rx, tx = cons.get("rx", {}), cons.get("tx", {})
        lines.append(
            "buffer conservation: "
            + ("ok" if cons.get("ok") else "FAILED")
            + f" (rx {rx.get('accounted', '?')}/{rx.get('buffers', '?')}, "
            f"tx {tx.get('accounted', '?')}/{tx.get('buffers', '?')})"
        )
        lines += [f"  violation: {v}" for v in cons.get("violations", [])[:5]]
        if self.driver_exit not in (0, None):
            lines += ["driver log:", *(f"  {line}" for line in self.driver_log_tail)]
        return "\n".join(lines)


class DriverExitedDuringStartup(UserError):
    """The driver ended before it reached its event loop (its status and log are in the
    message)."""


def _set_pdeathsig() -> None:
    """In the child: die with the simulator, so a crashed simulator leaves no driver."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Simulation:
    board: Board
    options: SimOptions
    root: Path
    tag: runs.RunTag = field(init=False)  # in every host-wide name of the run
    layout: SimLayout = field(init=False)
    net: netns.NetnsConfig = field(init=False)
    run_dir: Path = field(init=False)
    devs: SimDevices | None = None
    virt: VirtNet | None = None
    driver: subprocess.Popen[bytes] | None = None
    driver_exit: int | None = None
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    _calls: LoopCalls | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _started: float = 0.0
    _result: SimResult | None = None
    phase: str = "start-up"  # a key of IN_PHASE
    progress: Progress = silent

    def __post_init__(self) -> None:
        self.tag = runs.new_tag()
        self.layout = sim_layout(self.board, self.root)
        self.net = netns.NetnsConfig.from_settings(
            self.layout.settings, str(self.tag), self.options.peer_address
        )
        self.run_dir = self.options.run_root / f"{RUN_PREFIX}{self.tag}"

    # ------------------------------------------------------------------ paths

    @property
    def config_file(self) -> Path:
        return self.run_dir / "driver.json"

    @property
    def stats_file(self) -> Path:
        return self.run_dir / "driver-stats.json"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "driver.log"

    @property
    def state_file(self) -> Path:
        """{"phase": "start-up" | "running", "driver_pid": N}, rewritten at each change."""
        return self.run_dir / "state.json"

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        pid = self.driver.pid if self.driver is not None else None
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"phase": phase, "driver_pid": pid}) + "\n")
        tmp.rename(self.state_file)  # whole or not at all for a reader

    def driver_command(self) -> list[str]:
        assert self.devs is not None
        values = {
            "config": str(self.config_file),
            "devices": str(self.devs.devices_file),
            "interface": self.net.driver_if,
            "stats": str(self.stats_file),
        }
        standard = [
            "--config",
            values["config"],
            "--interface",
            values["interface"],
            "--sim-devices",
            values["devices"],
            "--stats-json",
            values["stats"],
            "--stats-interval",
            str(self.options.stats_interval),
        ]
        if self.options.driver_cmd:
            cmd = self.options.driver_cmd
            if any("{" + key + "}" in cmd for key in values):
                return shlex.split(cmd.format(**values))
            return shlex.split(cmd) + standard
        return [self.options.python, "-m", "netvm_driver", *standard, *self.options.driver_args]

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Simulation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        netns.require_root()
        try:
            runs.remove_stale(self.options.run_root)
            netns.create(self.net, mtu=self.options.mtu)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.devs = create_devices(self.layout, self.run_dir)
            self.virt = VirtNet(self.devs)
            self.config_file.write_text(json.dumps(self.layout.driver_config, indent=2) + "\n")
            self._calls = LoopCalls()
            self._start_driver()
            self._set_phase("start-up")
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._loop, name="netvm-sim-vmm", daemon=True)
            self._thread.start()
            # Like virt_rx's init: tell the driver rx_free is filled (the driver also scans
            # once at start-up, so this is only for fidelity).
            self.call(lambda: self._require_virt().devs.irqs["rx_irq"].inject())
            self._wait_ready()
            self._set_phase("running")
        except KeyboardInterrupt:
            self.stop(f"interrupt {IN_PHASE['start-up']}")
            raise
        except DriverExitedDuringStartup:
            self.stop(f"driver exited {IN_PHASE['start-up']}")
            raise
        except BaseException:
            self.stop("start-up failed")
            raise

    def _start_driver(self) -> None:
        env = dict(os.environ)
        driver_dir = str(self.root / "driver")
        env["PYTHONPATH"] = driver_dir + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        with open(self.log_file, "wb") as log:
            self.driver = subprocess.Popen(
                netns.in_ns(self.net.driver_ns, self.driver_command()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: killed as a whole
                preexec_fn=_set_pdeathsig,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.ready_timeout
        while time.monotonic() < deadline:
            if driverlog.READY in self.driver_log():
                return
            if self.driver is not None and self.driver.poll() is not None:
                raise DriverExitedDuringStartup(
                    f"the driver exited with {self.driver.returncode} during start-up:\n"
                    + self.driver_log().rstrip()
                )
            self.check()
            time.sleep(0.02)
        raise UserError(
            f"the driver did not reach its event loop in {self.options.ready_timeout} s:\n"
            + self.driver_log().rstrip()
        )

    def stop(self, stopped_by: str = "stopped") -> SimResult:
        """Stop everything and report; safe to call more than once and after a failed start."""
        if self._result is not None:
            return self._result
        driver_stats = None
        try:
            self._stop_driver()
            driver_stats = self.read_driver_stats()
            if self._thread is not None and self._thread.is_alive() and self.error is None:
                # Take back what the driver returned after its last doorbell.
                self.call(self._final_drain)
        finally:
            self._stopping.set()
            if self._calls is not None:
                self._calls.wake()
            if self._thread is not None:
                self._thread.join(timeout=5)
            netns.teardown(self.net)  # this run's own names: no other run uses them
        virt = self.virt
        sim_stats = virt.stats() if virt else {}
        conservation = virt.conservation() if virt else {"ok": False, "rx": {}, "tx": {}}
        if self.error is not None:
            conservation = {**conservation, "ok": False}
            sim_stats["error"] = repr(self.error)
        self._result = SimResult(
            board=self.layout.board,
            seconds=time.monotonic() - self._started if self._started else 0.0,
            stopped_by=stopped_by,
            driver_exit=self.driver_exit,
            driver_stats=driver_stats,
            sim=sim_stats,
            conservation=conservation,
            driver_log_tail=tuple(self.driver_log().splitlines()[-20:]),
        )
        if virt is not None:
            virt.release()
        if self.devs is not None:
            self.devs.close()
        if self._calls is not None:
            self._calls.close()
            self._calls = None
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return self._result

    def _stop_driver(self) -> None:
        proc = self.driver
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.driver_exit = proc.returncode

    def _doorbells(self) -> DoorbellHandler:
        """Who takes the driver's notifications: virt_rx/virt_tx (a bench may swap it)."""
        return self._require_virt()

    def _final_drain(self) -> None:
        target = self._doorbells()
        target.on_tx_doorbell()
        target.on_rx_doorbell()

    # ------------------------------------------------------------------ the VMM loop

    def _require_virt(self) -> VirtNet:
        assert self.virt is not None
        return self.virt

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `fn` on the VMM thread (the only writer of the VMM's indices)."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the simulation is not running") from self.error
        assert self._calls is not None
        return self._calls.submit(fn).result(timeout)

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # reported by check()/stop(); the run ends
            self.error = exc
            self._stopping.set()

    def _serve(self) -> None:
        devs = self.devs
        assert devs is not None and self._calls is not None
        ep = select.epoll()
        handlers: dict[int, Callable[[], None]] = {}
        rx_fd, tx_fd = devs.doorbells["rx_fault"], devs.doorbells["tx_fault"]

        def on_rx() -> None:
            _drain(rx_fd)
            self._doorbells().on_rx_doorbell()

        def on_tx() -> None:
            _drain(tx_fd)
            self._doorbells().on_tx_doorbell()

        handlers[rx_fd] = on_rx
        handlers[tx_fd] = on_tx
        for irq in devs.irqs.values():
            assert irq.listener is not None

            def watch(fd: int, irq: SimIrq = irq) -> None:
                # A driver's connection, for its enables. Closing a connection takes it
                # out of the epoll set, so a reused number is registered afresh.
                handlers[fd] = irq.read_enables
                ep.register(fd, select.EPOLLIN)

            irq.on_connect = watch
            handlers[irq.listener.fileno()] = irq.read_enables  # accepts, then reads
        handlers[self._calls.fd] = self._calls.run_pending
        for fd in handlers:
            ep.register(fd, select.EPOLLIN)
        try:
            while not self._stopping.is_set():
                ready = ep.poll()
                # Returned TX buffers first: replies to this round's frames may need them.
                for fd, _ in sorted(ready, key=lambda e: e[0] != tx_fd):
                    handlers[fd]()
        finally:
            ep.close()

    # ------------------------------------------------------------------ observation

    def check(self) -> None:
        """Raise if the VMM thread failed."""
        if self.error is not None:
            raise RuntimeError("the simulated VMM failed") from self.error

    def driver_running(self) -> bool:
        return self.driver is not None and self.driver.poll() is None

    def driver_log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def read_driver_stats(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return None
        return data

    def driver_stats(self, timeout: float = 5.0) -> dict[str, int]:
        """Fresh driver counters: ask with SIGUSR1 and wait for the file to be rewritten."""
        before = (self.read_driver_stats() or {}).get("seq", 0)
        assert self.driver is not None
        self.driver.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.read_driver_stats()
            if stats and stats.get("seq", 0) > before:
                counters: dict[str, int] = stats["counters"]
                return counters
            time.sleep(0.02)
        raise TimeoutError("the driver did not write its stats after SIGUSR1")

    def sim_stats(self) -> dict[str, Any]:
        return self.call(lambda: self._require_virt().stats())

    def conservation(self) -> dict[str, Any]:
        return self.call(lambda: self._require_virt().conservation())

    # ------------------------------------------------------------------ the peer side

    def peer_command(self, cmd: list[str]) -> list[str]:
        return netns.in_ns(self.net.peer_ns, cmd)

    def peer_run(self, cmd: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.peer_command(cmd), capture_output=True, text=True, timeout=timeout
        )

    def peer_tool(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run netvm.sim.peer in the peer namespace and return its JSON report."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root)
        proc = subprocess.run(
            self.peer_command([self.options.python, "-m", "netvm.sim.peer", *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if proc.returncode:
            raise RuntimeError(f"peer tool failed ({proc.returncode}): {proc.stderr.strip()}")
        report: dict[str, Any] = json.loads(proc.stdout)
        return report


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so the clean-up of a run (simulation, QEMU) runs for both."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def check_options(options: SimOptions) -> None:
    """Refuse options that would only fail mid-run or after it (user errors)."""
    if options.driver_cmd is not None:
        try:
            shlex.split(options.driver_cmd)
        except ValueError as exc:
            raise UserError(
                f"--driver-cmd: {exc}: {options.driver_cmd!r}",
                hint="quote it as a shell would (docs/sim.md)",
            ) from None
    out = options.stats_json
    if out is not None:
        if out.is_dir():
            raise UserError(f"--stats-json {out}: is a directory", hint="give a file name")
        parent = out.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UserError(f"--stats-json {out}: cannot write there", hint="give a writable path")


def run_sim(
    board: Board,
    options: SimOptions,
    root: Path | None = None,
    progress: Progress = silent,
) -> SimResult:
    """Run the real driver against the simulated VMM until the duration ends or Ctrl-C."""
    root = root or Path(__file__).resolve().parents[2]
    # Everything that could fail after the run is checked before it: its results would
    # be lost otherwise.
    check_driver_rules(board, root)
    check_options(options)
    sim = Simulation(board, options, root, progress=progress)
    stopped_by = "duration"
    with sigterm_as_interrupt():
        try:
            sim.start()
            clients = ", ".join(f"{c.name} {c.ipv4}" for c in sim.layout.clients)
            progress(
                f"simulation running: driver in netns {sim.net.driver_ns} ({sim.net.driver_if}), "
                f"peer {sim.net.peer_if} {sim.net.peer_address} in netns {sim.net.peer_ns}; "
                f"clients {clients}; UDP echo port {sim.layout.settings['udp_echo_port']}"
            )
            progress(f"try: ip netns exec {sim.net.peer_ns} ping {sim.layout.clients[0].ipv4}")
            deadline = None if options.duration is None else time.monotonic() + options.duration
            while deadline is None or time.monotonic() < deadline:
                if not sim.driver_running():
                    stopped_by = f"driver exited {IN_PHASE['running']}"
                    break
                if sim.error is not None:
                    stopped_by = "simulator error"
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:
            stopped_by = f"interrupt {IN_PHASE[sim.phase]}"
        except DriverExitedDuringStartup:
            stopped_by = f"driver exited {IN_PHASE['start-up']}"
        finally:
            result = sim.stop(stopped_by)
    if options.stats_json:
        options.stats_json.parent.mkdir(parents=True, exist_ok=True)
        options.stats_json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    if sim.error is not None:
        raise RuntimeError("the simulated VMM failed") from sim.error
    return result
