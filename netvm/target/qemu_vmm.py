"""SIMULATION of the seL4 VMM for a QEMU guest: the host side of the sDDF regions.

Owns: the guest-RAM file QEMU runs on (``memory-backend-file,share=on``), the sDDF
regions inside it (each UIO window at its guest-physical offset in the carve-out), the
data-passing page, and the notification channel through UART0's socket chardev (see
driver/netvm_driver/pl011.py): an rx_irq/tx_irq injection is one byte to the guest,
and a byte from the guest is a guest->VMM notification (``R`` = rx_fault, ``T`` =
tx_fault). virt_rx/virt_tx and the echo clients are netvm.sim's own (`VirtNet`), so
the QEMU guest is exercised by exactly the simulator the host harness uses.

Runs its loop on one thread; `call` runs a function on it, so the VMM's queue indices
have a single writer, as in netvm.sim.runner. This is a simulation of the VMM, named as
such; the real one is libvmm on seL4.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from netvm.board import Board
from netvm.sim.calls import LoopCalls
from netvm.sim.layout import DOORBELLS, REGIONS, SimLayout, sim_layout
from netvm.sim.virt import VirtNet
from netvm.sim.vmm import SimDevices, SimIrq, data_passing_page

T = TypeVar("T")
DOORBELL_UIO = "doorbell"
NOTIFY_BYTES = {ord("R"): "rx_fault", ord("T"): "tx_fault"}
INJECT_BYTE = b"!"  # any byte raises the guest's doorbell interrupt


class DoorbellIrq(SimIrq):
    """An injected rx_irq/tx_irq: one byte to UART0 (SPI 1 in the guest).

    The enable state lives in the guest (its bridge re-enables the UIO IRQ after each
    drain) and a byte waits in the UART FIFO or the socket until then, so nothing is
    dropped while masked and there are no enable writes to read here.
    """

    sock: socket.socket | None = None

    def read_enables(self) -> None:
        return

    def inject(self) -> bool:
        self.count += 1
        self.injected += 1
        if self.sock is None:
            return False
        try:
            self.sock.send(INJECT_BYTE, socket.MSG_DONTWAIT)
        except BlockingIOError:  # the guest has thousands of unread bytes: it will scan
            self.dropped += 1
            return False
        return True


def create_ram_file(path: Path, size: int) -> None:
    """A fresh all-zero guest-RAM file (sparse: only pages QEMU or we touch use memory)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Window:
    name: str
    paddr: int
    size: int
    offset: int  # in the guest-RAM file


def ram_windows(board: Board, layout: SimLayout) -> dict[str, Window]:
    """Each simulated region at its guest-physical offset in the guest-RAM file."""
    ram = board.guest.ram
    out: dict[str, Window] = {}
    for name in (*REGIONS, *DOORBELLS):
        paddr, size = layout.paddrs[name], layout.sizes[name]
        if not (ram.paddr <= paddr and paddr + size <= ram.end):
            raise ValueError(f"uio.{name} {paddr:#x}+{size:#x} is not in guest RAM {ram}")
        out[name] = Window(name, paddr, size, paddr - ram.paddr)
    return out


class QemuVmm:
    """The simulated VMM on a QEMU guest's shared RAM; see the module docstring."""

    def __init__(self, board: Board, root: Path, ram_file: Path, run_dir: Path) -> None:
        self.board = board
        self.layout = sim_layout(board, root)
        self.ram_file = ram_file
        self.windows = ram_windows(board, self.layout)
        self.devs = SimDevices(self.layout, run_dir)
        self.virt: VirtNet | None = None
        self.sock: socket.socket | None = None
        self.error: BaseException | None = None
        self.notifications = {"rx_fault": 0, "tx_fault": 0}
        self._thread: threading.Thread | None = None
        self._calls = LoopCalls()
        self._stopping = threading.Event()

    def prepare(self) -> None:
        """Create the RAM file, map the regions, write the data-passing page (before QEMU)."""
        create_ram_file(self.ram_file, self.board.guest.ram.size)
        fd = os.open(self.ram_file, os.O_RDWR)
        try:
            for name in REGIONS:
                w = self.windows[name]
                self.devs.regions[name] = mmap.mmap(fd, w.size, mmap.MAP_SHARED, offset=w.offset)
        finally:
            os.close(fd)
        page = data_passing_page(self.layout)
        self.devs.regions["data_passing"][: len(page)] = page
        for name in ("rx_irq", "tx_irq"):
            self.devs.irqs[name] = DoorbellIrq(name, None, "doorbell")
        # virt_rx's init: every RX buffer on rx_free (written before the guest boots).
        self.virt = VirtNet(self.devs)

    def connect(self, path: Path, timeout: float) -> None:
        """Connect to UART0's socket chardev (QEMU is the server)."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"QEMU's doorbell socket {path} did not appear") from None
                time.sleep(0.01)
        s.setblocking(False)
        self.sock = s
        for irq in self.devs.irqs.values():
            assert isinstance(irq, DoorbellIrq)
            irq.sock = s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="netvm-qemu-vmm", daemon=True)
        self._thread.start()

    def _require_virt(self) -> VirtNet:
        assert self.virt is not None
        return self.virt

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `fn` on the VMM thread (the only writer of the VMM's indices)."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the simulated VMM is not running") from self.error
        return self._calls.submit(fn).result(timeout)

    def stats(self) -> dict[str, Any]:
        def collect() -> dict[str, Any]:
            out = self._require_virt().stats()
            out["notifications"] = dict(self.notifications)
            return out

        return self.call(collect)

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # reported through .error; the run ends
            self.error = exc

    def _serve(self) -> None:
        assert self.sock is not None
        virt = self._require_virt()
        ep = select.epoll()
        sock_fd = self.sock.fileno()
        ep.register(sock_fd, select.EPOLLIN)
        ep.register(self._calls.fd, select.EPOLLIN)
        try:
            while not self._stopping.is_set():
                for fd, ev in ep.poll():
                    if fd == sock_fd:
                        if ev & (select.EPOLLHUP | select.EPOLLERR):
                            raise ConnectionError("QEMU closed the doorbell socket")
                        self._on_bytes(virt)
                    else:
                        self._calls.run_pending()
        finally:
            ep.close()

    def _on_bytes(self, virt: VirtNet) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError("QEMU closed the doorbell socket")
        names = {NOTIFY_BYTES[b] for b in data if b in NOTIFY_BYTES}
        for name in names:
            self.notifications[name] += data.count(name[0].upper().encode())
        # Returned TX buffers first: replies to this round's frames may need them.
        if "tx_fault" in names:
            virt.on_tx_doorbell()
        if "rx_fault" in names:
            virt.on_rx_doorbell()

    def stop(self) -> None:
        self._stopping.set()
        self._calls.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.virt is not None:
            self.virt.release()
        self.devs.close()
        if self.sock is not None:
            self.sock.close()
        self._calls.close()
