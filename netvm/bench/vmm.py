"""A fast VMM side for throughput runs, plugged into the host simulation.

Owns: recycling RX buffers (rx_active straight back onto rx_free) and TX buffers
(tx_free straight back onto tx_active, each still holding its frame) with whole runs of
descriptors moved per doorbell, so the simulated VMM costs next to nothing per frame and
the driver under test is what limits the rate; a TX budget (exactly N frames, for the
instruction counts); the echo mode (every RX frame copied into a free TX buffer and
queued on tx_active: full duplex through the driver); and the buffer accounting of both
queue pairs. It follows the sDDF handshake on both sides (request a signal when
drained, re-check; notify the driver only when it asked).
Runs only on the simulation's VMM thread; ``BenchSimulation`` routes the doorbells to it
once ``take_over`` is called, and to the normal simulated virt_rx/virt_tx (echo clients)
before that, so the latency runs use the real echo path.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from netvm.sim.layout import NET_BUFFER_SIZE
from netvm.sim.rings import DESC, DESC_SIZE, FIRST_DESC, SimRing
from netvm.sim.runner import DoorbellHandler, Simulation
from netvm.sim.virt import VirtNet

BENCH_ETHERTYPE = b"\x88\xb5"
TX_DST_MAC = bytes.fromhex("0200000000ee")  # nobody's: the peer drops it at once
ECHO_CHUNK = 64  # echo mode: frames copied before their RX buffers go back to rx_free
VMM_NICE = -10  # the simulated VMM's thread, ahead of the generator on CPU 1 (vmm_ahead)


def vmm_ahead() -> int:
    """Run the calling thread (the simulated VMM's) at VMM_NICE if allowed; its nice value.

    The VMM shares its CPU with the traffic generator, which stands for the wire. In
    sDDF the virtualisers run at a higher priority than their clients, on their own
    cores; at the same priority as the generator the VMM waits for the scheduler's
    time slice while the driver, out of RX buffers, waits for it: the loss that causes
    is the harness's. Needs CAP_SYS_NICE (root); without it the VMM stays at its nice
    value and the figures say so (`vmm_nice`).
    """
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, VMM_NICE)  # 0: this thread alone, on Linux
    return os.getpriority(os.PRIO_PROCESS, 0)


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


def account_buffers(
    everything: Iterable[int], places: dict[str, list[int]], *, driver_stopped: bool
) -> dict[str, Any]:
    """Where the buffers of one queue pair are: each place's count, and the rest in flight.

    `places` lists the buffer addresses seen on the free queue, the active queue and in
    the VMM's own hands. What is in none of them is with the driver ("in flight"), so
    free + active + vmm + in flight = total by construction; what can go wrong is a
    buffer seen twice or one that is not of this pair, and, once the driver has
    stopped (it holds none then), anything still in flight.
    """
    total = frozenset(everything)
    seen: Counter[int] = Counter()
    for ios in places.values():
        seen.update(ios)
    duplicated = sorted(io for io, n in seen.items() if n > 1)
    unknown = sorted(set(seen) - total)
    in_flight = len(total - set(seen))
    out: dict[str, Any] = {"total": len(total)}
    out.update({name: len(ios) for name, ios in places.items()})
    out["in_flight"] = in_flight
    out["duplicated"] = [hex(io) for io in duplicated[:10]]
    out["unknown"] = [hex(io) for io in unknown[:10]]
    out["ok"] = not duplicated and not unknown and (in_flight == 0 or not driver_stopped)
    return out


@dataclass
class BenchCounters:
    rx_frames: int = 0
    rx_checked: int = 0
    rx_bad: int = 0
    tx_frames: int = 0
    rx_doorbells: int = 0
    tx_doorbells: int = 0
    echo_frames: int = 0  # RX frames queued again on tx_active (echo mode)
    echo_no_buffer: int = 0  # RX frames not echoed: every TX buffer was out


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
        self.tx_budget = 0  # frames start_tx may still queue (-1: no limit)
        self.echo = False
        self.nice = 0  # the VMM thread's nice value (BenchSimulation.take_over sets it)
        # Every RX buffer goes round: give back the ones the simulated virt held.
        for io in virt.rx_held:
            self.rx_free.write(self.rx_free_tail, io, 0)
            self.rx_free_tail = (self.rx_free_tail + 1) & 0xFFFF
        virt.rx_held.clear()
        self.rx_free.publish_tail(self.rx_free_tail)
        # TX buffers: as many as tx_active holds, shared between the clients and queued
        # one client's run after the other's, in each client's buffer order, as sDDF's
        # virt_tx moves them (one client's queue at a time; a client recycles its
        # buffers in order). The order only matters to ours: runs of evenly spaced
        # buffers are copied by batch (docs/driver.md).
        per_client = self.tx_per_client = virt.layout.tx_capacity // len(virt.clients)
        self.tx_buffers = [
            (
                c.layout.tx_map_offset + k * NET_BUFFER_SIZE,
                c.layout.tx_io_base + k * NET_BUFFER_SIZE,
            )
            for c in virt.clients
            for k in range(per_client)
        ]
        self.tx_offset = {io: off for off, io in self.tx_buffers}
        self.tx_pool = list(self.tx_buffers)  # (offset, io) of TX buffers this side holds
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
                if self.echo:
                    # A chunk at a time, so its RX buffers go back before the next is
                    # copied: the driver is not kept waiting for the whole batch.
                    n = min(n, ECHO_CHUNK)
                    self._echo(self.rx_active_head, n)
                move_descriptors(ring, self.rx_active_head, free, self.rx_free_tail, n)
                self.rx_active_head = (self.rx_active_head + n) & 0xFFFF
                ring.publish_head(self.rx_active_head)
                self.rx_free_tail = (self.rx_free_tail + n) & 0xFFFF
                free.publish_tail(self.rx_free_tail)
                c.rx_frames += n
                self._kick_rx()  # a driver out of buffers resumes now, not after the rest
                continue
            ring.request_signal()
            if ring.tail == self.rx_active_head:
                break
            ring.cancel_signal()
        self._kick_rx()

    def _echo(self, index: int, n: int) -> None:
        """Copy n frames from rx_active into free TX buffers and queue them on tx_active.

        Per frame: one descriptor read, one copy, one descriptor write, all with locals:
        at line rate this loop is most of the VMM's CPU, on the generator's core."""
        c = self.counters
        rx_buf, tx_buf = self.rx_active.buf, self.tx_active.buf
        rx_mask, tx_mask = self.rx_active.mask, self.tx_active.mask
        pool, rx_data, tx_data = self.tx_pool, self.rx_data, self.tx_data
        base, size, tail = self.rx_base, len(self.rx_data), self.tx_active_tail
        unpack, pack = DESC.unpack_from, DESC.pack_into
        queued = 0
        for k in range(index, index + n):
            io, length = unpack(rx_buf, FIRST_DESC + DESC_SIZE * (k & rx_mask))
            off = io - base
            if not pool:
                # Buffers the driver returned since its last TX doorbell was served: an
                # sDDF client out of TX buffers looks at its free queue too. Only what
                # is still on tx_active (or with the driver) counts as "no buffer".
                self._take_tx_free()
            if not pool or not 0 <= off <= size - length:
                c.echo_no_buffer += 1
                continue
            tx_off, tx_io = pool.pop()
            tx_data[tx_off : tx_off + length] = rx_data[off : off + length]
            pack(tx_buf, FIRST_DESC + DESC_SIZE * ((tail + queued) & tx_mask), tx_io, length)
            queued += 1
        if queued:
            self.tx_active_tail = (self.tx_active_tail + queued) & 0xFFFF
            self.tx_out += queued
            c.echo_frames += queued
            self.tx_active.publish_tail(self.tx_active_tail)
            self._kick_tx()

    def start_echo(self) -> None:
        """From now on every RX frame goes back out through TX (full duplex)."""
        if self.tx_running:
            raise RuntimeError("TX-only run still going")
        self.echo = True
        self.tx_free.request_signal()

    def stop_echo(self) -> None:
        self.echo = False

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

    def start_tx(self, size: int, budget: int = 0) -> None:
        """Fill the bench TX buffers with `size`-byte frames and queue them (all of them,
        and again as they come back; with a budget, `budget` frames in all)."""
        if self.tx_out or self.echo:
            raise RuntimeError("TX buffers are still with the driver")
        first = self.tx_buffers if budget <= 0 else self.tx_buffers[:budget]
        for i, (off, _) in enumerate(first):
            c = self.virt.clients[i // self.tx_per_client]  # the buffer's own client
            frame = TX_DST_MAC + c.mac + BENCH_ETHERTYPE + i.to_bytes(8, "little")
            frame += bytes((k * 7) & 0xFF for k in range(len(frame), size))
            self.tx_data[off : off + size] = frame
        for _, io in first:
            self.tx_active.write(self.tx_active_tail, io, size)
            self.tx_active_tail = (self.tx_active_tail + 1) & 0xFFFF
        queued = {io for _, io in first}
        self.tx_pool = [b for b in self.tx_buffers if b[1] not in queued]
        self.tx_out = len(first)
        self.tx_budget = -1 if budget <= 0 else budget - len(first)
        self.tx_running = True
        self.tx_active.publish_tail(self.tx_active_tail)
        self.tx_free.request_signal()
        self._kick_tx(force=True)

    def stop_tx(self) -> None:
        """Stop re-queueing: buffers coming back stay here."""
        self.tx_running = False

    def on_tx_doorbell(self) -> None:
        """The driver returned buffers on tx_free: queue them again (same frame), up to
        the budget; the rest (and all of them in echo mode) go back to the pool."""
        self.counters.tx_doorbells += 1
        ring = self.tx_free
        moved = False
        while True:
            took = self._take_tx_free()
            if took is None:
                break  # impossible index: the driver is broken; the counts will show it
            moved |= took
            ring.request_signal()
            if ring.tail == self.tx_free_head:
                break
            ring.cancel_signal()
        if moved:
            self.tx_active.publish_tail(self.tx_active_tail)
            self._kick_tx()

    def _take_tx_free(self) -> bool | None:
        """Every buffer on tx_free now, queued again on tx_active (not yet published) or
        put back in the pool: whether any was queued again; None for an impossible index."""
        ring, active = self.tx_free, self.tx_active
        n = (ring.tail - self.tx_free_head) & 0xFFFF
        if n > ring.capacity:
            return None
        if not n:
            return False
        again = 0
        if self.tx_running:
            again = n if self.tx_budget < 0 else min(n, self.tx_budget)
            if self.tx_budget >= 0:
                self.tx_budget -= again
        if again:
            move_descriptors(ring, self.tx_free_head, active, self.tx_active_tail, again)
            self.tx_active_tail = (self.tx_active_tail + again) & 0xFFFF
        self._to_pool(self.tx_free_head + again, n - again)
        self.tx_out -= n - again
        self.tx_free_head = (self.tx_free_head + n) & 0xFFFF
        ring.publish_head(self.tx_free_head)
        self.counters.tx_frames += n
        return again > 0

    def _to_pool(self, index: int, n: int) -> None:
        buf, mask, unpack = self.tx_free.buf, self.tx_free.mask, DESC.unpack_from
        offsets, pool = self.tx_offset, self.tx_pool
        for k in range(index, index + n):
            io = unpack(buf, FIRST_DESC + DESC_SIZE * (k & mask))[0]
            off = offsets.get(io)
            if off is not None:  # not one of ours: the accounting reports it as unknown
                pool.append((off, io))

    def _kick_tx(self, force: bool = False) -> None:
        if force or self.tx_active.signal_required():
            self.tx_active.cancel_signal()
            self.irqs["tx_irq"].inject()

    def snapshot(self) -> dict[str, int]:
        return {**vars(self.counters), "tx_out": self.tx_out}

    def conservation(self, *, driver_stopped: bool) -> dict[str, Any]:
        """Every buffer of both queue pairs: on free, on active, here, or with the driver."""

        def ios(ring: SimRing, head: int, tail: int) -> list[int]:
            return [io for io, _ in ring.entries(head, tail)]

        rx = account_buffers(
            self.virt.rx_all,
            {
                "free": ios(self.rx_free, self.rx_free.head, self.rx_free_tail),
                "active": ios(self.rx_active, self.rx_active_head, self.rx_active.tail),
                "vmm": [],
            },
            driver_stopped=driver_stopped,
        )
        tx = account_buffers(
            (io for _, io in self.tx_buffers),
            {
                "free": ios(self.tx_free, self.tx_free_head, self.tx_free.tail),
                "active": ios(self.tx_active, self.tx_active.head, self.tx_active_tail),
                "vmm": [io for _, io in self.tx_pool],
            },
            driver_stopped=driver_stopped,
        )
        return {"rx": rx, "tx": tx, "ok": rx["ok"] and tx["ok"], "driver_stopped": driver_stopped}


class BenchSimulation(Simulation):
    """The host simulation with a switch from the echo clients to the fast bench VMM."""

    bench: BenchVmm | None = None
    # The bench VMM's accounting after the driver stopped and its last doorbell was
    # served (the simulated virt's own check does not know the bench's buffers).
    bench_conservation: dict[str, Any] | None = None

    def take_over(self) -> BenchVmm:
        """From now on doorbells go to a BenchVmm (call through ``call``, so that this
        runs on the VMM's thread, which it also puts ahead of the generator)."""
        virt = self._require_virt()
        self.bench = BenchVmm(virt)
        self.bench.nice = vmm_ahead()
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
            self.bench_conservation = self.bench.conservation(driver_stopped=True)
