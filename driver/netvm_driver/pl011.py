"""QEMU notification backend: UART0 (PL011) of the virt machine as a two-way doorbell.

Owns: programming the doorbell UART, acknowledging its interrupt, and presenting it to
the data path through the ordinary device seam (`Devices.irq_fds` and
`Devices.doorbells`), so the data path runs unchanged. Used only when the driver
config has a UIO device named ``doorbell`` (boards/qemu_virt_aarch64); on a real board
the VMM injects rx_irq/tx_irq and takes the fault-page stores instead.

Why: QEMU 7.2 has no way for the host to raise an arbitrary SPI, but a byte written to
UART0's chardev raises SPI 1. So the host (netvm's VMM simulation, netvm/qemu_vmm.py)
writes one byte per injected rx_irq/tx_irq, and the guest sends one byte per guest->VMM
notification: ``R`` where the target stores to rx_fault, ``T`` for tx_fault. Both are a
single aligned 32-bit register store or load, as on any Device memory.

Acknowledge order (level-triggered line, Linux UIO): read the UIO count, drain the
receive FIFO (that drops the UART's RX interrupt), clear the interrupt, THEN write 1 to
re-enable the UIO IRQ; re-enabling first would re-raise the still-pending line at once.

The event loop expects one IRQ fd per direction with UIO semantics (read a 4-byte count,
write a 4-byte 1 to re-enable). A doorbell byte means "look at both
directions", so a small bridge thread waits on the real doorbell IRQ, acknowledges the
UART in the order above and then makes both stand-in fds readable (UNIX socket pairs:
the loop reads its 4-byte count there and its enable writes are drained here). The loop
always re-scans its queues after a wake-up, so no notification is lost between the
UART drain and the scan.
"""

from __future__ import annotations

import _socket as socket  # not socket.py: see docs/driver.md, "Start-up"
import _thread
import mmap
import os
import select
import struct

from . import uio

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    from collections.abc import Callable

    from .device import Devices  # device.py imports this module

DOORBELL_UIO = "doorbell"  # the board's UIO device name for the UART
NOTIFY_BYTES = {"rx_fault": b"R", "tx_fault": b"T"}

# PL011 registers (ARM DDI 0183), byte offsets; every access is one aligned 32-bit word.
UARTDR = 0x00
UARTFR = 0x18
UARTLCR_H = 0x2C
UARTCR = 0x30
UARTIMSC = 0x38
UARTICR = 0x44
FR_RXFE = 1 << 4  # receive FIFO empty
FR_TXFF = 1 << 5  # transmit FIFO full
LCR_H_FEN_WLEN8 = 0x70  # FIFOs on (doorbell bytes queue up instead of overrunning), 8 bits
CR_UARTEN_TXE_RXE = 0x301
IMSC_RXIM_RTIM = 0x50  # receive and receive-timeout interrupts
ICR_ALL = 0x7FF
DRAIN_LIMIT = 64  # bytes per acknowledge: QEMU's FIFO holds 16, so this never truncates
IRQ_WORD = struct.Struct("=i")
IRQ_ENABLE = IRQ_WORD.pack(1)


class Pl011:
    """The doorbell UART's registers, reached only with aligned 32-bit accesses."""

    __slots__ = ("_regs",)

    def __init__(self, buf: mmap.mmap | bytearray) -> None:
        self._regs = memoryview(buf).cast("B").cast("I")

    def _get(self, off: int) -> int:
        return int(self._regs[off >> 2])

    def _set(self, off: int, value: int) -> None:
        self._regs[off >> 2] = value

    def setup(self) -> None:
        self._set(UARTCR, 0)  # the UART is programmed while disabled
        self._set(UARTLCR_H, LCR_H_FEN_WLEN8)
        self._set(UARTIMSC, IMSC_RXIM_RTIM)
        self._set(UARTICR, ICR_ALL)
        self._set(UARTCR, CR_UARTEN_TXE_RXE)

    def drain(self) -> int:
        """Read every pending byte and clear the interrupt; returns the bytes read."""
        n = 0
        while n < DRAIN_LIMIT and not self._get(UARTFR) & FR_RXFE:
            self._get(UARTDR)
            n += 1
        self._set(UARTICR, ICR_ALL)
        return n

    def send(self, byte: int) -> bool:
        """One byte to the host; False (dropped) when the transmit FIFO is full, which
        can only happen while the host is not reading, i.e. not listening anyway."""
        if self._get(UARTFR) & FR_TXFF:
            return False
        self._set(UARTDR, byte)
        return True


class UartDoorbell:
    """Guest->VMM notification: one byte through the doorbell UART."""

    __slots__ = ("_byte", "_uart")

    def __init__(self, uart: Pl011, byte: bytes) -> None:
        self._uart = uart
        self._byte = byte[0]

    def ring(self) -> None:
        self._uart.send(self._byte)


class DoorbellBridge:
    """Waits on the doorbell's UIO IRQ, acknowledges the UART, wakes both stand-in fds."""

    def __init__(self, uart: Pl011, irq_fd: int, names: tuple[str, ...]) -> None:
        self.uart = uart
        self.irq_fd = irq_fd
        self.pairs = {name: socket.socketpair() for name in names}
        for loop_end, _ in self.pairs.values():
            loop_end.setblocking(False)
        self.interrupts = 0
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Held while the bridge thread runs. _thread rather than threading: threading
        # imports functools and collections, start-up cost (docs/driver.md, "Start-up").
        self._running = _thread.allocate_lock()

    def loop_fd(self, name: str) -> int:
        return self.pairs[name][0].fileno()

    def start(self) -> None:
        self.uart.setup()
        # Bytes the host sent before we ran would hold the line up: drain, then enable.
        self.uart.drain()
        try:
            os.read(self.irq_fd, 4)
        except BlockingIOError:
            pass
        os.write(self.irq_fd, IRQ_ENABLE)
        self._running.acquire()
        _thread.start_new_thread(self._serve, ())

    def _serve(self) -> None:
        try:
            self._run()
        finally:
            self._running.release()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.irq_fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        ours = {s.fileno(): s for _, s in self.pairs.values()}
        for fd in ours:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self._stop_r:
                    return
                if fd in ours:
                    # The loop's enable writes: UIO semantics on its side, nothing to do here.
                    try:
                        ours[fd].recv(4096, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        pass
                    continue
                try:
                    os.read(self.irq_fd, 4)
                except BlockingIOError:
                    continue
                self.uart.drain()
                os.write(self.irq_fd, IRQ_ENABLE)
                self.interrupts += 1
                word = IRQ_WORD.pack(self.interrupts)
                for _, theirs in self.pairs.values():
                    try:  # full: a wake-up is pending
                        theirs.send(word, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        pass

    def close(self) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._running.locked() and self._running.acquire(timeout=2):
            self._running.release()
        for pair in self.pairs.values():
            for s in pair:
                s.close()
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass


def open_doorbell(
    devices: Devices, size: int, info: uio.UioInfo, log: Callable[[str], None]
) -> DoorbellBridge:
    """Map the doorbell UIO device `info` and route `devices`' notifications through it."""
    regs = uio.map_device(info, size, writable=True)
    devices._closers.append(regs.close)
    irq_fd = uio.open_irq(f"/dev/{info.node}")
    devices._closers.append(lambda: os.close(irq_fd))
    log(f"-> mapped doorbell UART '{info.node}' ({DOORBELL_UIO}) with size {size:#x}")
    return attach(devices, regs, irq_fd, log)


def attach(
    devices: Devices, regs: mmap.mmap | bytearray, irq_fd: int, log: Callable[[str], None]
) -> DoorbellBridge:
    """Route rx_irq/tx_irq and rx_fault/tx_fault of `devices` through the doorbell UART.

    `regs` holds the UART registers (the doorbell UIO map) and `irq_fd` is its IRQ fd,
    opened non-blocking. The IRQ devices opened for rx_irq/tx_irq stay open (the
    contract needs them) but are not waited on: QEMU cannot raise them.
    """
    uart = Pl011(regs)
    bridge = DoorbellBridge(uart, irq_fd, tuple(devices.irq_fds))
    devices._closers.append(bridge.close)
    for name in list(devices.irq_fds):
        devices.irq_fds[name] = bridge.loop_fd(name)
    for name, byte in NOTIFY_BYTES.items():
        if name in devices.doorbells:
            devices.doorbells[name] = UartDoorbell(uart, byte)
    bridge.start()
    log(
        "-> QEMU doorbell: UART0 carries rx_irq/tx_irq (host -> guest) and "
        "rx_fault/tx_fault (guest -> host)"
    )
    return bridge
