"""Cross-check of the guest device tree against a Microkit system description (`.system`).

Owns relating what the guest *believes* (its DTB: UIO windows, RAM, initrd, enabled
devices) to what the seL4 system actually *maps* into the driver VM (`<map>`s inside the
`<virtual_machine>` of the `.system` file). It reads both files and reports; it never
edits either. Parsing uses `netvm.guest.fdt` and the standard library's XML parser.

What is checked, and why:
- every UIO window except the fault pages and the IRQ placeholder pages is fully backed
  by `<map>`s at the same guest-physical address, uncached (the guest maps UIO memory
  uncached, and the native side shares these pages). In the real system they are the
  sDDF regions themselves: the virt_rx/virt_tx queues, the RX data region, each TX
  client's data region (tx_data is backed by one map per client) and the data-passing
  page, which the guest may only read;
- the fault pages are NOT mapped: the guest's doorbell store must trap to the VMM;
- guest RAM in the DT is the RAM the VM maps, and the initrd window and the DTB slot
  after it (where sdfgen places the DTB) lie inside it;
- passthrough devices of the board are mapped (and their IRQs given to the VMM);
- enabled DT nodes with MMIO that nothing maps are reported: the guest "will fault at
  boot" if a driver binds to them. Devices the VMM emulates (vGIC, virtio console)
  are exempt.

House rules: findings are values (`Finding`: the `.system` file, the DT node path, the
message naming the `<map>`, a hint); errors and warnings are returned separately.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from netvm.board import FAULT_UIOS, IRQ_UIOS, PAGE_SIZE, Board, round_up_to_page
from netvm.core.errors import AddFinding, Finding, UserError
from netvm.core.workspace import Workspace
from netvm.guest.fdt import FdtError, cells, parse_dtb, strings

GIC_SPI_BASE = 32  # INTID of SPI 0
READ_ONLY_UIO = "data_passing"  # the guest's map of it is read-only in the real system
# Interrupt controllers libvmm's vGIC emulates: guest accesses trap to the VMM by design.
EMULATED_COMPATIBLES = ("arm,gic-400", "arm,cortex-a15-gic", "arm,cortex-a9-gic", "arm,gic-v3")


@dataclass(frozen=True)
class VmMap:
    mr: str
    vaddr: int
    size: int
    perms: str
    cached: bool

    @property
    def end(self) -> int:
        return self.vaddr + self.size

    def __str__(self) -> str:
        cache = "cached" if self.cached else "uncached"
        if "w" not in self.perms:
            cache += ", read-only"
        return (
            f'<map mr="{self.mr}" vaddr="{self.vaddr:#x}"> ({self.vaddr:#x}-{self.end:#x}, {cache})'
        )


@dataclass(frozen=True)
class SystemVm:
    name: str
    vmm: str  # the protection domain that holds the virtual machine
    maps: tuple[VmMap, ...]
    vmm_irqs: tuple[int, ...]  # INTIDs given to the VMM (passthrough IRQs)

    def overlapping(self, start: int, end: int) -> list[VmMap]:
        return [m for m in self.maps if m.vaddr < end and start < m.end]


@dataclass
class SystemReport:
    system: str
    vm: str
    vmm: str  # the protection domain holding the VM
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    warning_kinds: list[str] = field(default_factory=list)  # WARNING_KINDS key of each warning
    checked: list[str] = field(default_factory=list)  # one line per check that passed

    def warn(self, kind: str, finding: Finding) -> None:
        self.warnings.append(finding)
        self.warning_kinds.append(kind)

    def as_dict(self) -> dict[str, object]:
        return {
            "system": self.system,
            "vm": self.vm,
            "vmm": self.vmm,
            "errors": [f.as_dict() for f in self.errors],
            "warnings": [f.as_dict() for f in self.warnings],
            "checked": self.checked,
        }


# ---------------------------------------------------------------------------------------
# The system description


def parse_system(path: Path, display: str) -> list[SystemVm]:
    """Every `<virtual_machine>` of a Microkit system file with its maps resolved to sizes."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        raise UserError(
            [Finding(display, "", f"cannot read the system description: {exc}")]
        ) from None
    root = tree.getroot()
    problems: list[Finding] = []
    sizes: dict[str, int] = {}
    for region in root.iter("memory_region"):
        name = region.get("name", "")
        size = _int(region.get("size"))
        if not name or size is None:
            problems.append(
                Finding(display, f"memory_region {name!r}", "needs a name and a numeric size")
            )
            continue
        sizes[name] = size
    vms: list[SystemVm] = []
    for pd in root.iter("protection_domain"):
        irqs = tuple(i for irq in pd.findall("irq") if (i := _int(irq.get("irq"))) is not None)
        for vm in pd.findall("virtual_machine"):
            maps: list[VmMap] = []
            for m in vm.findall("map"):
                mr = m.get("mr", "")
                vaddr = _int(m.get("vaddr"))
                if mr not in sizes or vaddr is None:
                    problems.append(
                        Finding(
                            display,
                            f"virtual_machine {vm.get('name')!r}",
                            f'<map mr="{mr}" vaddr="{m.get("vaddr")}"> names no declared '
                            "memory_region or has no numeric vaddr",
                        )
                    )
                    continue
                # Microkit's default for `cached` is true.
                cached = m.get("cached", "true").lower() not in ("false", "0", "no")
                maps.append(VmMap(mr, vaddr, sizes[mr], m.get("perms", "rw"), cached))
            vms.append(SystemVm(vm.get("name", "?"), pd.get("name", "?"), tuple(maps), irqs))
    if problems:
        raise UserError(problems)
    return vms


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        return None


def select_vm(vms: list[SystemVm], board: Board, display: str, name: str | None) -> SystemVm:
    """The driver VM: by name, the only VM, or the one mapping the board's guest RAM."""
    if name is not None:
        for vm in vms:
            if vm.name == name:
                return vm
    elif len(vms) == 1:
        return vms[0]
    else:
        ram = board.guest.ram
        holding = [vm for vm in vms if any(m.vaddr == ram.paddr for m in vm.maps)]
        if len(holding) == 1:
            return holding[0]
    known = ", ".join(vm.name for vm in vms) or "none"
    raise UserError(
        [
            Finding(
                display,
                "virtual_machine",
                f"cannot tell which virtual machine is the driver VM (VMs: {known})"
                if name is None
                else f"no virtual machine named {name!r} (VMs: {known})",
                "pass --vm NAME",
            )
        ]
    )


# ---------------------------------------------------------------------------------------
# The guest device tree


@dataclass(frozen=True)
class UioWindow:
    path: str
    name: str
    paddr: int
    size: int

    @property
    def end(self) -> int:
        return self.paddr + self.size


class GuestTree:
    """Read-only views of a parsed guest DTB: translated `reg`s, status, UIO nodes."""

    def __init__(self, nodes: dict[str, dict[str, bytes]]) -> None:
        self.nodes = nodes

    @staticmethod
    def parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def _cells(self, path: str, prop: str, default: int) -> int:
        value = self.nodes.get(path, {}).get(prop)
        return cells(value)[0] if value else default

    def enabled(self, path: str) -> bool:
        """A node is live only if it and every ancestor are okay (or have no status)."""
        node = path
        while True:
            status = self.nodes.get(node, {}).get("status")
            if status is not None and strings(status)[:1] not in (["okay"], ["ok"]):
                return False
            if node == "/":
                return True
            node = self.parent(node)

    def regs(self, path: str) -> list[tuple[int, int]] | None:
        """`reg` translated to CPU (guest-physical) addresses; None if not memory-mapped."""
        raw = self.nodes.get(path, {}).get("reg")
        if raw is None:
            return None
        parent = self.parent(path)
        ac = self._cells(parent, "#address-cells", 2)
        sc = self._cells(parent, "#size-cells", 1)
        if sc == 0 or ac == 0:
            return None  # e.g. CPU ids: an address space of its own
        c = cells(raw)
        step = ac + sc
        out: list[tuple[int, int]] = []
        for i in range(0, len(c) - step + 1, step):
            addr = _join_cells(c[i : i + ac])
            size = _join_cells(c[i + ac : i + step])
            translated = self._translate(parent, addr)
            if translated is None:
                return None
            out.append((translated, size))
        return out

    def _translate(self, bus: str, addr: int) -> int | None:
        """Walk `ranges` up to the root; a bus without `ranges` is not memory-mapped."""
        while bus != "/":
            ranges = self.nodes.get(bus, {}).get("ranges")
            if ranges is None:
                return None
            if ranges:
                child_ac = self._cells(bus, "#address-cells", 2)
                child_sc = self._cells(bus, "#size-cells", 1)
                parent_ac = self._cells(self.parent(bus), "#address-cells", 2)
                c = cells(ranges)
                step = child_ac + parent_ac + child_sc
                for i in range(0, len(c) - step + 1, step):
                    child = _join_cells(c[i : i + child_ac])
                    base = _join_cells(c[i + child_ac : i + child_ac + parent_ac])
                    length = _join_cells(c[i + child_ac + parent_ac : i + step])
                    if child <= addr < child + length:
                        addr = base + (addr - child)
                        break
                else:
                    return None
            bus = self.parent(bus)
        return addr

    def compatible(self, path: str) -> list[str]:
        value = self.nodes.get(path, {}).get("compatible")
        return strings(value) if value else []

    def uio_windows(self) -> list[UioWindow]:
        out: list[UioWindow] = []
        for path in self.nodes:
            compat = self.compatible(path)
            if len(compat) == 2 and compat[0] == "generic-uio":
                for paddr, size in self.regs(path) or []:
                    out.append(UioWindow(path, compat[1], paddr, size))
        return out


def _join_cells(values: list[int]) -> int:
    out = 0
    for v in values:
        out = (out << 32) | v
    return out


def load_guest_tree(dtb: Path, display: str) -> GuestTree:
    try:
        return GuestTree(parse_dtb(dtb.read_bytes()))
    except OSError as exc:
        raise UserError(
            [Finding(display, "", f"cannot read the guest DTB: {exc.strerror}")],
        ) from None
    except FdtError as exc:
        raise UserError([Finding(display, "", f"not a device tree blob: {exc}")]) from None


# ---------------------------------------------------------------------------------------
# The checks


def _gaps(start: int, end: int, maps: list[VmMap]) -> list[tuple[int, int]]:
    """Parts of [start, end) that no map covers."""
    gaps: list[tuple[int, int]] = []
    pos = start
    for m in sorted(maps, key=lambda m: m.vaddr):
        if m.vaddr > pos:
            gaps.append((pos, min(m.vaddr, end)))
        pos = max(pos, m.end)
        if pos >= end:
            break
    if pos < end:
        gaps.append((pos, end))
    return [(a, b) for a, b in gaps if a < b]


def _span(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a:#x}-{b:#x}" for a, b in ranges)


def _maps_text(maps: list[VmMap]) -> str:
    return "; ".join(str(m) for m in maps) if maps else "no <map>"


def check_system(
    board: Board,
    tree: GuestTree,
    vms: list[SystemVm],
    *,
    display: str,
    vm_name: str | None = None,
) -> SystemReport:
    """Relate the guest DT to the driver VM of a system description; collect findings."""
    vm = select_vm(vms, board, display, vm_name)
    report = SystemReport(display, vm.name, vm.vmm)

    def error(key: str, message: str, hint: str = "") -> None:
        report.errors.append(Finding(display, key, message, hint))

    _check_uio(board, tree, vm, report, error)
    _check_ram(board, tree, vm, report, error)
    _check_devices(board, tree, vm, report, error)
    return report


def _check_uio(
    board: Board, tree: GuestTree, vm: SystemVm, report: SystemReport, error: AddFinding
) -> None:
    windows = tree.uio_windows()
    if not windows:
        error("/", "the guest DT has no generic-uio nodes", "is this the driver VM's DTB?")
        return
    for w in windows:
        maps = vm.overlapping(w.paddr, w.end)
        where = f"UIO window {w.name} {w.paddr:#x}-{w.end:#x}"
        if w.name in FAULT_UIOS:
            if maps:
                error(
                    w.path,
                    f"{where} is a fault page but is mapped by {_maps_text(maps)}",
                    "remove that map: the guest's doorbell store must fault into the VMM",
                )
            else:
                report.checked.append(f"{w.path}: fault page {w.name} is unmapped")
            continue
        if w.name in IRQ_UIOS:
            continue  # a placeholder page sdfgen needs; nobody touches it
        gaps = _gaps(w.paddr, w.end, maps)
        if gaps:
            backed = "backed only by " + _maps_text(maps) if maps else "not backed by any <map>"
            error(
                w.path,
                f"{where} is {backed}; unbacked: {_span(gaps)}",
                f"map {w.size:#x} bytes at vaddr {w.paddr:#x} (the same guest-physical "
                'address) with cached="false"',
            )
            continue
        writable = [m for m in maps if "w" in m.perms]
        if w.name == READ_ONLY_UIO and writable:
            error(
                w.path,
                f"{where} is mapped writable by {_maps_text(writable)}",
                'map it perms="r": the VMM writes the data-passing page before the guest '
                "boots and the guest only reads it",
            )
            continue
        cached = [m for m in maps if m.cached]
        if cached:
            error(
                w.path,
                f"{where} is mapped cached by {_maps_text(cached)}",
                'add cached="false": the guest maps UIO memory uncached and the native '
                "side shares these pages",
            )
            continue
        report.checked.append(f"{w.path}: {w.name} backed by {_maps_text(maps)}")


def _check_ram(
    board: Board, tree: GuestTree, vm: SystemVm, report: SystemReport, error: AddFinding
) -> None:
    ram = board.guest.ram
    memory = [p for p in tree.nodes if p.split("/")[-1].split("@")[0] == "memory" and p != "/"]
    mem_regs = [r for p in memory if tree.parent(p) == "/" for r in (tree.regs(p) or [])]
    path = memory[0] if memory else "/memory"
    if mem_regs != [(ram.paddr, ram.size)]:
        found = _span([(a, a + s) for a, s in mem_regs]) or "none"
        error(
            path,
            f"guest RAM in the DT is {found}, the board says {ram}",
            "rebuild the DTB from this board file",
        )
    ram_maps = vm.overlapping(ram.paddr, ram.end)
    gaps = _gaps(ram.paddr, ram.end, ram_maps)
    extra = [m for m in ram_maps if m.vaddr < ram.paddr or m.end > ram.end]
    if gaps or extra:
        error(
            path,
            f"guest RAM {ram} is mapped by {_maps_text(ram_maps)}"
            + (f"; unmapped: {_span(gaps)}" if gaps else "; maps reach outside it"),
            "the VM's RAM region must be exactly the DT memory node "
            "(sdfgen derives it from the guest DTB)",
        )
    else:
        report.checked.append(f"{path}: guest RAM {ram} mapped by {_maps_text(ram_maps)}")
    chosen = tree.nodes.get("/chosen", {})
    start_raw, end_raw = chosen.get("linux,initrd-start"), chosen.get("linux,initrd-end")
    if start_raw is None or end_raw is None:
        error("/chosen", "no linux,initrd-start/end: the VMM cannot place the initramfs")
        return
    start, end = _join_cells(cells(start_raw)), _join_cells(cells(end_raw))
    dtb_at = round_up_to_page(end)
    dtb_end = dtb_at + board.guest.dtb_max_size
    if not (ram.paddr <= start < end <= ram.end):
        error(
            "/chosen",
            f"initrd window {start:#x}-{end:#x} is not inside guest RAM {ram}",
            "rebuild the DTB from this board file",
        )
    elif dtb_end > ram.end:
        error(
            "/chosen",
            f"the DTB slot {dtb_at:#x}-{dtb_end:#x} (first page after the initrd, where "
            f"sdfgen places it) is not inside guest RAM {ram}",
            "lower guest.initrd.end or raise guest.ram.size in the board file",
        )
    elif gaps := _gaps(start, dtb_end, vm.overlapping(start, dtb_end)):
        error(
            "/chosen",
            f"the initrd window {start:#x}-{end:#x} and DTB slot {dtb_at:#x}-{dtb_end:#x} "
            f"are not mapped into the VM: {_span(gaps)} has no <map>",
            "the VMM copies the initramfs and DTB there before the guest starts",
        )
    else:
        report.checked.append(
            f"/chosen: initrd {start:#x}-{end:#x} and DTB slot {dtb_at:#x}-{dtb_end:#x} in RAM"
        )


def _check_devices(
    board: Board, tree: GuestTree, vm: SystemVm, report: SystemReport, error: AddFinding
) -> None:
    passthrough = {p.path: p for p in board.passthrough}
    console = board.devicetree.console.region
    uio_paths = {w.path for w in tree.uio_windows()}
    for path, pt in passthrough.items():
        regs = tree.regs(path)
        if path not in tree.nodes or regs is None:
            error(path, f"passthrough device {pt.name} is not in the guest DT (or has no reg)")
            continue
        if not tree.enabled(path):
            report.warn(
                "disabled-passthrough",
                Finding(report.system, path, f"passthrough device {pt.name} is disabled"),
            )
            continue
        unmapped = _unmapped_pages(regs, vm)
        if unmapped:
            error(
                path,
                f"passthrough device {pt.name} is enabled but {_span(unmapped)} has no <map>"
                + (f" (partly mapped by {_maps_text(near)})" if (near := _near(regs, vm)) else "")
                + "; it will fault at boot",
                "pass the node to sdfgen's add_passthrough_device",
            )
        else:
            report.checked.append(f"{path}: passthrough {pt.name} mapped")
        for spi in pt.irqs:
            if spi + GIC_SPI_BASE not in vm.vmm_irqs:
                error(
                    path,
                    f"passthrough IRQ SPI {spi} (INTID {spi + GIC_SPI_BASE}) of {pt.name} is "
                    f"not given to the VMM {vm.vmm!r}",
                    f'add <irq irq="{spi + GIC_SPI_BASE}"> to that protection domain',
                )
    for path in tree.nodes:
        if path in passthrough or path in uio_paths or not tree.enabled(path):
            continue
        top = path.split("/")[1].split("@")[0] if path != "/" else ""
        if top in ("memory", "reserved-memory", "chosen", "cpus", "aliases", "__symbols__"):
            continue
        compat = tree.compatible(path)
        if any(c in EMULATED_COMPATIBLES for c in compat) or compat == ["simple-bus"]:
            continue  # emulated by the VMM, or only a container of other nodes
        regs = tree.regs(path)
        if not regs:
            continue
        if all(console.paddr <= a and a + s <= console.end for a, s in regs):
            continue  # libvmm's virtio console, emulated by the VMM
        unmapped = _unmapped_pages(regs, vm)
        if unmapped:
            report.warn(
                "unmapped-device",
                Finding(
                    report.system,
                    path,
                    f"enabled in the guest DT but {_span(unmapped)} has no <map>: will fault "
                    "at boot if a driver binds to it",
                    "disable it in the board's devicetree.disable, or pass it through",
                ),
            )


def _unmapped_pages(regs: list[tuple[int, int]], vm: SystemVm) -> list[tuple[int, int]]:
    """Page-granular gaps: stage 2 maps whole pages, so a register block inside a mapped
    page (e.g. the MAC's 0xff634540 in the pinctrl page) is reachable."""
    gaps: list[tuple[int, int]] = []
    for addr, size in regs:
        start = addr & ~(PAGE_SIZE - 1)
        end = round_up_to_page(addr + size)
        gaps += [g for g in _gaps(start, end, vm.overlapping(start, end)) if g not in gaps]
    return gaps


def _near(regs: list[tuple[int, int]], vm: SystemVm) -> list[VmMap]:
    out: list[VmMap] = []
    for addr, size in regs:
        out += [m for m in vm.overlapping(addr, addr + size) if m not in out]
    return out


def default_system(build: Path) -> Path | None:
    """The `.system` upstream's make wrote into netvm's Microkit build directory, if one."""
    found = sorted((build / "microkit" / "build").glob("*.system"))
    return found[0] if len(found) == 1 else None


def check_given_files(
    board: Board,
    *,
    dtb: Path,
    system: Path,
    dtb_display: str,
    system_display: str,
    vm_name: str | None = None,
    strict: bool = False,
) -> SystemReport:
    """Load both files and check; raise a UserError with every error (and, if `strict`,
    every warning)."""
    tree = load_guest_tree(dtb, dtb_display)
    vms = parse_system(system, system_display)
    report = check_system(board, tree, vms, display=system_display, vm_name=vm_name)
    problems = report.errors + (report.warnings if strict else [])
    if problems:
        raise UserError(problems)
    return report


def check_files(
    board: Board,
    ws: Workspace,
    *,
    system: Path | None,
    dtb: Path | None,
    vm_name: str | None = None,
    strict: bool = False,
) -> SystemReport:
    """`invoke check`: defaults are the build's guest DTB and the `.system` its make wrote.

    A board whose seL4 system runs a variant of its guest (QEMU) is checked as that
    variant, against the files its build wrote under sel4/.
    """
    if board.microkit is None and board.sel4 is not None:
        board = board.sel4
    build = ws.build_dir(board)
    dtb = dtb or build / "dtb" / "guest.dtb"
    if not dtb.is_file():
        raise UserError(
            [
                Finding(
                    ws.display(dtb),
                    "",
                    "no guest DTB to check",
                    f"run `invoke build --board {board.name}` first, or pass --dtb FILE",
                )
            ]
        )
    system = system or default_system(build)
    if system is None:
        raise UserError(
            [
                Finding(
                    ws.display(board.file),
                    "microkit",
                    "no system description to check: the build has made no .system yet",
                    "pass --system FILE (the .system upstream's make writes next to loader.img)",
                )
            ]
        )
    return check_given_files(
        board,
        dtb=dtb,
        system=system,
        dtb_display=ws.display(dtb),
        system_display=ws.display(system),
        vm_name=vm_name,
        strict=strict,
    )


# Each kind of warning as one summary line, for reports that are read rather than parsed.
WARNING_KINDS = {
    "unmapped-device": (
        "enabled DT nodes whose MMIO no <map> covers: each faults at boot if a driver binds "
        "to it (devicetree.disable, or pass it through)"
    ),
    "disabled-passthrough": "passthrough devices disabled in the guest DT",
}
SHOWN_PER_KIND = 3  # node paths named in a summary line


def format_report(report: SystemReport, *, verbose: bool = False) -> str:
    """The check's text: one line per kind of warning (each warning with `verbose`),
    then the summary line."""
    if verbose:
        lines = [f"warning: {w}" for w in report.warnings]
    else:
        lines = []
        for kind, summary in WARNING_KINDS.items():
            paths = [w.key for w, k in zip(report.warnings, report.warning_kinds, strict=True)
                     if k == kind]  # fmt: skip
            if not paths:
                continue
            named = ", ".join(paths[:SHOWN_PER_KIND])
            more = f" and {len(paths) - SHOWN_PER_KIND} more" if len(paths) > SHOWN_PER_KIND else ""
            lines.append(f"warning: {len(paths)} {summary}: {named}{more}")
        if report.warnings:
            lines.append("(--verbose lists every warning with its addresses)")
    lines.append(
        f"{report.system}: virtual machine {report.vm!r} of {report.vmm!r}: "
        f"{len(report.checked)} checks passed, "
        f"{len(report.warnings)} warnings"
    )
    return "\n".join(lines)
