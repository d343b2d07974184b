"""SIMULATION of the VMM's side of the UIO devices, for running the real driver on a host.

Owns: the host stand-ins for what libvmm provides in the real system, and the file that
tells the driver where they are (``--sim-devices``):
- each memory region (data_passing, the four queues, rx_data, tx_data) is a file in
  /dev/shm that both sides mmap, sized like the board's UIO region;
- each IRQ device (rx_irq, tx_irq) is a UNIX stream socket the VMM listens on. The driver
  connects to it and uses the connection like /dev/uioN: it writes a 4-byte 1 to enable
  the interrupt and reads a 4-byte count when one arrives. Injection follows libvmm: an
  interrupt injected while the driver has it disabled is dropped (SimIrq);
- each fault page (rx_fault, tx_fault) is a FIFO: the driver writes a byte where the
  target does its single store to the unmapped page.
The data-passing page is filled as the VMM does. Queue contents belong to virt.py.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import socket
import struct
from collections.abc import Callable
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
    """One simulated UIO IRQ device: a listening UNIX stream socket at `path`.

    The driver connects and uses the connection as it would /dev/uioN. An enable is in
    the socket the moment the driver's write returns, and every injection first reads
    what the driver wrote, so the state here is the driver's own: an interrupt injected
    while it is disabled is dropped and counted, as libvmm does, and the driver must
    find that work itself (it looks at the queues after each enable). The write that
    raises the interrupt wakes the driver directly, as a vIRQ does the guest, with no
    kernel worker in between (a pty, the earlier stand-in, needed one).

    A new connection (a restarted driver) replaces the old one; `on_connect` hears of
    each, so the VMM's event loop can watch it for enables.
    """

    name: str
    listener: socket.socket | None
    path: str
    conn: socket.socket | None = None
    on_connect: Callable[[int], None] | None = None
    enabled: bool = True  # Linux enables the IRQ when uio_pdrv_genirq probes
    count: int = 0
    injected: int = 0
    dropped: int = 0
    _partial: bytes = b""

    def accept(self) -> None:
        """Take a waiting connection, if any, in place of the current one."""
        if self.listener is None:
            return
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        if self.conn is not None:
            self.conn.close()
        self.conn, self._partial = conn, b""
        if self.on_connect is not None:
            self.on_connect(conn.fileno())

    def read_enables(self) -> None:
        """Apply the driver's 4-byte enable/disable writes."""
        self.accept()
        while self.conn is not None:
            try:
                data = self.conn.recv(4096)
            except BlockingIOError:
                break
            except OSError:  # ECONNRESET: the driver went away
                data = b""
            if not data:  # the driver closed its end
                self.conn.close()
                self.conn = None
                break
            data = self._partial + data
            whole = len(data) - len(data) % 4
            for (value,) in IRQ_VALUE.iter_unpack(data[:whole]):
                self.enabled = value != 0
            self._partial = data[whole:]

    def inject(self) -> bool:
        """Raise the interrupt if the driver has it enabled; else drop it (libvmm)."""
        self.read_enables()
        if not self.enabled or self.conn is None:
            self.dropped += 1
            return False
        self.count += 1
        self.injected += 1
        self.enabled = False  # uio_pdrv_genirq's handler disables it until userspace re-enables
        try:
            self.conn.send(IRQ_VALUE.pack(self.count))
        except OSError:  # EAGAIN cannot happen while each injection waits for an enable
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        for sock in (self.conn, self.listener):
            if sock is not None:
                sock.close()


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
        for irq in self.irqs.values():
            irq.close()
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
            path = run_dir / f"{name}.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            devs.irqs[name] = SimIrq(name, listener, str(path))
            listener.bind(str(path))
            listener.listen(4)
            listener.setblocking(False)
            table[name] = {"irq_socket": str(path)}
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
