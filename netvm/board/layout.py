"""Layout checks: does a board's memory and interrupt map hold together?

Owns the rules that relate values to each other — UIO windows against each other,
guest RAM, the initrd window, the DTB, the console and passthrough devices; queue
window sizes against ring capacities; the Linux UIO and sdfgen limits. Each rule
returns findings; nothing here raises or touches files.
"""

from __future__ import annotations

import re

from netvm.board.model import (
    FAULT_UIOS,
    IRQ_UIOS,
    MAX_UIO_DEVICES,
    MAX_UIO_MAPS,
    MAX_UIO_NAME,
    NET_BUFFER_SIZE,
    PAGE_SIZE,
    QUEUE_UIOS,
    UIO_NAMES,
    Board,
    Region,
    UioDevice,
    iter_uio_regions,
    queue_region_size,
    round_up_to_page,
)
from netvm.core.errors import AddFinding, Finding, Findings

MAX_GIC_SPI = 987  # GICv2/v3 SPIs are INTIDs 32-1019
ADDRESS_LIMIT = 1 << 64
DATA_PASSING_BYTES = 616  # net_drv_vm_data_passing_t
QEMU_VIRT_RAM_BASE = 0x40000000  # hw/arm/virt.c: VIRT_MEM
QEMU_VIRT_MAX_SPI = 223  # hw/arm/virt.h: NUM_IRQS = 256 GIC inputs, 32 of them private


# add(key, message, hint="") records one finding.


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _aligned(n: int) -> bool:
    return n % PAGE_SIZE == 0


def check_board(board: Board, display: str) -> list[Finding]:
    """Every layout finding for `board` (empty when the board is consistent)."""
    found = Findings(display)
    add = found.add
    _check_names(board, add)
    _check_uio_shapes(board, add)
    _check_queues(board, add)
    _check_guest(board, add)
    _check_overlaps(board, add)
    _check_carveout(board, add)
    _check_qemu_base(board, add)
    _check_irqs(board, add)
    _check_regions(board, add)
    _check_clients(board, add)
    return found.collected


# A UIO name becomes part of a DT node name (uio-<name>@<paddr>) and a DT string.
UIO_NAME_FORM = re.compile(r"[A-Za-z0-9_.+-]+")


def _check_names(board: Board, add: AddFinding) -> None:
    names = [d.name for d in board.uio]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            add(f"uio.{name}", "duplicate UIO name", "each UIO device needs its own name")
        seen.add(name)
        if not UIO_NAME_FORM.fullmatch(name):
            add(
                f"uio.{name}",
                f"UIO name {name!r} has characters a device-tree node name cannot hold",
                "use letters, digits and _ . + - (the node is uio-<name>@<paddr>)",
            )
        if len(name) > MAX_UIO_NAME:
            add(
                f"uio.{name}",
                f"UIO name is {len(name)} characters; at most {MAX_UIO_NAME} fit",
                "sdfgen stores names in char[32]",
            )
    for name in sorted(seen):
        for other in sorted(seen):
            if name != other and other.startswith(name):
                add(
                    f"uio.{name}",
                    f"UIO name {name!r} is a prefix of {other!r}",
                    "sdfgen's findUio compares prefixes and would match the wrong node; rename one",
                )
    missing = [n for n in UIO_NAMES if n not in seen]
    if missing:
        add(
            "uio",
            f"missing UIO device(s) {', '.join(missing)}",
            "the VMM looks up all of: " + ", ".join(UIO_NAMES),
        )
    if len(names) > MAX_UIO_DEVICES:
        add("uio", f"{len(names)} UIO devices; sdfgen accepts at most {MAX_UIO_DEVICES}")


def _check_uio_shapes(board: Board, add: AddFinding) -> None:
    for dev in board.uio:
        key = f"uio.{dev.name}"
        if not dev.maps:
            add(
                f"{key}.maps",
                "no map: every UIO node needs a page (sdfgen rejects a node without reg)",
                "give paddr and size (an IRQ device gets a placeholder page)",
            )
        elif dev.name in UIO_NAMES and len(dev.maps) > 1:
            # The driver maps map 0 of each contract device; a second map would be ignored
            # while the toolkit counted it.
            add(
                f"{key}.maps",
                f"{len(dev.maps)} maps; the driver uses exactly one map of {dev.name}",
                "give one paddr/size covering the whole region",
            )
        if len(dev.maps) > MAX_UIO_MAPS:
            add(
                f"{key}.maps",
                f"{len(dev.maps)} maps; a Linux UIO device has at most {MAX_UIO_MAPS}",
                "split the regions over several UIO devices",
            )
        for i, reg in enumerate(dev.maps):
            rkey = key if len(dev.maps) == 1 else f"{key}.maps[{i}]"
            if not _aligned(reg.paddr):
                add(
                    f"{rkey}.paddr",
                    f"{reg.paddr:#x} is not page aligned",
                    f"UIO maps whole pages; use {reg.paddr - reg.paddr % PAGE_SIZE:#x}",
                )
            if reg.size == 0 or not _aligned(reg.size):
                add(
                    f"{rkey}.size",
                    f"{reg.size:#x} is not a positive multiple of the page size {PAGE_SIZE:#x}",
                    f"use {max(round_up_to_page(reg.size), PAGE_SIZE):#x}",
                )
        if dev.name in IRQ_UIOS and dev.irq is None:
            add(f"{key}.irq", "missing: the VMM injects this device's IRQ", "e.g. irq: 400")
        if dev.name in UIO_NAMES and dev.name not in IRQ_UIOS and dev.irq is not None:
            add(f"{key}.irq", "only rx_irq and tx_irq carry an IRQ in the sDDF contract")
        if dev.name in FAULT_UIOS and [m.size for m in dev.maps] != [PAGE_SIZE]:
            add(f"{key}.size", f"a fault (doorbell) page is exactly one page, {PAGE_SIZE:#x}")
        if dev.name == "data_passing" and sum(m.size for m in dev.maps) < DATA_PASSING_BYTES:
            add(f"{key}.size", f"too small for the {DATA_PASSING_BYTES}-byte data-passing page")


def _check_queues(board: Board, add: AddFinding) -> None:
    net = board.net
    if not _is_pow2(net.rx_buffers):
        add(
            "net.rx_buffers",
            f"RX queue capacity {net.rx_buffers} is not a power of two",
            "u16 ring indices wrap consistently only for powers of two, e.g. 512",
        )
    if not _is_pow2(net.tx_buffers):
        add(
            "net.clients",
            f"TX queue capacity {net.tx_buffers} (the sum of the clients' tx_buffers) "
            "is not a power of two",
            "u16 ring indices wrap consistently only for powers of two; adjust tx_buffers",
        )
    for name in QUEUE_UIOS:
        dev = _find(board, name)
        if dev is None or len(dev.maps) != 1:
            continue  # the shape check reports a missing or extra map
        capacity = board.queue_capacity(name)
        want = queue_region_size(capacity)
        if dev.maps[0].size != want:
            add(
                f"uio.{name}.size",
                f"{dev.maps[0].size:#x} does not match a queue of {capacity} descriptors: "
                f"expected {want:#x}",
                f"round_up_to_page(8 + 16 × {capacity}); sdfgen rejects any other size",
            )
    rx_need = round_up_to_page(net.rx_buffers * NET_BUFFER_SIZE)
    tx_need = sum(round_up_to_page(c.tx_buffers * NET_BUFFER_SIZE) for c in net.clients)
    for name, need, what in (
        ("rx_data", rx_need, f"{net.rx_buffers} buffers of {NET_BUFFER_SIZE} bytes"),
        ("tx_data", tx_need, f"the TX regions of {len(net.clients)} client(s)"),
    ):
        dev = _find(board, name)
        have = sum(m.size for m in dev.maps) if dev else need
        if have < need:
            add(
                f"uio.{name}.size",
                f"{have:#x} cannot hold {what}",
                f"at least {need:#x} (buffers × {NET_BUFFER_SIZE}, page rounded per client)",
            )


def _check_guest(board: Board, add: AddFinding) -> None:
    g = board.guest
    ram = g.ram
    if not _aligned(ram.paddr) or not _aligned(ram.size) or ram.size == 0:
        add("guest.ram", f"guest RAM {ram} must be page aligned and non-empty")
    if not _aligned(g.initrd.end):
        add("guest.initrd.end", f"{g.initrd.end:#x} is not page aligned")
    # The highest initrd end that leaves the DTB window inside RAM, page aligned: what
    # a user who moved or shrank RAM wants to be told.
    fitting_end = (ram.end - g.dtb_max_size) // PAGE_SIZE * PAGE_SIZE
    if not ram.paddr < g.initrd.end <= ram.end:
        add(
            "guest.initrd.end",
            f"{g.initrd.end:#x} is outside guest RAM {ram}",
            f"the initrd window ends inside guest RAM, below the DTB: at most {fitting_end:#x}",
        )
    dtb = Region(g.initrd.end, g.dtb_max_size)
    if dtb.end > ram.end:
        add(
            "guest.dtb_max_size",
            f"the DTB window {dtb} (sdfgen puts the DTB at initrd end) runs past guest RAM {ram}",
            f"move guest.initrd.end down to {fitting_end:#x} or below",
        )
    cma = g.cma_mib << 20
    if cma >= ram.size // 2:
        add(
            "guest.cma_mib",
            f"{g.cma_mib} MiB of CMA leaves too little of {ram.size >> 20} MiB guest RAM",
            f"keep CMA under half of guest RAM: at most {(ram.size // 2 - 1) >> 20} MiB "
            "(the NIC needs a few)",
        )


def _check_overlaps(board: Board, add: AddFinding) -> None:
    g = board.guest
    named: list[tuple[str, Region]] = []
    for dev in board.uio:
        for i, reg in enumerate(dev.maps):
            named.append((f"uio.{dev.name}" + (f".maps[{i}]" if len(dev.maps) > 1 else ""), reg))
    fixed: list[tuple[str, Region]] = [
        ("guest.ram", g.ram),
        ("devicetree.console", board.devicetree.console.region),
    ]
    for p in board.passthrough:
        for i, reg in enumerate(p.regions):
            fixed.append((f"passthrough.{p.name}.regions[{i}]", reg))
    carveout = g.carveout
    for i, (key, reg) in enumerate(named):
        for key2, reg2 in named[i + 1 :]:
            if reg.overlaps(reg2):
                add(key, f"{reg} overlaps {key2} {reg2}", "UIO windows must be disjoint")
        for key2, reg2 in fixed:
            # Guest RAM may hold UIO windows only inside the no-map carve-out.
            if key2 == "guest.ram" and carveout is not None and _inside(reg, carveout):
                continue
            if reg.overlaps(reg2):
                hint = "place UIO windows outside it"
                if key2 == "guest.ram" and carveout is not None:
                    hint = f"place UIO windows outside it or inside guest.carveout {carveout}"
                add(key, f"{reg} overlaps {key2} {reg2}", hint)
    for p in board.passthrough:
        for i, reg in enumerate(p.regions):
            for key2, reg2 in fixed[:2]:
                if reg.overlaps(reg2):
                    add(f"passthrough.{p.name}.regions[{i}]", f"{reg} overlaps {key2} {reg2}")


def _inside(inner: Region, outer: Region) -> bool:
    return outer.paddr <= inner.paddr and inner.end <= outer.end


def _check_carveout(board: Board, add: AddFinding) -> None:
    g = board.guest
    c = g.carveout
    if c is None:
        return
    if not _aligned(c.paddr) or not _aligned(c.size) or c.size == 0:
        add("guest.carveout", f"{c} must be page aligned and non-empty")
    if not _inside(c, g.ram):
        add("guest.carveout", f"{c} is not inside guest RAM {g.ram}", "carve it out of guest.ram")
    dtb = Region(g.initrd.end, g.dtb_max_size)
    if c.overlaps(dtb):
        add("guest.carveout", f"{c} overlaps the DTB window {dtb}", "move it below the initrd")
    if c.paddr < g.initrd.end <= c.end:
        add(
            "guest.initrd.end",
            f"{g.initrd.end:#x} is inside guest.carveout {c}",
            "end the initrd window above the carve-out",
        )


def _check_qemu_base(board: Board, add: AddFinding) -> None:
    q = board.devicetree.base_qemu
    if q is None:
        return
    ram = board.guest.ram
    if q.memory != ram.size:
        add(
            "devicetree.base_qemu.memory",
            f"{q.memory:#x} bytes differs from guest.ram.size {ram.size:#x}",
            "QEMU's RAM is the guest RAM: give the same size in both",
        )
    if q.machine.split(",")[0] != "virt":
        return  # the rules below are the virt machine's memory and interrupt map
    if ram.paddr != QEMU_VIRT_RAM_BASE:
        add(
            "guest.ram.paddr",
            f"{ram.paddr:#x}: QEMU virt's RAM starts at {QEMU_VIRT_RAM_BASE:#x}",
            f"use paddr: {QEMU_VIRT_RAM_BASE:#x}",
        )
    for dev in board.uio:
        if dev.irq is not None and dev.irq > QEMU_VIRT_MAX_SPI:
            add(
                f"uio.{dev.name}.irq",
                f"SPI {dev.irq} does not exist on QEMU virt (SPIs 0-{QEMU_VIRT_MAX_SPI})",
                "SPIs 176-223 are unused by QEMU virt's own devices",
            )


def _check_irqs(board: Board, add: AddFinding) -> None:
    owners: dict[int, str] = {board.devicetree.console.irq: "devicetree.console.irq"}
    for p in board.passthrough:
        for i, irq in enumerate(p.irqs):
            owners.setdefault(irq, f"passthrough.{p.name}.irqs[{i}]")
    if not 0 <= board.devicetree.console.irq <= MAX_GIC_SPI:
        add(
            "devicetree.console.irq",
            f"SPI {board.devicetree.console.irq} is out of range 0-{MAX_GIC_SPI}",
        )
    for p in board.passthrough:
        for i, irq in enumerate(p.irqs):
            if not 0 <= irq <= MAX_GIC_SPI:
                add(f"passthrough.{p.name}.irqs[{i}]", f"SPI {irq} is out of range 0-{MAX_GIC_SPI}")
    for dev in board.uio:
        if dev.irq is None:
            continue
        key = f"uio.{dev.name}.irq"
        if not 0 <= dev.irq <= MAX_GIC_SPI:
            add(key, f"SPI {dev.irq} is out of range 0-{MAX_GIC_SPI}")
        if dev.irq in owners:
            add(key, f"SPI {dev.irq} is already used by {owners[dev.irq]}", "pick an unused SPI")
        owners[dev.irq] = key


def _find(board: Board, name: str) -> UioDevice | None:
    for dev in board.uio:
        if dev.name == name:
            return dev
    return None


def _regions(board: Board) -> list[tuple[str, Region]]:
    """Every physical range the board names, with its key."""
    g = board.guest
    out: list[tuple[str, Region]] = [
        ("guest.ram", g.ram),
        ("devicetree.console", board.devicetree.console.region),
    ]
    if g.carveout is not None:
        out.append(("guest.carveout", g.carveout))
    out += [(f"uio.{name}", reg) for name, reg in iter_uio_regions(board)]
    for p in board.passthrough:
        out += [(f"passthrough.{p.name}.regions[{i}]", reg) for i, reg in enumerate(p.regions)]
    return out


def _check_regions(board: Board, add: AddFinding) -> None:
    for key, reg in _regions(board):
        if reg.paddr + reg.size > ADDRESS_LIMIT:
            add(key, f"{reg.paddr:#x} + {reg.size:#x} runs past the end of the 64-bit space")
    console = board.devicetree.console.region
    if console.size == 0:
        add("devicetree.console.size", "a virtio console needs its registers: size 0", "e.g. 0x200")
    if console.overlaps(board.guest.ram):
        add(
            "devicetree.console",
            f"{console} lies in guest RAM {board.guest.ram}",
            "the VMM traps the console's MMIO: place it outside guest RAM",
        )
    ranges = [
        (f"passthrough.{p.name}.regions[{i}]", reg)
        for p in board.passthrough
        for i, reg in enumerate(p.regions)
    ]
    for i, (key, reg) in enumerate(ranges):
        for key2, reg2 in ranges[i + 1 :]:
            if reg.overlaps(reg2):
                add(key, f"{reg} overlaps {key2} {reg2}", "passthrough regions must be disjoint")


def _check_clients(board: Board, add: AddFinding) -> None:
    """Client MACs and addresses: each a usable unicast identity of its own."""
    macs: dict[str, str] = {}
    ips: dict[str, str] = {}
    peer = board.sim.peer_address.split("/")[0]
    for i, c in enumerate(board.net.clients):
        key = f"net.clients[{i}]"
        octets = bytes(int(x, 16) for x in c.mac.split(":"))
        if octets == bytes(6):
            add(f"{key}.mac", "the all-zero MAC is not a station address")
        elif octets == b"\xff" * 6:
            add(f"{key}.mac", "the broadcast MAC is not a station address")
        elif octets[0] & 1:
            add(
                f"{key}.mac",
                f"{c.mac} is a multicast address (low bit of the first octet set)",
                "use a locally administered unicast MAC like 02:00:00:00:00:10",
            )
        if c.mac in macs:
            add(f"{key}.mac", f"{c.mac} is also {macs[c.mac]}'s MAC", "each client needs its own")
        macs.setdefault(c.mac, c.name)
        if c.ipv4 in ips:
            add(f"{key}.ipv4", f"{c.ipv4} is also {ips[c.ipv4]}'s address")
        ips.setdefault(c.ipv4, c.name)
        if c.ipv4 == peer:
            add(f"{key}.ipv4", f"{c.ipv4} is the simulation peer's address (sim.peer_address)")
