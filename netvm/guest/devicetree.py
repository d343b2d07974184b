"""The guest device tree: base DTS + rendered overlay + initrd window -> dtc -> DTB.

Owns preprocessing the board's base DTS with the kernel's include paths, appending
the overlay (plain concatenation: later definitions win, so no ``-@`` base is
needed), sizing the initrd window from the real initramfs, compiling with `dtc`, and
checking the compiled blob against the board model. Does not render the overlay
(`netvm.guest.render`) or decide placement rules (`netvm.board.layout`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from netvm.board import PAGE_SIZE, Board, Region
from netvm.core.errors import Finding, Findings, UserError
from netvm.core.toollog import ToolLog
from netvm.core.workspace import cache_dir
from netvm.guest.fdt import cells, decompile, parse_dtb, strings, u64_pairs
from netvm.guest.kernelsrc import KernelSource
from netvm.guest.qemu_machine import dump_base_dts, unused_virtio_transports
from netvm.guest.render import block_comment, dts_string, uio_node_name

# The warnings the kernel's own dtbs build turns off (scripts/Makefile.dtbs): they
# fire on the vendor base DTS, not on anything netvm adds.
DTC_FLAGS = (
    "-Wno-unique_unit_address",
    "-Wno-unit_address_vs_reg",
    "-Wno-avoid_unnecessary_addr_size",
    "-Wno-alias_paths",
    "-Wno-graph_child_address",
    "-Wno-simple_bus_reg",
    "-Wno-interrupt_provider",
)
# A decompiled QEMU tree carries phandles as plain numbers, which these checks report
# on QEMU's own nodes (the tree compiles to the same references).
QEMU_BASE_DTC_FLAGS = ("-Wno-clocks_property", "-Wno-gpios_property")


@dataclass(frozen=True)
class DtbResult:
    dtb: Path
    dts: Path  # the compiled tree decompiled, for reading
    source: Path  # the concatenated input dtc compiled
    initrd: Region | None
    warnings: str


def initrd_window(board: Board, initramfs_bytes: int, kernel_bytes: int = 0) -> Region:
    """The initrd window ending at guest.initrd.end, sized from the real initramfs.

    Raises UserError when it would not fit in guest RAM above the kernel image.
    """
    g = board.guest
    want = initramfs_bytes + g.initrd.headroom
    start = (g.initrd.end - want) // PAGE_SIZE * PAGE_SIZE
    floor = g.ram.paddr + kernel_bytes
    below = "the kernel's end"
    if g.carveout is not None and floor < g.carveout.end <= g.initrd.end:
        # The window must not reach into the carve-out below it.
        floor, below = g.carveout.end, "the end of guest.carveout"
    if start < floor:
        raise UserError(
            [
                Finding(
                    board.display_file,
                    "guest.initrd.end",
                    f"an initramfs of {initramfs_bytes} bytes (+{g.initrd.headroom:#x} headroom) "
                    f"does not fit below {g.initrd.end:#x}: it would start at {start:#x}, "
                    f"under {below} at {floor:#x}",
                    "raise guest.initrd.end or guest.ram.size, or shrink the rootfs",
                )
            ]
        )
    return Region(start, g.initrd.end - start)


def initrd_fragment(window: Region, header: str) -> str:
    return (
        f"/* {block_comment(header)} Initrd window sized from the built initramfs. */\n"
        "&{/chosen} {\n"
        f"\tlinux,initrd-start = /bits/ 64 <{window.paddr:#x}>;\n"
        f"\tlinux,initrd-end = /bits/ 64 <{window.end:#x}>;\n"
        "};\n"
    )


def preprocess_base(
    src: KernelSource, base: str, out: Path, display: str, log: ToolLog | None = None
) -> Path:
    """Run the kernel's DTS preprocessing (cpp with its include paths) on `base`."""
    dts = src.path / base
    if not dts.is_file():
        raise UserError(
            [Finding(display, "devicetree.base", f"{base} not found in the kernel tree {src.path}")]
        )
    cmd = [
        "cpp",
        "-nostdinc",
        "-undef",
        "-D__DTS__",
        "-x",
        "assembler-with-cpp",
        "-I",
        str(src.path / "include"),
        "-I",
        str(src.path / "scripts" / "dtc" / "include-prefixes"),
        "-I",
        str(dts.parent),
        "-o",
        str(out),
        str(dts),
    ]
    log = log or ToolLog(None)
    log.check(log.capture(cmd), f"cpp on {base}")
    return out


def overlay_key(board: Board, line: str) -> str:
    """The board key a line of the rendered overlay comes from ("" when none is)."""
    for i, path in enumerate(board.devicetree.delete):
        if f"&{{{path}}}" in line:
            return f"devicetree.delete[{i}]"
    for i, node in enumerate(board.devicetree.disable):
        if f"&{{{node.path}}}" in line:
            return f"devicetree.disable[{i}].path"
    for dev in board.uio:
        if uio_node_name(dev) in line or f'"{dts_string(dev.name)}"' in line:
            return f"uio.{dev.name}"
    if "bootargs" in line:
        return "guest.bootargs"
    if board.devicetree.console.node in line:
        return "devicetree.console"
    return ""


def dtc_finding(board: Board, overlay: Path, source: Path, stderr: str) -> Finding:
    """dtc's complaint, about the board key behind the overlay line it names when it
    names one (else about the combined source, which is kept to read)."""
    text = stderr.strip()
    m = re.search(rf"{re.escape(overlay.name)}:(\d+)", text)
    if m is not None:
        lines = overlay.read_text().splitlines()
        n = int(m.group(1))
        line = lines[n - 1].strip() if 0 < n <= len(lines) else ""
        key = overlay_key(board, line)
        if key:
            return Finding(
                board.display_file,
                key,
                f"the device tree compiler refused what this key renders ({line!r}): {text}",
                f"the rendered overlay is {overlay}; the combined source is {source}",
            )
    return Finding(str(source), "", f"dtc failed:\n{text}")


def build_guest_dtb(
    board: Board,
    overlay: Path,
    src: KernelSource,
    out_dir: Path,
    *,
    header: str,
    initrd: Region | None,
    log: ToolLog | None = None,
) -> DtbResult:
    """Compile base + overlay (+ initrd window) into ``guest.dtb`` and check it; cpp's
    and dtc's output goes to `log`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or ToolLog(None)
    flags: tuple[str, ...]
    if board.devicetree.base_qemu is not None:
        # QEMU's own tree for the boot's machine options, kept next to the output to read.
        base_text = dump_base_dts(board, cache_dir() / "qemu-dtb")
        (out_dir / "base.qemu.dts").write_text(base_text)
        flags = DTC_FLAGS + QEMU_BASE_DTC_FLAGS
        unused = unused_virtio_transports(base_text, board.devicetree.base_qemu.virtio_transports)
        base_text += (
            "\n/* ---- virtio-mmio transports netvm.target.qemu plugs nothing into ---- */\n"
        )
        base_text += "".join(f"/delete-node/ &{{{path}}};\n" for path in unused)
    else:
        assert board.devicetree.base is not None
        base_pp = preprocess_base(
            src, board.devicetree.base, out_dir / "base.pp.dts", board.display_file, log
        )
        base_text = base_pp.read_text()
        flags = DTC_FLAGS
    # The line marker makes dtc name overlay lines as overlay.dts:N (the preprocessed base
    # ends inside the kernel's files), so an error maps back to the board key behind it.
    parts = [base_text, f'\n/* ---- {overlay.name} ---- */\n# 1 "{overlay.name}"\n']
    parts.append(overlay.read_text())
    if initrd is not None:
        parts.append('# 1 "initrd-window"\n' + initrd_fragment(initrd, header))
    source = out_dir / "guest.src.dts"
    source.write_text("".join(parts))
    dtb = out_dir / "guest.dtb"
    proc = log.capture(["dtc", "-I", "dts", "-O", "dtb", *flags, "-o", str(dtb), str(source)])
    if proc.status != 0:
        raise UserError([dtc_finding(board, overlay, source, proc.stderr)])
    dts = out_dir / "guest.dts"
    decompiled = decompile(dtb, log)
    dts.write_text(f"/* {header} Decompiled guest DTB, for reading. */\n" + decompiled)
    size = dtb.stat().st_size
    if size > board.guest.dtb_max_size:
        raise UserError(
            [
                Finding(
                    board.display_file,
                    "guest.dtb_max_size",
                    f"the built DTB is {size:#x} bytes, more than the {board.guest.dtb_max_size:#x}"
                    " the board leaves for it",
                    "raise guest.dtb_max_size (sdfgen places the DTB at the initrd end)",
                )
            ]
        )
    findings = check_guest_dtb(board, dtb.read_bytes(), initrd, str(dtb))
    if findings:
        raise UserError(findings)
    return DtbResult(dtb, dts, source, initrd, proc.stderr)


def check_guest_dtb(
    board: Board, blob: bytes, initrd: Region | None, display: str = "guest.dtb"
) -> list[Finding]:
    """Compare a compiled guest DTB (`display`) with the board model; one finding per
    mismatch."""
    nodes = parse_dtb(blob)
    found = Findings(display)
    add = found.add

    root = nodes.get("/", {})
    if cells(root.get("#address-cells", b"")) != [2] or cells(root.get("#size-cells", b"")) != [2]:
        add("/", "expected #address-cells = #size-cells = 2 at the root")
    for dev in board.uio:
        path = "/" + uio_node_name(dev)
        node = nodes.get(path)
        if node is None:
            add(path, f"UIO node for {dev.name} is missing")
            continue
        if strings(node.get("compatible", b"")) != ["generic-uio", dev.name]:
            add(path, f"compatible is {strings(node.get('compatible', b''))}")
        if strings(node.get("linux,uio-name", b"")) != [dev.name]:
            add(path, "linux,uio-name does not match")
        if u64_pairs(node.get("reg", b"")) != [(m.paddr, m.size) for m in dev.maps]:
            add(path, f"reg {u64_pairs(node.get('reg', b''))} does not match the board")
        want_irq = [0, dev.irq, 4] if dev.irq is not None else []
        if cells(node.get("interrupts", b"")) != want_irq:
            add(path, f"interrupts {cells(node.get('interrupts', b''))}, expected {want_irq}")
    for disabled in board.devicetree.disable:
        status = strings(nodes.get(disabled.path, {}).get("status", b""))
        if disabled.path not in nodes:
            add(disabled.path, "node to disable is not in the base device tree")
        elif status != ["disabled"]:
            add(disabled.path, f"status is {status}, expected disabled")
    for deleted in board.devicetree.delete:
        if deleted in nodes:
            add(deleted, "node should have been deleted")
    ram = board.guest.ram
    memory = [p for p, n in nodes.items() if strings(n.get("device_type", b"")) == ["memory"]]
    regs = [u64_pairs(nodes[p].get("reg", b"")) for p in memory]
    if regs != [[(ram.paddr, ram.size)]]:
        add(
            "/memory",
            f"memory nodes {dict(zip(memory, regs, strict=True))}, expected guest RAM {ram}",
        )
    carveout = board.guest.carveout
    if carveout is not None:
        path = f"/reserved-memory/uio-carveout@{carveout.paddr:x}"
        node = nodes.get(path, {})
        if u64_pairs(node.get("reg", b"")) != [(carveout.paddr, carveout.size)]:
            add(path, f"no reserved-memory node for guest.carveout {carveout}")
        elif "no-map" not in node:
            add(path, "the carve-out lacks no-map: Linux would map and use it")
    chosen = nodes.get("/chosen", {})
    if strings(chosen.get("bootargs", b"")) != [board.guest.bootargs]:
        add("/chosen", "bootargs do not match guest.bootargs")
    if strings(chosen.get("stdout-path", b"")) != ["/" + board.devicetree.console.node]:
        add("/chosen", "stdout-path does not point at the virtio console")
    if initrd is not None:
        got = (chosen.get("linux,initrd-start", b""), chosen.get("linux,initrd-end", b""))
        want = (initrd.paddr.to_bytes(8, "big"), initrd.end.to_bytes(8, "big"))
        if got != want:
            add("/chosen", f"initrd window does not match {initrd}")
    console = nodes.get("/" + board.devicetree.console.node, {})
    region = board.devicetree.console.region
    if u64_pairs(console.get("reg", b"")) != [(region.paddr, region.size)]:
        add("/" + board.devicetree.console.node, "virtio console reg does not match the board")
    return found.collected
