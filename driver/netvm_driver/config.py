"""Reading and validating /etc/netvm/driver.json (docs/driver-config.md).

Owns: the driver's view of the configuration and every check that can be made without
touching a device. All findings are collected and reported together, each naming the
file and the key. Must not open devices.
"""

from __future__ import annotations

import os

from . import jsonio
from .abi import NET_BUFFER_SIZE, SDDF_NET_MAX_CLIENTS, queue_region_size
from .queue import MAX_CAPACITY
from .records import Record

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    from typing import Any, TypeGuard

CONFIG_VERSION = 1
QUEUE_UIOS = ("rx_free", "rx_active", "tx_free", "tx_active")
FAULT_UIOS = ("rx_fault", "tx_fault")
IRQ_UIOS = ("rx_irq", "tx_irq")
DATA_UIOS = ("rx_data", "tx_data")
UIO_NAMES = ("data_passing", *QUEUE_UIOS, *FAULT_UIOS, *IRQ_UIOS, *DATA_UIOS)


class ConfigError(Exception):
    """The configuration cannot be used; carries every finding."""

    def __init__(self, findings: list[str]) -> None:
        self.findings = findings
        super().__init__("\n".join(findings))


class UioSpec(Record):
    name: str
    paddr: int
    size: int
    capacity: int | None = None
    irq: int | None = None


class TxClientSpec(Record):
    offset: int  # where the client's TX data region starts inside the tx_data map
    size: int


class DriverConfig(Record):
    path: str
    board: str
    interface: str
    buffer_size: int
    uio: dict[str, UioSpec]
    tx_clients: tuple[TxClientSpec, ...]
    fill_tx_checksums: bool

    def capacity(self, name: str) -> int:
        cap = self.uio[name].capacity
        assert cap is not None  # parse_config guarantees it for queue UIOs
        return cap


def _int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_config(data: Any, path: str) -> DriverConfig:
    findings: list[str] = []

    def bad(key: str, msg: str) -> None:
        findings.append(f"{path}: {key}: {msg}")

    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a JSON object at the top level"])
    if data.get("config_version") != CONFIG_VERSION:
        bad("config_version", f"expected {CONFIG_VERSION}, found {data.get('config_version')!r}")
    board = data.get("board", "?")
    interface = data.get("interface")
    if not isinstance(interface, str) or not interface:
        bad("interface", "expected the network interface name, e.g. eth0")
        interface = ""
    buffer_size = data.get("buffer_size")
    if buffer_size != NET_BUFFER_SIZE:
        bad(
            "buffer_size",
            f"expected {NET_BUFFER_SIZE} (sDDF NET_BUFFER_SIZE), found {buffer_size!r}",
        )

    uio: dict[str, UioSpec] = {}
    raw_uio = data.get("uio")
    if not isinstance(raw_uio, dict):
        bad("uio", "expected an object keyed by UIO name")
        raw_uio = {}
    missing = [n for n in UIO_NAMES if n not in raw_uio]
    if missing:
        bad("uio", f"missing {', '.join(missing)} (expected {', '.join(UIO_NAMES)})")
    for name, entry in raw_uio.items():
        key = f"uio.{name}"
        if (
            not isinstance(entry, dict)
            or not _int(entry.get("paddr"))
            or not _int(entry.get("size"))
        ):
            bad(key, "expected {paddr: int, size: int}")
            continue
        if entry["size"] <= 0 or entry["size"] % 4096:
            bad(f"{key}.size", f"{entry['size']:#x} is not a positive multiple of the page size")
        cap = entry.get("capacity")
        if name in QUEUE_UIOS:
            if not _int(cap) or cap < 1 or cap > MAX_CAPACITY or cap & (cap - 1):
                bad(f"{key}.capacity", f"expected a power of two ≤ {MAX_CAPACITY}, found {cap!r}")
                cap = None
            elif entry["size"] != queue_region_size(cap):
                bad(
                    f"{key}.size",
                    f"{entry['size']:#x} != round_up_to_page(8 + 16 × {cap}) = "
                    f"{queue_region_size(cap):#x}",
                )
        irq = entry.get("irq")
        uio[name] = UioSpec(name, entry["paddr"], entry["size"], cap, irq)

    for a, b in (("rx_free", "rx_active"), ("tx_free", "tx_active")):
        caps = (uio[a].capacity, uio[b].capacity) if a in uio and b in uio else (None, None)
        if None not in caps and caps[0] != caps[1]:
            bad(f"uio.{b}.capacity", f"differs from uio.{a}.capacity (a free/active pair)")
    if "rx_data" in uio and uio.get("rx_free") and uio["rx_free"].capacity:
        need = uio["rx_free"].capacity * NET_BUFFER_SIZE
        if uio["rx_data"].size < need:
            bad("uio.rx_data.size", f"{uio['rx_data'].size:#x} < capacity × 2048 = {need:#x}")

    clients: list[TxClientSpec] = []
    raw_clients = data.get("tx_clients")
    if not isinstance(raw_clients, list) or not raw_clients:
        bad("tx_clients", "expected a non-empty list of {offset, size}")
        raw_clients = []
    if len(raw_clients) > SDDF_NET_MAX_CLIENTS:
        bad("tx_clients", f"{len(raw_clients)} clients; sDDF allows {SDDF_NET_MAX_CLIENTS}")
    tx_size = uio["tx_data"].size if "tx_data" in uio else 0
    for i, entry in enumerate(raw_clients):
        key = f"tx_clients[{i}]"
        if (
            not isinstance(entry, dict)
            or not _int(entry.get("offset"))
            or not _int(entry.get("size"))
        ):
            bad(key, "expected {offset: int, size: int}")
            continue
        off, size = entry["offset"], entry["size"]
        if off < 0 or size <= 0 or off % 4096 or off + size > tx_size:
            bad(key, f"region {off:#x}+{size:#x} is not page-aligned inside tx_data ({tx_size:#x})")
            continue
        for j, other in enumerate(clients):
            if off < other.offset + other.size and other.offset < off + size:
                bad(key, f"overlaps tx_clients[{j}]")
        clients.append(TxClientSpec(off, size))

    fill = data.get("fill_tx_checksums", False)
    if not isinstance(fill, bool):
        bad("fill_tx_checksums", f"expected true or false, found {fill!r}")
        fill = False
    if findings:
        raise ConfigError(findings)
    return DriverConfig(path, str(board), interface, NET_BUFFER_SIZE, uio, tuple(clients), fill)


def load_config(path: str | os.PathLike[str]) -> DriverConfig:
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            data = jsonio.loads(f.read())
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    except ValueError as exc:  # json.JSONDecodeError, or a NaN/Infinity constant
        where = ""
        if hasattr(exc, "lineno") and hasattr(exc, "colno"):  # JSONDecodeError has both
            where = f"{exc.lineno}:{exc.colno}: "
        msg = getattr(exc, "msg", str(exc))
        raise ConfigError([f"{p}:{where}invalid JSON: {msg}"]) from None
    return parse_config(data, p)
