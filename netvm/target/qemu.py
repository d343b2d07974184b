"""Booting the generated guest under QEMU (TCG): `invoke run [--check]`.

Owns: one QEMU run of a board whose base device tree is QEMU's own
(`devicetree.base_qemu`): the command line (the same machine options the base was
dumped with, guest RAM in a shared file, kernel + DTB + the initramfs loaded into the
DTB's initrd window), the console (a socket QEMU waits on, so no output is lost), the
simulated VMM on the shared RAM (netvm.target.qemu_vmm) and the peer namespace whose tap is
QEMU's NIC, and orderly shutdown. `run_qemu_check` boots, waits for the driver's event loop,
lists the guest's UIO devices, runs ping and a UDP echo round from the peer namespace
through the guest's driver, powers off and reports. Every wait has a time-out.
`run_qemu_interactive` puts the user's terminal on the console (`attach_terminal`: raw
mode, Ctrl-C to the guest, Ctrl-A X quits), as `invoke run --sel4` does too.

The namespace and the run directory carry the run's tag (netvm.sim.runs): runs on one
host never share them.

Does not build anything itself (netvm.builder.build does, cached by input hash) and does not
know the data path (the guest driver and netvm.sim do). See docs/qemu.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netvm.board import Board, Region
from netvm.builder.build import BuildOptions, build
from netvm.builder.manifest import MANIFEST_NAME, parse_manifest
from netvm.core.errors import Finding, Interrupted, UserError
from netvm.core.progress import Progress, silent
from netvm.core.workspace import Workspace
from netvm.guest.fdt import parse_dtb
from netvm.guest.qemu_machine import VIRTIO_CONSOLE, VIRTIO_NIC, machine_args, qemu_binary
from netvm.guest.render import sim_settings
from netvm.sim import driverlog, netns, runs
from netvm.sim.runner import sigterm_as_interrupt
from netvm.target.qemu_vmm import DOORBELL_UIO, QemuVmm

RUN_PREFIX = "netvm-qemu-"
GUEST_MAC = "52:54:00:12:34:56"  # QEMU's default; the driver's socket is promiscuous
# QEMU's direct kernel boot puts the DTB at RAM + min(RAM/2, 128 MiB) when no -initrd is
# given (hw/arm/boot.c); the initramfs is loaded into the DTB's window instead.
QEMU_DTB_OFFSET_MAX = 128 << 20
SHELL_PROMPT = re.compile(r"[#$] $")
PING_WAIT = 5  # seconds each echo request of a check waits for its reply
PANIC = "Kernel panic - not syncing"
# Terminal control sequences (busybox ash asks for the cursor position after its prompt).
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class RunOptions:
    check: bool = False
    vmm: bool = True  # simulated VMM on the shared RAM + peer namespace (needs root)
    boot_timeout: float = 60.0  # QEMU start -> driver event loop
    command_timeout: float = 20.0  # each console command, ping, echo round, power-off
    ping_count: int = 3
    udp_sizes: str = "1,18,64,512,1024,1472"
    force_build: bool = False
    run_root: Path = Path("/dev/shm")


@dataclass(frozen=True)
class GuestImages:
    kernel: Path
    initramfs: Path
    dtb: Path
    initrd: Region  # the DTB's linux,initrd-start/end


def guest_images(
    board: Board, ws: Workspace, options: RunOptions, progress: Progress
) -> GuestImages:
    """Build what is missing (cached by input hash) and return the three boot files."""
    if board.devicetree.base_qemu is None:
        raise UserError(
            [
                Finding(
                    ws.display(board.file),
                    "devicetree.base_qemu",
                    f"board {board.name} is not a QEMU board",
                    "invoke run needs a board whose base device tree is QEMU's own, "
                    "e.g. --board qemu_virt_aarch64",
                )
            ]
        )
    manifest = build(
        board,
        ws,
        BuildOptions(
            force=options.force_build,
            skip=frozenset({"microkit"}),
        ),
        progress,
    )
    file = ws.build_dir(board) / MANIFEST_NAME
    built = parse_manifest(manifest, ws.display(file), ws.root)
    hint = f"run `invoke build --board {board.name}` and check its steps"
    kernel, initramfs, dtb = (
        built.require(name, what, hint).path
        for name, what in (
            ("kernel_image", "kernel image"),
            ("initramfs", "initramfs"),
            ("dtb", "guest DTB"),
        )
    )
    chosen = parse_dtb(dtb.read_bytes()).get("/chosen", {})
    start = int.from_bytes(chosen.get("linux,initrd-start", b""), "big")
    end = int.from_bytes(chosen.get("linux,initrd-end", b""), "big")
    if not start < end:
        raise UserError(f"{dtb}: no initrd window in /chosen", hint="rebuild with invoke build")
    return GuestImages(kernel, initramfs, dtb, Region(start, end - start))


def check_dtb_placement(board: Board, images: GuestImages) -> None:
    """QEMU places the DTB itself; it must not land on the initrd window or carve-out."""
    ram = board.guest.ram
    dtb = Region(ram.paddr + min(ram.size // 2, QEMU_DTB_OFFSET_MAX), images.dtb.stat().st_size)
    for key, region in (("guest.initrd", images.initrd), ("guest.carveout", board.guest.carveout)):
        if region is not None and dtb.overlaps(region):
            raise UserError(
                [
                    Finding(
                        board.display_file,
                        key,
                        f"{region} overlaps where QEMU puts the DTB ({dtb})",
                        "move it above RAM base + min(RAM/2, 128 MiB) + the DTB size",
                    )
                ]
            )


@dataclass(frozen=True)
class ConsolePaths:
    """A QEMU run's two places: its own run directory (sockets, removed at its end) and
    the build directory's log directory (what is kept: console log, reports)."""

    dir: Path  # in /dev/shm: the run's own
    log_dir: Path  # under build/<board>/: kept after the run

    @property
    def console(self) -> Path:
        return self.dir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"


@dataclass(frozen=True)
class RunPaths(ConsolePaths):
    """The simulated-VMM boot: the guest RAM file and the doorbell socket too."""

    @property
    def ram(self) -> Path:
        return self.dir / "guest-ram"

    @property
    def doorbell(self) -> Path:
        return self.dir / "doorbell.sock"


def qemu_command(
    board: Board,
    images: GuestImages,
    paths: RunPaths,
    *,
    tap: str | None,
) -> list[str]:
    spec = board.devicetree.base_qemu
    assert spec is not None
    cmd = [qemu_binary(board), *machine_args(spec)]
    cmd += [
        # Guest RAM is a file the simulated VMM maps too (QEMU never clears it).
        "-object",
        f"memory-backend-file,id=ram,size={spec.memory},mem-path={paths.ram},share=on",
        "-machine",
        "memory-backend=ram",
        "-kernel",
        str(images.kernel),
        "-dtb",
        str(images.dtb),
        # The initramfs goes where the DTB says (as the VMM does), not where -initrd would
        # put it; QEMU then leaves /chosen's initrd properties alone.
        "-device",
        f"loader,file={images.initramfs},addr={images.initrd.paddr:#x},force-raw=on",
        # VIRTIO_DEVICES order: the console takes the highest transport (the board's console
        # node), the NIC the one below; the guest DTB drops the transports left empty.
        "-device",
        VIRTIO_CONSOLE,
        "-device",
        "virtconsole,chardev=con0",
        # The console, interactive or not: netvm connects (and puts a user's terminal on
        # it, attach_terminal); QEMU waits for that, so no output is lost.
        "-chardev",
        f"socket,id=con0,path={paths.console},server=on,wait=on",
    ]
    cmd += [
        # UART0 is the doorbell (docs/qemu.md); QEMU waits for the VMM to connect.
        "-chardev",
        f"socket,id=db,path={paths.doorbell},server=on,wait={'on' if tap else 'off'}",
        "-serial",
        "chardev:db",
        "-monitor",
        "none",
    ]
    if tap:
        # No virtio-net header: the host finishes checksums as a real wire carries them
        # (with it, a partial checksum would reach the guest and the clients as is).
        cmd += ["-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no,vnet_hdr=off"]
    else:
        cmd += ["-netdev", "user,id=net0"]
    cmd += ["-device", f"{VIRTIO_NIC},netdev=net0,mac={GUEST_MAC}"]
    return cmd


# ---------------------------------------------------------------------------- console


@dataclass(frozen=True)
class Line:
    seconds: float  # since QEMU was started
    text: str


class GuestConsole:
    """The guest console through QEMU's socket chardev: lines with arrival times.

    With `echo` (a file descriptor, the user's terminal) every byte from the guest is also
    written there as it came, escape sequences and all (attach_terminal)."""

    def __init__(
        self, sock: socket.socket, t0: float, log_path: Path, echo: int | None = None
    ) -> None:
        self.sock = sock
        self.t0 = t0
        self.lines: list[Line] = []
        self.partial = ""
        self.closed = False
        self._cond = threading.Condition()
        self._log = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._echo = echo
        self._thread = threading.Thread(target=self._read, name="qemu-console", daemon=True)
        self._thread.start()

    def driver_log(self) -> list[str]:
        """The driver's log lines. The shell shares the console, so a driver line may
        follow the shell's prompt on the same line: each is cut at the driver's prefix."""
        return [
            ln.text[ln.text.index(driverlog.PREFIX) :]
            for ln in self.lines
            if driverlog.PREFIX in ln.text
        ]

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            now = time.monotonic() - self.t0
            if data and self._echo is not None:
                self._echo_raw(self._echo, data)
            text = ESCAPES.sub("", data.decode(errors="replace").replace("\r", ""))
            with self._cond:
                if not data:
                    self.closed = True
                    self._cond.notify_all()
                    return
                self._log.write(text)
                self._log.flush()
                *whole, self.partial = (self.partial + text).split("\n")
                self.lines += [Line(now, t) for t in whole]
                self._cond.notify_all()

    def _echo_raw(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:  # the terminal is gone: keep logging, stop echoing
            self._echo = None

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float, start: int = 0, what: str = ""
    ) -> tuple[int, Line]:
        """The first line from index `start` matching `pattern`; TimeoutError otherwise."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    text = self.lines[i].text
                    if regex.search(text):
                        return i, self.lines[i]
                    if PANIC in text:  # nothing more will come: say why at once
                        before = " / ".join(ln.text for ln in self.lines[max(0, i - 6) : i])
                        raise RuntimeError(f"the guest kernel panicked: {text} (after: {before})")
                    i += 1
                left = deadline - time.monotonic()
                if self.closed:
                    raise ConnectionError(f"the console closed while waiting for {what or pattern}")
                if left <= 0:
                    raise TimeoutError(f"no {what or pattern!r} on the console in {timeout:.0f} s")
                self._cond.wait(left)

    def wait_prompt(self, timeout: float) -> None:
        """Until the unfinished last line looks like a shell prompt."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not SHELL_PROMPT.search(self.partial):
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise TimeoutError(f"no shell prompt on the console in {timeout:.0f} s")
                self._cond.wait(left)

    def send(self, text: str | bytes) -> None:
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def run(self, command: str, timeout: float) -> list[str]:
        """Run a shell command on the console; its output lines (driver log lines removed).

        The output is framed by two markers the command prints; the quotes in the typed
        line keep its echo (which the shell may wrap) from matching them.
        """
        with self._cond:
            n = len(self.lines)
        begin, end = f"NETVM_BEGIN_{n}", f"NETVM_END_{n}"

        def quoted(marker: str) -> str:
            return f"'{marker[:6]}''{marker[6:]}'"

        self.send(f"echo {quoted(begin)}; {command}; echo {quoted(end)}\n")
        first, _ = self.wait_for(re.compile(f"^{begin}$"), timeout, n, what=command)
        last, _ = self.wait_for(re.compile(f"^{end}$"), timeout, first, what=command)
        with self._cond:
            out = [ln.text for ln in self.lines[first + 1 : last]]
        return [t for t in out if not t.startswith((driverlog.PREFIX, "netvm-"))]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2)
        self.sock.close()
        self._log.close()


def connect_unix(path: Path, timeout: float, proc: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {proc.returncode} during start-up") from None
            if time.monotonic() >= deadline:
                raise TimeoutError(f"QEMU did not open {path} in {timeout:.0f} s") from None
            time.sleep(0.005)


# ---------------------------------------------------------------------------- the terminal

CTRL_A = 0x01  # the console's command prefix, as in QEMU's -serial mon:stdio and runqemu
QUIT_KEYS = b"xX"
HELP_KEYS = b"hH?"
CONSOLE_KEYS = (
    ("Ctrl-A X", "quit: stop QEMU and clean up"),
    ("Ctrl-A H", "this help"),
    ("Ctrl-A Ctrl-A", "send Ctrl-A to the guest"),
    ("Ctrl-C, Ctrl-Z, ...", "go to the guest, like every other key"),
)


CONSOLE_BANNER = (
    "console follows; Ctrl-A X quits, Ctrl-A H lists the keys; Ctrl-C goes to the guest"
)


def console_help() -> str:
    """The console keys, one per line (CR LF: the terminal is raw when it is shown)."""
    width = max(len(k) for k, _ in CONSOLE_KEYS)
    lines = ["", "netvm console keys:"] + [f"  {k:<{width}}  {what}" for k, what in CONSOLE_KEYS]
    return "\r\n".join(lines) + "\r\n"


class ConsoleKeys:
    """The Ctrl-A prefix of the console: Ctrl-A X quits, Ctrl-A H shows the keys, Ctrl-A
    Ctrl-A sends one Ctrl-A; any other key after Ctrl-A is dropped (as QEMU does). The
    prefix may come in one read and its key in the next."""

    def __init__(self) -> None:
        self.prefixed = False

    def feed(self, data: bytes) -> tuple[bytes, str | None]:
        """(the bytes for the guest, "quit" or "help" if one was typed). The keys after a
        quit are not taken; those after a help are, in the next call."""
        out = bytearray()
        for i, byte in enumerate(data):
            if self.prefixed:
                self.prefixed = False
                if byte == CTRL_A:
                    out.append(CTRL_A)
                elif byte in QUIT_KEYS:
                    return bytes(out), "quit"
                elif byte in HELP_KEYS:
                    rest, command = self.feed(data[i + 1 :])
                    return bytes(out) + rest, command or "help"
            elif byte == CTRL_A:
                self.prefixed = True
            else:
                out.append(byte)
        return bytes(out), None


def raw_mode(attrs: list[Any]) -> list[Any]:
    """Terminal attributes (termios.tcgetattr's list) in raw mode: every key one byte to
    the program, Ctrl-C and Ctrl-Z included (no signals), no echo, no line editing, and
    output untouched (the guest's tty already turned its newlines into CR LF)."""
    raw = [*attrs[:6], list(attrs[6])]
    raw[0] &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
    )  # fmt: skip
    raw[1] &= ~termios.OPOST
    raw[2] = (raw[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    raw[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    raw[6][termios.VMIN] = 1
    raw[6][termios.VTIME] = 0
    return raw


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """`fd`'s terminal in raw mode for the block, restored as it was however the block
    ends: normally, by an exception, by SIGTERM (sigterm_as_interrupt) or by SIGHUP (the
    terminal went away; handled here). Both signals raise KeyboardInterrupt in the main
    thread, so the run's clean-up runs too. Yields False, changing nothing, when `fd` is
    not a terminal."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    old_hup = None
    if threading.current_thread() is threading.main_thread():

        def hangup(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        old_hup = signal.signal(signal.SIGHUP, hangup)
    try:
        termios.tcsetattr(fd, termios.TCSAFLUSH, raw_mode(saved))
        yield True
    finally:
        with contextlib.suppress(termios.error, OSError):  # a terminal hung up stays so
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        if old_hup is not None:
            signal.signal(signal.SIGHUP, old_hup)


def attach_terminal(
    console: GuestConsole,
    tty_in: int,
    tty_out: int,
    check: Callable[[], None] = lambda: None,
) -> str:
    """The user's terminal on the guest console, until Ctrl-A X ("quit"), the console
    closes ("closed": QEMU exited) or the terminal does ("hangup").

    `tty_in` is read in raw mode (raw_terminal) and every key goes to the guest, Ctrl-C
    included, except the Ctrl-A commands (ConsoleKeys); the guest's output reaches
    `tty_out` through the console's echo (GuestConsole(echo=tty_out)). `check` runs a few
    times a second and raises to end the session (e.g. the simulated VMM failed). Input
    that is not a terminal is forwarded until its end; the session then lasts until the
    console closes or an interrupt."""
    keys = ConsoleKeys()
    with raw_terminal(tty_in) as is_tty:
        reading = True
        while not console.closed:
            check()
            if not select_readable(tty_in if reading else None, 0.2):
                continue
            try:
                data = os.read(tty_in, 4096)
            except OSError:  # EIO: the terminal hung up
                data = b""
            if not data:
                if is_tty:
                    return "hangup"
                reading = False
                continue
            send, command = keys.feed(data)
            if send:
                try:
                    console.send(send)
                except OSError:
                    return "closed"
            if command == "help":
                with contextlib.suppress(OSError):
                    os.write(tty_out, console_help().encode())
            elif command == "quit":
                return "quit"
    return "closed"


def select_readable(fd: int | None, timeout: float) -> bool:
    """Whether `fd` is readable within `timeout` (None: just wait `timeout`)."""
    if fd is None:
        time.sleep(timeout)
        return False
    return bool(select.select([fd], [], [], timeout)[0])


# ---------------------------------------------------------------------------- one run


@dataclass
class QemuRun:
    """One guest under QEMU with (optionally) the simulated VMM and the peer namespace.

    Interactive, the console's output also goes to this process's stdout (the user's
    terminal, attach_terminal), and stopping does not type into the guest."""

    board: Board
    ws: Workspace
    images: GuestImages
    options: RunOptions
    interactive: bool = False
    progress: Progress = silent
    net: netns.NetnsConfig | None = None
    vmm: QemuVmm | None = None
    proc: subprocess.Popen[bytes] | None = None
    console: GuestConsole | None = None
    t0: float = 0.0
    _stderr: Any = None

    def __post_init__(self) -> None:
        self.tag = runs.new_tag()
        self.paths = RunPaths(
            self.options.run_root / f"{RUN_PREFIX}{self.tag}",
            self.ws.build_dir(self.board) / "qemu",
        )

    def __enter__(self) -> QemuRun:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        check_dtb_placement(self.board, self.images)
        if shutil.which(qemu_binary(self.board)) is None:
            raise UserError(f"{qemu_binary(self.board)} is not installed", hint="run ./bootstrap")
        if self.options.vmm:
            netns.require_root()
        runs.remove_stale(self.options.run_root, namespaces=self.options.vmm)
        shutil.rmtree(self.paths.dir, ignore_errors=True)
        self.paths.dir.mkdir(parents=True)
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        tap = None
        if self.options.vmm:
            self.net = netns.NetnsConfig.from_settings(sim_settings(self.board), str(self.tag))
            create_peer_namespace(self.net)
            tap = self.net.peer_if
            self.vmm = QemuVmm(self.board, self.ws.root, self.paths.ram, self.paths.dir)
            self.vmm.prepare()
        cmd = qemu_command(self.board, self.images, self.paths, tap=tap)
        if self.net is not None:
            cmd = netns.in_ns(self.net.peer_ns, cmd)  # the tap lives in the peer namespace
        (self.paths.log_dir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        self._stderr = open(self.paths.log_dir / "qemu.stderr", "wb")  # noqa: SIM115
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        timeout = self.options.command_timeout
        sock = connect_unix(self.paths.console, timeout, self.proc)
        echo = sys.stdout.fileno() if self.interactive else None
        self.console = GuestConsole(sock, self.t0, self.paths.console_log, echo=echo)
        if self.vmm is not None:
            self.vmm.connect(self.paths.doorbell, timeout)
            self.vmm.start()

    def qemu_stderr(self) -> str:
        try:
            return (self.paths.log_dir / "qemu.stderr").read_text(errors="replace").strip()
        except OSError:
            return ""

    def require_console(self) -> GuestConsole:
        if self.console is None:
            raise RuntimeError("QEMU's console is not connected")
        return self.console

    def wait_ready(self, start: int = 0) -> tuple[int, Line]:
        """The driver's event-loop line (from console line `start` on); without the
        simulated VMM, its data-passing check (it can go no further)."""
        line, what = driverlog.READY, "the driver's event loop line"
        if self.vmm is None:
            line, what = driverlog.DATA_PAGE_CHECK, "the driver's data-passing check"
        return self.require_console().wait_for(line, self.options.boot_timeout, start, what=what)

    def uio_devices(self) -> dict[str, int]:
        """UIO name -> size of map0 as the guest's sysfs shows them."""
        console = self.require_console()
        console.send("\n")
        console.wait_prompt(self.options.command_timeout)
        out = console.run(
            'for d in /sys/class/uio/uio*; do echo "UIO $(cat $d/name) '
            '$(cat $d/maps/map0/size 2>/dev/null || echo -)"; done',
            self.options.command_timeout,
        )
        found: dict[str, int] = {}
        for text in out:
            m = re.fullmatch(r"UIO (\S+) (0x[0-9a-f]+|-)", text.strip())
            if m:
                found[m[1]] = int(m[2], 16) if m[2] != "-" else 0
        return found

    def peer(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        assert self.net is not None
        env = dict(os.environ, PYTHONPATH=str(self.ws.root))
        return subprocess.run(
            netns.in_ns(self.net.peer_ns, cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def ping(self, target: str, count: int) -> dict[str, Any]:
        """`count` echo requests from the peer namespace, one at a time, each waiting up to
        PING_WAIT seconds for its reply. (One `ping -c N` waits for its last replies only
        max(2 x the slowest round trip so far, the interval): on a busy shared host a late
        reply would count as lost.)"""
        rtts: list[float] = []
        for _ in range(count):
            proc = self.peer(
                ["ping", "-n", "-c", "1", "-W", str(PING_WAIT), target],
                self.options.command_timeout + PING_WAIT,
            )
            m = re.search(r"time=([\d.]+) ms", proc.stdout)
            if m:
                rtts.append(float(m[1]))
        return {
            "target": target,
            "sent": count,
            "received": len(rtts),
            "rtt_avg_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
            "rtt_max_ms": max(rtts) if rtts else None,
        }

    def udp_echo(self, target: str) -> dict[str, Any]:
        port = str(self.board.sim.udp_echo_port)
        args = ["udp-echo", "--target", target, "--port", port, "--sizes", self.options.udp_sizes]
        proc = self.peer(
            [sys.executable, "-m", "netvm.sim.peer", *args, "--timeout", "2"],
            self.options.command_timeout * 3,
        )
        if proc.returncode:
            return {"target": target, "error": proc.stderr.strip()[-500:], "echoed": 0}
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    def poweroff(self) -> str:
        """Power the guest off from its shell (PSCI SYSTEM_OFF); how it ended. Interactive,
        QEMU is terminated instead: the user's program may own the console (e.g. `top`)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return "already stopped"
        if self.console is not None and not self.console.closed and not self.interactive:
            with contextlib.suppress(OSError):
                self.console.send("\npoweroff -f\n")
            try:
                proc.wait(timeout=self.options.command_timeout)
                return "guest powered off"
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
            return "QEMU terminated"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return "QEMU killed"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.poweroff()
        if self.console is not None:
            self.console.close()
        if self.vmm is not None:
            self.vmm.stop()
        if self.net is not None:
            remove_peer_namespace(self.net)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        shutil.rmtree(self.paths.dir, ignore_errors=True)


def create_peer_namespace(cfg: netns.NetnsConfig) -> None:
    """The peer namespace with a tap (QEMU's NIC) holding the peer address. The tap is
    created inside the namespace: its name is that namespace's alone."""
    remove_peer_namespace(cfg)
    p = cfg.peer_ns
    netns.run(["ip", "netns", "add", p])
    netns.run(netns.in_ns(p, ["ip", "tuntap", "add", "dev", cfg.peer_if, "mode", "tap"]))
    netns.run(
        netns.in_ns(p, ["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"]),
        check=False,
    )
    netns.run(netns.in_ns(p, ["ip", "link", "set", "lo", "up"]))
    # Real checksums on the wire: the echo clients check and recompute them.
    netns.run(
        netns.in_ns(p, ["ethtool", "-K", cfg.peer_if, "tx", "off", "gso", "off", "tso", "off"]),
        check=False,
    )
    netns.run(netns.in_ns(p, ["ip", "addr", "add", cfg.peer_address, "dev", cfg.peer_if]))
    netns.run(netns.in_ns(p, ["ip", "link", "set", cfg.peer_if, "up"]))


def remove_peer_namespace(cfg: netns.NetnsConfig) -> None:
    netns.remove(cfg.peer_ns)  # kills QEMU too if it is still in there


# ---------------------------------------------------------------------------- tasks


@dataclass
class QemuReport:
    board: str
    ok: bool = False
    reason: str = ""
    boot_seconds: float | None = None
    milestone: str = "driver event loop"  # what boot_seconds measures
    uio: dict[str, int] = field(default_factory=dict)
    uio_problems: list[str] = field(default_factory=list)
    driver_log: list[str] = field(default_factory=list)
    ping: list[dict[str, Any]] = field(default_factory=list)
    udp_echo: list[dict[str, Any]] = field(default_factory=list)
    vmm: dict[str, Any] = field(default_factory=dict)
    ended: str = ""
    console_log: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        lines = [f"qemu {self.board}: {'PASS' if self.ok else 'FAIL'}"]
        if self.reason:
            lines.append(f"reason: {self.reason}")
        if self.boot_seconds is not None:
            lines.append(f"QEMU start -> {self.milestone}: {self.boot_seconds:.2f} s")
        if self.uio:
            lines.append(
                f"UIO devices ({len(self.uio)}): "
                + ", ".join(f"{n} {s:#x}" for n, s in sorted(self.uio.items()))
            )
        lines += [f"UIO: {p}" for p in self.uio_problems]
        for p in self.ping:
            lines.append(
                f"ping {p['target']}: {p['received']}/{p['sent']} replies"
                + (f", avg {p['rtt_avg_ms']} ms" if p.get("rtt_avg_ms") is not None else "")
            )
        for u in self.udp_echo:
            rtt = u.get("rtt_us", {})
            lines.append(
                f"udp echo {u['target']}: {u.get('echoed', 0)}/{u.get('sent', '?')} echoed"
                + (f", p50 {rtt['p50'] / 1000:.1f} ms" if rtt.get("p50") is not None else "")
                + (f" ({u['error']})" if u.get("error") else "")
            )
        if self.ended:
            lines.append(f"shutdown: {self.ended}")
        if self.console_log:
            lines.append(f"console log: {self.console_log}")
        return "\n".join(lines)


def uio_problems(board: Board, seen: dict[str, int]) -> list[str]:
    problems = []
    for dev in board.uio:
        want = dev.maps[0].size
        if dev.name not in seen:
            problems.append(f"{dev.name} missing")
        elif seen[dev.name] != want:
            problems.append(f"{dev.name} map0 is {seen[dev.name]:#x}, expected {want:#x}")
    return problems


def run_qemu_check(
    board: Board,
    ws: Workspace,
    options: RunOptions,
    progress: Progress = silent,
) -> QemuReport:
    """Boot, wait for the driver, check the UIO devices and traffic, power off, report."""
    images = guest_images(board, ws, options, progress)
    report = QemuReport(board.name)
    if not options.vmm:
        report.milestone = "driver data-passing check (no VMM)"
    run = QemuRun(board, ws, images, options, progress=progress)
    report.console_log = str(run.paths.console_log)
    phase = "boot"  # then "traffic", "power-off": an interrupt names the one it came in
    try:
        with sigterm_as_interrupt(), run:
            progress(f"booting {board.name} under QEMU (TCG)")
            _, line = run.wait_ready()
            report.boot_seconds = round(line.seconds, 3)
            phase = "traffic"
            console = run.require_console()
            report.driver_log = console.driver_log()
            report.uio = run.uio_devices()
            report.uio_problems = uio_problems(board, report.uio)
            if run.vmm is not None:
                for client in run.vmm.layout.clients:
                    report.ping.append(run.ping(client.ipv4, options.ping_count))
                    report.udp_echo.append(run.udp_echo(client.ipv4))
                report.vmm = run.vmm.stats()
            phase = "power-off"
            report.ended = run.poweroff()
    except KeyboardInterrupt:
        raise Interrupted("invoke run --check", phase) from None
    except (TimeoutError, ConnectionError, RuntimeError) as exc:
        report.reason = str(exc)
        if run.proc is not None and run.proc.returncode not in (None, 0):
            report.reason += f"; QEMU exited with {run.proc.returncode}: {run.qemu_stderr()}"
    if not report.reason:
        report.reason = check_failures(board, report, options)
    report.ok = not report.reason
    (run.paths.log_dir / "check.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def check_failures(board: Board, report: QemuReport, options: RunOptions) -> str:
    reasons = []
    if report.uio_problems:
        reasons.append("UIO devices differ from the board: " + "; ".join(report.uio_problems))
    for p in report.ping:
        if p["received"] < p["sent"]:
            reasons.append(f"ping {p['target']}: {p['received']}/{p['sent']} replies")
    for u in report.udp_echo:
        if u.get("echoed", 0) != u.get("sent", -1) or u.get("mismatched"):
            reasons.append(f"udp echo {u['target']}: {u.get('echoed', 0)}/{u.get('sent')} echoed")
    if options.vmm and not report.ping:
        reasons.append("no traffic was run")
    return "; ".join(reasons)


def run_qemu_interactive(
    board: Board,
    ws: Workspace,
    options: RunOptions,
    progress: Progress = silent,
) -> int:
    """The console on this terminal until Ctrl-A X or the guest powers off (attach_terminal:
    Ctrl-C goes to the guest); QEMU's exit code, 0 for the user's quit."""
    images = guest_images(board, ws, options, progress)
    run = QemuRun(board, ws, images, options, interactive=True, progress=progress)
    with sigterm_as_interrupt(), run:
        if run.net is not None and run.vmm is not None:
            clients = ", ".join(f"{c.name} {c.ipv4}" for c in run.vmm.layout.clients)
            progress(
                f"simulated VMM on the shared RAM; clients {clients}; peer namespace "
                f"{run.net.peer_ns}; try: ip netns exec {run.net.peer_ns} ping "
                f"{run.vmm.layout.clients[0].ipv4}"
            )
        progress(CONSOLE_BANNER)
        vmm = run.vmm

        def check() -> None:
            if vmm is not None and vmm.error is not None:
                raise RuntimeError("the simulated VMM failed") from vmm.error

        with contextlib.suppress(KeyboardInterrupt):  # SIGTERM, SIGHUP: clean up all the same
            attach_terminal(run.require_console(), sys.stdin.fileno(), sys.stdout.fileno(), check)
        progress("\nstopping")
    code = run.proc.returncode if run.proc is not None else 1
    return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else int(code or 1)


__all__ = [
    "DOORBELL_UIO",
    "GuestImages",
    "QemuReport",
    "QemuRun",
    "RunOptions",
    "attach_terminal",
    "guest_images",
    "qemu_command",
    "run_qemu_check",
    "run_qemu_interactive",
]
