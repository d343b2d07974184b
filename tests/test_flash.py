"""`invoke flash`: the TFTP server, U-Boot over a serial line, and the SD-card writer.

The U-Boot tests run Debian's real U-Boot (u-boot-qemu, qemu_arm64) under
qemu-system-aarch64 (TCG), with the serial line on a pty or a Unix socket and QEMU's user
network carrying TFTP to netvm's own server (U-Boot asks for 127.0.0.1, which slirp
sends to this host's loopback; 10.0.2.2 would hit slirp's built-in TFTP instead).
The Odroid C4 itself cannot exist here, so its `go 0x20000000` is exercised at a QEMU
RAM address, and a tiny arm64 Image (tests/fixtures/flash/payload.S) proves that a
booted payload really runs. The SD writer is tested on image files and loop devices.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netvm.board import Board
from netvm.core.errors import USER_ERROR_EXIT, UserError
from netvm.core.workspace import Workspace
from netvm.target.flash import (
    DEFAULT_SUCCESS,
    FlashOptions,
    Network,
    booti_plan,
    flash_board,
    flash_tftp,
    go_plan,
    plan_for_board,
)
from netvm.target.sdcard import (
    MIN_FAT_BYTES,
    PART_START,
    SECTOR,
    check_device,
    partition_entries,
    plan_card,
    write_card,
)
from netvm.target.tftp import TftpServer
from tests.harness import FIXTURES, ROOT, invoke_in_process, run_invoke

UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
QEMU_LOAD = 0x40400000  # QEMU virt RAM (kernel_addr_r); the C4's 0x20000000 is not RAM there


# --- the TFTP server -------------------------------------------------------------------


class Client:
    """A minimal TFTP client for the server tests."""

    def __init__(self, server: TftpServer) -> None:
        self.server = server.address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(3)

    def request(self, name: str, opcode: int = 1, **options: str) -> tuple[bytes, tuple[str, int]]:
        opts = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
        self.sock.sendto(
            struct.pack("!H", opcode) + name.encode() + b"\0octet\0" + opts, self.server
        )
        data, peer = self.sock.recvfrom(70000)
        return data, peer

    def ack(self, block: int, peer: tuple[str, int]) -> None:
        self.sock.sendto(struct.pack("!HH", 4, block), peer)

    def get(self, name: str, **options: str) -> bytes:
        packet, peer = self.request(name, **options)
        blksize = int(options.get("blksize", 512))
        if packet[:2] == b"\0\6":
            self.ack(0, peer)
            packet, peer = self.sock.recvfrom(70000)
        out = b""
        while True:
            op, block = struct.unpack("!HH", packet[:4])
            assert op == 3, packet
            out += packet[4:]
            self.ack(block, peer)
            if len(packet) - 4 < blksize:
                return out
            packet, peer = self.sock.recvfrom(70000)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[TftpServer, dict[str, bytes]]]:
    files = {"loader.img": os.urandom(5000), "exact.bin": bytes(1024)}
    paths = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = tmp_path / name
    (tmp_path / "secret").write_text("not staged")
    with TftpServer(paths, "127.0.0.1", 0, timeout=0.3) as server:
        yield server, files


def test_tftp_serves_staged_files_with_options(served) -> None:
    server, files = served
    oack, _ = Client(server).request("loader.img", blksize="1468", tsize="0", windowsize="4")
    # windowsize is declined by leaving it out of the OACK (RFC 2347).
    assert oack == b"\0\6blksize\0" + b"1468\0tsize\0" + b"5000\0"
    assert Client(server).get("loader.img", blksize="1468") == files["loader.img"]
    assert Client(server).get("loader.img") == files["loader.img"]  # default 512-byte blocks
    # A file that is a multiple of the block size ends with an empty block.
    assert Client(server).get("exact.bin") == files["exact.bin"]
    # The server records a transfer after its last ACK: wait for both, however loaded.
    deadline = time.monotonic() + 30
    done = []
    while len(done) < 2 and time.monotonic() < deadline:
        done = [t for t in server.finished("loader.img") if t.ok]
        time.sleep(0.02)
    assert [t.bytes for t in done] == [5000, 5000]
    assert sorted({t.blksize for t in done}) == [512, 1468]


@pytest.mark.parametrize("name", ["secret", "../secret", "/etc/passwd"])
def test_tftp_serves_nothing_else(served, name: str) -> None:
    server, _ = served
    reply, _ = Client(server).request(name)
    assert reply[:4] == b"\0\5\0\1" and reply.endswith(b"not served\0")


def test_tftp_refuses_writes(served) -> None:
    server, _ = served
    reply, _ = Client(server).request("loader.img", opcode=2)
    assert reply[:4] == b"\0\5\0\2"


def test_tftp_resends_a_block_whose_ack_was_lost(served) -> None:
    server, files = served
    client = Client(server)
    first, peer = client.request("loader.img")
    again, _ = client.sock.recvfrom(70000)  # no ACK sent: the same block comes again
    assert first == again and first[:4] == b"\0\3\0\1"
    client.ack(1, peer)
    rest = b""
    while True:
        packet, peer = client.sock.recvfrom(70000)
        rest += packet[4:]
        client.ack(struct.unpack("!H", packet[2:4])[0], peer)
        if len(packet) < 516:
            break
    assert first[4:] + rest == files["loader.img"]


# --- plans and the U-Boot command sequence ----------------------------------------------


def test_go_plan_for_the_c4(tmp_path: Path) -> None:
    image = tmp_path / "loader.img"
    image.write_bytes(b"x")
    assert go_plan(image, 0x20000000).describe() == [
        f"tftpboot 0x20000000 loader.img   ({image})",
        "go 0x20000000",
    ]


def test_booti_plan_loads_kernel_initrd_dtb(tmp_path: Path) -> None:
    paths = [tmp_path / n for n in ("Image", "initramfs.cpio.gz", "guest.dtb")]
    plan = booti_plan(paths[0], initramfs=paths[1], dtb=paths[2], bootargs="console=ttyAMA0")
    # The initramfs comes last: ${filesize} at the booti must be its size.
    assert [p.name for p in plan.payloads] == ["Image", "guest.dtb", "initramfs.cpio.gz"]
    assert plan.setup == (
        "setenv initrd_high 0xffffffffffffffff",  # U-Boot keeps initrd and DTB in place
        "setenv fdt_high 0xffffffffffffffff",
        "setenv bootargs console=ttyAMA0",
    )
    assert plan.boot == "booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} 0x48000000"


def test_network_commands() -> None:
    assert [c for c, _ in Network("192.168.1.10").commands()] == [
        "setenv autoload no",
        "dhcp",
        "setenv serverip 192.168.1.10",
    ]
    static = Network("192.168.1.10", ip="192.168.1.50", gateway="192.168.1.1")
    assert [c for c, _ in static.commands()] == [
        "setenv autoload no",
        "setenv ipaddr 192.168.1.50",
        "setenv netmask 255.255.255.0",
        "setenv gatewayip 192.168.1.1",
        "setenv serverip 192.168.1.10",
    ]


def test_no_loader_img_says_how_to_build_it(odroidc4: Board, tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        plan_for_board(odroidc4, Workspace(ROOT, tmp_path))
    (finding,) = err.value.findings
    assert finding.key == "artifacts.loader_img"
    assert "--microkit-sdk DIR" in finding.hint and "--image FILE" in finding.hint


def test_plan_reads_loader_img_from_the_manifest(odroidc4: Board, tmp_path: Path) -> None:
    out = tmp_path / "odroidc4"
    out.mkdir()
    loader = out / "loader.img"
    loader.write_bytes(b"sel4")
    (out / "manifest.json").write_text(
        json.dumps({"artifacts": {"loader_img": {"path": str(loader)}}})
    )
    plan = plan_for_board(odroidc4, Workspace(ROOT, tmp_path))
    assert plan.boot == "go 0x20000000" and plan.payloads[0].path == loader


def test_cli_dry_run_tftp(tmp_path: Path) -> None:
    image = tmp_path / "loader.img"
    image.write_bytes(b"sel4")
    proc = invoke_in_process(
        "flash", "--board", "odroidc4", "--serial", "/dev/null", "--image", str(image),
        "--server-ip", "10.1.1.1", "--dry-run",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == [
        "  setenv autoload no",
        "  dhcp",
        "  setenv serverip 10.1.1.1",
        f"  tftpboot 0x20000000 loader.img   ({image})",
        "  go 0x20000000",
    ]


def test_cli_tftp_without_serial_is_a_user_error(tmp_path: Path) -> None:
    image = tmp_path / "loader.img"
    image.write_bytes(b"sel4")
    proc = run_invoke("flash", "--board", "odroidc4", "--image", str(image))
    assert proc.returncode == USER_ERROR_EXIT
    assert proc.stderr.startswith("error: --method tftp needs --serial DEV")
    assert "Traceback" not in proc.stderr


# --- real U-Boot in QEMU -----------------------------------------------------------------


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arm64 Image of payload.S, assembled with the cross binutils."""
    out = tmp_path_factory.mktemp("payload")
    obj = out / "payload.o"
    subprocess.run(
        ["aarch64-linux-gnu-as", "-o", str(obj), str(FIXTURES / "flash" / "payload.S")], check=True
    )
    image = out / "Image"
    subprocess.run(["aarch64-linux-gnu-objcopy", "-O", "binary", str(obj), str(image)], check=True)
    return image


class Qemu:
    """qemu-system-aarch64 running Debian's U-Boot; stopped (by its pid) on exit."""

    def __init__(self, tmp: Path, serial: str, extra: list[str]) -> None:
        self.stderr = tmp / "qemu.stderr"
        cmd = [
            "qemu-system-aarch64", "-M", "virt,acpi=off", "-cpu", "cortex-a53", "-m", "256M",
            "-bios", str(UBOOT), "-display", "none", "-monitor", "none", "-serial", serial,
            *extra,
        ]  # fmt: skip
        out = self.stderr.open("w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def pty(self) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(r"redirected to (/dev/pts/\d+)", self.stderr.read_text())
            if m:
                return m.group(1)
            time.sleep(0.05)
        raise AssertionError(self.stderr.read_text())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


USER_NET = ["-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"]


@pytest.mark.qemu
def test_tftp_go_flow_over_a_pty(tmp_path: Path, payload: Path) -> None:
    """The C4 flow (tftpboot + go) against real U-Boot, the console on a pty."""
    qemu = Qemu(tmp_path, "pty", USER_NET)
    try:
        log = tmp_path / "console.log"
        start = time.monotonic()
        result = flash_tftp(
            go_plan(payload, QEMU_LOAD),
            serial=qemu.pty(),
            network=Network("127.0.0.1"),
            log_path=log,
            success=rf"## Starting application at {QEMU_LOAD:#010X}".replace("0X", "0x"),
            timeout=20,
            bind="127.0.0.1",
            char_delay=0.001,
        )
        elapsed = time.monotonic() - start
    finally:
        qemu.stop()
    text = log.read_text(errors="replace")
    assert "DHCP client bound to address 10.0.2.15" in text
    assert f"Bytes transferred = {payload.stat().st_size}" in text
    assert f"=> go {QEMU_LOAD:#x}" in text  # typed only after the prompt came back
    assert result.transfers == [
        {"name": "Image", "bytes": payload.stat().st_size, "seconds": pytest.approx(0, abs=5),
         "ok": True}
    ]  # fmt: skip
    assert elapsed < 30


@pytest.mark.qemu
def test_tftp_booti_flow_runs_the_payload(tmp_path: Path, payload: Path) -> None:
    """The qemu_virt_aarch64 flow (booti): the served Image runs and prints its banner."""
    sock = tmp_path / "serial.sock"
    qemu = Qemu(tmp_path, f"unix:{sock},server=on,wait=on", USER_NET)
    try:
        result = flash_tftp(
            booti_plan(payload),
            serial=f"unix:{sock}",
            network=Network("127.0.0.1", ip="10.0.2.15", gateway="10.0.2.2"),
            log_path=tmp_path / "console.log",
            success="NETVM-PAYLOAD-OK",
            timeout=20,
            bind="127.0.0.1",
        )
    finally:
        qemu.stop()
    assert result.matched == "NETVM-PAYLOAD-OK"
    text = (tmp_path / "console.log").read_text(errors="replace")
    assert "=> booti ${kernel_addr_r} - ${fdt_addr}" in text
    assert "Starting kernel" in text


@pytest.mark.qemu
def test_missing_success_pattern_times_out_with_the_log(tmp_path: Path, payload: Path) -> None:
    sock = tmp_path / "serial.sock"
    qemu = Qemu(tmp_path, f"unix:{sock},server=on,wait=on", USER_NET)
    try:
        with pytest.raises(UserError) as err:
            flash_tftp(
                booti_plan(payload),
                serial=f"unix:{sock}",
                network=Network("127.0.0.1"),
                log_path=tmp_path / "console.log",
                success=DEFAULT_SUCCESS,
                timeout=3,
                bind="127.0.0.1",
            )
    finally:
        qemu.stop()
    (finding,) = err.value.findings
    assert "flash over TFTP failed: no 'UIO\\\\(NET\\\\)" in finding.message
    assert "within 3 s" in finding.message
    assert finding.hint == f"the full console output is in {tmp_path / 'console.log'}"


@pytest.mark.qemu
def test_sd_card_image_boots_through_uboot_distro_boot(tmp_path: Path, payload: Path) -> None:
    """The card netvm writes is found by real U-Boot, which runs boot.scr: load + go."""
    card = tmp_path / "card.img"
    write_card(plan_card(card, payload, QEMU_LOAD), force=False)
    sock = tmp_path / "serial.sock"
    qemu = Qemu(
        tmp_path,
        f"unix:{sock},server=on,wait=on",
        ["-nic", "none", "-drive", f"if=none,file={card},format=raw,id=card",
         "-device", "virtio-blk-device,drive=card"],
    )  # fmt: skip
    try:
        client = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        client.connect(str(sock))
        client.settimeout(1)
        seen = b""
        deadline = time.monotonic() + 30
        started = f"## Starting application at {QEMU_LOAD:#x}".encode()
        while started not in seen and time.monotonic() < deadline:
            try:
                seen += client.recv(4096)
            except TimeoutError:
                continue
        client.close()
    finally:
        qemu.stop()
    text = seen.decode(errors="replace").replace("\r\n", "\n")
    assert "Scanning virtio 0:1...\nFound U-Boot script /boot.scr" in text
    assert f"{payload.stat().st_size} bytes read" in text
    assert f"## Starting application at {QEMU_LOAD:#x}" in text


# --- the SD-card writer ------------------------------------------------------------------


def test_card_image_layout_and_contents(tmp_path: Path, payload: Path) -> None:
    card = tmp_path / "card.img"
    # An old card: U-Boot bytes before 1 MiB must survive, only the table changes.
    old = bytearray(b"\xa5" * (PART_START * SECTOR))
    old[446:512] = partition_entries(MIN_FAT_BYTES)  # with a partition table: a card image
    card.write_bytes(bytes(old))
    result = write_card(plan_card(card, payload, 0x20000000), force=False)
    assert result.notes == ("an existing card image file",)
    data = card.read_bytes()
    assert data[:446] == b"\xa5" * 446
    assert data[SECTOR : PART_START * SECTOR] == b"\xa5" * (PART_START - 1) * SECTOR
    table = json.loads(
        subprocess.run(["sfdisk", "-J", str(card)], check=True, capture_output=True).stdout
    )["partitiontable"]
    (part,) = table["partitions"]
    assert (part["start"], part["type"]) == (PART_START, "c")
    mtools = {"MTOOLS_SKIP_CHECK": "1", **os.environ}
    image = f"{card}@@{PART_START * SECTOR}"
    copied = subprocess.run(
        ["mtype", "-i", image, "::Image"], check=True, capture_output=True, env=mtools
    ).stdout
    assert copied == payload.read_bytes()
    scr = tmp_path / "boot.scr"
    subprocess.run(["mcopy", "-i", image, "::boot.scr", str(scr)], check=True, env=mtools)
    info = subprocess.run(["dumpimage", "-l", str(scr)], check=True, capture_output=True, text=True)
    assert "Image Type:   AArch64 Linux Script (uncompressed)" in info.stdout
    assert b"load ${devtype} ${devnum}:${distro_bootpart} 0x20000000 Image\ngo 0x20000000\n" in (
        scr.read_bytes()
    )


def test_dry_run_writes_nothing(odroidc4: Board, tmp_path: Path, payload: Path) -> None:
    card = tmp_path / "card.img"
    text = flash_board(
        odroidc4,
        Workspace(ROOT, tmp_path),
        FlashOptions(method="sdcard", device=card, image=payload, dry_run=True),
    )
    assert not card.exists()
    assert text.splitlines()[0] == "dry run, nothing written"
    assert "    go 0x20000000" in text and "checks: a new card image file" in text


@pytest.fixture()
def loop_card(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "backing.img"
    backing.write_bytes(bytes(80 << 20))
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(backing)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    try:
        yield Path(dev)
    finally:
        subprocess.run(["umount", "-q", f"{dev}p1"], check=False)
        subprocess.run(["losetup", "-d", dev], check=True)


def test_loop_device_is_refused_as_not_removable(loop_card: Path, payload: Path) -> None:
    with pytest.raises(UserError) as err:
        write_card(plan_card(loop_card, payload, 0x20000000), force=False)
    (finding,) = err.value.findings
    assert finding.message == "is not a removable device"
    assert finding.hint.startswith("check it is the SD card")
    assert Path(loop_card).read_bytes()[:512] == bytes(512)  # untouched


def test_forced_loop_device_write_is_read_back(loop_card: Path, payload: Path) -> None:
    result = write_card(plan_card(loop_card, payload, 0x20000000), force=True)
    assert result.notes == ("is not a removable device: written anyway (--force)",)
    assert "::/Image" in result.listing and "::/boot.scr" in result.listing
    with loop_card.open("rb") as f:
        f.seek(PART_START * SECTOR)
        head = f.read(512)
    assert head[510:512] == b"\x55\xaa" and head[82:90] == b"FAT32   "
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    assert digest in plan_card(loop_card, payload, 0x20000000).describe()


def test_mounted_device_is_refused(loop_card: Path, payload: Path, tmp_path: Path) -> None:
    write_card(plan_card(loop_card, payload, 0x20000000), force=True)
    subprocess.run(["partx", "-u", str(loop_card)], check=False)
    part = Path(f"{loop_card}p1")
    # This kernel has no vfat driver; any filesystem on the card's partition will do.
    subprocess.run(["mkfs.ext2", "-q", str(part)], check=True)
    deadline = time.monotonic() + 5
    while not part.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro", str(part), str(mnt)], check=True)
    with pytest.raises(UserError) as err:
        check_device(loop_card, force=False)
    messages = [f.message for f in err.value.findings]
    assert messages[0] == f"is mounted (a filesystem on it is mounted at {mnt})"
    with pytest.raises(UserError) as err2:
        check_device(part, force=True)
    assert err2.value.findings[0].message == "is a partition"


def test_the_system_disk_is_never_written(loop_card: Path, tmp_path: Path) -> None:
    """Here / is an overlay (no disk), so a stand-in mountinfo puts / on the loop card."""
    st = loop_card.stat()
    standin = tmp_path / "mountinfo"
    standin.write_text(
        f"1 0 {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} / / rw - ext4 {loop_card} rw\n"
    )
    with pytest.raises(UserError) as err:
        check_device(loop_card, force=True, mountinfo=standin)
    assert err.value.findings[0].message == (
        "holds the running system (mounted at /); never written, even with --force"
    )


def test_bad_load_address_is_a_user_error() -> None:
    from netvm.target.flash import parse_address

    assert parse_address("0x20000000") == 0x20000000
    with pytest.raises(UserError) as err:
        parse_address("20M")
    assert str(err.value) == "--load-address '20M' is not a number (hint: e.g. 0x20000000)"
