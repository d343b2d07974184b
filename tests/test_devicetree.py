"""Guest DTB: compiled by the real dtc from the kernel's own Odroid C4 DTS + our overlay."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from netvm.board import Board
from netvm.core.errors import UserError
from netvm.guest.devicetree import DtbResult, build_guest_dtb, check_guest_dtb, initrd_window
from netvm.guest.fdt import cells, parse_dtb, strings
from netvm.guest.kernelsrc import KernelSource
from netvm.guest.render import uio_node_name
from tests.harness import C4_INITRD


def fdtget(dtb: Path, node: str, prop: str, kind: str = "") -> str:
    args = ["fdtget", *(["-t", kind] if kind else []), str(dtb), node, prop]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def test_base_is_the_kernels_odroid_c4(c4_dtb: DtbResult) -> None:
    nodes = parse_dtb(c4_dtb.dtb.read_bytes())
    assert strings(nodes["/"]["compatible"])[0] == "hardkernel,odroid-c4"
    # The NIC the guest drives stays enabled.
    assert "status" not in nodes["/soc/ethernet@ff3f0000"] or strings(
        nodes["/soc/ethernet@ff3f0000"]["status"]
    ) == ["okay"]


def test_uio_nodes_as_seen_by_fdtget(c4_dtb: DtbResult, odroidc4: Board) -> None:
    for dev in odroidc4.uio:
        node = "/" + uio_node_name(dev)
        assert fdtget(c4_dtb.dtb, node, "compatible").split() == ["generic-uio", dev.name]
        assert fdtget(c4_dtb.dtb, node, "linux,uio-name") == dev.name
        reg = [int(x, 16) for x in fdtget(c4_dtb.dtb, node, "reg", "x").split()]
        m = dev.maps[0]
        assert reg == [m.paddr >> 32, m.paddr & 0xFFFFFFFF, m.size >> 32, m.size & 0xFFFFFFFF]
        if dev.irq is not None:
            assert fdtget(c4_dtb.dtb, node, "interrupts").split() == ["0", str(dev.irq), "4"]


def test_disabled_deleted_memory_and_chosen(c4_dtb: DtbResult, odroidc4: Board) -> None:
    for node in odroidc4.devicetree.disable:
        assert fdtget(c4_dtb.dtb, node.path, "status") == "disabled"
    nodes = parse_dtb(c4_dtb.dtb.read_bytes())
    for path in odroidc4.devicetree.delete:
        assert path not in nodes
    assert cells(nodes["/memory@20000000"]["reg"]) == [0, 0x20000000, 0, 0x10000000]
    assert fdtget(c4_dtb.dtb, "/chosen", "bootargs") == odroidc4.guest.bootargs
    assert fdtget(c4_dtb.dtb, "/chosen", "stdout-path") == "/virtio-console@100000"
    start = fdtget(c4_dtb.dtb, "/chosen", "linux,initrd-start", "x").split()
    assert [int(x, 16) for x in start] == [0, C4_INITRD.paddr]
    assert fdtget(c4_dtb.dtb, "/virtio-console@100000", "compatible") == "virtio,mmio"


def test_check_reports_what_the_dtb_lacks(
    c4_dtb: DtbResult, odroidc4: Board, tmp_path: Path
) -> None:
    assert check_guest_dtb(odroidc4, c4_dtb.dtb.read_bytes(), C4_INITRD) == []
    # The base alone has none of our nodes: every UIO node and the RAM node are reported.
    bare = tmp_path / "bare.dtb"
    subprocess.run(
        ["dtc", "-q", "-O", "dtb", "-o", str(bare), str(c4_dtb.source.parent / "base.pp.dts")],
        check=True,
    )
    findings = check_guest_dtb(odroidc4, bare.read_bytes(), C4_INITRD)
    missing = {f.key for f in findings if "is missing" in f.message}
    assert missing == {"/" + uio_node_name(d) for d in odroidc4.uio}
    assert any(f.key == "/memory" for f in findings)
    assert any(f.key == "/soc/bus@ff800000/serial@3000" for f in findings)


def test_dtc_error_is_a_user_error_naming_the_source(
    odroidc4: Board, kernel_src: KernelSource, tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay.dts"
    overlay.write_text('&{/no/such/node} { status = "disabled"; };\n')
    with pytest.raises(UserError) as err:
        build_guest_dtb(odroidc4, overlay, kernel_src, tmp_path / "out", header="t", initrd=None)
    assert "guest.src.dts" in str(err.value) and "dtc failed" in str(err.value)


def test_initrd_window_is_sized_from_the_initramfs(odroidc4: Board) -> None:
    window = initrd_window(odroidc4, 4_500_000)
    assert window.end == odroidc4.guest.initrd.end
    assert window.paddr % 0x1000 == 0
    assert window.size >= 4_500_000 + odroidc4.guest.initrd.headroom
    assert window.size < 4_500_000 + odroidc4.guest.initrd.headroom + 0x1000


def test_initrd_that_does_not_fit_is_a_clear_error(odroidc4: Board) -> None:
    with pytest.raises(UserError) as err:
        initrd_window(odroidc4, 0x0E000000, kernel_bytes=0x02000000)
    text = str(err.value)
    assert "guest.initrd.end" in text and "does not fit" in text and "hint:" in text
