"""The QEMU machine a board describes: its options, and its own device tree as a base.

Owns turning `devicetree.base_qemu` into QEMU command-line options, and dumping QEMU's
device tree for exactly those options (``-machine dumpdtb=``), decompiled and cached by
its inputs. The same `machine_args` start the guest (netvm.target.qemu), so the base the
overlay is written against and the machine the guest boots on cannot drift apart.
Does not start guests (netvm.target.qemu) or render anything (netvm.guest.render).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from netvm.board import Board, QemuBaseSpec
from netvm.core.errors import Finding, UserError
from netvm.core.files import short_key
from netvm.core.hosttools import first_line
from netvm.guest import fdt

QEMU_BINARIES = {"arm64": "qemu-system-aarch64"}
KEY = "devicetree.base_qemu"

# The virtio-mmio devices netvm.target.qemu plugs in, in command-line order: QEMU's virt gives the
# first one the highest-addressed of its transports, the next one the transport below.
VIRTIO_CONSOLE = "virtio-serial-device"
VIRTIO_NIC = "virtio-net-device"
VIRTIO_DEVICES = (VIRTIO_CONSOLE, VIRTIO_NIC)
_TRANSPORT = re.compile(r"^\t(virtio_mmio@([0-9a-f]+)) \{$", re.MULTILINE)


def qemu_binary(board: Board) -> str:
    return QEMU_BINARIES[board.arch]


def machine_option(spec: QemuBaseSpec) -> str:
    """The -M value. On virt, random DT properties (kaslr-seed, rng-seed) are turned off:
    the dumped base and so the guest DTB must be the same bytes on every build."""
    machine = spec.machine
    if machine.split(",")[0] == "virt" and "dtb-randomness" not in machine:
        machine += ",dtb-randomness=off"
    return machine


def machine_args(spec: QemuBaseSpec) -> list[str]:
    """Options that shape the machine (and so its device tree); no devices, no I/O."""
    return [
        "-M",
        machine_option(spec),
        "-cpu",
        spec.cpu,
        "-m",
        f"{spec.memory >> 20}M" if spec.memory % (1 << 20) == 0 else str(spec.memory),
        "-smp",
        str(spec.smp),
        # No default NIC/serial/monitor: every device is added explicitly by netvm.target.qemu
        # (a default virtio-net-pci would also need a ROM file Debian does not ship).
        "-nodefaults",
        "-display",
        "none",
        *spec.extra_args,
    ]


def unused_virtio_transports(base_dts: str, used: int = len(VIRTIO_DEVICES)) -> list[str]:
    """Paths of the base's virtio-mmio transports that none of the boot's `used` devices
    lands on (devices take the highest transports first).

    virt lists 32 transports and the kernel probes every one in the DT (a platform device
    and a look at its registers each): about 40 ms of boot under TCG for 30 empty ones.
    """
    found = sorted(((int(addr, 16), name) for name, addr in _TRANSPORT.findall(base_dts)))
    return ["/" + name for _, name in found[: max(0, len(found) - used)]]


def qemu_version(binary: str) -> str:
    line = first_line([binary, "--version"])
    if line is None:
        raise UserError(
            f"{binary} is not installed", hint="run ./bootstrap (Debian package qemu-system-arm)"
        )
    return line or "unknown"


def base_description(board: Board) -> str:
    """What the dumped base depends on, for the build's input hash."""
    spec = board.devicetree.base_qemu
    assert spec is not None
    binary = qemu_binary(board)
    return f"{qemu_version(binary)}: {' '.join(machine_args(spec))}"


def dump_base_dts(board: Board, cache: Path) -> str:
    """QEMU's own device tree for the board's machine options, as DTS text (cached)."""
    spec = board.devicetree.base_qemu
    assert spec is not None
    binary = qemu_binary(board)
    described = base_description(board)
    key = short_key(described)
    cached = cache / f"{key}.dts"
    if cached.is_file():
        return cached.read_text()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        dtb = Path(tmp) / "base.dtb"
        cmd = [binary, *machine_args(spec), "-machine", f"dumpdtb={dtb}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not dtb.is_file():
            raise UserError(
                [
                    Finding(
                        board.display_file,
                        KEY,
                        f"QEMU could not dump its device tree: {proc.stderr.strip()}",
                        f"check the machine options; command: {' '.join(cmd)}",
                    )
                ]
            )
        text = fdt.decompile(dtb)
        header = f"/* QEMU's own device tree: {described} */\n"
        part = Path(tmp) / "base.dts"
        part.write_text(header + text)
        os.replace(part, cached)  # atomic: a concurrent build sees all or nothing
    return cached.read_text()
