"""SIMULATION of the VMM's side of the UIO devices, for running the real driver on a host.

Owns: the host stand-ins for what libvmm provides in the real system, and the file that
tells the driver where they are (``--sim-devices``):
- each memory region (data_passing, the four queues, rx_data, tx_data) is a file in
  /dev/shm that both sides mmap, sized like the board's UIO region;
- each IRQ device (rx_irq, tx_irq) is a pseudo-terminal in raw mode. The driver opens the
  slave like /dev/uioN: it writes a 4-byte 1 to enable the interrupt and reads a 4-byte
  count when one arrives. Injection follows libvmm: an interrupt injected while the guest
  has it disabled is dropped by libvmm; here it is delivered at the next enable (see
  SimIrq for why);
- each fault page (rx_fault, tx_fault) is a FIFO: the driver writes a byte where the
  target does its single store to the unmapped page.
The data-passing page is filled as the VMM does. Queue contents belong to virt.py.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import tty
from dataclasses import dataclass, field
from pathlib import Path

from netvm.sim.layout import DOORBELLS, IRQS, QUEUES, REGIONS, SimLayout

SDDF_NET_MAGIC = b"sDDF\x05"
DATA_PASSING = struct.Struct("<5s3x" + "QQQQHB5x" + "QQQQHB5x" + "Qi4x" + "64Q")
VIRT_RX_CHANNEL = 1  # the VMM's channel ids; meaningless to the guest but filled like it
VIRT_TX_CHANNEL = 2
IRQ_VALUE = struct.Struct("=i")


def data_passing_page(layout: SimLayout) -> bytes:
    """The 616-byte net_drv_vm_data_passing_t, as libvmm's VMM writes it."""
    p, s = layout.paddrs, layout.sizes
    tx_paddrs = [c.tx_io_base for c in layout.clients]
    return DATA_PASSING.pack(
        SDDF_NET_MAGIC,
        p["rx_free"],
        s["rx_free"],
        p["rx_active"],
        s["rx_active"],
        layout.rx_capacity,
        VIRT_RX_CHANNEL,
        p["tx_free"],
        s["tx_free"],
        p["tx_active"],
        s["tx_active"],
        layout.tx_capacity,
        VIRT_TX_CHANNEL,
        layout.rx_io_base,
        len(tx_paddrs),
        *(tx_paddrs + [0] * (64 - len(tx_paddrs))),
    )


@dataclass
class SimIrq:
    """One simulated UIO IRQ device: a pty whose slave the driver holds.

    libvmm drops a vIRQ injected while the guest has it masked. A pty delivers the
    driver's enable write to this side asynchronously (the tty layer pushes it from a
    work queue), so "masked" here cannot be told apart from "enable still in flight";
    dropping would lose wake-ups the real system delivers. So an injection that finds
    the IRQ masked is remembered and delivered at the next enable (counted as latched).
    """

    name: str
    master: int
    slave: int
    path: str
    enabled: bool = True  # Linux enables the IRQ when uio_pdrv_genirq probes
    count: int = 0
    injected: int = 0
    latched: int = 0
    pending: bool = False
    _partial: bytes = b""

    def read_enables(self) -> None:
        """Apply the driver's 4-byte enable/disable writes."""
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EAGAIN: nothing more; EIO: no slave open yet
                break
            if not data:
                break
            data = self._partial + data
            whole = len(data) - len(data) % 4
            for (value,) in IRQ_VALUE.iter_unpack(data[:whole]):
                self.enabled = value != 0
            self._partial = data[whole:]
        if self.enabled and self.pending:
            self.pending = False
            self._deliver()

    def inject(self) -> bool:
        """Raise the interrupt now if enabled, else at the next enable."""
        self.read_enables()
        if not self.enabled:
            self.latched += int(not self.pending)
            self.pending = True
            return False
        self._deliver()
        return True

    def _deliver(self) -> None:
        self.count += 1
        self.injected += 1
        self.enabled = False  # uio_pdrv_genirq's handler disables it until userspace re-enables
        with contextlib.suppress(BlockingIOError):
            os.write(self.master, IRQ_VALUE.pack(self.count))
        # The pty hands the write to the slave from a kernel worker, which runs on this
        # CPU only when the VMM thread lets it: a VMM with a backlog to echo kept a driver
        # waiting for its RX refill IRQ 5 ms at the median. Yielding here took that to
        # 1 ms (docs/bench.md, "What runs where").
        os.sched_yield()


@dataclass
class SimDevices:
    layout: SimLayout
    run_dir: Path
    regions: dict[str, mmap.mmap] = field(default_factory=dict)
    irqs: dict[str, SimIrq] = field(default_factory=dict)
    doorbells: dict[str, int] = field(default_factory=dict)  # name -> read end of the FIFO
    _fds: list[int] = field(default_factory=list)

    @property
    def devices_file(self) -> Path:
        return self.run_dir / "sim-devices.json"

    def close(self) -> None:
        for mm in self.regions.values():
            with contextlib.suppress(BufferError, ValueError):
                mm.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def create_devices(layout: SimLayout, run_dir: Path) -> SimDevices:
    """Create every stand-in under `run_dir` (in /dev/shm) and the --sim-devices file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    devs = SimDevices(layout, run_dir)
    table: dict[str, dict[str, object]] = {}
    try:
        for name in REGIONS:
            path = run_dir / f"{name}.shm"
            size = layout.sizes[name]
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, size)  # zero-filled, like the VMM's freshly allocated MRs
                devs.regions[name] = mmap.mmap(fd, size, mmap.MAP_SHARED)
            finally:
                os.close(fd)
            table[name] = {"shm": str(path), "size": size}
        page = data_passing_page(layout)
        devs.regions["data_passing"][: len(page)] = page
        for name in DOORBELLS:
            path = run_dir / f"{name}.fifo"
            os.mkfifo(path, 0o600)
            rd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            # Holding a writer ourselves means the FIFO never reports hang-up when the
            # driver exits or restarts.
            wr = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            devs._fds += [rd, wr]
            devs.doorbells[name] = rd
            table[name] = {"doorbell_fifo": str(path)}
        for name in IRQS:
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line editing: 4-byte words pass unchanged
            os.set_blocking(master, False)
            devs._fds += [master, slave]
            irq = SimIrq(name, master, slave, os.ttyname(slave))
            devs.irqs[name] = irq
            table[name] = {"irq_pty": irq.path}
        doc = {
            "simulation": "netvm host simulation of the VMM's UIO devices; not a real device",
            "board": layout.board,
            "devices": table,
        }
        devs.devices_file.write_text(json.dumps(doc, indent=2) + "\n")
    except BaseException:
        devs.close()
        raise
    return devs


__all__ = ["QUEUES", "SimDevices", "SimIrq", "create_devices", "data_passing_page"]
