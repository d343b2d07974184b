"""`invoke flash --board qemu_virt_aarch64` over TFTP boots the real guest to its driver.

Debian's U-Boot (u-boot-qemu, qemu_arm64) runs under qemu-system-aarch64 on the board's
own machine options; netvm's TFTP server serves the built kernel Image, guest DTB and
initramfs through QEMU's user network, U-Boot `booti`s them, and the console (U-Boot's
UART and the guest's hvc0 on one socket) must show the driver's start-up line. There is
no seL4 VMM behind the driver here, so the start-up line is the proof, not the event loop.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from netvm.board import Board
from netvm.builder.build import BuildOptions, build
from netvm.core.workspace import Workspace
from netvm.target.flash import (
    BOOTI_FDT_ADDR,
    QEMU_KERNEL_ADDR,
    QEMU_RAMDISK_ADDR,
    QEMU_SUCCESS,
    QEMU_UBOOT,
    FlashOptions,
    flash_board,
)
from tests.harness import ROOT


@pytest.mark.qemu
def test_flash_boots_the_qemu_guest_to_the_driver(qemu_board: Board, tmp_path: Path) -> None:
    if not QEMU_UBOOT.is_file():
        pytest.fail(f"{QEMU_UBOOT} missing: apt-get install u-boot-qemu")
    board = qemu_board
    # Cached: returns the built artifacts.
    manifest = build(board, Workspace.at(ROOT), BuildOptions())
    sizes = {k: manifest["artifacts"][k]["bytes"] for k in ("kernel_image", "dtb", "initramfs")}
    # The load addresses stay below the sDDF carve-out, in the board's guest RAM.
    carveout = board.guest.carveout
    assert carveout is not None
    ram = board.guest.ram
    for addr, size in (
        (QEMU_KERNEL_ADDR, sizes["kernel_image"]),
        (BOOTI_FDT_ADDR, sizes["dtb"]),
        (QEMU_RAMDISK_ADDR, sizes["initramfs"]),
    ):
        assert ram.paddr <= addr and addr + size <= carveout.paddr

    log = tmp_path / "console.log"
    start = time.monotonic()
    summary = flash_board(
        board, Workspace.at(ROOT), FlashOptions(method="tftp", log=log, timeout=180)
    )
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    m = re.search(QEMU_SUCCESS + r"[^\r\n]*", text)
    assert m is not None, text[-2000:]
    print(f"\nmatched {m.group(0)!r} {seconds:.1f} s after QEMU started; {summary}")
    assert "UIO(NET): *** Starting up" in summary
    for name in ("kernel_image", "dtb", "initramfs"):
        assert f"Bytes transferred = {sizes[name]}" in text
    # U-Boot rewrote /chosen for the initramfs where it was loaded, and left it there.
    assert "=> booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} 0x48000000" in text
    assert "Using Device Tree in place at 0000000048000000" in text
    assert "Loading Ramdisk to" not in text
    assert text.index("Starting kernel") < m.start()  # the guest, not U-Boot, printed it
