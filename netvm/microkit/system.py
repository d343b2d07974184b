"""The seL4 system netvm supplies for a board upstream's example does not know.

Upstream's Ethernet driver VM example builds only for the Odroid C4, but its parts are
generic: the VMM program takes everything from sdfgen's generated configs, and its
system program (meta.py) takes the board from a table. For a board with a
`microkit.system` section, netvm renders what is board-specific from the board model and
nothing else:

- a make file (``system.mk``) that builds libvmm's VMM and sDDF's components from the
  user's checkouts with the board's CPU and serial/timer drivers, links netvm's kernel,
  DTB and initramfs into the VMM, runs the system program and packs ``loader.img``;
- ``include/expect.h``, the counts the VMM asserts (it comes first on the include path);
- ``board-entry.json``, the board's row for meta.py's table, which netvm's
  metaprogram.py adds before running meta.py's `generate`.

Upstream's files are used where they lie, never copied or edited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netvm.board import Board, MicrokitSpec, MicrokitSystem
from netvm.guest.render import environment

# (ELF section, sdfgen's .data file, ELF): the generated configuration each component
# reads, at the pinned sDDF/libvmm. One ELF may take several.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("device_resources", "serial_driver_device_resources", "serial_driver.elf"),
    ("serial_driver_config", "serial_driver_config", "serial_driver.elf"),
    ("serial_virt_tx_config", "serial_virt_tx", "serial_virt_tx.elf"),
    ("serial_virt_rx_config", "serial_virt_rx", "serial_virt_rx.elf"),
    ("device_resources", "net_driver_vm_device_resources", "eth_driver_vmm.elf"),
    ("net_driver_config", "net_driver", "eth_driver_vmm.elf"),
    ("vmm_config", "vmm_net_driver_vm", "eth_driver_vmm.elf"),
    ("serial_client_config", "serial_client_net_driver_vm", "eth_driver_vmm.elf"),
    ("net_virt_rx_config", "net_virt_rx", "eth_driver_vmm.elf"),
    ("net_virt_tx_config", "net_virt_tx", "eth_driver_vmm.elf"),
    ("net_virt_rx_config", "net_virt_rx", "network_virt_rx.elf"),
    ("net_virt_tx_config", "net_virt_tx", "network_virt_tx.elf"),
    ("net_copy_config", "net_copy_client0_net_copier", "network_copy0.elf"),
    ("net_copy_config", "net_copy_client1_net_copier", "network_copy1.elf"),
    ("device_resources", "timer_driver_device_resources", "timer_driver.elf"),
    ("timer_client_config", "timer_client_client0", "echo0.elf"),
    ("net_client_config", "net_client_client0", "echo0.elf"),
    ("serial_client_config", "serial_client_client0", "echo0.elf"),
    ("timer_client_config", "timer_client_client1", "echo1.elf"),
    ("net_client_config", "net_client_client1", "echo1.elf"),
    ("serial_client_config", "serial_client_client1", "echo1.elf"),
    ("serial_client_config", "serial_client_bench", "benchmark.elf"),
    ("benchmark_config", "benchmark_config", "benchmark.elf"),
    ("benchmark_client_config", "benchmark_client_config", "echo0.elf"),
    ("benchmark_config", "benchmark_idle_config", "idle.elf"),
    ("lib_sddf_lwip_config", "lib_sddf_lwip_config_client0", "echo0.elf"),
    ("lib_sddf_lwip_config", "lib_sddf_lwip_config_client1", "echo1.elf"),
)
# sdfgen's SystemDescription.Arch member for each board arch.
SDFGEN_ARCH = {"arm64": "AARCH64"}


@dataclass(frozen=True)
class SystemFiles:
    makefile: Path
    include_dir: Path
    board_entry: Path

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.makefile, self.include_dir / "expect.h", self.board_entry)


def system_files(out: Path) -> SystemFiles:
    """Where `render_system` writes under `out` (and the system make reads them)."""
    return SystemFiles(out / "system.mk", out / "include", out / "board-entry.json")


def _system(board: Board) -> tuple[MicrokitSpec, MicrokitSystem]:
    spec = board.microkit
    assert spec is not None and spec.system is not None, f"{board.name}: no microkit.system"
    return spec, spec.system


def board_entry(board: Board) -> dict[str, Any]:
    """The board's row of meta.py's BOARDS table (its `Board` dataclass's fields)."""
    _spec, system = _system(board)
    return {
        "name": board.microkit.board if board.microkit else board.name,
        "arch": SDFGEN_ARCH[board.arch],
        "paddr_top": system.paddr_top,
        "serial": system.serial,
        "guest_serial": board.devicetree.console.node,
        "timer": system.timer,
        "ethernet": system.ethernet,
        "passthrough": list(system.passthrough),
    }


def render_system(board: Board, out: Path, root: Path, header: str) -> SystemFiles:
    """Write system.mk, include/expect.h and board-entry.json under `out`."""
    spec, system = _system(board)
    env = environment(root)
    values = {
        "header": header,
        "spec": spec,
        "system": system,
        "sections": SECTIONS,
        "uio_count": len(board.uio),
    }
    files = system_files(out)
    files.include_dir.mkdir(parents=True, exist_ok=True)
    _write(files.makefile, env.get_template("microkit/system.mk.j2").render(values))
    _write(files.include_dir / "expect.h", env.get_template("microkit/expect.h.j2").render(values))
    _write(files.board_entry, json.dumps(board_entry(board), indent=2, sort_keys=True) + "\n")
    return files


def _write(path: Path, text: str) -> None:
    # Rewritten only on change: make compares times, and an unchanged file is not news.
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
