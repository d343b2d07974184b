"""The qemu_virt_aarch64 board: model, rendered files (golden), QEMU base DT and guest DTB.

Fast tests (no guest boots). Regenerate the golden files after an intended change with
``NETVM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_qemu_board.py`` and review the diff.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from netvm.board import Board, QemuBaseSpec, Region
from netvm.board.layout import check_board
from netvm.core.errors import UserError
from netvm.guest.devicetree import DtbResult, check_guest_dtb, initrd_window
from netvm.guest.fdt import cells, parse_dtb, strings, u64_pairs
from netvm.guest.kernelsrc import KernelSource
from netvm.guest.qemu_machine import VIRTIO_DEVICES, dump_base_dts, machine_args
from netvm.guest.render import planned_files, uio_node_name
from netvm.target.qemu import GuestImages, RunPaths, qemu_command
from tests.harness import (
    GOLDEN,
    HAVE_QEMU,
    ROOT,
    build_test_dtb,
    check_golden,
    needs_qemu,
    reparsed_findings,
)

BOARD = "qemu_virt_aarch64"
RENDERED = (
    "overlay.dts",
    "sim.json",
    "kernel/00-driver-vm.config",
    "kernel/01-qemu_virt_aarch64-kernel.config",
    "rootfs_overlay/etc/netvm/driver.json",
    "rootfs_overlay/etc/netvm/netvm.conf",
)
INITRD = Region(0x4E800000, 0x800000)


def _reparse(board: Board, edit: dict[str, object]) -> list[str]:
    """Findings (as text) after changing top-level keys of the board file."""
    return [str(f) for f in reparsed_findings(board, edit)]


def test_rendered_files_are_planned(qemu_board: Board) -> None:
    assert set(RENDERED) <= set(planned_files(qemu_board, ROOT))


@pytest.mark.parametrize("rel", RENDERED)
def test_rendered_file_matches_golden(qemu_board: Board, rel: str) -> None:
    check_golden(planned_files(qemu_board, ROOT)[rel][0].decode(), GOLDEN / BOARD / rel)


def test_board_model(qemu_board: Board) -> None:
    dt = qemu_board.devicetree
    assert dt.base is None
    assert dt.base_qemu == QemuBaseSpec("virt,gic-version=2", "cortex-a53", 256 << 20, 1, ())
    assert qemu_board.guest.carveout == Region(0x4C000000, 0x1000000)
    # Every sDDF region is inside the carve-out; the doorbell is UART0.
    carve = qemu_board.guest.carveout
    for dev in qemu_board.uio:
        if dev.name != "doorbell":
            assert all(carve.paddr <= m.paddr and m.end <= carve.end for m in dev.maps)
    doorbell = qemu_board.uio_device("doorbell")
    assert doorbell.maps == (Region(0x9000000, 0x1000),) and doorbell.irq == 1


def test_machine_args_turn_off_dtb_randomness(qemu_board: Board) -> None:
    assert qemu_board.devicetree.base_qemu is not None
    args = machine_args(qemu_board.devicetree.base_qemu)
    machine = "virt,gic-version=2,dtb-randomness=off"
    assert args[:8] == ["-M", machine, "-cpu", "cortex-a53", "-m", "256M", "-smp", "1"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            {"devicetree.base": "arch/arm64/boot/dts/arm/foundation-v8.dts"},
            "board.yaml: devicetree.base: give exactly one of base and base_qemu",
        ),
        (
            {"devicetree.base_qemu.memory": "512M"},
            "board.yaml: devicetree.base_qemu.memory: 0x20000000 bytes differs from "
            "guest.ram.size 0x10000000",
        ),
        (
            {"devicetree.base_qemu.memory": "lots"},
            "board.yaml: devicetree.base_qemu.memory: expected a size like 256M or a byte "
            "count, got a string ('lots')",
        ),
        (
            {"guest.carveout": {"paddr": 0x4C000000, "size": 0x100000}},
            "board.yaml: uio.data_passing: 0x4cf04000-0x4cf05000 overlaps guest.ram "
            "0x40000000-0x50000000",
        ),
        (
            {"guest.carveout": {"paddr": 0x4E000000, "size": 0x2000000}},
            "board.yaml: guest.carveout: 0x4e000000-0x50000000 overlaps the DTB window",
        ),
        (
            {"guest.ram": {"paddr": 0x80000000, "size": 0x10000000}},
            "board.yaml: guest.ram.paddr: 0x80000000: QEMU virt's RAM starts at 0x40000000",
        ),
    ],
)
def test_qemu_board_errors(qemu_board: Board, edit: dict[str, object], expected: str) -> None:
    findings = _reparse(qemu_board, edit)
    assert any(f.startswith(expected) for f in findings), findings


def test_uio_irq_must_exist_on_virt(qemu_board: Board) -> None:
    uio = [replace(d, irq=400) if d.name == "rx_irq" else d for d in qemu_board.uio]
    findings = check_board(replace(qemu_board, uio=tuple(uio)), "board.yaml")
    assert [str(f) for f in findings] == [
        "board.yaml: uio.rx_irq.irq: SPI 400 does not exist on QEMU virt (SPIs 0-223) "
        "(hint: SPIs 176-223 are unused by QEMU virt's own devices)"
    ]


def test_initrd_window_stays_above_the_carveout(qemu_board: Board) -> None:
    carve = qemu_board.guest.carveout
    assert carve is not None
    window = initrd_window(qemu_board, 5 << 20, 8 << 20)
    assert window.end == 0x4F000000 and window.paddr >= carve.end
    with pytest.raises(UserError, match=r"under the end of guest\.carveout at 0x4d000000"):
        initrd_window(qemu_board, 40 << 20, 8 << 20)


@needs_qemu
def test_qemu_base_is_dumped_once_and_cached(qemu_board: Board, tmp_path: Path) -> None:
    first = dump_base_dts(qemu_board, tmp_path)
    assert "linux,dummy-virt" in first and "pl011@9000000" in first
    assert "rng-seed" not in first and "kaslr-seed" not in first  # reproducible
    (cached,) = tmp_path.glob("*.dts")
    cached.write_text(first + "/* marker */\n")
    assert dump_base_dts(qemu_board, tmp_path).endswith("/* marker */\n")


@pytest.fixture(scope="module")
def guest(
    qemu_board: Board, kernel_src: KernelSource, tmp_path_factory: pytest.TempPathFactory
) -> DtbResult:
    if not HAVE_QEMU:  # the base tree is QEMU's own
        pytest.skip("qemu-system-aarch64 not installed")
    return build_test_dtb(qemu_board, kernel_src, tmp_path_factory.mktemp("qemu-dtb"), INITRD)


def test_guest_dtb_is_qemus_tree_plus_overlay(guest, qemu_board: Board) -> None:
    nodes = parse_dtb(guest.dtb.read_bytes())
    assert strings(nodes["/"]["compatible"]) == ["linux,dummy-virt"]
    assert "/pl011@9000000" not in nodes and "/virtio_mmio@a003e00" not in nodes
    assert "/virtio_mmio@a003c00" in nodes  # the NIC's transport stays
    # ...and the 30 transports QEMU plugs nothing into are gone (the kernel probes each).
    assert [p for p in nodes if p.startswith("/virtio_mmio@")] == ["/virtio_mmio@a003c00"]
    carve = nodes["/reserved-memory/uio-carveout@4c000000"]
    assert u64_pairs(carve["reg"]) == [(0x4C000000, 0x1000000)] and "no-map" in carve
    doorbell = nodes["/" + uio_node_name(qemu_board.uio_device("doorbell"))]
    assert cells(doorbell["interrupts"]) == [0, 1, 4]
    assert strings(nodes["/chosen"]["stdout-path"]) == ["/virtio-console@a003e00"]
    assert check_guest_dtb(qemu_board, guest.dtb.read_bytes(), INITRD) == []
    assert guest.warnings == ""


def test_guest_dtb_check_notices_a_missing_carveout(guest, qemu_board: Board) -> None:
    moved = replace(qemu_board.guest, carveout=Region(0x4B000000, 0x2000000))
    findings = check_guest_dtb(replace(qemu_board, guest=moved), guest.dtb.read_bytes(), INITRD)
    assert [f.key for f in findings] == ["/reserved-memory/uio-carveout@4b000000"]


def test_qemu_command_plugs_the_virtio_devices_the_guest_dtb_keeps(
    qemu_board: Board, tmp_path: Path
) -> None:
    # The guest DTB keeps one transport per VIRTIO_DEVICES entry, the highest ones: QEMU
    # must get exactly these devices, in this order, or one lands on a deleted transport.
    images = GuestImages(tmp_path / "Image", tmp_path / "rootfs", tmp_path / "dtb", INITRD)
    paths = RunPaths(tmp_path, tmp_path)
    cmd = qemu_command(qemu_board, images, paths, tap=None)
    devices = [cmd[i + 1].split(",")[0] for i, arg in enumerate(cmd) if arg == "-device"]
    assert tuple(d for d in devices if d.startswith("virtio-")) == VIRTIO_DEVICES
    # The console is a socket netvm connects to, interactive or not (a user's terminal
    # is put on it by attach_terminal), never QEMU's own stdio.
    assert f"socket,id=con0,path={paths.console},server=on,wait=on" in cmd
    assert not [arg for arg in cmd if "stdio" in arg]
