"""The device seam: what the data path gets from the platform, and its two providers.

Owns: opening the shared regions, the IRQ fds and the doorbells, and the start-up log of
what was mapped. The data path sees only a `Devices` object, so it runs unchanged on:

- the target: UIO devices found by name (uio.py); regions are UIO maps, IRQs are
  /dev/uioN fds, a doorbell is a single store to the fault page the VMM left unmapped;
- the host simulation (``--sim-devices FILE``, written by ``invoke sim``): regions are
  files in /dev/shm, IRQs are connections to UNIX stream sockets the simulator listens on
  (they behave like a UIO IRQ fd: write 4 bytes to enable, read 4 bytes of count), and a
  doorbell is a byte written to a FIFO instead of the fault-page store. This is a
  SIMULATION of the VMM, named as such; it exists so the real data path can be exercised
  on any Linux host.
"""

from __future__ import annotations

import _socket as socket  # not socket.py: see docs/driver.md, "Start-up"
import mmap
import os

from . import jsonio, pl011, uio
from .config import DATA_UIOS, FAULT_UIOS, IRQ_UIOS, QUEUE_UIOS, DriverConfig
from .devmem import DeviceMemory, FaultDoorbell

REGION_UIOS = ("data_passing", *QUEUE_UIOS, *DATA_UIOS)


class DeviceError(RuntimeError):
    pass


TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    class Doorbell(Protocol):
        def ring(self) -> None: ...


class FifoDoorbell:
    """Simulation stand-in for the fault-page store: one byte into the simulator's FIFO."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def ring(self) -> None:
        # A full FIFO holds unread rings already: one more adds nothing (like a notification).
        try:
            os.write(self._fd, b"\1")
        except BlockingIOError:
            pass


def _connect_sim_irq(path: str) -> int:
    """SIMULATION: a connection to the simulator's stand-in for a UIO IRQ device, as a
    non-blocking fd used exactly like /dev/uioN's (uio.open_irq)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return int(sock.detach())  # close-on-exec, as every socket Python makes


class Devices:
    def __init__(
        self,
        kind: str,  # "uio" or "simulation"
        regions: dict[str, DeviceMemory],
        irq_fds: dict[str, int],
        doorbells: dict[str, Doorbell],
    ) -> None:
        self.kind = kind
        self.regions = regions
        self.irq_fds = irq_fds
        self.doorbells = doorbells
        self._closers: list[Callable[[], None]] = []

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:  # best effort at exit
                closer()
            except (OSError, ValueError, BufferError):
                pass
        self._closers.clear()


def _fd_closer(fd: int) -> Callable[[], None]:
    """A closer for `fd`, bound now: a loop's lambda would see only the last fd, and one
    binding it by a default argument cannot be typed."""
    return lambda: os.close(fd)


def open_uio_devices(config: DriverConfig, log: Callable[[str], None]) -> Devices:
    wanted = {name: spec.paddr for name, spec in config.uio.items()}
    found = uio.match(wanted, uio.scan())
    devices = Devices("uio", {}, {}, {})
    try:
        for name in REGION_UIOS:
            info = found[name]
            size = config.uio[name].size
            mm = uio.map_device(info, size, writable=name != "data_passing")
            devices._closers.append(mm.close)
            devices.regions[name] = DeviceMemory(name, mm)
            log(f"-> mapped device '{info.node}' ({name}) with size {size:#x}")
        for name in FAULT_UIOS:
            info = found[name]
            mm = uio.map_device(info, config.uio[name].size, writable=True)
            devices._closers.append(mm.close)
            devices.doorbells[name] = FaultDoorbell(mm)
            log(f"-> mapped fault page '{info.node}' ({name}) for guest -> VMM notifications")
        for name in IRQ_UIOS:
            info = found[name]
            fd = uio.open_irq(f"/dev/{info.node}")
            devices._closers.append(_fd_closer(fd))
            devices.irq_fds[name] = fd
            log(f"-> opened IRQ device '{info.node}' ({name})")
        if pl011.DOORBELL_UIO in config.uio:
            # Boards without a VMM (QEMU) ring a PL011 instead: it replaces the IRQ fds
            # and fault-page doorbells above, the data path stays the same.
            size = config.uio[pl011.DOORBELL_UIO].size
            pl011.open_doorbell(devices, size, found[pl011.DOORBELL_UIO], log)
    except BaseException:
        devices.close()
        raise
    return devices


def open_sim_devices(config: DriverConfig, path: str, log: Callable[[str], None]) -> Devices:
    """Open the host simulation's stand-ins listed in `path` (see docs/driver.md)."""
    try:
        with open(path) as f:
            table = jsonio.loads(f.read())["devices"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeviceError(f"{path}: not a simulation device file: {exc}") from None
    missing = [n for n in (*REGION_UIOS, *FAULT_UIOS, *IRQ_UIOS) if n not in table]
    if missing:
        raise DeviceError(f"{path}: no simulated device for {', '.join(missing)}")
    devices = Devices("simulation", {}, {}, {})
    try:
        for name in REGION_UIOS:
            entry = table[name]
            size = config.uio[name].size
            writable = name != "data_passing"
            fd = os.open(entry["shm"], os.O_RDWR if writable else os.O_RDONLY)
            try:
                if os.fstat(fd).st_size < size:
                    raise DeviceError(f"{entry['shm']}: smaller than {name} ({size:#x} bytes)")
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
            finally:
                os.close(fd)
            devices._closers.append(mm.close)
            devices.regions[name] = DeviceMemory(name, mm)
            log(f"-> mapped simulated device '{entry['shm']}' ({name}) with size {size:#x}")
        for name in FAULT_UIOS:
            fifo = table[name]["doorbell_fifo"]
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            devices._closers.append(_fd_closer(fd))
            devices.doorbells[name] = FifoDoorbell(fd)
            log(f"-> opened simulated doorbell '{fifo}' ({name})")
        for name in IRQ_UIOS:
            path = table[name]["irq_socket"]
            fd = _connect_sim_irq(path)
            devices._closers.append(_fd_closer(fd))
            devices.irq_fds[name] = fd
            log(f"-> connected to simulated IRQ '{path}' ({name})")
    except BaseException:
        devices.close()
        raise
    return devices
