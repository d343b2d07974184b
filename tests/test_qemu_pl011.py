"""The PL011 doorbell backend of the guest driver, on the host (no QEMU).

The UART is a register file in a bytearray with a tiny model of the PL011 behaviour the
backend relies on (RX FIFO drained through UARTDR, RXFE in UARTFR); the UIO IRQ fd is
one end of a socket pair, so the test plays the kernel's side of /dev/uioN: it writes a
4-byte count to raise the IRQ and reads the driver's 4-byte enable writes.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from netvm_driver import pl011

from tests.harness import readable

WORD = struct.Struct("=i")


class FakeUart(bytearray):
    """4 KiB of registers; reads of UARTDR pop the RX FIFO, UARTFR reflects it."""

    def __init__(self) -> None:
        super().__init__(0x1000)
        self.rx: list[int] = []
        self.tx: list[int] = []
        self.cleared = 0


@dataclass
class Regs:
    """memoryview-like access to FakeUart words with the side effects of a PL011."""

    uart: FakeUart
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __getitem__(self, index: int) -> int:
        with self.lock:
            off = index * 4
            if off == pl011.UARTDR:
                return self.uart.rx.pop(0) if self.uart.rx else 0
            if off == pl011.UARTFR:
                return 0 if self.uart.rx else pl011.FR_RXFE
            return int.from_bytes(self.uart[off : off + 4], "little")

    def __setitem__(self, index: int, value: int) -> None:
        with self.lock:
            off = index * 4
            if off == pl011.UARTDR:
                self.uart.tx.append(value)
            elif off == pl011.UARTICR:
                self.uart.cleared += 1
            else:
                self.uart[off : off + 4] = value.to_bytes(4, "little")


REAL_PL011 = pl011.Pl011


def fake_pl011(uart: FakeUart) -> pl011.Pl011:
    dev = REAL_PL011(uart)
    dev._regs = Regs(uart)  # type: ignore[assignment]
    return dev


@dataclass
class FakeDevices:
    irq_fds: dict[str, int]
    doorbells: dict[str, object]
    _closers: list[Callable[[], None]] = field(default_factory=list)


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeUart, socket.socket, FakeDevices]]:
    uart = FakeUart()
    monkeypatch.setattr(pl011, "Pl011", lambda buf: fake_pl011(uart))
    kernel_side, driver_side = socket.socketpair()
    driver_side.setblocking(False)
    devices = FakeDevices({"rx_irq": -1, "tx_irq": -1}, {"rx_fault": None, "tx_fault": None})
    pl011.attach(devices, uart, driver_side.fileno(), lambda _msg: None)  # type: ignore[arg-type]
    yield uart, kernel_side, devices
    for closer in reversed(devices._closers):
        closer()
    kernel_side.close()
    driver_side.close()


def recv_word(sock: socket.socket, timeout: float = 2.0) -> int:
    sock.settimeout(timeout)
    return int(WORD.unpack(sock.recv(4))[0])


def test_setup_programs_the_uart_and_enables_the_irq(wired) -> None:
    uart, kernel, _ = wired
    assert recv_word(kernel) == 1  # enabled once at start
    regs = Regs(uart)
    assert regs[pl011.UARTCR // 4] == pl011.CR_UARTEN_TXE_RXE
    assert regs[pl011.UARTIMSC // 4] == pl011.IMSC_RXIM_RTIM
    assert regs[pl011.UARTLCR_H // 4] == pl011.LCR_H_FEN_WLEN8


def test_an_interrupt_drains_the_uart_before_reenabling_and_wakes_both_fds(wired) -> None:
    uart, kernel, devices = wired
    assert recv_word(kernel) == 1
    uart.rx += [0x21, 0x21, 0x21]
    cleared = uart.cleared
    kernel.send(WORD.pack(1))  # the UART's level interrupt fired
    assert recv_word(kernel) == 1  # re-enabled ...
    assert uart.rx == [] and uart.cleared > cleared  # ... after the drain and clear
    for name in ("rx_irq", "tx_irq"):
        fd = devices.irq_fds[name]
        assert readable(fd, 2.0)
        assert WORD.unpack(os.read(fd, 4))[0] == 1
        os.write(fd, WORD.pack(1))  # the loop's enable write is swallowed by the bridge
    time.sleep(0.05)
    assert not readable(devices.irq_fds["rx_irq"], 0.05)


def test_guest_notifications_are_one_byte_each(wired) -> None:
    uart, _, devices = wired
    devices.doorbells["rx_fault"].ring()
    devices.doorbells["tx_fault"].ring()
    assert uart.tx == [ord("R"), ord("T")]


def test_a_full_transmit_fifo_drops_the_byte() -> None:
    uart = FakeUart()
    dev = fake_pl011(uart)

    class Full(Regs):
        def __getitem__(self, index: int) -> int:
            return pl011.FR_TXFF if index * 4 == pl011.UARTFR else super().__getitem__(index)

    dev._regs = Full(uart)  # type: ignore[assignment]
    assert dev.send(ord("R")) is False and uart.tx == []
