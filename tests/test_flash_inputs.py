"""`invoke flash` refuses bad input before anything starts, and never types more than meant.

Each layer is tested on its own, so that removing any one check fails a test here:
the flag parsers (`FlashOptions`), `Network` and `BootPlan`, the serial check, the
pre-check in `flash_tftp`, the U-Boot console's last check on a fake line, the TFTP
server's names, and the SD writer's refusal of an existing file that is not a card image.
No board, QEMU or root is needed, except the SD writes (mkimage, mkfs.vfat, mtools).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netvm.board import Board, load_board
from netvm.core.errors import UserError
from netvm.core.workspace import Workspace
from netvm.target import sdcard
from netvm.target.flash import (
    BootPlan,
    FlashOptions,
    Network,
    Payload,
    booti_plan,
    check_serial,
    flash_board,
    flash_tftp,
    go_plan,
    parse_address,
    plan_for_board,
)
from netvm.target.sdcard import (
    PART_START,
    SECTOR,
    card_image_kind,
    check_device,
    partition_entries,
    plan_card,
    write_card,
)
from netvm.target.tftp import TftpServer
from netvm.target.uboot import (
    SerialLine,
    UBootConsole,
    UnsafeCommand,
    check_command,
    command_problem,
)
from tests.harness import ROOT

IPV4 = "an IPv4 address (four numbers 0-255 joined by dots)"
UNICAST = "a unicast IPv4 address (not 0.0.0.0, multicast or broadcast)"
EXAMPLE = {
    "--ip": "192.168.1.50",
    "--server-ip": "192.168.1.10",
    "--gateway": "192.168.1.1",
    "--bind": "0.0.0.0",
}
NETMASK = (
    "is not a contiguous IPv4 netmask (1 to 32 leading one bits, such as 255.255.255.0) "
    "(hint: e.g. --netmask 255.255.255.0 for a /24)"
)
RANGE = "is not an address from 0 to 0xffffffffffffffff (hint: e.g. 0x20000000)"
ALIGNED = "is not page-aligned (a multiple of 0x1000) (hint: e.g. 0x20000000)"
PORT = (
    "is not a UDP port from 1 to 65535 (hint: U-Boot always asks port 69: keep the default "
    "unless 69 is forwarded to this port)"
)
BAUD = (
    "is not a supported baud rate (9600, 19200, 38400, 57600, 115200, 230400, 460800, "
    "921600, 1500000) (hint: the board's console speed: 115200 for the Odroid C4 and most "
    "U-Boot boards)"
)
TIMEOUT = (
    "expected a duration above 0 and at most 24h, got {} (hint: seconds (90, 1.5) or with a "
    "unit (15s, 5m, 1h, 1m30s))"
)
SERIAL_HINT = (
    "(hint: give the board's console: a tty such as /dev/ttyUSB0 (see ls /dev/serial/by-id/), "
    "or unix:PATH for a QEMU -serial unix:PATH,server=on socket)"
)
PLAIN = (
    "only letters, digits, '.', '_', '+' and '-', not starting with '.' or '-', "
    "at most 127 characters"
)
NAME_HINT = (
    "(hint: the name is served over TFTP and typed into U-Boot: copy or link the file to a "
    "plain name such as loader.img)"
)
UNSAFE = "which would end, chain, quote, escape or expand part of the command line"
NOT_AN_IMAGE = "not a card image (no MBR partition table or FAT boot sector in sector 0)"

# What someone might try to smuggle onto U-Boot's command line through an address.
INJECTIONS = [
    "10.0.0.5; reset",
    "10.0.0.5;reset",
    "10.0.0.5\nreset",
    "10.0.0.5\rreset",
    "10.0.0.5 && reset",
    "10.0.0.5 || reset",
    "10.0.0.5 | reset",
    "${serverip}",
    "$serverip",
    "10.0.0.5'",
    '10.0.0.5"',
    "10.0.0.5\\",
    "10.0.0.5\x00",
    "10.0.0.5 ",
    " 10.0.0.5",
    "10.0.0.05",
    "256.0.0.1",
    "10.0.0",
    "10.0.0.5/24",
    "",
]


def error_text(exc: pytest.ExceptionInfo[UserError]) -> str:
    return str(exc.value)


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "loader.img"
    path.write_bytes(b"sel4 image")
    return path


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace(ROOT, tmp_path / "build")


def dry_run(board: Board, ws: Workspace, image: Path, **flags: object) -> str:
    """`invoke flash --dry-run` in-process: FlashOptions is built from `flags` here."""
    flags = {"method": "tftp", "serial": "/dev/null", "image": image, "dry_run": True, **flags}
    return flash_board(board, ws, FlashOptions(**flags))  # type: ignore[arg-type]


# --- the flags that reach U-Boot's command line --------------------------------------------


@pytest.mark.parametrize("flag", ["--ip", "--server-ip", "--gateway"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_address_flags_refuse_anything_but_an_ipv4_address(
    odroidc4: Board, ws: Workspace, image: Path, flag: str, value: str
) -> None:
    name = flag[2:].replace("-", "_")
    with pytest.raises(UserError) as err:
        dry_run(odroidc4, ws, image, **{"ip": "192.168.1.50", name: value})
    assert error_text(err) == f"{flag} {value!r} is not {IPV4} (hint: e.g. {flag} {EXAMPLE[flag]})"


@pytest.mark.parametrize("flag", ["--ip", "--server-ip", "--gateway"])
@pytest.mark.parametrize("value", ["0.0.0.0", "224.0.0.1", "239.255.255.250", "255.255.255.255"])
def test_address_flags_refuse_addresses_no_host_can_have(flag: str, value: str) -> None:
    name = flag[2:].replace("-", "_")
    with pytest.raises(UserError) as err:
        FlashOptions(method="tftp", **{"ip": "192.168.1.50", name: value})  # type: ignore[arg-type]
    assert error_text(err) == (
        f"{flag} {value!r} is not {UNICAST} (hint: e.g. {flag} {EXAMPLE[flag]})"
    )


@pytest.mark.parametrize("value", ["0.0.0.0; reset", "localhost", "::1", "0.0.0.0\n"])
def test_bind_is_an_ipv4_address(value: str) -> None:
    with pytest.raises(UserError) as err:
        FlashOptions(method="tftp", bind=value)
    assert error_text(err) == f"--bind {value!r} is not {IPV4} (hint: e.g. --bind 0.0.0.0)"
    assert FlashOptions(method="tftp", bind="127.0.0.1").bind == "127.0.0.1"


@pytest.mark.parametrize(
    "value",
    [
        "255.255.255.0; reset",
        "255.255.255.0\nreset",
        "${netmask}",
        "255.0.255.0",  # not contiguous
        "255.255.255.1",
        "0.0.0.255",  # a host mask
        "0.0.0.0",  # no network bits
        "24",  # a prefix length
        "/24",
        "255.255.255.256",
        "",
    ],
)
def test_netmask_is_a_contiguous_ipv4_netmask(
    odroidc4: Board, ws: Workspace, image: Path, value: str
) -> None:
    with pytest.raises(UserError) as err:
        dry_run(odroidc4, ws, image, ip="192.168.1.50", netmask=value)
    assert error_text(err) == f"--netmask {value!r} {NETMASK}"


@pytest.mark.parametrize("value", ["255.255.255.0; reset", "255.0.255.0", "0.0.0.0", "24"])
def test_netmask_is_checked_with_the_other_flags(value: str) -> None:
    with pytest.raises(UserError) as err:
        FlashOptions(method="tftp", netmask=value)  # checked even with DHCP
    assert error_text(err) == f"--netmask {value!r} {NETMASK}"


@pytest.mark.parametrize("value", ["255.255.255.0", "255.255.0.0", "128.0.0.0", "255.255.255.255"])
def test_contiguous_netmasks_are_accepted(value: str) -> None:
    assert FlashOptions(method="tftp", ip="10.0.0.5", netmask=value).netmask == value


def test_a_static_network_is_typed_as_given(odroidc4: Board, ws: Workspace, image: Path) -> None:
    text = dry_run(
        odroidc4,
        ws,
        image,
        ip="192.168.1.50",
        netmask="255.255.254.0",
        gateway="192.168.1.1",
        server_ip="192.168.1.10",
        load_address="0x20000000",
    )
    assert text.splitlines() == [
        "dry run: would type at the U-Boot prompt:",
        "  setenv autoload no",
        "  setenv ipaddr 192.168.1.50",
        "  setenv netmask 255.255.254.0",
        "  setenv gatewayip 192.168.1.1",
        "  setenv serverip 192.168.1.10",
        f"  tftpboot 0x20000000 loader.img   ({image})",
        "  go 0x20000000",
    ]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("ip", "10.0.0.5; reset", f"--ip '10.0.0.5; reset' is not {IPV4}"),
        ("server_ip", "10.0.0.1\nreset", f"--server-ip '10.0.0.1\\nreset' is not {IPV4}"),
        ("gateway", "${gatewayip}", f"--gateway '${{gatewayip}}' is not {IPV4}"),
        ("netmask", "255.0.255.0", "--netmask '255.0.255.0' is not a contiguous IPv4 netmask"),
    ],
)
def test_network_checks_what_it_is_built_from(field: str, value: str, expected: str) -> None:
    """Network is also used on its own (flash_tftp); it checks its fields itself."""
    fields = {"server_ip": "10.0.0.1", "ip": "10.0.0.5", field: value}
    with pytest.raises(UserError) as err:
        Network(**fields)  # type: ignore[arg-type]
    (finding,) = err.value.findings
    assert finding.message.startswith(expected)


# --- load addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", RANGE),
        ("-0x20000000", RANGE),
        ("0x10000000000000000", RANGE),  # 2**64
        (str(1 << 70), RANGE),
        ("0x20000001", ALIGNED),
        ("0x20000800", ALIGNED),
        ("536870913", ALIGNED),
    ],
)
def test_load_address_is_a_page_aligned_64_bit_address(
    odroidc4: Board, ws: Workspace, image: Path, value: str, problem: str
) -> None:
    with pytest.raises(UserError) as err:
        dry_run(odroidc4, ws, image, load_address=value)
    assert error_text(err) == f"--load-address {value!r} {problem}"
    with pytest.raises(UserError) as err2:
        parse_address(value)
    assert error_text(err2) == f"--load-address {value!r} {problem}"


@pytest.mark.parametrize(
    "value",
    [
        "0x2000; reset",
        "0x20000000\n",
        " 0x20000000",
        "${loadaddr}",
        "",
        "20M",
        "0x",
        "0b101",
        "0o777",
        "1_000",
        "+0x20000000",
        "9" * 50,
    ],
)
def test_load_address_that_is_not_a_number(value: str) -> None:
    with pytest.raises(UserError) as err:
        FlashOptions(method="tftp", load_address=value)
    assert error_text(err) == f"--load-address {value!r} is not a number (hint: e.g. 0x20000000)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-1, f"--load-address -0x1 {RANGE}"), (0x20000004, f"--load-address 0x20000004 {ALIGNED}")],
)
def test_load_address_given_as_a_number(value: int, expected: str) -> None:
    with pytest.raises(UserError) as err:
        FlashOptions(method="tftp", load_address=value)
    assert error_text(err) == expected


@pytest.mark.parametrize(
    ("value", "address"),
    [("0x20000000", 0x20000000), ("536870912", 0x20000000), ("0", 0), (str(2**64 - 4096), None)],
)
def test_good_load_addresses_are_numbers_afterwards(value: str, address: int | None) -> None:
    options = FlashOptions(method="tftp", load_address=value)
    assert options.load_address == (address if address is not None else int(value))
    assert options.address == options.load_address


def test_go_plan_refuses_a_bad_address(image: Path) -> None:
    with pytest.raises(UserError) as err:
        go_plan(image, -1)
    assert error_text(err) == f"load address -0x1 {RANGE}"
    with pytest.raises(UserError) as err2:
        go_plan(image, 0x20000010)
    assert error_text(err2) == f"load address 0x20000010 {ALIGNED}"


def test_the_board_load_address_is_checked(odroidc4: Board, ws: Workspace, image: Path) -> None:
    board = dataclasses.replace(odroidc4, flash_load_address=0x20000200)
    with pytest.raises(UserError) as err:
        plan_for_board(board, ws, image=image)
    (finding,) = err.value.findings
    assert (finding.file, finding.key) == ("boards/odroidc4/board.yaml", "flash.load_address")
    assert finding.message == "0x20000200 is not page-aligned (a multiple of 0x1000)"
    # An explicit --load-address replaces it.
    assert plan_for_board(board, ws, image=image, load_address=0x20000000).boot == "go 0x20000000"


# --- file names served over TFTP ---------------------------------------------------------------


BAD_NAMES = [
    "loader.img; reset",
    "loader;reset",
    "a b.img",
    "$(reset).img",
    "${bootcmd}",
    "x'y",
    'x"y',
    "x\\y",
    "x|y",
    "x&y",
    "line\nbreak",
    "-loader.img",
    ".loader.img",
    "..",
    "é.img",
    "x" * 128,
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_image_name_must_be_plain(
    odroidc4: Board, ws: Workspace, tmp_path: Path, name: str
) -> None:
    path = tmp_path / "images" / name
    path.parent.mkdir(exist_ok=True)
    if name != "..":
        path.write_bytes(b"sel4")
    with pytest.raises(UserError) as err:
        dry_run(odroidc4, ws, path)
    assert error_text(err) == (
        f"--image {str(path)!r} is not a file with a plain name ({PLAIN}) {NAME_HINT}"
    )


@pytest.mark.parametrize("name", ["loader.img", "loader-v2_1.0+x.IMG", "_x", "9", "x" * 127])
def test_plain_image_names_are_served(
    odroidc4: Board, ws: Workspace, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"sel4")
    assert f"tftpboot 0x20000000 {name}   ({path})" in dry_run(odroidc4, ws, path)


@pytest.mark.parametrize("name", ["loader.img; reset", "a b", "../loader.img", "x" * 128])
def test_a_plan_refuses_names_that_are_not_plain(tmp_path: Path, name: str) -> None:
    path = tmp_path / "loader.img"
    with pytest.raises(UserError) as err:
        BootPlan((Payload(name, path, "0x20000000"),), "go 0x20000000")
    (finding,) = err.value.findings
    assert finding.file == str(path)
    assert finding.message == f"the file name {name!r} is not a plain name ({PLAIN})"


def test_a_plan_serves_each_name_once(tmp_path: Path) -> None:
    kernel, other = tmp_path / "a" / "Image", tmp_path / "b" / "Image"
    with pytest.raises(UserError) as err:
        booti_plan(kernel, dtb=other)
    (finding,) = err.value.findings
    assert (finding.file, finding.message) == (
        str(other),
        "a second file to serve is named 'Image'",
    )


@pytest.mark.parametrize(
    "command",
    ["go 0x20000000; reset", "run ${bootcmd}", "go 0x20000000\nreset", 'setenv x "y"'],
)
def test_a_plan_refuses_unsafe_commands(tmp_path: Path, command: str) -> None:
    with pytest.raises(UserError) as err:
        BootPlan((Payload("loader.img", tmp_path / "loader.img", "0x20000000"),), command)
    (finding,) = err.value.findings
    assert finding.message.startswith(f"U-Boot command {command!r} refused: it contains ")


def test_booti_bootargs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        booti_plan(tmp_path / "Image", bootargs="console=hvc0; reset")
    (finding,) = err.value.findings
    assert finding.message == (
        "U-Boot command 'setenv bootargs console=hvc0; reset' refused: it contains ';', " + UNSAFE
    )


def test_board_bootargs_that_cannot_be_typed(tmp_path: Path) -> None:
    board = load_board("qemu_virt_aarch64", ROOT)
    board = dataclasses.replace(
        board, guest=dataclasses.replace(board.guest, bootargs="console=hvc0 $x")
    )
    ws = Workspace(ROOT, tmp_path)
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"kernel")
    out = ws.build_dir(board)
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(
        '{"artifacts": {"kernel_image": {"path": "%s"}}}' % kernel  # noqa: UP031
    )
    with pytest.raises(UserError) as err:
        plan_for_board(board, ws)
    (finding,) = err.value.findings
    assert (finding.file, finding.key) == ("boards/qemu_virt_aarch64/board.yaml", "guest.bootargs")
    assert finding.message == (
        f"cannot be typed into U-Boot's `setenv bootargs`: it contains '$', {UNSAFE}"
    )


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "a;b", "", ".", "x" * 128])
def test_tftp_server_stages_only_plain_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError) as err:
        TftpServer({name: tmp_path / "x"}, "127.0.0.1", 0)
    assert str(err.value) == f"not plain file names: [{name!r}] (a name to serve has {PLAIN})"


# --- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [-1, 0, 7, 115201, 10**30, "abc", "", "115200.0", "-115200", "0x1c200", True, 115200.0]
)
def test_baud_is_a_supported_rate(value: object) -> None:
    with pytest.raises(UserError) as err:
        FlashOptions(method="tftp", baud=value)  # type: ignore[arg-type]
    shown = repr(value) if isinstance(value, str) else str(value)
    assert error_text(err) == f"--baud {shown} {BAUD}"


@pytest.mark.parametrize(
    "value", [-1, 0, 65536, 10**20, "abc", "", " ", "69.5", "-69", "0x45", "9" * 50, True, 69.0]
)
def test_port_is_a_udp_port(value: object) -> None:
    with pytest.raises(UserError) as err:
        FlashOptions(method="tftp", port=value)  # type: ignore[arg-type]
    shown = repr(value) if isinstance(value, str) else str(value)
    assert error_text(err) == f"--port {shown} {PORT}"


@pytest.mark.parametrize(
    "value",
    [-1, 0, -0.0, 86401, 1e9, 10**400, "nan", "inf", "-inf", "abc", "", "-5", "1e9", True],
)
def test_timeout_is_a_sane_number_of_seconds(value: object) -> None:
    with pytest.raises(UserError) as err:
        FlashOptions(method="tftp", timeout=value)  # type: ignore[arg-type]
    shown = repr(value) if isinstance(value, str) else str(value)
    assert error_text(err) == "--timeout: " + TIMEOUT.format(shown)


def test_numbers_typed_as_text_become_numbers() -> None:
    options = FlashOptions(method="tftp", baud="57600", port=" 6969 ", timeout="0.5")
    assert (options.baud, options.port, options.timeout) == (57600, 6969, 0.5)
    assert FlashOptions(method="tftp", port=65535, timeout=86400).port == 65535


def test_sdcard_needs_a_device(odroidc4: Board, ws: Workspace, image: Path) -> None:
    with pytest.raises(UserError) as err:
        flash_board(odroidc4, ws, FlashOptions(method="sdcard", image=image, dry_run=True))
    assert error_text(err) == "--method sdcard needs --device DEV (the card, or an image file)"


def test_every_bad_flag_is_reported_at_once() -> None:
    with pytest.raises(UserError) as err:
        FlashOptions(method="usb", baud="fast", port=0, ip="10.0.0.5;reset", success="(")
    assert [f.message.split(" ")[0] for f in err.value.findings] == [
        "--method",
        "--baud",
        "--port",
        "--ip",
        "--success",
    ]
    assert err.value.findings[0].message == "--method 'usb' is not tftp or sdcard"
    assert err.value.findings[-1].message == (
        "--success '(' is not a regular expression: missing ), unterminated subpattern at "
        "position 0"
    )


def test_flash_tftp_checks_its_numbers_before_starting(tmp_path: Path, image: Path) -> None:
    log = tmp_path / "console.log"
    common = {
        "serial": "unix:" + str(tmp_path / "none.sock"),
        "network": Network("127.0.0.1"),
        "log_path": log,
        "bind": "127.0.0.1",
    }
    for kwargs, text in [
        ({"port": 0}, f"--port 0 {PORT}"),
        ({"port": 70000}, f"--port 70000 {PORT}"),
        ({"baud": 1}, f"--baud 1 {BAUD}"),
        ({"timeout": -1.0}, "--timeout: " + TIMEOUT.format("-1.0")),
    ]:
        with pytest.raises(UserError) as err:
            flash_tftp(go_plan(image, 0x20000000), **common, **kwargs)  # type: ignore[arg-type]
        assert error_text(err) == text
    assert not log.exists()


# --- the serial line -------------------------------------------------------------------------


def test_serial_must_be_a_character_device(
    odroidc4: Board, ws: Workspace, image: Path, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a tty")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        (str(text), "it is a regular file"),
        (str(tmp_path), "it is a directory"),
        (str(fifo), "it is a FIFO"),
    ]
    for spec, why in cases:
        for dry in (True, False):
            with pytest.raises(UserError) as err:
                dry_run(odroidc4, ws, image, serial=spec, dry_run=dry)
            assert error_text(err) == (
                f"--serial {spec!r} is not a terminal or character device ({why}) {SERIAL_HINT}"
            )
    assert text.read_text() == "not a tty"


def test_a_missing_serial_device_is_refused_unless_dry_run(
    odroidc4: Board, ws: Workspace, image: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "ttyUSB9")
    with pytest.raises(UserError) as err:
        dry_run(odroidc4, ws, image, serial=missing, dry_run=False)
    assert error_text(err) == (
        f"--serial {missing!r} is not a terminal or character device (there is no such file) "
        + SERIAL_HINT
    )
    assert dry_run(odroidc4, ws, image, serial=missing).startswith("dry run")


def test_serial_unix_socket(odroidc4: Board, ws: Workspace, image: Path, tmp_path: Path) -> None:
    regular = tmp_path / "console"
    regular.write_text("x")
    with pytest.raises(UserError) as err:
        check_serial(f"unix:{regular}")
    assert error_text(err) == (
        f"--serial 'unix:{regular}' is not a Unix socket (it is a regular file) {SERIAL_HINT}"
    )
    with pytest.raises(UserError) as err2:
        check_serial("unix:")
    assert error_text(err2) == f"--serial 'unix:' is not unix:PATH with a socket path {SERIAL_HINT}"
    # QEMU creates the socket: a path that does not exist yet is fine, and so is a socket.
    assert dry_run(odroidc4, ws, image, serial=f"unix:{tmp_path / 'later.sock'}")
    sock_path = tmp_path / "qemu.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_path))
        check_serial(f"unix:{sock_path}")
    check_serial("/dev/null")  # a character device; opening it shows it is no terminal


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_character_device_that_is_not_a_terminal_is_refused_when_opened() -> None:
    before = open_fds()
    with pytest.raises(ValueError) as err:
        SerialLine("/dev/null")
    assert str(err.value) == "/dev/null is not a terminal"
    assert open_fds() == before  # the descriptor was closed


def test_a_pty_is_a_serial_line() -> None:
    master, slave = os.openpty()
    try:
        line = SerialLine(os.ttyname(slave), 115200)
        line.write(b"x")
        assert os.read(master, 1) == b"x"
        line.close()
    finally:
        os.close(master)
        os.close(slave)


def test_flash_tftp_reports_a_non_terminal_without_a_traceback(tmp_path: Path, image: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError) as err:
        flash_tftp(
            go_plan(image, 0x20000000),
            serial="/dev/null",
            network=Network("127.0.0.1"),
            log_path=tmp_path / "console.log",
            bind="127.0.0.1",
            port=port,
        )
    assert error_text(err) == (
        "/dev/null: cannot open the serial line: /dev/null is not a terminal "
        "(hint: check --serial/--baud)"
    )


# --- the console's last line of defence ------------------------------------------------------


class FakeUBoot:
    """A line whose far end answers each command as U-Boot does: echo, marker, prompt."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.written = b""

    def fileno(self) -> int:
        return self.r

    def write(self, data: bytes) -> None:
        self.written += data
        if data.endswith(b"\r"):
            line = data[:-1].decode()
            reply = line + "\r\n"
            m = re.search(r"-(\d+)-\$\?$", line)
            if m:
                reply += f"NETVM-END-{m.group(1)}-0\r\n"
            os.write(self.w, (reply + "=> ").encode())

    def read_available(self) -> bytes:
        return os.read(self.r, 4096)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture()
def console() -> Iterator[tuple[UBootConsole, FakeUBoot]]:
    line = FakeUBoot()
    yield UBootConsole(line, io.BytesIO()), line
    line.close()


UNSAFE_COMMANDS = [
    ("setenv ipaddr 10.0.0.5; reset", ";"),
    ("setenv ipaddr 10.0.0.5\nreset", "\n"),
    ("setenv ipaddr 10.0.0.5\rreset", "\r"),
    ("setenv ipaddr 10.0.0.5\x00", "\x00"),
    ("dhcp && reset", "&"),
    ("dhcp || reset", "|"),
    ("echo $bootcmd", "$"),
    ("run ${bootcmd}", "$"),
    ("tftpboot ${loadaddr} x", "$"),
    ("booti ${kernel_addr_r}$", "$"),
    ("setenv x 'y'", "'"),
    ('setenv x "y"', '"'),
    ("setenv x \\;", "\\"),
    ("setenv x `y`", "`"),
    ("setenv x\ty", "\t"),
    ("\x03", "\x03"),
    ("setenv x caf\u00e9", "\u00e9"),
]


@pytest.mark.parametrize(("command", "char"), UNSAFE_COMMANDS)
def test_console_refuses_to_type_an_unsafe_command(
    console: tuple[UBootConsole, FakeUBoot], command: str, char: str
) -> None:
    con, line = console
    for send in (con.run, con.start):
        with pytest.raises(UnsafeCommand) as err:
            send(command)
        assert str(err.value) == (
            f"refused to type {command!r} at the U-Boot prompt: it contains {char!r}, {UNSAFE}"
        )
    assert line.written == b""  # not one byte went out


@pytest.mark.parametrize("command", ["", "   "])
def test_console_refuses_an_empty_command(
    console: tuple[UBootConsole, FakeUBoot], command: str
) -> None:
    con, line = console
    with pytest.raises(UnsafeCommand) as err:
        con.start(command)
    assert str(err.value) == (
        f"refused to type {command!r} at the U-Boot prompt: it is empty (Enter at the prompt "
        "repeats the last command)"
    )
    assert line.written == b""


def test_console_types_netvm_commands_with_its_end_marker(
    console: tuple[UBootConsole, FakeUBoot], tmp_path: Path
) -> None:
    con, line = console
    plan = booti_plan(
        tmp_path / "Image",
        dtb=tmp_path / "guest.dtb",
        initramfs=tmp_path / "initramfs.cpio.gz",
        bootargs="console=hvc0 uio_pdrv_genirq.of_id=generic-uio",
    )
    network = Network("127.0.0.1", ip="10.0.2.15", gateway="10.0.2.2")
    commands = [c for c, _ in network.commands()] + plan.commands()[:-1]
    for n, command in enumerate(commands, 1):
        assert con.run(command, timeout=5).status == 0
        assert line.written.endswith(f"{command}; echo ${{netvm_mark}}-{n}-$?\r".encode())
    con.start(plan.boot)
    assert line.written.endswith(
        b"\rbooti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} 0x48000000\r"
    )


@pytest.mark.parametrize(
    "command",
    [
        "booti ${kernel_addr_r} - ${fdt_addr}",
        "tftpboot ${ramdisk_addr_r} initramfs.cpio.gz",
        "setenv fdt_high 0xffffffffffffffff",
        "setenv netvm_mark NETVM-END",
    ],
)
def test_netvm_templates_pass_the_check(command: str) -> None:
    assert command_problem(command) is None
    check_command(command)


def test_flash_tftp_checks_every_command_before_starting(tmp_path: Path, image: Path) -> None:
    network = Network("127.0.0.1", ip="10.0.0.5")
    object.__setattr__(network, "ip", "10.0.0.5; reset")  # past Network's own check
    log = tmp_path / "console.log"
    with pytest.raises(UserError) as err:
        flash_tftp(
            go_plan(image, 0x20000000),
            serial=f"unix:{tmp_path / 'none.sock'}",
            network=network,
            log_path=log,
            bind="127.0.0.1",
            port=6969,
        )
    assert error_text(err) == (
        f"U-Boot command 'setenv ipaddr 10.0.0.5; reset' refused: it contains ';', {UNSAFE}"
    )
    assert not log.exists()  # nothing started: no console log


# --- the SD card writer and regular files ------------------------------------------------------


def card_options(device: Path, image: Path, **flags: object) -> FlashOptions:
    return FlashOptions(method="sdcard", device=device, image=image, **flags)  # type: ignore[arg-type]


TEXT = "important notes\nline two\n"
# A partition entry in use: FAT32 LBA at sector 2048, 100 sectors.
ENTRY = (
    bytes([0x00, 0, 0, 0, 0x0C, 0, 0, 0])
    + (2048).to_bytes(4, "little")
    + (100).to_bytes(4, "little")
)


def refusal(device: Path) -> str:
    return (
        f"{device}: is an existing file that is {NOT_AN_IMAGE}; it would be overwritten "
        "(hint: check --device (a new path is created as a card image), or pass --force "
        "to overwrite this file)"
    )


@pytest.mark.parametrize("dry", [True, False])
def test_a_text_file_is_not_a_card(
    odroidc4: Board, ws: Workspace, image: Path, tmp_path: Path, dry: bool
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(TEXT)
    with pytest.raises(UserError) as err:
        flash_board(odroidc4, ws, card_options(notes, image, dry_run=dry))
    assert error_text(err) == refusal(notes)
    assert notes.read_text() == TEXT  # unchanged, not grown


@pytest.mark.parametrize(
    "head",
    [
        b"\x7fELF" + bytes(508),  # a binary
        bytes(510) + b"\x55\xaa",  # a signature, but no partition in use
        bytes(446) + ENTRY + bytes(48) + b"\x55\xab",  # an entry, but no signature
        bytes(446) + bytes([0x00, 0, 0, 0, 0x0C]) + bytes(3) + bytes(8) + bytes(48) + b"\x55\xaa",
        bytes(446) + bytes([0x12]) + ENTRY[1:] + bytes(48) + b"\x55\xaa",  # bad boot flag
        b"\xeb\x3c\x90" + bytes(507) + b"\x55\xaa",  # a jump but no BIOS parameter block
    ],
)
def test_files_that_only_look_like_cards_are_refused(tmp_path: Path, head: bytes) -> None:
    device = tmp_path / "disk.bin"
    device.write_bytes(head + b"data" * 100)
    assert card_image_kind(head) is None
    with pytest.raises(UserError) as err:
        check_device(device, force=False)
    assert error_text(err) == refusal(device)
    assert check_device(device, force=True) == [f"{NOT_AN_IMAGE}: overwritten anyway (--force)"]


def test_force_writes_a_card_over_a_text_file(
    odroidc4: Board, ws: Workspace, image: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(TEXT)
    summary = flash_board(odroidc4, ws, card_options(notes, image, force=True))
    assert summary.splitlines()[0].endswith(f"({NOT_AN_IMAGE}: overwritten anyway (--force))")
    data = notes.read_bytes()
    assert data[510:512] == b"\x55\xaa" and data[446 + 8 : 446 + 12] == PART_START.to_bytes(
        4, "little"
    )
    assert data[:446] == TEXT.encode() + bytes(446 - len(TEXT))  # bytes 0-445 are kept
    assert card_image_kind(data[:SECTOR]) == "MBR partition table"


def test_an_existing_card_image_is_written_without_force(
    odroidc4: Board, ws: Workspace, image: Path, tmp_path: Path
) -> None:
    card = tmp_path / "card.img"
    first = flash_board(odroidc4, ws, card_options(card, image))  # a new path: created
    assert first.splitlines()[0].endswith("(a new card image file)")
    assert card_image_kind(card.read_bytes()[:SECTOR]) == "MBR partition table"
    again = flash_board(odroidc4, ws, card_options(card, image))
    assert again.splitlines()[0].endswith("(an existing card image file)")
    assert check_device(card, force=False) == ["an existing card image file"]


def test_an_mbr_from_elsewhere_and_a_fat_image_are_cards(tmp_path: Path) -> None:
    mbr = tmp_path / "sdfusing.img"
    old = bytearray(b"\xa5" * (PART_START * SECTOR))
    old[446:512] = partition_entries(64 << 20)
    mbr.write_bytes(bytes(old))
    assert card_image_kind(bytes(old[:SECTOR])) == "MBR partition table"
    assert check_device(mbr, force=False) == ["an existing card image file"]
    fat = tmp_path / "fat.img"
    subprocess.run(["mkfs.vfat", "-C", str(fat), "4096"], check=True, capture_output=True)
    assert card_image_kind(fat.read_bytes()[:SECTOR]) == "FAT boot sector"
    assert check_device(fat, force=False) == ["an existing card image file"]


def test_an_empty_file_is_a_new_image(tmp_path: Path) -> None:
    empty = tmp_path / "card.img"
    empty.touch()
    assert check_device(empty, force=False) == ["an empty file, written as a new card image file"]


def test_the_file_is_checked_again_when_opened(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaced between the check and the write (here: while the FAT is built)."""
    card = tmp_path / "card.img"
    plan = plan_card(card, image, 0x20000000)

    def build_fat(plan: sdcard.CardPlan, work: Path) -> bytes:
        card.write_text(TEXT)
        return bytes(plan.fat_bytes)

    monkeypatch.setattr(sdcard, "build_fat", build_fat)
    with pytest.raises(UserError) as err:
        write_card(plan, force=False)
    assert error_text(err) == refusal(card)
    assert card.read_text() == TEXT


def test_the_image_is_never_its_own_card(image: Path) -> None:
    for force in (False, True):
        with pytest.raises(UserError) as err:
            flash_board(
                load_board("odroidc4", ROOT),
                Workspace(ROOT, image.parent),
                card_options(image, image, force=force),
            )
        assert error_text(err) == f"{image}: is the image to write itself"
    assert image.read_bytes() == b"sel4 image"


def test_a_card_plan_checks_name_and_address(tmp_path: Path) -> None:
    odd = tmp_path / "a;b.img"
    odd.write_bytes(b"x")
    with pytest.raises(UserError) as err:
        plan_card(tmp_path / "card.img", odd, 0x20000000)
    (finding,) = err.value.findings
    assert finding.message == f"the file name 'a;b.img' is not a plain name ({PLAIN})"
    plain = tmp_path / "loader.img"
    plain.write_bytes(b"x")
    for address in (-4096, 0x20000001, 1 << 64):
        with pytest.raises(UserError) as err2:
            plan_card(tmp_path / "card.img", plain, address)
        assert error_text(err2) == (
            f"load address {address:#x} is not a page-aligned address from 0 to "
            "0xffffffffffffffff (hint: e.g. 0x20000000)"
        )


def test_a_character_device_is_neither_card_nor_image() -> None:
    """Unchanged: only block devices and regular files are written."""
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(UserError) as err:
        check_device(Path("/dev/null"), force=True)
    assert error_text(err) == "/dev/null: neither a block device nor a regular file"
