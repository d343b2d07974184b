"""What the test modules share: the repository's paths, fixture files, markers, and helpers
(golden files, the invoke command line in and out of process, throw-away board copies,
the simulated driver devices, a local HTTP server).

Imported as ``tests.harness`` (the repository root is on pytest's pythonpath); the
fixtures built on it live in conftest.py.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import io
import mmap
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import invoke
import pytest
from invoke import Program
from netvm_driver.config import DriverConfig, parse_config
from netvm_driver.datapath import DataPath
from netvm_driver.device import Devices, open_sim_devices
from netvm_driver.devmem import DeviceMemory
from netvm_driver.stats import Stats

from netvm.board import Board, Region, parse_board
from netvm.core.errors import Finding, UserError
from netvm.core.pipeline import Artifact, StepRunner
from netvm.core.yamlio import load_yaml
from netvm.guest.devicetree import DtbResult, build_guest_dtb
from netvm.guest.kernelsrc import KernelSource
from netvm.guest.render import render_all
from netvm.sim.layout import sim_layout
from netvm.sim.virt import VirtNet
from netvm.sim.vmm import SimDevices, create_devices

# --- paths -----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DRIVER_DIR = ROOT / "driver"
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = ROOT / "tests" / "golden"
DRIVER_JSON = FIXTURES / "odroidc4-driver.json"  # the driver.json the C4 board renders
MICROKIT_FIXTURES = FIXTURES / "microkit"
STANDIN_SDK = MICROKIT_FIXTURES / "standin-microkit-sdk"
STANDIN_LIBVMM = MICROKIT_FIXTURES / "standin-libvmm"
# python3 with the stand-in of the driver-VM sdfgen on its path (standin-sdfgen/)
STANDIN_PYTHON = str(MICROKIT_FIXTURES / "standin-sdfgen" / "python")
SYSTEMS = FIXTURES / "system"
# The `invoke` of this virtualenv, as a user runs it.
INVOKE = str(Path(sys.executable).with_name("invoke"))
# How the toolkit names the C4 board file in its findings.
C4_DISPLAY = "boards/odroidc4/board.yaml"
# The initramfs window the guest-DTB tests of the C4 board use.
C4_INITRD = Region(0x2E800000, 0x800000)

# Set to regenerate the golden files (then review the diff).
UPDATE_GOLDEN = "NETVM_UPDATE_GOLDEN"
# The build root of the test session (conftest.py points it at a temporary directory).
BUILD_DIR_ENV = "NETVM_BUILD_DIR"

# --- markers ---------------------------------------------------------------------------

HAVE_QEMU = shutil.which("qemu-system-aarch64") is not None
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-system-aarch64 not installed")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for the peer namespace and tap"
)
# A guest booted under QEMU with netvm's simulated VMM behind it.
QEMU_GUEST = [pytest.mark.qemu, pytest.mark.slow, needs_root, needs_qemu]


def needs_real_toolchain(names: Sequence[str], doc: str) -> pytest.MarkDecorator:
    """Skip unless every variable in `names` names a part of the real Microkit toolchain
    (which CI has not); `doc` says how to build them."""
    return pytest.mark.skipif(
        not all(os.environ.get(v) for v in names),
        reason=f"needs the real toolchain: set {', '.join(names)} ({doc})",
    )


# --- files -----------------------------------------------------------------------------


def check_golden(text: str, golden: Path) -> None:
    """`text` must be the golden file's; with $NETVM_UPDATE_GOLDEN it becomes it first."""
    if os.environ.get(UPDATE_GOLDEN):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), golden.name


def import_file(path: Path) -> ModuleType:
    """The Python file at `path` as a module, without putting its directory on sys.path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_board(dest: Path, name: str | None = None, edit: Mapping[str, str] | None = None) -> Path:
    """The C4 board file and its kernel fragment copied into `dest`; `name` renames the
    board (so it builds into a directory of its own), `edit` replaces text in the file.
    Returns the copied board.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "boards" / "odroidc4" / "board.yaml").read_text()
    if name is not None:
        text = text.replace("name: odroidc4", f"name: {name}", 1)
    for old, new in (edit or {}).items():
        text = text.replace(old, new)
    (dest / "board.yaml").write_text(text)
    shutil.copy(ROOT / "boards" / "odroidc4" / "kernel.config", dest)
    return dest / "board.yaml"


def reparsed_findings(board: Board, edit: Mapping[str, object]) -> list[Finding]:
    """What parsing the board file finds once `edit` changed it: each key is a dotted path
    ("guest.ram.size", "sel4.uio.7.irq": a number indexes a list), each value replaces
    what is there. No findings when the edited file parses."""
    data = load_yaml(board.file, "board.yaml")
    for dotted, value in edit.items():
        node = data
        *path, last = dotted.split(".")
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    try:
        parse_board(data, board.file, "board.yaml")
    except UserError as exc:
        return list(exc.findings)
    return []


def scratch_name(prefix: str, tmp_path: Path) -> str:
    """A board name of the test's own, from its temporary directory."""
    return f"{prefix}_{tmp_path.name.lower().replace('-', '_')}"[:40]


def standin_sdk_archive(archive: Path, tree: Path = STANDIN_SDK, version: str = "2.0.1") -> Path:
    """`tree` (the stand-in SDK) packed as microkit-sdk-VERSION into the .tar.gz `archive`."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=f"microkit-sdk-{version}")
    return archive


def runner_with_guest(tmp_path: Path) -> StepRunner:
    """A step runner building into tmp_path/build that already holds the guest artifacts
    the Microkit step takes, as small placeholder files under tmp_path/guest."""
    runner = StepRunner(tmp_path / "build", force=False)
    files = {
        "kernel_image": b"placeholder-kernel-image\n",
        "initramfs": b"placeholder-initramfs\n",
        "dts": b"/dts-v1/;\n/ { placeholder; };\n",
        "dtb": b"placeholder-dtb\n",
    }
    (tmp_path / "guest").mkdir(parents=True)
    for name, data in files.items():
        path = tmp_path / "guest" / name
        path.write_bytes(data)
        runner.artifacts[name] = Artifact.of(path)
    return runner


def build_test_dtb(
    board: Board, kernel_src: KernelSource, out: Path, initrd: Region | None
) -> DtbResult:
    """The board's guest DTB, built for real (render, then dtc) under `out`."""
    rendered = render_all(board, out / "render", ROOT)
    return build_guest_dtb(
        board, rendered.overlay_dts, kernel_src, out / "dtb", header="test", initrd=initrd
    )


# --- the command line ------------------------------------------------------------------


@dataclass
class CliResult:
    """What a run of `invoke` left: its exit status and its output."""

    returncode: int
    stdout: str
    stderr: str


def without_netvm_inputs() -> dict[str, str]:
    """This environment without the toolkit's input variables (NETVM_MICROKIT_SDK and the
    like), keeping the session's build root."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NETVM_") or k == BUILD_DIR_ENV}


def run_invoke(*args: str, env: Mapping[str, str] | None = None) -> CliResult:
    """`invoke ARGS` run as a user runs it from the repository, as a process."""
    proc = subprocess.run(
        [INVOKE, *args], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def invoke_in_process(*args: str, env: Mapping[str, str] | None = None) -> CliResult:
    """`invoke ARGS` from the repository, in this process: the same command-line parsing,
    tasks.py and exit statuses as run_invoke, without starting python. An exception the
    tasks let escape (a traceback, from a shell) fails the calling test."""
    out, err = io.StringIO(), io.StringIO()
    program = Program(name="Invoke", binary="inv[oke]", version=invoke.__version__)
    code = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(ROOT))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if env is not None:
            stack.enter_context(mock.patch.dict(os.environ, env, clear=True))
        try:
            program.run(["invoke", *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def run_driver(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m netvm_driver ARGS` from the driver's directory, as the guest runs it."""
    return subprocess.run(
        [sys.executable, "-m", "netvm_driver", *args],
        capture_output=True,
        text=True,
        cwd=DRIVER_DIR,
        timeout=30,
        check=False,
    )


# --- ping ------------------------------------------------------------------------------


@dataclass
class Pings:
    """What `ping_probes` saw: requests sent, replies received, their round trips."""

    sent: int
    received: int
    rtts_ms: list[float]
    output: str  # every probe's output, for an assertion's message


def ping_probes(
    prefix: Sequence[str],
    target: str,
    count: int = 3,
    *extra: str,
    wait: float = 5.0,
) -> Pings:
    """`count` echo requests to `target`, one `ping -c 1` at a time run under `prefix`
    (e.g. ``ip netns exec NS``), each waiting up to `wait` seconds for its reply; `extra`
    are more ping options. One `ping -c N` waits for its last replies only max(2 x the
    slowest round trip so far, the interval): on a busy shared host a late reply would
    count as lost."""
    rtts: list[float] = []
    outputs = []
    for _ in range(count):
        proc = subprocess.run(
            [*prefix, "ping", "-n", "-c", "1", "-W", str(wait), *extra, target],
            capture_output=True,
            text=True,
            timeout=wait + 30,
            check=False,
        )
        outputs.append(proc.stdout + proc.stderr)
        m = re.search(r"time=([\d.]+) ms", proc.stdout)
        if m:
            rtts.append(float(m[1]))
    return Pings(count, len(rtts), rtts, "".join(outputs))


# --- a terminal ------------------------------------------------------------------------


class PtyTerminal:
    """The master side of a pseudo-terminal a program runs on (pty.fork): what the
    program printed, and typing, as a user at that terminal."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""

    def read(self, timeout: float) -> bool:
        """Take what arrives within `timeout`; False once the program closed the terminal."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            return False
        self.text += chunk.decode(errors="replace")
        return bool(chunk)

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Until the output matches `pattern`; the match."""
        deadline = time.monotonic() + timeout
        while (m := re.search(pattern, self.text)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {timeout:.0f} s:\n{self.text[-3000:]}"
            assert self.read(left), f"the program ended before {pattern!r}:\n{self.text[-3000:]}"
        return m

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        """The exit status of the program `pid` (reading its output meanwhile); None if it
        is still running after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(raw)
            if time.monotonic() >= deadline:
                return None
            self.read(0.2)


# --- the driver on the simulated devices -----------------------------------------------


class SpyMemory(DeviceMemory):
    """Records every frame copy the data path asks for, as (offset in this map, offset
    in the other memory, length), whichever method made it."""

    __slots__ = ("ins", "outs")

    def __init__(self, name: str, buf: memoryview) -> None:
        super().__init__(name, buf)
        self.ins: list[tuple[int, int, int]] = []  # copies into this map
        self.outs: list[tuple[int, int, int]] = []  # copies out of it

    def copy_frame_in(self, dst: int, src: memoryview, length: int) -> None:
        self.ins.append((dst, 0, length))
        super().copy_frame_in(dst, src, length)

    def copy_frame_out(self, src: int, dst: memoryview, length: int) -> int:
        self.outs.append((src, 0, length))
        return super().copy_frame_out(src, dst, length)

    def copy_frames_out(self, dst: memoryview, moves: Sequence[int]) -> None:
        self.outs += [tuple(moves[i : i + 3]) for i in range(0, len(moves), 3)]  # type: ignore[misc]
        super().copy_frames_out(dst, moves)

    def copy_buffer_heads_out(
        self, dst: memoryview, at: int, stride: int, offsets: Sequence[int], length: int
    ) -> None:
        self.outs += [(off, at + i * stride, length) for i, off in enumerate(offsets)]
        super().copy_buffer_heads_out(dst, at, stride, offsets, length)

    def copy_buffer_head_out(self, dst: memoryview, at: int, src: int, length: int) -> None:
        self.outs.append((src, at, length))
        super().copy_buffer_head_out(dst, at, src, length)

    def copy_into_buffers(
        self,
        src: memoryview,
        offsets: Sequence[int],
        starts: Sequence[int],
        lengths: Sequence[int],
        small: mmap.mmap | bytearray | None = None,
    ) -> None:
        self.ins += zip(offsets, starts, lengths, strict=True)
        super().copy_into_buffers(src, offsets, starts, lengths, small)


@dataclass
class SimDriver:
    """The simulated VMM's devices and virt side, and the driver's config and devices
    opened on them (rx_data and tx_data as SpyMemory)."""

    sim: SimDevices
    virt: VirtNet
    config: DriverConfig
    devices: Devices

    @classmethod
    def open(cls, board: Board, tmp: Path) -> SimDriver:
        layout = sim_layout(board, ROOT)
        sim = create_devices(layout, tmp / "run")
        virt = VirtNet(sim)
        config = parse_config(layout.driver_config, "driver.json")
        devices = open_sim_devices(config, str(sim.devices_file), lambda _m: None)
        for name in ("rx_data", "tx_data"):
            devices.regions[name] = SpyMemory(name, devices.regions[name]._mv)
        return cls(sim, virt, config, devices)

    def close(self) -> None:
        self.devices.close()
        self.sim.close()


@dataclass
class DriverEnv:
    """A driver data path on the simulated devices, and what it counts."""

    sim: SimDevices
    virt: VirtNet
    devices: Devices
    stats: Stats
    path: DataPath

    @property
    def rx_data(self) -> SpyMemory:
        mem = self.path.rx_data
        assert isinstance(mem, SpyMemory)
        return mem

    @property
    def tx_data(self) -> SpyMemory:
        mem = self.path.tx_data
        assert isinstance(mem, SpyMemory)
        return mem

    def conserved(self) -> dict[str, object]:
        """virt's buffer accounting once both sides have run."""
        self.virt.on_tx_doorbell()
        self.virt.on_rx_doorbell()
        return self.virt.conservation()

    def close(self) -> None:
        self.devices.close()
        self.sim.close()


def assert_first_buffer_reused(env: DriverEnv, dropped: int, kept: int) -> None:
    """After `dropped` oversize frames and then one of `kept` bytes: the drops were
    counted and the frame went into the first rx_free buffer, the only one consumed."""
    assert env.stats.rx_dropped_oversize == dropped
    assert env.stats.rx_frames == 1
    assert env.virt.rx_active.read(0) == (env.virt.layout.rx_io_base, kept)
    assert env.virt.rx_free.head == 1
    assert env.conserved()["ok"]


# --- the network -----------------------------------------------------------------------


def readable(fd: int, timeout: float) -> bool:
    """Whether `fd` becomes readable within `timeout` seconds."""
    return bool(select.select([fd], [], [], timeout)[0])


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServedDirectory:
    """A directory on http://127.0.0.1:PORT/, recording the path of every request."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @classmethod
    @contextlib.contextmanager
    def serving(cls, root: Path) -> Iterator[ServedDirectory]:
        server = cls(root)
        try:
            yield server
        finally:
            server.close()
