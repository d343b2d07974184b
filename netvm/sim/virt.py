"""SIMULATION of virt_rx, virt_tx and their echo clients, on the VMM side of the queues.

Owns: the queue contents from the VMM side (rx_free pre-filled with every RX buffer like
virt_rx's init, the client TX buffer pools), the canonical sDDF producer/consumer
handshake on that side, the echo clients (frames.py), buffer bookkeeping for the
conservation check, and the hostile-input hooks the tests use. Runs only on the
simulator's loop thread (runner.py); nothing here blocks.

Conservation: every RX buffer is, at any moment, with the driver (enqueued on rx_free and
not yet back on rx_active), on rx_active unread, or held by the simulator; every client TX
buffer is in its client's pool, on tx_active (with the driver), or on tx_free unread. A
buffer coming back that the driver was not holding, or twice, is recorded as a violation.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from netvm.sim.frames import Reply, answer, ip_bytes, mac_bytes
from netvm.sim.layout import NET_BUFFER_SIZE, ClientLayout
from netvm.sim.rings import SimRing
from netvm.sim.vmm import SimDevices

RX_HOSTILE = ("outside", "below", "misaligned")
TX_HOSTILE = ("outside", "len0", "oversize")
INDEX_HOSTILE = ("rx_free", "tx_active")
MAX_VIOLATIONS = 50


@dataclass
class ClientState:
    layout: ClientLayout
    mac: bytes
    ip: bytes
    pool: deque[int]  # TX buffers the client may fill
    echoed: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    no_tx_buffer: int = 0

    def owns(self, io: int) -> bool:
        lay = self.layout
        return lay.tx_io_base <= io < lay.tx_io_base + lay.tx_buffers * NET_BUFFER_SIZE


class VirtNet:
    def __init__(self, devs: SimDevices) -> None:
        lay = devs.layout
        self.devs = devs
        self.layout = lay
        self.udp_port = int(lay.settings["udp_echo_port"])
        self.rx_free = SimRing("rx_free", devs.regions["rx_free"], lay.rx_capacity)
        self.rx_active = SimRing("rx_active", devs.regions["rx_active"], lay.rx_capacity)
        self.tx_active = SimRing("tx_active", devs.regions["tx_active"], lay.tx_capacity)
        self.tx_free = SimRing("tx_free", devs.regions["tx_free"], lay.tx_capacity)
        self.rx_data = devs.regions["rx_data"]
        self.tx_data = devs.regions["tx_data"]
        # Indices this side owns, kept privately (never re-read from shared memory).
        self.rx_free_tail = 0
        self.rx_active_head = 0
        self.tx_active_tail = 0
        self.tx_free_head = 0
        self.rx_all = frozenset(lay.rx_buffer_ios())
        self.rx_with_driver: set[int] = set()
        self.rx_held: list[int] = []
        self.rx_bogus_pending: list[int] = []
        self.rx_bogus_slots: list[int] = []  # ring indices holding injected descriptors
        self.index_jumped: set[str] = set()
        self.tx_with_driver: set[int] = set()
        self.clients = [
            ClientState(c, mac_bytes(c.mac), ip_bytes(c.ipv4), deque(c.tx_buffer_ios()))
            for c in lay.clients
        ]
        self.tx_all = frozenset(io for c in lay.clients for io in c.tx_buffer_ios())
        self.violations: list[str] = []
        self.counters: Counter[str] = Counter()
        self._rx_free_dirty = False
        self._tx_active_dirty = False
        # virt_rx's init: every RX buffer on rx_free, len 0.
        for io in lay.rx_buffer_ios():
            self._enqueue_rx_free(io)
        self.rx_free.publish_tail(self.rx_free_tail)
        self._rx_free_dirty = False

    # ------------------------------------------------------------------ helpers

    def _violation(self, text: str) -> None:
        self.counters["violations"] += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(text)

    def _enqueue_rx_free(self, io: int) -> bool:
        used = (self.rx_free_tail - self.rx_free.head) & 0xFFFF
        if used >= self.rx_free.capacity:
            return False
        self.rx_free.write(self.rx_free_tail, io, 0)
        self.rx_free_tail = (self.rx_free_tail + 1) & 0xFFFF
        self._rx_free_dirty = True
        if io in self.rx_all:
            self.rx_with_driver.add(io)
        return True

    def _in_rx_free(self, index: int) -> bool:
        head = self.rx_free.head
        return ((index - head) & 0xFFFF) < ((self.rx_free_tail - head) & 0xFFFF)

    def _return_rx(self, io: int) -> None:
        if self.rx_bogus_pending:
            # Replace this buffer by an injected descriptor; hold it until the driver
            # has consumed the injected one.
            bogus = self.rx_bogus_pending.pop(0)
            slot = self.rx_free_tail
            if self._enqueue_rx_free(bogus):
                self.rx_bogus_slots.append(slot)
                self.rx_held.append(io)
                return
        if not self._enqueue_rx_free(io):
            self.rx_held.append(io)

    def _release_held(self) -> None:
        self.rx_bogus_slots = [s for s in self.rx_bogus_slots if self._in_rx_free(s)]
        if self.rx_bogus_slots:
            return
        while self.rx_held and self._enqueue_rx_free(self.rx_held[0]):
            self.rx_held.pop(0)

    def flush(self) -> None:
        """Producer side: publish once, then signal the driver if it asked for it."""
        irqs = self.devs.irqs
        if self._rx_free_dirty and "rx_free" not in self.index_jumped:
            self._rx_free_dirty = False
            self.rx_free.publish_tail(self.rx_free_tail)
            if self.rx_free.signal_required():
                self.rx_free.cancel_signal()
                irqs["rx_irq"].inject()
        if self._tx_active_dirty and "tx_active" not in self.index_jumped:
            self._tx_active_dirty = False
            self.tx_active.publish_tail(self.tx_active_tail)
            if self.tx_active.signal_required():
                self.tx_active.cancel_signal()
                irqs["tx_irq"].inject()

    # ------------------------------------------------------------------ virt_rx

    def on_rx_doorbell(self) -> None:
        """The driver put frames on rx_active: hand them to the clients, recycle buffers."""
        self.counters["rx_doorbells"] += 1
        ring = self.rx_active
        while True:
            n = (ring.tail - self.rx_active_head) & 0xFFFF
            if n > ring.capacity:
                self._violation(f"rx_active tail {ring.tail} is more than capacity ahead")
                break
            for k in range(n):
                io, length = ring.read(self.rx_active_head + k)
                self._rx_frame(io, length)
            if n:
                self.rx_active_head = (self.rx_active_head + n) & 0xFFFF
                ring.publish_head(self.rx_active_head)
                continue
            ring.request_signal()
            if ring.tail == self.rx_active_head:
                break
            ring.cancel_signal()
        self._release_held()
        self.flush()

    def _rx_frame(self, io: int, length: int) -> None:
        if io not in self.rx_with_driver:
            self._violation(f"rx_active returned {io:#x}, a buffer the driver was not holding")
            return
        self.rx_with_driver.discard(io)
        if not 0 < length <= NET_BUFFER_SIZE:
            self._violation(f"rx_active descriptor {io:#x} has len {length}")
        else:
            off = io - self.layout.rx_io_base
            frame = bytes(self.rx_data[off : off + length])
            self.counters["rx_frames"] += 1
            self.counters["rx_bytes"] += length
            for client in self.clients:
                result = answer(frame, client.mac, client.ip, self.udp_port)
                if isinstance(result, Reply):
                    self._client_send(client, result)
                else:
                    client.ignored[result.reason] += 1
        self._return_rx(io)

    # ------------------------------------------------------------------ virt_tx

    def _tx_space(self) -> int:
        used = (self.tx_active_tail - self.tx_active.head) & 0xFFFF
        return self.tx_active.capacity - used if used <= self.tx_active.capacity else 0

    def _enqueue_tx(self, io: int, length: int) -> bool:
        if self._tx_space() <= 0:
            return False
        self.tx_active.write(self.tx_active_tail, io, length)
        self.tx_active_tail = (self.tx_active_tail + 1) & 0xFFFF
        self._tx_active_dirty = True
        if io in self.tx_all:
            self.tx_with_driver.add(io)
        return True

    def _client_send(self, client: ClientState, reply: Reply) -> None:
        if not client.pool or self._tx_space() <= 0:
            client.no_tx_buffer += 1
            return
        io = client.pool.popleft()
        lay = client.layout
        off = lay.tx_map_offset + (io - lay.tx_io_base)
        self.tx_data[off : off + len(reply.frame)] = reply.frame
        self._enqueue_tx(io, len(reply.frame))
        client.echoed[reply.kind] += 1
        self.counters["tx_frames"] += 1

    def on_tx_doorbell(self) -> None:
        """The driver returned buffers on tx_free: give them back to their clients."""
        self.counters["tx_doorbells"] += 1
        ring = self.tx_free
        while True:
            n = (ring.tail - self.tx_free_head) & 0xFFFF
            if n > ring.capacity:
                self._violation(f"tx_free tail {ring.tail} is more than capacity ahead")
                break
            for k in range(n):
                io, _ = ring.read(self.tx_free_head + k)
                self._tx_return(io)
            if n:
                self.tx_free_head = (self.tx_free_head + n) & 0xFFFF
                ring.publish_head(self.tx_free_head)
                continue
            ring.request_signal()
            if ring.tail == self.tx_free_head:
                break
            ring.cancel_signal()

    def _tx_return(self, io: int) -> None:
        if io not in self.tx_with_driver:
            self._violation(f"tx_free returned {io:#x}, a buffer the driver was not holding")
            return
        self.tx_with_driver.discard(io)
        for client in self.clients:
            if client.owns(io):
                client.pool.append(io)
                return

    # ------------------------------------------------------------------ hostile input

    def inject_rx_free(self, kind: str) -> int:
        """Queue a bad rx_free descriptor; returns its io address."""
        lay = self.layout
        rx_size = lay.sizes["rx_data"]
        io = {
            "outside": lay.rx_io_base + rx_size + 0x40000,
            "below": lay.rx_io_base - NET_BUFFER_SIZE,
            "misaligned": lay.rx_io_base + 3 * NET_BUFFER_SIZE + 64,
        }[kind]
        self.rx_bogus_pending.append(io)
        self.counters[f"injected_rx_{kind}"] += 1
        return io

    def inject_tx_active(self, kind: str) -> int:
        """Put a bad descriptor on tx_active and raise tx_irq; returns its io address."""
        client = self.clients[0]
        if kind == "outside":
            io, length = self.layout.rx_io_base, 60  # an RX buffer is no client's TX buffer
        else:
            if not client.pool:
                raise RuntimeError("client0 has no free TX buffer to misuse")
            io = client.pool.popleft()
            # over_mtu fits its buffer but not the link (MTU 1500): the driver drops it.
            length = {"len0": 0, "over_mtu": 1600}.get(kind, 4000)
        if not self._enqueue_tx(io, length):
            raise RuntimeError("tx_active is full")
        self.counters[f"injected_tx_{kind}"] += 1
        self._tx_active_dirty = True
        self.flush()
        self.devs.irqs["tx_irq"].inject()
        return io

    def jump_index(self, ring_name: str) -> None:
        """Publish a tail more than capacity ahead of the driver's head.

        The driver keeps consuming while this runs, so its head is anywhere up to our
        own tail: measuring the jump from a head read here could leave it within
        capacity of the head the driver ends up with (and then it is not bad at all).
        Measured from our tail it is out of range for every head the driver can hold.
        """
        ring = self.rx_free if ring_name == "rx_free" else self.tx_active
        tail = self.rx_free_tail if ring_name == "rx_free" else self.tx_active_tail
        ring.publish_tail((tail + ring.capacity + 7) & 0xFFFF)
        self.index_jumped.add(ring_name)
        self.counters[f"injected_jump_{ring_name}"] += 1
        self.devs.irqs["rx_irq" if ring_name == "rx_free" else "tx_irq"].inject()

    def restore_index(self, ring_name: str) -> None:
        self.index_jumped.discard(ring_name)
        if ring_name == "rx_free":
            self.rx_free.publish_tail(self.rx_free_tail)
        else:
            self.tx_active.publish_tail(self.tx_active_tail)
        self.devs.irqs["rx_irq" if ring_name == "rx_free" else "tx_irq"].inject()

    # ------------------------------------------------------------------ reports

    def conservation(self) -> dict[str, Any]:
        """Where every buffer is; exact once the driver has stopped (it holds none then)."""
        rx_seen: Counter[int] = Counter()
        for io, _ in self.rx_free.entries(self.rx_free.head, self.rx_free_tail):
            if io in self.rx_all:
                rx_seen[io] += 1
        rx_active = self.rx_active.entries(self.rx_active_head, self.rx_active.tail)
        rx_seen.update(io for io, _ in rx_active)
        rx_seen.update(self.rx_held)
        tx_seen: Counter[int] = Counter()
        for client in self.clients:
            tx_seen.update(client.pool)
        for io, _ in self.tx_active.entries(self.tx_active.head, self.tx_active_tail):
            if io in self.tx_all:
                tx_seen[io] += 1
        tx_seen.update(io for io, _ in self.tx_free.entries(self.tx_free_head, self.tx_free.tail))
        report: dict[str, Any] = {"violations": list(self.violations)}
        ok = not self.violations
        for name, seen, everything in (("rx", rx_seen, self.rx_all), ("tx", tx_seen, self.tx_all)):
            missing = sorted(everything - set(seen))
            duplicated = sorted(io for io, n in seen.items() if n > 1)
            unknown = sorted(set(seen) - everything)
            report[name] = {
                "buffers": len(everything),
                "accounted": sum(seen[io] for io in everything if io in seen),
                "missing": [hex(io) for io in missing[:10]],
                "duplicated": [hex(io) for io in duplicated[:10]],
                "unknown": [hex(io) for io in unknown[:10]],
            }
            ok = ok and not (missing or duplicated or unknown)
        report["rx"]["held_by_sim"] = len(self.rx_held)
        report["ok"] = ok
        return report

    def release(self) -> None:
        for ring in (self.rx_free, self.rx_active, self.tx_active, self.tx_free):
            ring.release()

    def stats(self) -> dict[str, Any]:
        return {
            "counters": dict(sorted(self.counters.items())),
            "clients": {
                c.layout.name: {
                    "echoed": dict(sorted(c.echoed.items())),
                    "frames_echoed": sum(c.echoed.values()),
                    "ignored": dict(sorted(c.ignored.items())),
                    "no_tx_buffer": c.no_tx_buffer,
                }
                for c in self.clients
            },
            "irqs": {
                name: {
                    "injected": irq.injected,
                    "dropped_while_masked": irq.dropped,
                    "enabled": irq.enabled,
                }
                for name, irq in self.devs.irqs.items()
            },
        }
