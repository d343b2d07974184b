"""`invoke flash`: getting a built image onto a board through U-Boot.

Owns what is loaded where (a `BootPlan`), and the TFTP method: serve the plan's files
from netvm's own TFTP server (`netvm.target.tftp`, nothing else is served), drive U-Boot over
the serial line (`netvm.target.uboot`): stop autoboot, `setenv autoload no`, network set-up
(DHCP or static), `tftpboot` each file to its address and check the byte count, then
start the image and watch the console for a success pattern, keeping a console log.
The SD-card method lives in `netvm.target.sdcard`.

Plans: an seL4 board (odroidc4) loads `loader.img` at the board's load address and
starts it with `go`; a Linux-only QEMU board loads kernel, DTB and initramfs and boots
with `booti`.

Every value that ends up on U-Boot's command line is parsed where it enters, before
anything starts: `FlashOptions` checks the flags (addresses, netmask, numbers, the
method), `Network` and `BootPlan` check what they are built from, and `check_options`
checks the serial device. The console refuses any command that would still split or
expand on the command line (`netvm.target.uboot.check_command`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from netvm.board import Board
from netvm.builder.manifest import MANIFEST_NAME, read_manifest
from netvm.core.cliargs import parse_seconds
from netvm.core.errors import Finding, UserError
from netvm.core.workspace import Workspace
from netvm.target.tftp import PLAIN_NAME_TEXT, TftpServer, is_plain_name
from netvm.target.uboot import (
    BAUD_RATES,
    UBootConsole,
    UBootError,
    command_problem,
    open_line,
    open_log,
)

# What netvm's guest driver prints once it serves the queues (upstream's driver prints
# the same words): the image booted all the way to a working driver VM.
DEFAULT_SUCCESS = r"UIO\(NET\): \*\*\* All pending TX active have been sent"
# A QEMU board has no seL4 VMM behind the driver, so the driver's first start-up line is
# the proof that the guest booted all the way to it.
QEMU_SUCCESS = r"UIO\(NET\): \*\*\* Starting up"
DEFAULT_TIMEOUT = 300.0  # seconds from the boot command to the success pattern
BOOTI_FDT_ADDR = 0x48000000  # QEMU virt: above kernel (0x40400000) and ramdisk (0x44000000)
# Debian's u-boot-qemu build for QEMU virt (arm64): what `invoke flash` boots a QEMU
# board's U-Boot from when it starts QEMU itself.
QEMU_UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
# U-Boot's qemu_arm64 load addresses; `booti_plan` loads at these (the DTB at its own).
QEMU_KERNEL_ADDR = 0x40400000
QEMU_RAMDISK_ADDR = 0x44000000
# QEMU's mux chardev carries U-Boot's UART *and* the guest's virtio console (hvc0) on one
# socket, as one serial line carries both on a real board. Keyboard input goes to one
# frontend only, the last one attached (the virtio console); Ctrl-A c hands it to the
# UART, which is the next in turn with exactly these two frontends.
QEMU_MUX_FOCUS = b"\x01c"
PAGE = 0x1000  # load addresses are page-aligned: `go` enters a page-aligned link address
MAX_ADDRESS = (1 << 64) - 1
MAX_TIMEOUT = 86400.0  # a day; more is a typo
METHODS = ("tftp", "sdcard")


# ---------------------------------------------------------------------------------------
# Checking what the user typed. Each parser returns the value in its canonical form or
# raises a UserError naming the flag, the value, what was expected, and a hint.

T = TypeVar("T")


def _flag_error(flag: str, value: object, expected: str, hint: str) -> UserError:
    shown = repr(value) if isinstance(value, str) else str(value)
    return UserError(f"{flag} {shown} is not {expected}", hint=hint)


def _collect(findings: list[Finding], parse: Callable[[], T]) -> T | None:
    """`parse()`, or None with its findings added: report every bad flag at once."""
    try:
        return parse()
    except UserError as exc:
        findings.extend(exc.findings)
        return None


_IP_EXAMPLES = {
    "--ip": "192.168.1.50",
    "--server-ip": "192.168.1.10",
    "--gateway": "192.168.1.1",
    "--bind": "0.0.0.0",
}


def parse_ipv4(flag: str, value: object, *, unicast: bool = True) -> str:
    """An IPv4 address in dotted-quad form; `unicast`: one a host can have."""
    hint = f"e.g. {flag} {_IP_EXAMPLES.get(flag, '192.168.1.50')}"
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        raise _flag_error(
            flag, value, "an IPv4 address (four numbers 0-255 joined by dots)", hint
        ) from None
    if unicast and (addr.is_unspecified or addr.is_multicast or int(addr) == 0xFFFFFFFF):
        raise _flag_error(
            flag, value, "a unicast IPv4 address (not 0.0.0.0, multicast or broadcast)", hint
        )
    return str(addr)


def parse_netmask(value: object) -> str:
    """A contiguous IPv4 netmask in dotted-quad form, /1 to /32."""
    expected = "a contiguous IPv4 netmask (1 to 32 leading one bits, such as 255.255.255.0)"
    hint = "e.g. --netmask 255.255.255.0 for a /24"
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        bits = int(ipaddress.IPv4Address(value))
    except ValueError:
        raise _flag_error("--netmask", value, expected, hint) from None
    host = ~bits & 0xFFFFFFFF
    if bits == 0 or host & (host + 1):
        raise _flag_error("--netmask", value, expected, hint)
    return value


def load_address_problem(address: int) -> str | None:
    """What is wrong with a load address (after "0x... is not"), or None."""
    if not 0 <= address <= MAX_ADDRESS:
        return f"an address from 0 to {MAX_ADDRESS:#x}"
    if address % PAGE:
        return f"page-aligned (a multiple of {PAGE:#x})"
    return None


def parse_address(text: str | int, flag: str = "--load-address") -> int:
    """A load address as typed on the command line (0x20000000 or decimal), or a number."""
    hint = "e.g. 0x20000000"
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise _flag_error(flag, text, "a number", hint)
    if isinstance(text, int):
        address, shown = text, f"{text:#x}"
    else:
        m = re.fullmatch(r"(-?)(?:0[xX]([0-9a-fA-F]{1,40})|([0-9]{1,40}))", text)
        if m is None:
            raise UserError(f"{flag} {text!r} is not a number", hint=hint)
        digits = int(m.group(2), 16) if m.group(2) else int(m.group(3))
        address, shown = -digits if m.group(1) else digits, repr(text)
    problem = load_address_problem(address)
    if problem is not None:
        raise UserError(f"{flag} {shown} is not {problem}", hint=hint)
    return address


def _whole_number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,20}", value.strip()):
        return int(value.strip())
    return None


def parse_port(value: object) -> int:
    port = _whole_number(value)
    if port is None or not 1 <= port <= 65535:
        raise _flag_error(
            "--port",
            value,
            "a UDP port from 1 to 65535",
            "U-Boot always asks port 69: keep the default unless 69 is forwarded to this port",
        )
    return port


def parse_baud(value: object) -> int:
    baud = _whole_number(value)
    if baud is None or baud not in BAUD_RATES:
        rates = ", ".join(str(r) for r in sorted(BAUD_RATES))
        raise _flag_error(
            "--baud",
            value,
            f"a supported baud rate ({rates})",
            "the board's console speed: 115200 for the Odroid C4 and most U-Boot boards",
        )
    return baud


def parse_timeout(value: object) -> float:
    """--timeout: a duration as every task reads one (netvm.core.cliargs), at most a day."""
    if not isinstance(value, str | int | float):
        value = str(value)
    return parse_seconds("--timeout", value, high=MAX_TIMEOUT)


def parse_success(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise UserError(f"--success {value!r} is not a regular expression: {exc}") from None


SERIAL_HINT = (
    "give the board's console: a tty such as /dev/ttyUSB0 (see ls /dev/serial/by-id/), "
    "or unix:PATH for a QEMU -serial unix:PATH,server=on socket"
)


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
    ]
    return next((kind for test, kind in kinds if test(mode)), "not a device")


def check_serial(spec: str, *, dry_run: bool = False) -> None:
    """`--serial`: a character device (a tty), or `unix:PATH` naming a socket.

    The socket may not exist yet (QEMU creates it; the line waits for it). A missing
    device is allowed in a dry run, which opens nothing. That a character device is a
    terminal shows only when it is opened (`netvm.target.uboot.SerialLine`).
    """
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path:
            raise _flag_error("--serial", spec, "unix:PATH with a socket path", SERIAL_HINT)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _flag_error(
                "--serial", spec, f"a Unix socket (cannot examine it: {exc.strerror})", SERIAL_HINT
            ) from None
        if not stat.S_ISSOCK(mode):
            raise _flag_error(
                "--serial", spec, f"a Unix socket (it is {_file_kind(mode)})", SERIAL_HINT
            )
        return
    expected = "a terminal or character device"
    try:
        mode = os.stat(spec).st_mode
    except FileNotFoundError:
        if dry_run:
            return
        raise _flag_error(
            "--serial", spec, f"{expected} (there is no such file)", SERIAL_HINT
        ) from None
    except OSError as exc:
        raise _flag_error(
            "--serial", spec, f"{expected} (cannot examine it: {exc.strerror})", SERIAL_HINT
        ) from None
    if not stat.S_ISCHR(mode):
        raise _flag_error("--serial", spec, f"{expected} (it is {_file_kind(mode)})", SERIAL_HINT)


def _check_commands(commands: list[str]) -> None:
    """Refuse, before anything starts, a command the console would refuse half-way."""
    problems = [
        Finding("", "", f"U-Boot command {cmd!r} refused: {problem}")
        for cmd in commands
        if (problem := command_problem(cmd)) is not None
    ]
    if problems:
        raise UserError(problems)


NAME_HINT = (
    "the name is served over TFTP and typed into U-Boot: copy or link the file to a plain "
    "name such as loader.img"
)


@dataclass(frozen=True)
class Payload:
    name: str  # the name the board asks the TFTP server for
    path: Path
    address: str  # U-Boot expression: 0x20000000 or ${kernel_addr_r}

    @property
    def command(self) -> str:
        return f"tftpboot {self.address} {self.name}"


@dataclass(frozen=True)
class BootPlan:
    """What U-Boot loads and runs; refused at construction if a name or command is unsafe."""

    payloads: tuple[Payload, ...]
    boot: str  # the command that starts the image; it does not return to the prompt
    setup: tuple[str, ...] = ()  # commands between loading and booting

    def __post_init__(self) -> None:
        findings: list[Finding] = []
        seen: set[str] = set()
        for p in self.payloads:
            if not is_plain_name(p.name):
                message = f"the file name {p.name!r} is not a plain name ({PLAIN_NAME_TEXT})"
                findings.append(Finding(str(p.path), "", message, NAME_HINT))
            elif p.name in seen:
                message = f"a second file to serve is named {p.name!r}"
                findings.append(Finding(str(p.path), "", message, "rename one of them"))
            seen.add(p.name)
        if findings:
            raise UserError(findings)
        _check_commands(self.commands())

    def commands(self) -> list[str]:
        """Everything typed at the prompt, in order."""
        return [p.command for p in self.payloads] + list(self.setup) + [self.boot]

    def describe(self) -> list[str]:
        lines = [f"{p.command}   ({p.path})" for p in self.payloads]
        return lines + list(self.setup) + [self.boot]


def go_plan(image: Path, load_address: int) -> BootPlan:
    """An seL4 system image: U-Boot jumps to its first instruction."""
    problem = load_address_problem(load_address)
    if problem is not None:
        raise UserError(f"load address {load_address:#x} is not {problem}", hint="e.g. 0x20000000")
    return BootPlan((Payload(image.name, image, f"{load_address:#x}"),), f"go {load_address:#x}")


def booti_plan(
    kernel: Path,
    *,
    dtb: Path | None = None,
    initramfs: Path | None = None,
    bootargs: str | None = None,
) -> BootPlan:
    """A Linux guest booted directly (QEMU virt): `booti kernel initrd:size fdt`.

    The initramfs is loaded last so that `${filesize}` is its size at the `booti`. U-Boot
    then writes /chosen linux,initrd-start/end itself, for where the initramfs really is;
    `initrd_high`/`fdt_high` set to all ones keep it and the DTB where they were loaded
    (Debian's default, 0xffffffff, lets U-Boot move them below its own copy at the top
    of RAM), so what the guest gets is exactly the plan's addresses.
    """
    payloads = [Payload(kernel.name, kernel, "${kernel_addr_r}")]
    setup = ["setenv initrd_high 0xffffffffffffffff", "setenv fdt_high 0xffffffffffffffff"]
    fdt = "${fdt_addr}"  # QEMU's own DTB unless one is given
    if dtb is not None:
        payloads.append(Payload(dtb.name, dtb, f"{BOOTI_FDT_ADDR:#x}"))
        fdt = f"{BOOTI_FDT_ADDR:#x}"
    ramdisk = "-"
    if initramfs is not None:
        payloads.append(Payload(initramfs.name, initramfs, "${ramdisk_addr_r}"))
        ramdisk = "${ramdisk_addr_r}:${filesize}"
    if bootargs is not None:
        setup.append(f"setenv bootargs {bootargs}")
    return BootPlan(tuple(payloads), f"booti ${{kernel_addr_r}} {ramdisk} {fdt}", tuple(setup))


def plan_for_board(
    board: Board,
    ws: Workspace,
    *,
    image: Path | None = None,
    load_address: int | None = None,
) -> BootPlan:
    """The board's plan from its last build's manifest (or an explicit `image`)."""
    file = ws.build_dir(board) / MANIFEST_NAME
    manifest = read_manifest(file, ws.display(file), ws.root)
    board_file = board.display_file or ws.display(board.file)
    if board.name.startswith("qemu_virt"):
        problem = command_problem(f"setenv bootargs {board.guest.bootargs}")
        if problem is not None:
            raise UserError(
                [
                    Finding(
                        board_file,
                        "guest.bootargs",
                        f"cannot be typed into U-Boot's `setenv bootargs`: {problem}",
                        "keep kernel arguments to printable words without ; & | quotes, "
                        "backslash, backquote or $",
                    )
                ]
            )
        kernel = manifest.require(
            "kernel_image", "kernel image to boot", f"run `invoke build --board {board.name}` first"
        )
        dtb, initramfs = manifest.get("dtb"), manifest.get("initramfs")
        return booti_plan(
            kernel.path,
            dtb=dtb.path if dtb else None,
            initramfs=initramfs.path if initramfs else None,
            bootargs=board.guest.bootargs,
        )
    if image is not None and not is_plain_name(image.name):
        raise UserError(
            f"--image {str(image)!r} is not a file with a plain name ({PLAIN_NAME_TEXT})",
            hint=NAME_HINT,
        )
    if load_address is None:
        problem = load_address_problem(board.flash_load_address)
        if problem is not None:
            raise UserError(
                [
                    Finding(
                        board_file,
                        "flash.load_address",
                        f"{board.flash_load_address:#x} is not {problem}",
                        "e.g. 0x20000000",
                    )
                ]
            )
    if image is None:
        loader = manifest.get("loader_img")
        image = loader.path if loader else None
    if image is None or not image.is_file():
        raise UserError(
            [
                Finding(
                    ws.display(file),
                    "artifacts.loader_img",
                    "no loader.img to flash",
                    f"build it: `invoke build --board {board.name} --microkit-sdk DIR --libvmm "
                    "DIR --sddf DIR --require-image` (see docs/microkit.md), or pass --image FILE",
                )
            ]
        )
    return go_plan(image, board.flash_load_address if load_address is None else load_address)


# ---------------------------------------------------------------------------------------
# The TFTP method


@dataclass(frozen=True)
class Network:
    """How U-Boot reaches netvm's TFTP server: DHCP, or a static address."""

    server_ip: str  # the address of this machine as the board sees it
    ip: str | None = None  # None: dhcp
    netmask: str = "255.255.255.0"
    gateway: str | None = None

    def __post_init__(self) -> None:
        findings: list[Finding] = []
        _collect(findings, partial(parse_ipv4, "--server-ip", self.server_ip))
        for flag, value in (("--ip", self.ip), ("--gateway", self.gateway)):
            if value is not None:
                _collect(findings, partial(parse_ipv4, flag, value))
        _collect(findings, partial(parse_netmask, self.netmask))
        if findings:
            raise UserError(findings)

    def commands(self) -> list[tuple[str, float]]:
        cmds: list[tuple[str, float]] = [("setenv autoload no", 10.0)]
        if self.ip is None:
            cmds.append(("dhcp", 60.0))
        else:
            cmds.append((f"setenv ipaddr {self.ip}", 10.0))
            cmds.append((f"setenv netmask {self.netmask}", 10.0))
            if self.gateway:
                cmds.append((f"setenv gatewayip {self.gateway}", 10.0))
        # Set after dhcp: a DHCP server may hand out its own (unrelated) serverip.
        cmds.append((f"setenv serverip {self.server_ip}", 10.0))
        return cmds


@dataclass
class FlashResult:
    ok: bool
    log: Path
    transfers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    matched: str = ""

    def summary(self) -> str:
        sent = ", ".join(f"{t['name']} ({t['bytes']} bytes)" for t in self.transfers)
        return (
            f"booted: success pattern seen after {self.seconds:.1f} s ({self.matched!r}); "
            f"served {sent}; console log: {self.log}"
        )


def host_address() -> str:
    """This machine's address on its default route (what a board on the LAN would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def flash_tftp(
    plan: BootPlan,
    *,
    serial: str,
    baud: int = 115200,
    network: Network,
    log_path: Path,
    success: str = DEFAULT_SUCCESS,
    timeout: float = DEFAULT_TIMEOUT,
    bind: str = "0.0.0.0",
    port: int = 69,
    autoboot_timeout: float = 60.0,
    char_delay: float = 0.0,
    line_init: bytes = b"",
) -> FlashResult:
    """Load `plan` over TFTP through U-Boot on `serial` and wait for `success`.

    `line_init` is sent once before anything else (QEMU's multiplexed console needs
    its focus switched to the UART U-Boot reads, see `QEMU_MUX_FOCUS`).
    """
    pattern = parse_success(success)
    parse_baud(baud)
    parse_port(port)
    timeout = parse_timeout(timeout)
    _check_commands([cmd for cmd, _ in network.commands()] + plan.commands())
    files = {p.name: p.path for p in plan.payloads}
    for p in plan.payloads:
        if not p.path.is_file():
            raise UserError([Finding(str(p.path), "", "file to flash not found")])
    try:
        server = TftpServer(files, bind, port)
    except OSError as exc:
        raise UserError(
            [
                Finding(
                    f"{bind}:{port}",
                    "",
                    f"cannot start the TFTP server: {exc.strerror}",
                    "TFTP uses UDP port 69: run as root (or give python CAP_NET_BIND_SERVICE) "
                    "and stop any other TFTP server",
                )
            ]
        ) from None
    try:
        line = open_line(serial, baud)
    except (OSError, ValueError) as exc:
        server.close()
        raise UserError(
            [Finding(serial, "", f"cannot open the serial line: {exc}", "check --serial/--baud")]
        ) from None
    with server, open_log(log_path) as log:
        log.write(f"\n=== netvm flash: {' ; '.join(plan.describe())} ===\n".encode())
        console = UBootConsole(line, log, char_delay=char_delay)
        try:
            if line_init:
                console.send(line_init)
            console.stop_autoboot(autoboot_timeout)
            for cmd, limit in network.commands():
                console.run(cmd, timeout=limit)
            for p in plan.payloads:
                size = p.path.stat().st_size
                # ~1 MB/s is a slow LAN; never wait less than a minute.
                result = console.run(p.command, timeout=60 + size / 1e6)
                m = re.search(r"Bytes transferred = (\d+)", result.output)
                if m is None or int(m.group(1)) != size:
                    raise UBootError(
                        f"tftpboot of {p.name} loaded {m.group(1) if m else 'nothing'} bytes, "
                        f"expected {size}: {result.output.strip()[-300:]}"
                    )
            for cmd in plan.setup:
                console.run(cmd)
            boot_at = time.monotonic()
            console.start(plan.boot)
            matched = console.watch(pattern, timeout)
        except (UBootError, EOFError) as exc:
            raise UserError(
                [
                    Finding(
                        serial,
                        "",
                        f"flash over TFTP failed: {exc}",
                        f"the full console output is in {log_path}",
                    )
                ]
            ) from None
        finally:
            line.close()
        transfers = [
            {"name": t.name, "bytes": t.bytes, "seconds": round(t.seconds, 3), "ok": t.ok}
            for t in server.transfers
        ]
    return FlashResult(True, log_path, transfers, time.monotonic() - boot_at, matched.group(0))


# ---------------------------------------------------------------------------------------
# The task's entry point


@dataclass(frozen=True)
class FlashOptions:
    """The flags of `invoke flash`, checked when constructed.

    The numbers and the load address may be given as typed (strings); after construction
    they are numbers (int, float), the addresses are canonical, and every bad flag has
    been reported in one UserError.
    """

    method: str  # tftp | sdcard
    serial: str | None = None
    baud: int | str = 115200
    image: Path | None = None
    load_address: int | str | None = None
    server_ip: str | None = None
    bind: str = "0.0.0.0"
    port: int | str = 69
    ip: str | None = None  # static board address; None: dhcp
    netmask: str = "255.255.255.0"
    gateway: str | None = None
    success: str | None = None  # None: the board's (QEMU_SUCCESS on a QEMU board)
    timeout: float | str = DEFAULT_TIMEOUT
    device: Path | None = None
    force: bool = False
    dry_run: bool = False
    log: Path | None = None

    def __post_init__(self) -> None:
        findings: list[Finding] = []
        if self.method not in METHODS:
            findings.extend(
                _flag_error(
                    "--method",
                    self.method,
                    "tftp or sdcard",
                    "tftp (the default) drives U-Boot over --serial; sdcard writes --device",
                ).findings
            )
        checked: dict[str, object] = {
            "baud": _collect(findings, partial(parse_baud, self.baud)),
            "port": _collect(findings, partial(parse_port, self.port)),
            "timeout": _collect(findings, partial(parse_timeout, self.timeout)),
            "bind": _collect(findings, partial(parse_ipv4, "--bind", self.bind, unicast=False)),
            "netmask": _collect(findings, partial(parse_netmask, self.netmask)),
        }
        if self.load_address is not None:
            checked["load_address"] = _collect(findings, partial(parse_address, self.load_address))
        for flag, name in (("--server-ip", "server_ip"), ("--ip", "ip"), ("--gateway", "gateway")):
            value = getattr(self, name)
            if value is not None:
                checked[name] = _collect(findings, partial(parse_ipv4, flag, value))
        if self.success is not None:
            _collect(findings, partial(parse_success, self.success))
        if findings:
            raise UserError(findings)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def address(self) -> int | None:
        """`load_address` as the number it is after construction."""
        return None if self.load_address is None else int(self.load_address)


def check_options(options: FlashOptions) -> None:
    """What `FlashOptions` cannot check from the values alone: the devices they name."""
    if options.method == "sdcard":
        if options.device is None:
            raise UserError("--method sdcard needs --device DEV (the card, or an image file)")
    elif options.serial is not None:
        check_serial(options.serial, dry_run=options.dry_run)


def uboot_qemu_command(board: Board, sock: Path, uboot: Path = QEMU_UBOOT) -> list[str]:
    """QEMU running U-Boot as firmware on the machine the board's guest DTB describes.

    The machine options are the board's (the DTB was dumped from them; -m is guest RAM)
    plus acpi=off: with firmware and ACPI QEMU swaps the PL061 GPIO at 0x9030000 for an
    ACPI event device, and the guest's PL061 driver then takes an external abort.
    One socket carries U-Boot's UART and the guest's hvc0 (see `QEMU_MUX_FOCUS`); the
    virtio console comes first, so it lands on the transport the guest DT names.
    """
    from netvm.guest.qemu_machine import machine_args

    spec = board.devicetree.base_qemu
    assert spec is not None
    args = machine_args(spec)
    at = args.index("-M") + 1
    args[at] = args[at].replace("virt", "virt,acpi=off", 1)
    return [
        "qemu-system-aarch64",
        *args,
        "-bios",
        str(uboot),
        "-chardev",
        f"socket,id=con0,path={sock},server=on,wait=on,mux=on",
        "-serial",
        "chardev:con0",
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=con0",
        "-netdev",
        "user,id=net0",
        "-device",
        "virtio-net-device,netdev=net0",
        "-monitor",
        "none",
    ]


def flash_board(board: Board, ws: Workspace, options: FlashOptions) -> str:
    """Run `invoke flash`; return the text to print."""
    from netvm.target import sdcard as flash_sdcard

    check_options(options)
    plan = plan_for_board(board, ws, image=options.image, load_address=options.address)
    is_qemu = board.devicetree.base_qemu is not None
    success = options.success or (QEMU_SUCCESS if is_qemu else DEFAULT_SUCCESS)
    if options.method == "sdcard":
        assert options.device is not None
        if len(plan.payloads) != 1:
            raise UserError(f"--method sdcard writes one image; {board.name} boots with booti")
        payload = plan.payloads[0]
        card = flash_sdcard.plan_card(options.device, payload.path, int(payload.address, 0))
        if options.dry_run:
            notes = flash_sdcard.check_device(options.device, force=options.force)
            return f"dry run, nothing written\n{card.describe()}\nchecks: {'; '.join(notes)}"
        return flash_sdcard.write_card(card, force=options.force).summary()
    if options.serial is None and not is_qemu:
        raise UserError(
            "--method tftp needs --serial DEV (e.g. /dev/ttyUSB0, or unix:PATH for QEMU)"
        )
    # A QEMU board without --serial: netvm starts U-Boot under QEMU itself, whose user
    # network sends the board's 127.0.0.1 to this host's loopback.
    own_qemu = options.serial is None
    server_ip = options.server_ip or ("127.0.0.1" if own_qemu else host_address())
    network = Network(server_ip, options.ip, options.netmask, options.gateway)
    if options.dry_run:
        lines = [f"{c}" for c, _ in network.commands()] + plan.describe()
        return "dry run: would type at the U-Boot prompt:\n  " + "\n  ".join(lines)
    log = options.log or ws.build_dir(board) / "flash" / "console.log"
    if not own_qemu:
        assert options.serial is not None
        result = flash_tftp(
            plan,
            serial=options.serial,
            baud=int(options.baud),
            network=network,
            log_path=log,
            success=success,
            timeout=float(options.timeout),
            bind=options.bind,
            port=int(options.port),
            char_delay=0.0 if options.serial.startswith("unix:") else 0.001,
        )
        return result.summary()
    return flash_own_qemu(board, plan, network, log, success, options)


def flash_own_qemu(
    board: Board,
    plan: BootPlan,
    network: Network,
    log: Path,
    success: str,
    options: FlashOptions,
) -> str:
    """Start U-Boot under QEMU, flash `plan` into it over TFTP, stop QEMU (by its pid)."""
    if not QEMU_UBOOT.is_file():
        raise UserError(
            [
                Finding(
                    str(QEMU_UBOOT),
                    "",
                    "U-Boot for QEMU is not installed",
                    "apt-get install u-boot-qemu qemu-system-arm, or pass --serial for a "
                    "QEMU you started",
                )
            ]
        )
    tmp = Path(tempfile.mkdtemp(prefix="netvm-flash-"))
    sock = tmp / "console.sock"
    stderr = (tmp / "qemu.stderr").open("w")
    proc = subprocess.Popen(
        uboot_qemu_command(board, sock), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
    )
    started = time.monotonic()
    try:
        result = flash_tftp(
            plan,
            serial=f"unix:{sock}",
            network=network,
            log_path=log,
            success=success,
            timeout=float(options.timeout),
            bind="127.0.0.1" if options.bind == "0.0.0.0" else options.bind,
            port=int(options.port),
            line_init=QEMU_MUX_FOCUS,
        )
    except UserError:
        if proc.poll() is not None:
            raise UserError(
                f"QEMU exited early: {(tmp / 'qemu.stderr').read_text().strip()[-400:]}"
            ) from None
        raise
    finally:
        proc.kill()
        proc.wait()
        stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.monotonic() - started
    return f"{result.summary()}; {total:.1f} s from QEMU start"
