"""A fast VMM side for throughput runs, plugged into the host simulation.

Owns: recycling RX buffers (rx_active straight back onto rx_free) and TX buffers
(tx_free straight back onto tx_active, each still holding its frame) with whole runs of
descriptors moved per doorbell, so the simulated VMM costs next to nothing per frame and
the driver under test is what limits the rate. It follows the sDDF handshake on both
sides (request a signal when drained, re-check; notify the driver only when it asked).
Runs only on the simulation's VMM thread; ``BenchSimulation`` routes the doorbells to it
once ``take_over`` is called, and to the normal simulated virt_rx/virt_tx (echo clients)
before that, so the latency runs use the real echo path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from netvm.sim.layout import NET_BUFFER_SIZE
from netvm.sim.rings import DESC_SIZE, FIRST_DESC, SimRing
from netvm.sim.runner import DoorbellHandler, Simulation
from netvm.sim.virt import VirtNet

BENCH_ETHERTYPE = b"\x88\xb5"
TX_DST_MAC = bytes.fromhex("0200000000ee")  # nobody's: the peer drops it at once


def move_descriptors(src: SimRing, src_index: int, dst: SimRing, dst_index: int, n: int) -> None:
    """Copy n descriptors between two rings of equal capacity, in runs (one per wrap)."""
    sview, dview = memoryview(src.buf), memoryview(dst.buf)
    cap = src.capacity
    while n:
        a, b = src_index & src.mask, dst_index & dst.mask
        k = min(n, cap - a, cap - b)
        dview[FIRST_DESC + DESC_SIZE * b : FIRST_DESC + DESC_SIZE * (b + k)] = sview[
            FIRST_DESC + DESC_SIZE * a : FIRST_DESC + DESC_SIZE * (a + k)
        ]
        src_index += k
        dst_index += k
        n -= k


@dataclass
class BenchCounters:
    rx_frames: int = 0
    rx_checked: int = 0
    rx_bad: int = 0
    tx_frames: int = 0
    rx_doorbells: int = 0
    tx_doorbells: int = 0


class BenchVmm:
    """virt_rx/virt_tx reduced to recycling, for throughput runs."""

    def __init__(self, virt: VirtNet) -> None:
        self.virt = virt
        self.irqs = virt.devs.irqs
        self.rx_free, self.rx_active = virt.rx_free, virt.rx_active
        self.tx_free, self.tx_active = virt.tx_free, virt.tx_active
        self.rx_data = memoryview(virt.rx_data)
        self.tx_data = memoryview(virt.tx_data)
        self.rx_base = virt.layout.rx_io_base
        self.counters = BenchCounters()
        # Indices this side owns, taken over from the simulated virt.
        self.rx_free_tail = virt.rx_free_tail
        self.rx_active_head = virt.rx_active_head
        self.tx_active_tail = virt.tx_active_tail
        self.tx_free_head = virt.tx_free_head
        self.expect_size = 0  # RX frame length to check (0: any)
        self.tx_running = False
        self.tx_out = 0  # TX buffers with the driver (on tx_active or not yet returned)
        # Every RX buffer goes round: give back the ones the simulated virt held.
        for io in virt.rx_held:
            self.rx_free.write(self.rx_free_tail, io, 0)
            self.rx_free_tail = (self.rx_free_tail + 1) & 0xFFFF
        virt.rx_held.clear()
        self.rx_free.publish_tail(self.rx_free_tail)
        # TX buffers: as many as tx_active holds, alternating between the clients.
        per_client = virt.layout.tx_capacity // len(virt.clients)
        self.tx_buffers = [
            (
                c.layout.tx_map_offset + k * NET_BUFFER_SIZE,
                c.layout.tx_io_base + k * NET_BUFFER_SIZE,
            )
            for k in range(per_client)
            for c in virt.clients
        ]
        self._kick_rx()

    # ------------------------------------------------------------------ RX

    def on_rx_doorbell(self) -> None:
        """The driver put frames on rx_active: check one, hand them all back to rx_free."""
        c = self.counters
        c.rx_doorbells += 1
        ring, free = self.rx_active, self.rx_free
        while True:
            n = (ring.tail - self.rx_active_head) & 0xFFFF
            if n > ring.capacity:
                break  # impossible index: the driver is broken; the counts will show it
            if n:
                self._check_rx(self.rx_active_head)
                move_descriptors(ring, self.rx_active_head, free, self.rx_free_tail, n)
                self.rx_active_head = (self.rx_active_head + n) & 0xFFFF
                ring.publish_head(self.rx_active_head)
                self.rx_free_tail = (self.rx_free_tail + n) & 0xFFFF
                free.publish_tail(self.rx_free_tail)
                c.rx_frames += n
                continue
            ring.request_signal()
            if ring.tail == self.rx_active_head:
                break
            ring.cancel_signal()
        self._kick_rx()

    def _kick_rx(self) -> None:
        if self.rx_free.signal_required():
            self.rx_free.cancel_signal()
            self.irqs["rx_irq"].inject()

    def _check_rx(self, index: int) -> None:
        """Sample one frame per doorbell: its length and ethertype are what was sent."""
        io, length = self.rx_active.read(index)
        off = io - self.rx_base
        c = self.counters
        c.rx_checked += 1
        if not 0 <= off < len(self.rx_data) or (
            self.expect_size
            and (length != self.expect_size or self.rx_data[off + 12 : off + 14] != BENCH_ETHERTYPE)
        ):
            c.rx_bad += 1

    # ------------------------------------------------------------------ TX

    def start_tx(self, size: int) -> None:
        """Fill every bench TX buffer with a `size`-byte frame and queue them all."""
        if self.tx_out:
            raise RuntimeError("TX buffers are still with the driver")
        for i, (off, _) in enumerate(self.tx_buffers):
            c = self.virt.clients[i % len(self.virt.clients)]
            frame = TX_DST_MAC + c.mac + BENCH_ETHERTYPE + i.to_bytes(8, "little")
            frame += bytes((k * 7) & 0xFF for k in range(len(frame), size))
            self.tx_data[off : off + size] = frame
        for _, io in self.tx_buffers:
            self.tx_active.write(self.tx_active_tail, io, size)
            self.tx_active_tail = (self.tx_active_tail + 1) & 0xFFFF
        self.tx_out = len(self.tx_buffers)
        self.tx_running = True
        self.tx_active.publish_tail(self.tx_active_tail)
        self.tx_free.request_signal()
        self._kick_tx(force=True)

    def stop_tx(self) -> None:
        """Stop re-queueing: buffers coming back stay here."""
        self.tx_running = False

    def on_tx_doorbell(self) -> None:
        """The driver returned buffers on tx_free: queue them again (same frame)."""
        c = self.counters
        c.tx_doorbells += 1
        ring, active = self.tx_free, self.tx_active
        moved = False
        while True:
            n = (ring.tail - self.tx_free_head) & 0xFFFF
            if n > ring.capacity:
                break
            if n:
                if self.tx_running:
                    move_descriptors(ring, self.tx_free_head, active, self.tx_active_tail, n)
                    self.tx_active_tail = (self.tx_active_tail + n) & 0xFFFF
                    moved = True
                else:
                    self.tx_out -= n
                self.tx_free_head = (self.tx_free_head + n) & 0xFFFF
                ring.publish_head(self.tx_free_head)
                c.tx_frames += n
                continue
            ring.request_signal()
            if ring.tail == self.tx_free_head:
                break
            ring.cancel_signal()
        if moved:
            active.publish_tail(self.tx_active_tail)
            self._kick_tx()

    def _kick_tx(self, force: bool = False) -> None:
        if force or self.tx_active.signal_required():
            self.tx_active.cancel_signal()
            self.irqs["tx_irq"].inject()

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self.counters))


class BenchSimulation(Simulation):
    """The host simulation with a switch from the echo clients to the fast bench VMM."""

    bench: BenchVmm | None = None

    def take_over(self) -> BenchVmm:
        """From now on doorbells go to a BenchVmm (call through ``call``)."""
        virt = self._require_virt()
        self.bench = BenchVmm(virt)
        return self.bench

    def _doorbells(self) -> DoorbellHandler:
        return self.bench if self.bench is not None else self._require_virt()

    def _final_drain(self) -> None:
        if self.bench is None:
            super()._final_drain()
        else:
            with contextlib.suppress(Exception):
                self.bench.on_tx_doorbell()
                self.bench.on_rx_doorbell()
