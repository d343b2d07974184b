"""The event loop: one epoll over the packet socket(s), the two IRQ fds and the signal pipe.

Owns: IRQ acknowledgement order, socket interest (paused while no RX buffer is free,
POLLOUT while a send would block), periodic and on-request stats, and orderly shutdown.
Must not touch queues or shared memory (datapath.py does).

IRQ order (Linux UIO and libvmm): process the queues, read the 4-byte count once, THEN
write a 4-byte 1 to re-enable and look at the queues again. The VMM drops a vIRQ
injected while the guest has it masked instead of latching it, so work that arrived
while masked is found by that look after re-enabling (one index load when nothing did).
The read and the enable both come after the work, keeping them off the frames' path (on
the board the enable is a system call whose GIC access traps to the VMM); the interrupt
stays masked until the enable, so none comes between the work and the read. One read
consumes a UIO event (the fd is readable again only at the next interrupt); a second
count queued by a stand-in device leaves the level-triggered epoll ready, so it is read
at the next turn, never lost.
"""

from __future__ import annotations

import os
import select
import struct
import time

from . import log
from .datapath import DataPath
from .stats import Stats

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    # typeshed has no stub for _signal, so checkers read signal.py's: signal.py is _signal
    # with IntEnum wrappers (Signals, Handlers) around the same ints, so the driver's
    # calls and constants type the same.
    import signal
else:
    import _signal as signal  # not signal.py: see docs/driver.md, "Start-up"

IRQ_ENABLE = struct.pack("=i", 1)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class FatalDeviceError(RuntimeError):
    pass


def read_irq(fd: int) -> bool:
    """Consume one interrupt from an IRQ fd; False if there was none (a spurious wake-up).

    One read, not a drain until EAGAIN: a read of a UIO fd returns the event count, which
    consumes every interrupt so far, and each EAGAIN would cost an exception (~8,000
    instructions) on every wake-up."""
    try:
        if not os.read(fd, 4):
            raise FatalDeviceError("IRQ device closed")
    except BlockingIOError:
        return False
    return True


def check_irq(events: int) -> None:
    """An IRQ fd's epoll events: a hang-up or error means its device is gone."""
    if events & (select.EPOLLHUP | select.EPOLLERR):
        raise FatalDeviceError("an IRQ device hung up (its provider went away)")


def enable_irq(fd: int) -> None:
    """Unmask the interrupt (UIO irqcontrol: a 4-byte 1)."""
    # Only a simulated IRQ (a socket) can be full; then an enable is already pending.
    try:
        os.write(fd, IRQ_ENABLE)
    except BlockingIOError:
        pass


class EventLoop:
    def __init__(
        self,
        datapath: DataPath,
        irq_fds: dict[str, int],
        stats: Stats,
        wakeup_fd: int,
        *,
        stats_path: str | None = None,
        stats_interval: float = 10.0,
    ) -> None:
        self.dp = datapath
        self.rx_irq = irq_fds["rx_irq"]
        self.tx_irq = irq_fds["tx_irq"]
        self.stats = stats
        self.wakeup_fd = wakeup_fd
        self.stats_path = stats_path
        self.stats_interval = stats_interval

    def write_stats(self, reason: str) -> None:
        if self.stats_path:
            try:
                self.dp.collect_socket_drops()
                self.stats.write(self.stats_path, reason)
            except OSError as exc:
                log.warn(f"cannot write stats to {self.stats_path}: {exc.strerror}")

    def _irq(self, fd: int) -> None:
        if read_irq(fd):
            self.stats.irqs_handled += 1

    def start(self) -> None:
        """Enable both IRQs, then scan once: anything that arrived before we ran is found."""
        for fd in (self.rx_irq, self.tx_irq):
            read_irq(fd)
            enable_irq(fd)
        self.dp.process_tx()
        self.dp.process_rx()

    def run(self) -> None:
        dp = self.dp
        ep = select.epoll()
        try:
            # The packet socket(s): one in socket mode, an RX and a TX ring socket in ring
            # mode. Errors and hang-ups are reported even for a socket with no interest.
            interest = dp.interest()
            for fd, events in interest.items():
                ep.register(fd, events)
            ep.register(self.rx_irq, select.EPOLLIN)
            ep.register(self.tx_irq, select.EPOLLIN)
            ep.register(self.wakeup_fd, select.EPOLLIN)
            self._loop(ep, interest)
        finally:
            ep.close()
            self.write_stats("exit")

    def _loop(self, ep: select.epoll, interest: dict[int, int]) -> None:
        dp = self.dp
        rx_irq, tx_irq, wakeup = self.rx_irq, self.tx_irq, self.wakeup_fd
        interval = self.stats_interval if self.stats_path else None
        next_stats = time.monotonic() + interval if interval else None
        stopping = False
        last_flags = (dp.rx_starved, dp.tx_blocked)
        while not stopping:
            timeout = -1.0 if next_stats is None else max(0.0, next_stats - time.monotonic())
            rx = tx = rx_irq_seen = tx_irq_seen = False
            ready = ep.poll(timeout)
            # The TX latency and RX's own share (stats.tx_latency, stats.rx_wake) count from
            # here: one clock read a wake-up, the realtime clock of the kernel's receive
            # timestamps, which RX reads at each publish anyway.
            woken = time.time_ns()
            for fd, ev in ready:
                if fd in interest:
                    if ev & select.EPOLLERR:
                        dp.socket_error(fd)
                    if ev & select.EPOLLIN:
                        rx = True
                    if ev & select.EPOLLOUT:
                        dp.tx_blocked = False
                        tx = True
                elif fd == rx_irq:
                    check_irq(ev)
                    rx = rx_irq_seen = True
                elif fd == tx_irq:
                    check_irq(ev)
                    tx = tx_irq_seen = True
                elif fd == wakeup:
                    sigs = self._signals()
                    if signal.SIGUSR1 in sigs:
                        self.write_stats("SIGUSR1")
                    stopping = any(s in sigs for s in STOP_SIGNALS)
            # Finish the work in hand even when a stop was requested.
            if tx:
                dp.process_tx(woken)
            if rx:
                dp.process_rx(woken)
            # The IRQ's count is read after the work (its system call off the frames'
            # path), before the enable: the line stays masked until then.
            if rx_irq_seen:
                self._irq(rx_irq)
                enable_irq(rx_irq)
            if tx_irq_seen:
                self._irq(tx_irq)
                enable_irq(tx_irq)
            if rx_irq_seen or tx_irq_seen:
                dp.rescan(rx=rx_irq_seen, tx=tx_irq_seen)
            # The interest depends only on these two flags: rebuild it when they change,
            # not on every wake-up.
            flags = (dp.rx_starved, dp.tx_blocked)
            if flags != last_flags:
                last_flags = flags
                want = dp.interest()
                for fd, events in want.items():
                    if events != interest[fd]:
                        ep.modify(fd, events)
                interest = want
            if next_stats is not None and interval and time.monotonic() >= next_stats:
                self.write_stats("periodic")
                next_stats = time.monotonic() + interval

    def _signals(self) -> set[int]:
        """Signal numbers written by the interpreter to the wakeup pipe."""
        got: set[int] = set()
        while True:
            try:
                data = os.read(self.wakeup_fd, 64)
            except BlockingIOError:
                return got
            if not data:
                return got
            got.update(data)
