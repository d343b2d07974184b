"""The driver's data path against the simulated VMM's queues, with a scripted socket.

No namespaces needed: the simulated devices (netvm.sim.vmm) are files, ptys and FIFOs,
and a fake socket stands in for AF_PACKET, so validation, the signal handshake and
buffer conservation can be checked descriptor by descriptor.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from netvm_driver.datapath import (
    PACKET_STATISTICS,
    SOL_PACKET,
    DataPath,
    check_data_passing,
    read_data_passing,
)
from netvm_driver.devmem import COPY_ALIGN
from netvm_driver.log import RateLimitedLog
from netvm_driver.ring import SO_TIMESTAMPNS
from netvm_driver.stats import Stats

from netvm.board import Board
from netvm.sim.frames import checksum, ip_bytes, mac_bytes
from tests.harness import DriverEnv, SimDriver, assert_first_buffer_reused

PEER_MAC = bytes.fromhex("0200000000aa")
PEER_IP = ip_bytes("10.0.0.1")


class FakeSocket:
    """recv_into/send like a non-blocking AF_PACKET socket, scripted by the test."""

    def __init__(self) -> None:
        self.rx: deque[bytes | OSError] = deque()
        self.sent: list[bytes] = []
        self.send_errors: deque[OSError] = deque()
        self.buffers: list[object] = []  # what each buffer handed to the socket views
        self.drops = 0  # frames "the kernel" dropped since PACKET_STATISTICS was last read
        self.empty_receives = 0  # receives that found nothing (each an exception)

    def fileno(self) -> int:
        return -1  # no kernel socket: make_env puts `queued` in place of the SIOCINQ probe

    def queued(self) -> int:
        """As SIOCINQ on a packet socket: the next frame's length, 0 if none."""
        head = self.rx[0] if self.rx else b""
        return len(head) if isinstance(head, bytes) else 1  # an error is "something"

    def recv_into(self, buf: memoryview, nbytes: int, flags: int) -> int:
        self.buffers.append(buf.obj)
        if not self.rx:
            self.empty_receives += 1
            raise BlockingIOError
        frame = self.rx.popleft()
        if isinstance(frame, OSError):
            raise frame
        n = min(len(frame), nbytes)
        buf[:n] = frame[:n]
        return len(frame) if flags & socket.MSG_TRUNC else n

    def recvmsg_into(
        self, buffers: list[memoryview], ancbufsize: int, flags: int
    ) -> tuple[int, list[tuple[int, int, bytes]], int, object]:
        """As recvmsg_into with SO_TIMESTAMPNS on: the frame and its receive time (now)."""
        size = self.recv_into(buffers[0], len(buffers[0]), flags)
        now = time.time_ns()
        stamp = struct.pack("@qq", now // 1_000_000_000, now % 1_000_000_000)
        return size, [(socket.SOL_SOCKET, SO_TIMESTAMPNS, stamp)], 0, None

    def send(self, data: bytes | memoryview) -> int:
        self.buffers.append(data.obj if isinstance(data, memoryview) else data)
        if self.send_errors:
            raise self.send_errors.popleft()
        self.sent.append(bytes(data))
        return len(data)

    def getsockopt(self, level: int, name: int, size: int) -> bytes:
        """PACKET_STATISTICS only: (packets, drops), zeroed by the read as the kernel does."""
        assert (level, name, size) == (SOL_PACKET, PACKET_STATISTICS, 8)
        drops, self.drops = self.drops, 0
        return struct.pack("=II", drops, drops)


@dataclass
class Env(DriverEnv):
    """The data path on a scripted socket."""

    sock: FakeSocket

    def doorbell_rings(self, name: str) -> int:
        try:
            return len(os.read(self.sim.doorbells[name], 4096))
        except BlockingIOError:
            return 0


@contextmanager
def make_env(board: Board, tmp: Path, *, fill_tx_checksums: bool = False) -> Iterator[Env]:
    drv = SimDriver.open(board, tmp)
    dp = read_data_passing(drv.devices)
    assert check_data_passing(dp, drv.config) == []
    sock, stats = FakeSocket(), Stats()
    path = DataPath(
        drv.config,
        drv.devices,
        dp,
        sock,  # type: ignore[arg-type]
        stats,
        fill_tx_checksums=fill_tx_checksums,
        ratelog=RateLimitedLog(sink=lambda _m: None),
    )
    path.rx_queued = sock.queued
    try:
        yield Env(drv.sim, drv.virt, drv.devices, stats, path, sock)
    finally:
        drv.close()


@pytest.fixture
def env(odroidc4: Board, tmp_path: Path) -> Iterator[Env]:
    with make_env(odroidc4, tmp_path) as e:
        yield e


def udp_frame(dst_ip: str, payload: bytes, dst_mac: bytes, port: int = 1235) -> bytes:
    dst = ip_bytes(dst_ip)
    udp_len = 8 + len(payload)
    pseudo = sum(memoryview(PEER_IP + dst + b"\0\x11" + udp_len.to_bytes(2, "big")).cast("H"))
    udp = (40000).to_bytes(2, "big") + port.to_bytes(2, "big") + udp_len.to_bytes(2, "big")
    csum = checksum(udp + b"\0\0" + payload, pseudo) or 0xFFFF
    udp += csum.to_bytes(2, "big") + payload
    ip = (
        b"\x45\x00"
        + (20 + len(udp)).to_bytes(2, "big")
        + b"\0\0\x40\x00\x40\x11\0\0"
        + PEER_IP
        + dst
    )
    ip = ip[:10] + checksum(ip).to_bytes(2, "big") + ip[12:]
    return dst_mac + PEER_MAC + b"\x08\x00" + ip + udp


def client_mac(env: Env, i: int = 0) -> bytes:
    return mac_bytes(env.virt.layout.clients[i].mac)


def test_udp_echo_round_trip_through_both_directions(env: Env) -> None:
    frame = udp_frame("10.0.0.2", b"hello, sDDF", client_mac(env))
    env.sock.rx.append(frame)
    env.path.process_rx()
    assert (env.stats.rx_frames, env.stats.rx_bytes) == (1, len(frame))
    assert env.doorbell_rings("rx_fault") == 1  # virt_rx asked for a signal at init
    env.virt.on_rx_doorbell()
    env.path.process_tx()
    assert len(env.sock.sent) == 1
    reply = env.sock.sent[0]
    assert reply[:6] == PEER_MAC and reply[42:53] == b"hello, sDDF"
    assert env.stats.tx_frames == 1 and env.doorbell_rings("tx_fault") == 1
    # One frame each way: each histogram holds it once, well under a second.
    for hist in (env.stats.rx_latency, env.stats.tx_latency):
        assert hist.samples == 1 == sum(hist.counts) and 0 <= hist.max_ns < 10**9
    assert env.conserved()["ok"]


def test_rx_own_latency_counts_from_the_wake_up_then_from_the_publish_before(env: Env) -> None:
    # 50 ms between the wake-up and the processing: the first batch's own share holds it.
    env.sock.rx.append(b"\x33" * 60)
    env.path.process_rx(time.time_ns() - 50_000_000)
    own = env.stats.rx_wake
    assert own.samples == 1 and 50_000_000 <= own.max_ns < 10**9
    # A later batch of the same wake-up counts from the publish before, not the wake-up:
    # under 50 ms, where the first one is not.
    env.sock.rx.append(b"\x44" * 60)
    env.path._rx_batch(1)
    assert own.samples == 2 and sum(own.counts[: own.bounds_us.index(50000) + 1]) == 1


def test_frames_land_in_rx_free_buffers_in_order_with_their_length(env: Env) -> None:
    frames = [bytes([i]) * (60 + i) for i in range(5)]
    env.sock.rx.extend(frames)
    env.path.process_rx()
    ring = env.virt.rx_active
    base = env.virt.layout.rx_io_base
    got = [ring.read(k) for k in range(5)]
    assert got == [(base + 2048 * i, 60 + i) for i in range(5)]
    rx = env.sim.regions["rx_data"]
    for i, f in enumerate(frames):
        assert rx[2048 * i : 2048 * i + len(f)] == f
    assert ring.tail == 5 and env.virt.rx_free.head == 5


def test_a_lone_frame_is_published_without_a_receive_that_finds_nothing(env: Env) -> None:
    # The low-rate wake-up brings one frame: the driver asks the queue (SIOCINQ) instead
    # of letting a second receive fail, so no exception lies between frame and publish.
    env.sock.rx.append(b"\x33" * 60)
    env.path.process_rx()
    assert env.stats.rx_frames == 1 and env.virt.rx_active.tail == 1
    assert env.sock.empty_receives == 0
    env.sock.rx.extend([b"\x44" * 60, b"\x55" * 61])  # more: read on until one finds none
    env.path.process_rx()
    assert env.stats.rx_frames == 3 and env.virt.rx_active.tail == 3
    assert env.sock.empty_receives == 1


def test_oversize_frame_is_dropped_counted_and_its_buffer_reused(env: Env) -> None:
    env.sock.rx.extend([b"\x11" * 9014, b"\x22" * 100])
    env.path.process_rx()
    assert_first_buffer_reused(env, dropped=1, kept=100)


def test_bad_rx_free_descriptors_are_skipped_and_no_frame_is_lost(env: Env) -> None:
    for kind in ("outside", "below", "misaligned"):
        env.virt.inject_rx_free(kind)
    frames = 0
    for _ in range(12):  # walk the whole ring so the driver meets every injected entry
        batch = [udp_frame("10.0.0.9", frames.to_bytes(4, "big"), client_mac(env))]
        batch = batch * 64
        env.sock.rx.extend(batch)
        frames += len(batch)
        env.path.process_rx()
        env.virt.on_rx_doorbell()
    assert env.stats.rx_bad_descriptor == 3
    assert env.stats.rx_frames == frames  # a bad buffer never eats a frame
    assert env.virt.counters["rx_frames"] == frames
    cons = env.conserved()
    assert cons["ok"], cons


def test_bad_tx_descriptors_are_counted_and_real_buffers_still_come_back(env: Env) -> None:
    for kind in ("outside", "len0", "oversize"):
        env.virt.inject_tx_active(kind)
    env.path.process_tx()
    assert env.stats.tx_bad_descriptor == 3
    assert env.sock.sent == []
    returned = [env.virt.tx_free.read(k)[0] for k in range(env.virt.tx_free.tail)]
    assert len(returned) == 2  # len 0 and len 4000 belong to client0; "outside" is nobody's
    assert env.virt.layout.rx_io_base not in returned
    cons = env.conserved()
    assert cons["ok"] and cons["violations"] == [], cons


def test_tx_returns_the_same_descriptor_verbatim(env: Env) -> None:
    client = env.virt.clients[1]
    io = client.pool.popleft()
    frame = udp_frame("10.0.0.1", b"x" * 33, PEER_MAC)
    off = client.layout.tx_map_offset + (io - client.layout.tx_io_base)
    env.sim.regions["tx_data"][off : off + len(frame)] = frame
    env.virt._enqueue_tx(io, len(frame))
    env.sim.regions["tx_active"][8 + 10] = 0x2A  # sDDF HEAD's oid bits: must survive
    env.virt.flush()
    original = bytes(env.sim.regions["tx_active"][8:24])
    env.path.process_tx()
    assert env.sock.sent == [frame]
    assert bytes(env.sim.regions["tx_free"][8:24]) == original
    assert env.conserved()["ok"]


def test_tx_from_the_second_client_uses_the_layout_stride(env: Env) -> None:
    # The clients' io regions are not contiguous and not 0x100000 apart in the simulation.
    c0, c1 = env.virt.layout.clients
    assert c0.tx_io_base - c1.tx_io_base != 0x100000
    env.sock.rx.append(udp_frame("10.0.0.3", b"to client1", client_mac(env, 1)))
    env.path.process_rx()
    env.virt.on_rx_doorbell()
    env.path.process_tx()
    assert env.sock.sent and b"to client1" in env.sock.sent[0]
    assert env.virt.clients[1].echoed["udp"] == 1


def test_tail_jump_is_counted_and_traffic_resumes_after_repair(env: Env) -> None:
    env.virt.jump_index("tx_active")
    env.path.process_tx()
    assert env.stats.bad_queue_index == 1 and env.sock.sent == []
    assert env.virt.tx_active.signal_required()  # the driver still asks to be woken
    env.virt.restore_index("tx_active")
    env.sock.rx.append(udp_frame("10.0.0.2", b"after", client_mac(env)))
    env.path.process_rx()
    env.virt.on_rx_doorbell()
    env.path.process_tx()
    assert env.sock.sent and b"after" in env.sock.sent[-1]

    env.virt.jump_index("rx_free")
    env.sock.rx.append(udp_frame("10.0.0.2", b"waits", client_mac(env)))
    env.path.process_rx()
    assert env.stats.bad_queue_index == 2 and env.path.rx_starved
    assert env.sock.rx  # not read, not dropped: it waits in the socket
    env.virt.restore_index("rx_free")
    env.path.process_rx()
    assert not env.path.rx_starved and not env.sock.rx
    assert env.conserved()["ok"]


def test_buffer_waits_are_counted_once_each_with_the_drops_during_them(env: Env) -> None:
    """An operator tells "virt_rx returned buffers late" from "the driver read too
    slowly" by these counters: kernel drops while every rx_free buffer was in use go to
    rx_dropped_buffer_wait as well, drops at any other time only to rx_dropped_no_buffer."""
    env.sock.drops = 3  # dropped while the driver was reading: not a buffer wait
    env.virt.jump_index("rx_free")  # no buffer the driver can use
    env.sock.rx.append(b"\x01" * 60)
    env.path.process_rx()
    env.path.process_rx()  # woken again while still out of buffers: the same wait
    assert env.path.rx_starved and env.stats.rx_buffer_waits == 1
    env.sock.drops = 5  # the socket overflowed while the driver waited
    env.virt.restore_index("rx_free")
    env.path.process_rx()
    assert not env.path.rx_starved and not env.sock.rx
    assert env.stats.rx_dropped_buffer_wait == 5
    wait = env.stats.rx_wait  # one sample per wait: how long virt_rx kept the driver waiting
    assert wait.samples == 1 and 0 < wait.max_ns < 10**9
    env.sock.drops = 2
    env.path.collect_socket_drops()  # what a stats write does
    assert (env.stats.rx_dropped_no_buffer, env.stats.rx_dropped_buffer_wait) == (10, 5)
    assert env.stats.rx_buffer_waits == 1


def test_tx_waits_for_one_rx_batch_at_most_during_an_rx_backlog(env: Env) -> None:
    """After a stall the socket holds more than a batch; the clients' TX must not wait
    until all of it is read (they would run out of TX buffers meanwhile)."""
    env.sock.rx.append(udp_frame("10.0.0.2", b"echo me", client_mac(env)))
    env.path.process_rx()
    env.virt.on_rx_doorbell()  # the echo client queues the reply on tx_active
    assert env.path.tx_active.available() == 1
    backlog = env.path.batch + 20
    env.sock.rx.extend([b"\x03" * 60] * backlog)
    read_by_then: list[int] = []
    send = env.sock.send

    def spy(data: bytes | memoryview) -> int:
        read_by_then.append(env.stats.rx_frames)
        return send(data)

    env.sock.send = spy  # type: ignore[method-assign]
    env.path.process_rx()  # RX work only, as on an RX wake-up
    assert env.stats.rx_frames == 1 + backlog and not env.sock.rx
    assert len(env.sock.sent) == 1 and b"echo me" in env.sock.sent[0]
    assert read_by_then == [1 + env.path.batch]  # sent after the first RX batch


def test_a_tail_jump_is_out_of_range_for_every_head_the_driver_can_reach(env: Env) -> None:
    # The driver keeps consuming while the VMM publishes the jump, so its head may be
    # anywhere up to the VMM's own tail by the time it reads the jumped one.
    env.virt.inject_tx_active("len0")
    env.virt.inject_tx_active("outside")
    for name, tail in (("rx_free", env.virt.rx_free_tail), ("tx_active", env.virt.tx_active_tail)):
        ring = env.virt.rx_free if name == "rx_free" else env.virt.tx_active
        head = ring.head
        assert tail != head  # the driver has entries in hand, so the race is possible
        env.virt.jump_index(name)
        for reachable in range(head, head + ((tail - head) & 0xFFFF) + 1):
            assert (ring.tail - reachable) & 0xFFFF > ring.capacity, (name, reachable)


def test_notification_only_when_the_consumer_asked(env: Env) -> None:
    env.virt.rx_active.cancel_signal()  # virt_rx is busy draining: no signal wanted
    env.sock.rx.append(b"\x01" * 60)
    env.path.process_rx()
    assert env.stats.notifications_sent == 0 and env.doorbell_rings("rx_fault") == 0
    env.virt.rx_active.request_signal()
    env.sock.rx.append(b"\x02" * 60)
    env.path.process_rx()
    assert env.stats.notifications_sent == 1 and env.doorbell_rings("rx_fault") == 1
    assert not env.virt.rx_active.signal_required()  # the producer cancelled it


def test_empty_tx_active_leaves_a_signal_request(env: Env) -> None:
    env.virt.tx_active.cancel_signal()
    env.path.process_tx()
    assert env.virt.tx_active.signal_required()


def test_rescan_after_an_enable_finds_work_that_came_while_masked(env: Env) -> None:
    """libvmm drops an IRQ injected while the guest has it masked: a frame queued on
    tx_active, or buffers refilled on rx_free, after the driver last looked, is found by
    the look the event loop makes after re-enabling (DataPath.rescan)."""
    env.path.process_tx()  # nothing to send: the signal is requested
    env.sock.rx.append(udp_frame("10.0.0.2", b"masked", client_mac(env)))
    env.path.process_rx()
    env.virt.on_rx_doorbell()  # the client answers: a frame on tx_active, its IRQ dropped
    env.path.rescan(rx=True, tx=False)  # only the tx IRQ was masked: TX is not looked at
    assert env.sock.sent == []
    env.path.rescan(rx=False, tx=True)
    assert len(env.sock.sent) == 1 and b"masked" in env.sock.sent[0]

    env.virt.jump_index("rx_free")  # out of buffers: the driver waits for the rx IRQ
    env.sock.rx.append(b"\x01" * 60)
    env.path.process_rx()
    assert env.path.rx_starved and env.sock.rx
    env.virt.restore_index("rx_free")  # refilled while the rx IRQ was masked
    env.path.rescan(rx=False, tx=True)
    assert env.path.rx_starved
    env.path.rescan(rx=True, tx=False)
    assert not env.path.rx_starved and not env.sock.rx
    assert env.conserved()["ok"]


def test_rescan_with_nothing_new_reads_no_socket(env: Env) -> None:
    """Not starved, the socket is epoll's to report: a rescan leaves a waiting frame."""
    env.sock.rx.append(b"\x01" * 60)
    env.path.rescan(rx=True, tx=True)
    assert env.sock.rx and env.stats.rx_frames == 0 and env.sock.sent == []


def test_rescan_does_not_count_an_impossible_index_again(env: Env) -> None:
    """The wake-up's processing counts a bad peer index once; the look after the enable
    that follows does not process it, nor count it, a second time."""
    env.virt.jump_index("tx_active")
    env.path.process_tx()  # what the tx IRQ's wake-up does first
    assert env.stats.bad_queue_index == 1
    env.path.rescan(rx=False, tx=True)
    assert env.stats.bad_queue_index == 1


def test_rescan_counts_an_impossible_index_published_while_masked(env: Env) -> None:
    """The VMM's interrupt for it came while the IRQ was masked and was dropped, and a
    VMM that sees its own index as bad raises no other: only the look after the enable
    finds it."""
    env.path.process_tx()  # the wake-up's processing: nothing wrong yet
    env.virt.jump_index("tx_active")  # its interrupt dropped: the driver has it masked
    env.path.rescan(rx=False, tx=True)
    assert env.stats.bad_queue_index == 1
    env.path.rescan(rx=False, tx=True)  # the same bad index, seen already
    assert env.stats.bad_queue_index == 1
    env.virt.restore_index("tx_active")
    env.path.process_tx()
    assert not env.path.tx_index_bad


def test_rescan_counts_an_impossible_rx_free_index_published_while_masked(env: Env) -> None:
    env.path.rx_starved = True  # out of buffers: the rx IRQ is what wakes it
    env.virt.jump_index("rx_free")
    env.path.rescan(rx=True, tx=False)
    assert env.stats.bad_queue_index == 1
    env.path.rescan(rx=True, tx=False)
    assert env.stats.bad_queue_index == 1


def test_send_would_block_leaves_the_frame_queued(env: Env) -> None:
    env.sock.rx.append(udp_frame("10.0.0.2", b"later", client_mac(env)))
    env.path.process_rx()
    env.virt.on_rx_doorbell()
    env.sock.send_errors.append(BlockingIOError())
    env.path.process_tx()
    assert env.path.tx_blocked and env.sock.sent == []
    assert env.stats.tx_send_waits == 1
    assert env.virt.tx_active.head == 0  # still the driver's to send
    env.path.tx_blocked = False  # what the event loop does on EPOLLOUT
    env.path.process_tx()
    assert env.sock.sent and b"later" in env.sock.sent[0]
    assert env.conserved()["ok"]


def test_link_down_send_error_drops_but_returns_the_buffer(env: Env) -> None:
    env.sock.rx.append(udp_frame("10.0.0.2", b"lost", client_mac(env)))
    env.sock.rx.append(OSError(errno.ENETDOWN, "Network is down"))
    env.path.process_rx()
    assert env.stats.rx_errors == 1 and env.stats.rx_frames == 1
    env.virt.on_rx_doorbell()
    env.sock.send_errors.append(OSError(errno.ENETDOWN, "Network is down"))
    env.path.process_tx()
    assert env.stats.tx_dropped == 1 and env.stats.tx_frames == 0
    assert env.conserved()["ok"]


def test_every_frame_copy_is_inside_one_buffer_and_aligned(odroidc4: Board, tmp_path: Path) -> None:
    with make_env(odroidc4, tmp_path, fill_tx_checksums=True) as e:
        for size in (1, 13, 200, 1472):
            e.sock.rx.append(udp_frame("10.0.0.2", b"z" * size, client_mac(e)))
            e.sock.rx.append(udp_frame("10.0.0.3", b"y" * size, client_mac(e, 1)))
        e.path.process_rx()
        e.virt.on_rx_doorbell()
        e.path.process_tx()
        assert len(e.sock.sent) == 8
        # The socket never sees a map: it received into and sent from ordinary memory.
        maps = {id(m._mv.obj) for m in e.devices.regions.values()}
        assert len(e.sock.buffers) > 16 and not {id(b) for b in e.sock.buffers} & maps
        assert len(e.rx_data.ins) == 8
        for dst, _, n in e.rx_data.ins:
            assert dst % 2048 == 0 and dst + align16(n) <= dst + 2048
        assert len(e.tx_data.outs) == 8
        for src, _, n in e.tx_data.outs:
            start, end = src & ~(COPY_ALIGN - 1), align16(src + n)
            assert start // 2048 == (end - 1) // 2048  # never leaves its buffer


def align16(n: int) -> int:
    return -(-n // COPY_ALIGN) * COPY_ALIGN


def test_fill_tx_checksums_fixes_zero_checksums(odroidc4: Board, tmp_path: Path) -> None:
    with make_env(odroidc4, tmp_path, fill_tx_checksums=True) as e:
        client = e.virt.clients[0]
        io = client.pool.popleft()
        frame = bytearray(udp_frame("10.0.0.1", b"offloaded", PEER_MAC))
        frame[24:26] = b"\0\0"  # IP header checksum left to "hardware"
        frame[40:42] = b"\0\0"  # UDP checksum too
        off = client.layout.tx_map_offset + (io - client.layout.tx_io_base)
        e.sim.regions["tx_data"][off : off + len(frame)] = bytes(frame)
        e.virt._enqueue_tx(io, len(frame))
        e.virt.flush()
        e.path.process_tx()
        sent = e.sock.sent[0]
        assert sent == udp_frame("10.0.0.1", b"offloaded", PEER_MAC)
        assert e.stats.tx_checksums_filled == 1
