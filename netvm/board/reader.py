"""Reading ``boards/<name>/board.yaml`` into the typed board model.

Owns the schema: which keys exist, their types and forms, and the `sel4:` variant
merge. Cross-region geometry (overlaps, windows inside RAM, queue sizes) is checked by
`netvm.board.layout`, which `load_board` runs too, so a loaded `Board` is always
consistent. Nothing else reads the YAML.

House rules: every problem is a `Finding` (file, key path, what was expected, hint);
all findings of a file are collected and raised together as one `UserError`.
Must not: render, build or touch the build directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from netvm.board.layout import check_board
from netvm.board.model import (
    MICROKIT_HOST_PLATFORMS,
    ROOTFS_COMPRESSIONS,
    ROOTFS_PROVIDERS,
    SCHEMA_VERSION,
    UIO_OF_ID_ARG,
    Board,
    Client,
    ConsoleNode,
    DebianKernelSource,
    DeviceTreeSpec,
    DisabledNode,
    GitPin,
    GuestSpec,
    InitrdSpec,
    KernelSourceSpec,
    KernelSpec,
    LocalKernelSource,
    MicrokitSpec,
    MicrokitSystem,
    NetSpec,
    Passthrough,
    QemuBaseSpec,
    Region,
    RootfsSpec,
    SdfgenPin,
    SimSpec,
    TarballKernelSource,
    UioDevice,
)
from netvm.core.errors import Finding, Findings, UserError
from netvm.core.workspace import display_path
from netvm.core.yamlio import load_yaml

T = TypeVar("T")


class _Reader(Findings):
    """Typed access to a parsed YAML tree that records findings instead of raising."""

    def __init__(self, display: str) -> None:
        super().__init__(display)
        self.display = display

    def mapping(
        self, node: Any, key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        if not isinstance(node, dict):
            self.add(key or "(top level)", f"expected a mapping, got {_kind(node)}")
            return None
        allowed = required + optional
        for k in node:
            if k not in allowed:
                near = _closest(str(k), allowed)
                self.add(
                    _join(key, str(k)),
                    "unknown key",
                    f"did you mean '{near}'?" if near else f"allowed keys: {', '.join(allowed)}",
                )
        for k in required:
            if k not in node:
                self.add(_join(key, k), "missing required key")
        return node

    def get(
        self, node: dict[str, Any], key: str, name: str, conv: Callable[[Any, str], T]
    ) -> T | None:
        if name not in node:
            return None
        return conv(node[name], _join(key, name))

    def items(self, node: dict[str, Any], key: str, name: str) -> list[Any]:
        """The list under `name`, or [] when absent or not a list (a finding is recorded)."""
        value = self.get(node, key, name, self.list_)
        return value if value is not None else []

    # Converters: return None (after recording a finding) on a wrong type.
    def int_(self, value: Any, key: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(key, f"expected an integer, got {_kind(value)}", "write e.g. 0x200000 or 4096")
            return None
        if value < 0:
            self.add(key, f"expected a non-negative integer, got {value}")
            return None
        return value

    def str_(self, value: Any, key: str) -> str | None:
        if not isinstance(value, str) or not value:
            self.add(key, f"expected a non-empty string, got {_kind(value)}")
            return None
        return value

    def list_(self, value: Any, key: str) -> list[Any] | None:
        if not isinstance(value, list):
            self.add(key, f"expected a list, got {_kind(value)}")
            return None
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def _region(r: _Reader, node: Any, key: str) -> Region | None:
    m = r.mapping(node, key, ("paddr", "size"))
    if m is None:
        return None
    paddr = r.get(m, key, "paddr", r.int_)
    size = r.get(m, key, "size", r.int_)
    if paddr is None or size is None:
        return None
    return Region(paddr, size)


def _read_kernel(r: _Reader, node: Any, board_dir: Path) -> KernelSpec | None:
    m = r.mapping(node, "kernel", ("source",), ("fragments", "allow_mismatch"))
    if m is None:
        return None
    src = _read_kernel_source(r, m.get("source"), board_dir)
    fragments: list[Path] = []
    for i, item in enumerate(r.items(m, "kernel", "fragments")):
        key = f"kernel.fragments[{i}]"
        name = r.str_(item, key)
        if name is None:
            continue
        path = board_dir / name
        if not path.is_file():
            r.add(key, f"fragment file {name} not found next to the board file")
        fragments.append(path)
    allow: set[str] = set()
    for i, item in enumerate(r.items(m, "kernel", "allow_mismatch")):
        sym = r.str_(item, f"kernel.allow_mismatch[{i}]")
        if sym is not None:
            allow.add(sym.removeprefix("CONFIG_"))
    if src is None:
        return None
    return KernelSpec(src, tuple(fragments), frozenset(allow))


def _read_kernel_source(r: _Reader, node: Any, board_dir: Path) -> KernelSourceSpec | None:
    key = "kernel.source"
    if not isinstance(node, dict) or "provider" not in node:
        r.mapping(node, key, ("provider",), ("package", "url", "sha256", "path"))
        return None
    provider = node["provider"]
    if provider == "debian":
        m = r.mapping(node, key, ("provider", "package"))
        if m is None:
            return None
        package = r.get(m, key, "package", r.str_)
        if package is not None and not re.fullmatch(r"linux-source-\d+\.\d+", package):
            r.add(
                f"{key}.package",
                f"expected a Debian package like linux-source-6.12, got {package!r}",
            )
        return DebianKernelSource(package) if package else None
    if provider == "tarball":
        m = r.mapping(node, key, ("provider", "url", "sha256"))
        if m is None:
            return None
        url = r.get(m, key, "url", r.str_)
        sha = r.get(m, key, "sha256", r.str_)
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            r.add(f"{key}.sha256", "expected 64 lowercase hex digits", "sha256sum the tarball")
        return TarballKernelSource(url, sha) if url and sha else None
    if provider == "local":
        m = r.mapping(node, key, ("provider", "path"))
        if m is None:
            return None
        path = r.get(m, key, "path", r.str_)
        return LocalKernelSource(board_dir / path) if path else None
    r.add(f"{key}.provider", f"expected one of debian, tarball, local; got {_kind(provider)}")
    return None


def _read_devicetree(r: _Reader, node: Any) -> DeviceTreeSpec | None:
    m = r.mapping(node, "devicetree", ("console",), ("base", "base_qemu", "disable", "delete"))
    if m is None:
        return None
    base = r.get(m, "devicetree", "base", r.str_)
    base_qemu = _read_base_qemu(r, m["base_qemu"]) if "base_qemu" in m else None
    if ("base" in m) == ("base_qemu" in m):
        r.add(
            "devicetree.base",
            "give exactly one of base and base_qemu",
            "base: a DTS path inside the kernel tree; base_qemu: QEMU machine options "
            "whose dumped device tree is the base",
        )
    disable: list[DisabledNode] = []
    for i, item in enumerate(r.items(m, "devicetree", "disable")):
        key = f"devicetree.disable[{i}]"
        d = r.mapping(item, key, ("path", "reason"))
        if d is None:
            continue
        path = r.get(d, key, "path", r.str_)
        reason = r.get(d, key, "reason", r.str_)
        if path is not None and reason is not None:
            _check_node_path(r, f"{key}.path", path)
            disable.append(DisabledNode(path, reason))
    delete: list[str] = []
    for i, item in enumerate(r.items(m, "devicetree", "delete")):
        path = r.str_(item, f"devicetree.delete[{i}]")
        if path is not None:
            _check_node_path(r, f"devicetree.delete[{i}]", path)
            delete.append(path)
    console = None
    c = r.mapping(m.get("console"), "devicetree.console", ("paddr", "size", "irq"))
    if c is not None:
        paddr = r.get(c, "devicetree.console", "paddr", r.int_)
        size = r.get(c, "devicetree.console", "size", r.int_)
        irq = r.get(c, "devicetree.console", "irq", r.int_)
        if paddr is not None and size is not None and irq is not None:
            console = ConsoleNode(f"virtio-console@{paddr:x}", Region(paddr, size), irq)
    if (base is None and base_qemu is None) or console is None:
        return None
    return DeviceTreeSpec(base, tuple(disable), tuple(delete), console, base_qemu)


_SIZE = re.compile(r"(\d+)([KMG]?)")
_SIZE_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30}


def _read_base_qemu(r: _Reader, node: Any) -> QemuBaseSpec | None:
    key = "devicetree.base_qemu"
    m = r.mapping(
        node, key, ("machine", "cpu", "memory"), ("smp", "extra_args", "virtio_transports")
    )
    if m is None:
        return None
    machine = r.get(m, key, "machine", r.str_)
    cpu = r.get(m, key, "cpu", r.str_)
    memory = None
    raw = m.get("memory")
    size = _SIZE.fullmatch(raw) if isinstance(raw, str) else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        memory = r.int_(raw, f"{key}.memory")
    elif size is not None:
        memory = int(size.group(1)) << _SIZE_SHIFT[size.group(2)]
    elif "memory" in m:
        r.add(f"{key}.memory", f"expected a size like 256M or a byte count, got {_kind(raw)}")
    smp = r.get(m, key, "smp", r.int_) if "smp" in m else 1
    if smp == 0:
        r.add(f"{key}.smp", "expected at least one vCPU")
    extra: list[str] = []
    for i, item in enumerate(r.items(m, key, "extra_args")):
        arg = r.str_(item, f"{key}.extra_args[{i}]")
        if arg is not None:
            extra.append(arg)
    if machine is not None and "dumpdtb" in machine:
        r.add(f"{key}.machine", "dumpdtb is added by netvm", "give only the machine options")
    transports = r.get(m, key, "virtio_transports", r.int_) if "virtio_transports" in m else 2
    if machine is None or cpu is None or memory is None or not smp or transports is None:
        return None
    return QemuBaseSpec(machine, cpu, memory, smp, tuple(extra), transports)


def _check_node_path(r: _Reader, key: str, path: str) -> None:
    if not re.fullmatch(r"(/[A-Za-z0-9,._+@-]+)+", path):
        r.add(key, f"expected an absolute node path like /soc/serial@3000, got {path!r}")


def _read_guest(r: _Reader, node: Any) -> GuestSpec | None:
    m = r.mapping(
        node, "guest", ("ram", "cma_mib", "bootargs", "initrd", "dtb_max_size"), ("carveout",)
    )
    if m is None:
        return None
    ram = _region(r, m.get("ram"), "guest.ram") if "ram" in m else None
    carveout = _region(r, m["carveout"], "guest.carveout") if "carveout" in m else None
    cma = r.get(m, "guest", "cma_mib", r.int_)
    bootargs = r.get(m, "guest", "bootargs", r.str_)
    if bootargs is not None and UIO_OF_ID_ARG not in bootargs.split():
        r.add(
            "guest.bootargs",
            f"missing {UIO_OF_ID_ARG}",
            "without it uio_pdrv_genirq binds no device and the driver finds no UIO devices",
        )
    initrd = None
    i = r.mapping(m.get("initrd"), "guest.initrd", ("end", "headroom")) if "initrd" in m else None
    if i is not None:
        end = r.get(i, "guest.initrd", "end", r.int_)
        headroom = r.get(i, "guest.initrd", "headroom", r.int_)
        if end is not None and headroom is not None:
            initrd = InitrdSpec(end, headroom)
    dtb_max = r.get(m, "guest", "dtb_max_size", r.int_)
    if dtb_max is not None and dtb_max <= 0:
        r.add("guest.dtb_max_size", f"expected a positive size, got {dtb_max}", "e.g. 0x10000")
    if None in (ram, cma, bootargs, initrd, dtb_max):
        return None
    assert ram and cma is not None and bootargs and initrd and dtb_max is not None
    return GuestSpec(ram, cma, bootargs, initrd, dtb_max, carveout)


_MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
_IPV4 = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")


def _read_net(r: _Reader, node: Any) -> NetSpec | None:
    m = r.mapping(node, "net", ("interface", "rx_buffers", "clients"))
    if m is None:
        return None
    iface = r.get(m, "net", "interface", r.str_)
    if iface is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", iface):
        r.add("net.interface", f"expected a Linux interface name (1-15 characters), got {iface!r}")
    rx = r.get(m, "net", "rx_buffers", r.int_)
    clients: list[Client] = []
    items = r.items(m, "net", "clients")
    if "clients" in m and not items:
        r.add("net.clients", "expected at least one client")
    for idx, item in enumerate(items):
        key = f"net.clients[{idx}]"
        c = r.mapping(item, key, ("name", "tx_buffers", "mac", "ipv4"))
        if c is None:
            continue
        name = r.get(c, key, "name", r.str_)
        txb = r.get(c, key, "tx_buffers", r.int_)
        mac = r.get(c, key, "mac", r.str_)
        ip = r.get(c, key, "ipv4", r.str_)
        if mac is not None and not _MAC.fullmatch(mac):
            r.add(f"{key}.mac", f"expected a lowercase MAC like 02:00:00:00:00:10, got {mac!r}")
        if ip is not None and not _IPV4.fullmatch(ip):
            r.add(f"{key}.ipv4", f"expected a dotted IPv4 address, got {ip!r}")
        if txb == 0:
            r.add(f"{key}.tx_buffers", "expected at least one buffer")
        if name and txb and mac and ip:
            clients.append(Client(name, txb, mac, ip))
    seen: set[str] = set()
    for idx, client in enumerate(clients):
        if client.name in seen:
            r.add(f"net.clients[{idx}].name", f"duplicate client name {client.name!r}")
        seen.add(client.name)
    if iface is None or rx is None or len(clients) != len(items) or not clients:
        return None
    return NetSpec(iface, rx, tuple(clients))


def _read_uio(r: _Reader, node: Any) -> tuple[UioDevice, ...] | None:
    """UIO devices as a list, in device-tree order (upstream's C driver numbers them)."""
    items = r.list_(node, "uio")
    if items is None:
        return None
    devices: list[UioDevice] = []
    ok = True
    for idx, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        key = f"uio.{name}" if isinstance(name, str) and name else f"uio[{idx}]"
        d = r.mapping(item, key, ("name",), ("paddr", "size", "maps", "irq"))
        if d is None or r.get(d, key, "name", r.str_) is None:
            ok = False
            continue
        maps: list[Region] = []
        if "maps" in d:
            if "paddr" in d or "size" in d:
                r.add(key, "give either paddr/size or maps, not both")
            for i, entry in enumerate(r.items(d, key, "maps")):
                reg = _region(r, entry, f"{key}.maps[{i}]")
                if reg is not None:
                    maps.append(reg)
        elif "paddr" in d or "size" in d:
            reg = _region(r, {k: d[k] for k in ("paddr", "size") if k in d}, key)
            if reg is not None:
                maps.append(reg)
        else:
            r.add(
                key,
                "missing paddr/size",
                "sdfgen needs a page on every UIO node, IRQ nodes included (a placeholder page)",
            )
        irq: int | None = None
        if "irq" in d:
            value = d["irq"]
            if isinstance(value, list):
                if len(value) != 1:
                    r.add(
                        f"{key}.irq",
                        f"a UIO device has at most one IRQ, got {len(value)}",
                        "split the IRQs over separate UIO devices",
                    )
                value = value[0] if value else None
            irq = r.int_(value, f"{key}.irq") if value is not None else None
        devices.append(UioDevice(str(name), tuple(maps), irq))
    return tuple(devices) if ok else None


def _read_passthrough(r: _Reader, node: Any) -> tuple[Passthrough, ...]:
    out: list[Passthrough] = []
    for idx, item in enumerate(r.list_(node, "passthrough") or []):
        key = f"passthrough[{idx}]"
        p = r.mapping(item, key, ("name", "path", "regions"), ("irqs",))
        if p is None:
            continue
        name = r.get(p, key, "name", r.str_)
        path = r.get(p, key, "path", r.str_)
        if path is not None:
            _check_node_path(r, f"{key}.path", path)
        regions = [
            reg
            for i, item2 in enumerate(r.items(p, key, "regions"))
            if (reg := _region(r, item2, f"{key}.regions[{i}]")) is not None
        ]
        irqs = [
            irq
            for i, v in enumerate(r.items(p, key, "irqs"))
            if (irq := r.int_(v, f"{key}.irqs[{i}]")) is not None
        ]
        if name and path:
            out.append(Passthrough(name, path, tuple(regions), tuple(irqs)))
    return tuple(out)


def _read_microkit(r: _Reader, node: Any) -> MicrokitSpec | None:
    key = "microkit"
    names = ("board", "config", "sdk_version")
    m = r.mapping(node, key, (*names, "sdfgen"), ("sdk_sha256", "libvmm", "sddf", "system"))
    if m is None:
        return None
    values = [r.get(m, key, k, r.str_) for k in names]
    if m.get("config") not in (None, "debug", "release", "benchmark"):
        r.add(f"{key}.config", f"expected debug, release or benchmark, got {_kind(m['config'])}")
    sha = _read_sdk_sha256(r, m["sdk_sha256"]) if "sdk_sha256" in m else ()
    libvmm = _read_git_pin(r, m["libvmm"], f"{key}.libvmm", ("example",)) if "libvmm" in m else None
    example = "examples/eth_driver_vm"
    if isinstance(m.get("libvmm"), dict) and "example" in m["libvmm"]:
        example = r.str_(m["libvmm"]["example"], f"{key}.libvmm.example") or example
    sddf = _read_git_pin(r, m["sddf"], f"{key}.sddf", ()) if "sddf" in m else None
    sdfgen = _read_sdfgen_pin(r, m["sdfgen"]) if "sdfgen" in m else None
    system = _read_microkit_system(r, m["system"]) if "system" in m else None
    if any(v is None for v in values) or sha is None or sdfgen is None:
        return None
    if "system" in m and system is None:
        return None
    board, config, sdk = (str(v) for v in values)
    return MicrokitSpec(board, config, sdk, sdfgen, sha, libvmm, example, sddf, system)


_SYSTEM_NODES = ("serial", "timer", "ethernet")


def _read_microkit_system(r: _Reader, node: Any) -> MicrokitSystem | None:
    key = "microkit.system"
    names = ("cpu", "serial_driver", "timer_driver", *_SYSTEM_NODES)
    m = r.mapping(node, key, (*names, "paddr_top"), ("passthrough", "passthrough_irqs"))
    if m is None:
        return None
    values = {k: r.get(m, key, k, r.str_) for k in names}
    for k in _SYSTEM_NODES:
        path = values[k]
        if path is not None and (path.startswith("/") or path.endswith("/")):
            # sdfgen's DeviceTree.node() takes paths relative to the root, no leading '/'.
            r.add(
                f"{key}.{k}",
                f"expected a node path without a leading '/', got {path!r}",
                "e.g. pl011@9000000 or soc/serial@3000",
            )
            values[k] = None
    for k in ("serial_driver", "timer_driver"):
        d = values[k]
        if d is not None and not re.fullmatch(r"[a-z0-9_]+", d):
            r.add(
                f"{key}.{k}",
                f"expected an sDDF driver directory name, got {d!r}",
                "e.g. arm (drivers/serial/arm in sDDF)",
            )
            values[k] = None
    paddr_top = r.get(m, key, "paddr_top", r.int_)
    passthrough = tuple(
        p
        for i, item in enumerate(r.items(m, key, "passthrough"))
        if (p := r.str_(item, f"{key}.passthrough[{i}]")) is not None
    )
    irqs = r.get(m, key, "passthrough_irqs", r.int_) if "passthrough_irqs" in m else 1
    if any(v is None for v in values.values()) or paddr_top is None or irqs is None:
        return None
    v = {k: str(x) for k, x in values.items()}
    return MicrokitSystem(
        v["cpu"],
        paddr_top,
        v["serial"],
        v["serial_driver"],
        v["timer"],
        v["timer_driver"],
        v["ethernet"],
        passthrough,
        irqs,
    )


def _read_sdfgen_pin(r: _Reader, node: Any) -> SdfgenPin | None:
    key = "microkit.sdfgen"
    pin = _read_git_pin(r, node, key, ("version",), required=("commit", "version"))
    version = r.get(node, key, "version", r.str_) if isinstance(node, dict) else None
    if pin is None or version is None:
        return None
    return SdfgenPin(pin.repository, pin.commit, version)


def _read_sdk_sha256(r: _Reader, node: Any) -> tuple[tuple[str, str | None], ...] | None:
    """Per-platform archive hashes; an explicit null records "not known, user verifies"."""
    key = "microkit.sdk_sha256"
    m = r.mapping(node, key, (), MICROKIT_HOST_PLATFORMS)
    if m is None:
        return None
    out: list[tuple[str, str | None]] = []
    for platform in MICROKIT_HOST_PLATFORMS:
        if platform not in m:
            continue
        value = m[platform]
        if value is not None and not (isinstance(value, str) and _SHA256.fullmatch(value)):
            r.add(
                f"{key}.{platform}",
                f"expected 64 lowercase hex digits or null (unknown), got {_kind(value)}",
                "sha256sum the SDK archive you verified; never guess a hash",
            )
            continue
        out.append((platform, value))
    return tuple(out)


def _read_git_pin(
    r: _Reader,
    node: Any,
    key: str,
    extra: tuple[str, ...],
    required: tuple[str, ...] = ("commit",),
) -> GitPin | None:
    optional = tuple(k for k in ("repository", *extra) if k not in required)
    m = r.mapping(node, key, required, optional)
    if m is None:
        return None
    commit = r.get(m, key, "commit", r.str_)
    repo = r.get(m, key, "repository", r.str_) if "repository" in m else None
    if commit is not None and not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        r.add(
            f"{key}.commit",
            f"expected a git commit (7 to 40 lowercase hex digits), got {commit!r}",
        )
        return None
    return GitPin(repo, commit) if commit else None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_rootfs(r: _Reader, node: Any, board_dir: Path) -> RootfsSpec | None:
    key = "rootfs"
    m = r.mapping(node, key, ("provider",), ("base_cpio", "python_modules", "compression"))
    if m is None:
        return None
    provider = r.get(m, key, "provider", r.str_)
    if provider is not None and provider not in ROOTFS_PROVIDERS:
        r.add(
            f"{key}.provider",
            f"expected one of {', '.join(ROOTFS_PROVIDERS)}, got {provider!r}",
            "debian builds the initramfs offline from Debian's arm64 packages",
        )
        provider = None
    base = None
    if "base_cpio" in m:
        text = r.get(m, key, "base_cpio", r.str_)
        if text is not None:
            base = (board_dir / text).resolve()
            if not base.is_file():
                r.add(f"{key}.base_cpio", f"file {text} not found next to the board file")
    if provider == "cpio" and "base_cpio" not in m:
        r.add(
            f"{key}.base_cpio",
            "missing: provider cpio needs the base rootfs.cpio.gz",
            "give a path relative to the board file",
        )
    modules: list[str] = []
    if "python_modules" in m:
        items = m["python_modules"]
        if not isinstance(items, list):
            r.add(f"{key}.python_modules", f"expected a list of module names, got {_kind(items)}")
        else:
            for i, item in enumerate(items):
                name = r.str_(item, f"{key}.python_modules[{i}]")
                if name is not None and not re.fullmatch(r"[A-Za-z_][\w.]*", name):
                    r.add(f"{key}.python_modules[{i}]", f"expected a module name, got {name!r}")
                elif name is not None:
                    modules.append(name)
    compression = "gzip"
    if "compression" in m:
        text = r.get(m, key, "compression", r.str_)
        if text is not None and text not in ROOTFS_COMPRESSIONS:
            r.add(
                f"{key}.compression",
                f"expected one of {', '.join(ROOTFS_COMPRESSIONS)}, got {text!r}",
                "gzip for an image that is copied around; none where the loader reads the "
                "file directly (QEMU) and the kernel should not spend boot time inflating it",
            )
        elif text is not None:
            compression = text
    if provider is None:
        return None
    return RootfsSpec(provider, base, tuple(modules), compression)


def _read_sim(r: _Reader, node: Any) -> SimSpec | None:
    m = r.mapping(node, "sim", ("peer_address",), ("udp_echo_port",))
    if m is None:
        return None
    peer = r.get(m, "sim", "peer_address", r.str_)
    if peer is not None and (
        not re.fullmatch(_IPV4.pattern + r"/\d{1,2}", peer) or int(peer.split("/")[1]) > 32
    ):
        r.add(
            "sim.peer_address",
            f"expected an IPv4 address with a prefix of 0-32 like 10.0.0.1/24, got {peer!r}",
        )
    port = r.get(m, "sim", "udp_echo_port", r.int_) if "udp_echo_port" in m else 1235
    if port is not None and not 0 < port < 65536:
        r.add("sim.udp_echo_port", f"expected a UDP port 1-65535, got {port}")
    if peer is None or port is None:
        return None
    return SimSpec(peer, port)


_REQUIRED_TOP = (
    "schema_version",
    "name",
    "description",
    "arch",
    "cross_compile",
    "kernel",
    "devicetree",
    "guest",
    "net",
    "uio",
    "flash",
    "sim",
)


def parse_board(data: Any, file: Path, display: str) -> Board:
    """Build a `Board` from parsed YAML; raise one UserError with every finding."""
    r = _Reader(display)
    top = r.mapping(data, "", _REQUIRED_TOP, ("passthrough", "rootfs", "microkit", "sel4"))
    if top is None:
        raise UserError(r.collected)
    version = top.get("schema_version")
    if version != SCHEMA_VERSION:
        r.add(
            "schema_version",
            f"expected {SCHEMA_VERSION}, got {_kind(version)}",
            "this netvm reads schema version 1; see boards/odroidc4/board.yaml",
        )
        raise UserError(r.collected)
    name = r.get(top, "", "name", r.str_)
    if name is not None and not re.fullmatch(r"[a-z0-9_]+", name):
        r.add("name", f"expected lowercase letters, digits and _, got {name!r}")
    description = r.get(top, "", "description", r.str_)
    arch = r.get(top, "", "arch", r.str_)
    if arch is not None and arch != "arm64":
        r.add("arch", f"expected arm64, got {arch!r}", "only arm64 guests are supported")
    cross = r.get(top, "", "cross_compile", r.str_)
    kernel = _read_kernel(r, top.get("kernel"), file.parent) if "kernel" in top else None
    dt = _read_devicetree(r, top.get("devicetree")) if "devicetree" in top else None
    guest = _read_guest(r, top.get("guest")) if "guest" in top else None
    net = _read_net(r, top.get("net")) if "net" in top else None
    uio = _read_uio(r, top.get("uio")) if "uio" in top else None
    passthrough = _read_passthrough(r, top["passthrough"]) if "passthrough" in top else ()
    microkit = _read_microkit(r, top.get("microkit")) if "microkit" in top else None
    flash_addr = None
    f = r.mapping(top.get("flash"), "flash", ("load_address",)) if "flash" in top else None
    if f is not None:
        flash_addr = r.get(f, "flash", "load_address", r.int_)
    sim = _read_sim(r, top.get("sim")) if "sim" in top else None
    rootfs: RootfsSpec | None = RootfsSpec("debian")
    if "rootfs" in top:
        rootfs = _read_rootfs(r, top["rootfs"], file.parent)
    if r.collected:
        raise UserError(r.collected)
    # No finding means every part was read (an empty list or string is a value, not None).
    assert name is not None and description is not None and arch is not None
    assert cross is not None and kernel is not None and dt is not None and guest is not None
    assert net is not None and uio is not None and flash_addr is not None
    assert sim is not None and rootfs is not None
    assert microkit is not None or "microkit" not in top
    board = Board(
        name=name,
        description=description,
        file=file,
        schema_version=SCHEMA_VERSION,
        arch=arch,
        cross_compile=cross,
        kernel=kernel,
        devicetree=dt,
        guest=guest,
        net=net,
        uio=uio,
        passthrough=passthrough,
        microkit=microkit,
        flash_load_address=flash_addr,
        sim=sim,
        rootfs=rootfs,
        display_file=display,
    )
    findings = check_board(board, display)
    if findings:
        raise UserError(findings)
    if "sel4" in top:
        board = replace(board, sel4=_read_sel4_variant(top, file, display))
    return board


SEL4_KEYS = ("devicetree", "guest", "uio", "microkit")


def _read_sel4_variant(top: dict[str, Any], file: Path, display: str) -> Board:
    """The board as its seL4 system runs it: the `sel4:` keys in place of the board's.

    Parsed (and checked) as a whole board of its own, so every rule holds for it too;
    findings about the keys it replaces are reported under `sel4.`.
    """
    r = _Reader(display)
    section = r.mapping(top["sel4"], "sel4", ("microkit",), SEL4_KEYS)
    if section is None or r.collected:
        raise UserError(r.collected)
    merged = {k: v for k, v in top.items() if k != "sel4"}
    merged.update(section)
    try:
        variant = parse_board(merged, file, display)
    except UserError as exc:
        raise UserError(
            replace(f, key=f"sel4.{f.key}") if f.key.split(".")[0].split("[")[0] in section else f
            for f in exc.findings
        ) from None
    return replace(variant, variant="sel4")


def boards_dir(root: Path) -> Path:
    return root / "boards"


def resolve_board_file(spec: str, root: Path) -> Path:
    """`--board` takes a board name under boards/ or a path to a board.yaml."""
    candidate = Path(spec)
    if spec.endswith((".yaml", ".yml")) or "/" in spec:
        if candidate.is_dir():
            candidate = candidate / "board.yaml"
        if not candidate.is_file():
            raise UserError([Finding(spec, "", "board file not found")])
        return candidate.resolve()
    path = boards_dir(root) / spec / "board.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in boards_dir(root).glob("*/board.yaml"))
        raise UserError(
            [
                Finding(
                    spec,
                    "",
                    "no such board",
                    f"known boards: {', '.join(known) or 'none'}; or pass a path to a board.yaml",
                )
            ]
        )
    return path


def load_board(spec: str, root: Path) -> Board:
    """Load and validate a board by name or path; raise UserError with every finding."""
    file = resolve_board_file(spec, root)
    display = display_path(file, root)
    return parse_board(load_yaml(file, display), file, display)
