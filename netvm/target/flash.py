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
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netvm.board import Board
from netvm.builder.manifest import MANIFEST_NAME, read_manifest
from netvm.core.errors import Finding, UserError
from netvm.core.workspace import Workspace
from netvm.target.tftp import TftpServer
from netvm.target.uboot import UBootConsole, UBootError, open_line, open_log

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


@dataclass(frozen=True)
class Payload:
    name: str  # the name the board asks the TFTP server for
    path: Path
    address: str  # U-Boot expression: 0x20000000 or ${kernel_addr_r}


@dataclass(frozen=True)
class BootPlan:
    payloads: tuple[Payload, ...]
    boot: str  # the command that starts the image; it does not return to the prompt
    setup: tuple[str, ...] = ()  # commands between loading and booting

    def describe(self) -> list[str]:
        lines = [f"tftpboot {p.address} {p.name}   ({p.path})" for p in self.payloads]
        return lines + list(self.setup) + [self.boot]


def go_plan(image: Path, load_address: int) -> BootPlan:
    """An seL4 system image: U-Boot jumps to its first instruction."""
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
    if board.name.startswith("qemu_virt"):
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
    try:
        pattern = re.compile(success)
    except re.error as exc:
        raise UserError(f"--success {success!r} is not a regular expression: {exc}") from None
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
                result = console.run(f"tftpboot {p.address} {p.name}", timeout=60 + size / 1e6)
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
    method: str  # tftp | sdcard
    serial: str | None = None
    baud: int = 115200
    image: Path | None = None
    load_address: int | None = None
    server_ip: str | None = None
    bind: str = "0.0.0.0"
    port: int = 69
    ip: str | None = None  # static board address; None: dhcp
    netmask: str = "255.255.255.0"
    gateway: str | None = None
    success: str | None = None  # None: the board's (QEMU_SUCCESS on a QEMU board)
    timeout: float = DEFAULT_TIMEOUT
    device: Path | None = None
    force: bool = False
    dry_run: bool = False
    log: Path | None = None


def parse_address(text: str) -> int:
    """A load address as typed on the command line (0x20000000 or decimal)."""
    try:
        return int(text, 0)
    except ValueError:
        raise UserError(
            f"--load-address {text!r} is not a number", hint="e.g. 0x20000000"
        ) from None


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

    plan = plan_for_board(board, ws, image=options.image, load_address=options.load_address)
    is_qemu = board.devicetree.base_qemu is not None
    success = options.success or (QEMU_SUCCESS if is_qemu else DEFAULT_SUCCESS)
    if options.method == "sdcard":
        if options.device is None:
            raise UserError("--method sdcard needs --device DEV (the card, or an image file)")
        if len(plan.payloads) != 1:
            raise UserError(f"--method sdcard writes one image; {board.name} boots with booti")
        payload = plan.payloads[0]
        card = flash_sdcard.plan_card(options.device, payload.path, int(payload.address, 0))
        if options.dry_run:
            notes = flash_sdcard.check_device(options.device, force=options.force)
            return f"dry run, nothing written\n{card.describe()}\nchecks: {'; '.join(notes)}"
        return flash_sdcard.write_card(card, force=options.force).summary()
    if options.method != "tftp":
        raise UserError(f"--method {options.method!r}: expected tftp or sdcard")
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
            baud=options.baud,
            network=network,
            log_path=log,
            success=success,
            timeout=options.timeout,
            bind=options.bind,
            port=options.port,
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
            timeout=options.timeout,
            bind="127.0.0.1" if options.bind == "0.0.0.0" else options.bind,
            port=options.port,
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
