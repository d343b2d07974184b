"""The ring data path (RX TPACKET_V3, TX TPACKET_V2) against the simulated VMM's queues.

The packet rings are plain bytearrays laid out as the kernel lays them out, so block and
frame parsing, validation, drops, the device-memory discipline of every copy (aligned,
padded, inside one 2048-byte buffer) and buffer conservation are checked without a
socket. The real rings and the fanout switch run in the netns tests (the default modes).
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netvm_driver import strided
from netvm_driver.datapath import DataPath, read_data_passing
from netvm_driver.devmem import DeviceMemory, DeviceMemoryError, even_run
from netvm_driver.log import RateLimitedLog
from netvm_driver.ring import (
    TP_STATUS_AVAILABLE,
    TP_STATUS_BLK_TMO,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_USER,
    TX_BLOCK_COUNT,
    TX_BLOCK_SIZE,
    TX_DATA,
    VNET_HDR,
    VNET_HDR_LEN,
    RxRing,
    TxRing,
)
from netvm_driver.stats import Stats

from netvm.board import Board
from tests.harness import DriverEnv, SimDriver, assert_first_buffer_reused

BLOCK = 8192
BLOCKS = 4
MAC_OFF = 82  # TPACKET_ALIGN(TPACKET3_HDRLEN + 16) - ETH_HLEN, as the kernel places it
TX_FRAME = 2112
# The driver's own TX geometry (every slot one stride apart: the batched path), and one
# whose blocks end in slack (per-slot only): every TX test runs on both.
TX_GEOMETRIES = {"one-stride": (TX_BLOCK_SIZE, TX_BLOCK_COUNT), "block-slack": (1 << 16, 2)}


def align16(n: int) -> int:
    return (n + 15) & ~15


class FakeSock:
    """Stands in for a ring socket: a file descriptor and, for TX, the kernel's send()."""

    def __init__(self, tx: TxRing | None = None) -> None:
        self.tx = tx
        self.sent: list[bytes] = []
        self.errors: list[int] = []

    def fileno(self) -> int:
        return 1000 + id(self) % 1000

    def close(self) -> None:
        pass

    def getsockopt(self, level: int, name: int, size: int) -> bytes:
        """PACKET_STATISTICS of a ring that dropped nothing: (packets, drops)."""
        return bytes(size)

    def send(self, data: bytes, flags: int = 0) -> int:
        """Like tpacket_snd: send every requested slot in ring order."""
        if self.errors:
            raise OSError(self.errors.pop(0), os.strerror(errno.ENETDOWN))
        tx = self.tx
        assert tx is not None and data == b""
        total = 0
        i = tx.slots.index(tx.pending[0]) if tx.pending else 0
        while tx.status[tx.slots[i] >> 2] == TP_STATUS_SEND_REQUEST:
            slot = tx.slots[i]
            size, mac = tx.status[(slot >> 2) + 1], tx.half[(slot >> 1) + 6]
            # tp_mac and tp_len as the kernel checks them (PACKET_TX_HAS_OFF), then the
            # virtio_net_hdr at tp_mac: no offload, and the whole frame in the skb.
            assert mac >= 32 and mac + size <= TX_FRAME
            assert mac == TX_DATA - VNET_HDR_LEN  # the driver's: every frame at TX_DATA
            flags, gso, hdr_len, gso_size, csum_start, csum_off = VNET_HDR.unpack_from(
                tx.view, slot + mac
            )
            frame = bytes(tx.view[slot + mac + VNET_HDR_LEN : slot + mac + size])
            assert (flags, gso, gso_size, csum_start, csum_off) == (0, 0, 0, 0, 0)
            assert hdr_len == len(frame)
            self.sent.append(frame)
            tx.status[slot >> 2] = TP_STATUS_AVAILABLE
            total += size
            i = (i + 1) % len(tx.slots)
        return total


def write_block(
    ring: bytearray,
    block: int,
    frames: list[bytes | tuple[bytes, int]],
    *,
    timeout: bool = False,
    stamps_ns: list[int] | None = None,
) -> None:
    """Lay out one TPACKET_V3 block as the kernel does; (data, tp_len) marks a snapped frame.

    Each frame's tp_sec/tp_nsec is its entry in `stamps_ns`, or now."""
    stamps = stamps_ns or [time.time_ns()] * len(frames)
    boff = block * BLOCK
    pos = 48  # first frame after the block descriptor, 16-aligned
    struct.pack_into("<II", ring, boff + 12, len(frames), pos)
    for f, stamp in zip(frames, stamps, strict=True):
        data, length = (f, len(f)) if isinstance(f, bytes) else f
        nxt = align16(MAC_OFF + len(data))
        sec, nsec = divmod(stamp, 1_000_000_000)
        struct.pack_into(
            "<IIIIIIH", ring, boff + pos, nxt, sec, nsec, len(data), length, 1, MAC_OFF
        )
        ring[boff + pos + MAC_OFF : boff + pos + MAC_OFF + len(data)] = data
        pos += nxt
    assert pos <= BLOCK
    struct.pack_into("<I", ring, boff + 8, TP_STATUS_USER | (TP_STATUS_BLK_TMO if timeout else 0))


def block_status(ring: bytearray, block: int) -> int:
    return int(struct.unpack_from("<I", ring, block * BLOCK + 8)[0])


@dataclass
class Env(DriverEnv):
    """The data path with packet rings in bytearrays (and a fake TX socket)."""

    rx_ring: bytearray
    tx_ring: bytearray
    tx: TxRing
    tx_sock: FakeSock


@pytest.fixture(params=sorted(TX_GEOMETRIES))
def env(odroidc4: Board, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    drv = SimDriver.open(odroidc4, tmp_path)
    rx_buf = bytearray(BLOCK * BLOCKS)
    tx_block, tx_blocks = TX_GEOMETRIES[request.param]
    tx_buf = bytearray(tx_block * tx_blocks)
    rx = RxRing(FakeSock(), rx_buf, BLOCK, BLOCKS, 1)  # type: ignore[arg-type]
    tx_sock = FakeSock()
    tx = TxRing(tx_sock, tx_buf, TX_FRAME, tx_block, tx_blocks)  # type: ignore[arg-type]
    tx_sock.tx = tx
    stats = Stats()
    path = DataPath(
        drv.config,
        drv.devices,
        read_data_passing(drv.devices),
        None,
        stats,
        ratelog=RateLimitedLog(sink=lambda _m: None),
        rx_ring=rx,
        tx_ring=tx,
    )
    yield Env(drv.sim, drv.virt, drv.devices, stats, path, rx_buf, tx_buf, tx, tx_sock)
    drv.close()


def frame(i: int, size: int) -> bytes:
    return bytes((i * 31 + k) & 0xFF for k in range(size))


def test_ring_frames_land_in_rx_free_buffers_in_order_and_blocks_go_back(env: Env) -> None:
    sizes = [60, 61, 1514, 2048, 100]
    write_block(env.rx_ring, 0, [frame(i, n) for i, n in enumerate(sizes[:3])])
    write_block(env.rx_ring, 1, [frame(i + 3, n) for i, n in enumerate(sizes[3:])])
    env.path.process_rx()
    base = env.virt.layout.rx_io_base
    assert [env.virt.rx_active.read(k) for k in range(5)] == [
        (base + 2048 * i, n) for i, n in enumerate(sizes)
    ]
    rx = env.sim.regions["rx_data"]
    for i, n in enumerate(sizes):
        assert rx[2048 * i : 2048 * i + n] == frame(i, n)
    assert (env.stats.rx_frames, env.stats.rx_bytes) == (5, sum(sizes))
    assert block_status(env.rx_ring, 0) == block_status(env.rx_ring, 1) == 0  # kernel's again
    assert env.conserved()["ok"]


def test_each_ring_batch_counts_its_frames_at_the_oldest_frame_s_latency(env: Env) -> None:
    # Two batches: the first holds frames received 3 ms and 1 ms ago, the second one
    # received 40 ms ago. A latency is at least that old whatever the machine's load, so
    # only lower bounds are asserted (plus a sanity ceiling).
    now = time.time_ns()
    stamps = [now - 3_000_000, now - 1_000_000]
    write_block(env.rx_ring, 0, [frame(0, 60), frame(1, 60)], stamps_ns=stamps)
    env.path.process_rx()
    hist = env.stats.rx_latency
    assert hist.samples == 2 == env.stats.rx_frames == sum(hist.counts)
    # Both frames counted at the older one's 3 ms, so nothing at or below 2 ms.
    assert sum(hist.counts[: hist.bounds_us.index(2000) + 1]) == 0
    write_block(env.rx_ring, 1, [frame(2, 60)], stamps_ns=[now - 40_000_000])
    env.path.process_rx()
    assert hist.samples == 3 == sum(hist.counts)
    assert sum(hist.counts[hist.bounds_us.index(50000) :]) == 1  # the 40 ms one
    assert 40_000_000 <= hist.max_ns < 10**10
    assert (hist.percentile_us(50) or 0) >= 5000 and (hist.percentile_us(99) or 0) >= 50000


def test_every_ring_copy_is_an_aligned_padded_window_inside_one_buffer(env: Env) -> None:
    rx = env.sim.regions["rx_data"]
    rx[:] = b"\xee" * len(rx)
    sizes = [1, 15, 16, 17, 60, 1513, 2047]
    write_block(env.rx_ring, 0, [frame(i, n) for i, n in enumerate(sizes[:4])])
    write_block(env.rx_ring, 1, [frame(i, n) for i, n in enumerate(sizes[4:])])
    env.path.process_rx()
    assert len(env.rx_data.ins) == len(sizes)
    for k, (dst, _, n) in enumerate(env.rx_data.ins):
        end = dst + align16(n)
        assert dst % 16 == 0 and end % 16 == 0 and dst // 2048 == (end - 1) // 2048
        # Nothing past the padded window was written.
        assert rx[end : (dst | 2047) + 1] == b"\xee" * ((dst | 2047) + 1 - end)
        assert rx[dst : dst + n] == frame(k if k < 4 else k - 4, n)


def test_oversize_and_truncated_ring_frames_are_dropped_counted_and_buffers_reused(
    env: Env,
) -> None:
    write_block(
        env.rx_ring,
        0,
        [b"\x11" * 3000, (b"\x22" * 1000, 1600), b"\x33" * 100],  # 3000 > 2048; snapped
    )
    env.path.process_rx()
    assert_first_buffer_reused(env, dropped=2, kept=100)


def test_bad_rx_free_descriptors_are_skipped_without_losing_ring_frames(env: Env) -> None:
    for kind in ("outside", "below", "misaligned"):
        env.virt.inject_rx_free(kind)
    ring = env.path.rx_ring
    assert ring is not None
    frames = 0
    for r in range(14):  # walk the whole of rx_free so the driver meets every injected entry
        write_block(env.rx_ring, ring.block, [frame(r, 64)] * 50)
        frames += 50
        env.path.process_rx()
        env.virt.on_rx_doorbell()
    assert env.stats.rx_bad_descriptor == 3
    assert env.stats.rx_frames == frames  # a bad buffer never eats a frame
    assert env.virt.counters["rx_frames"] == frames
    assert env.conserved()["ok"]


def test_out_of_buffers_mid_block_resumes_at_the_next_frame(env: Env) -> None:
    frames = [frame(i, 64) for i in range(40)]
    write_block(env.rx_ring, 0, frames)
    # Leave only 30 buffers on rx_free: take the rest away as virt_rx would not refill.
    free = env.virt.rx_free
    free.publish_tail((free.head + 30) & 0xFFFF)
    env.path.process_rx()
    assert env.stats.rx_frames == 30 and env.path.rx_starved
    assert block_status(env.rx_ring, 0) == TP_STATUS_USER  # still held: 10 frames unread
    free.publish_tail(env.virt.rx_free_tail)
    env.path.process_rx()
    assert env.stats.rx_frames == 40
    rx = env.sim.regions["rx_data"]
    off = (env.virt.rx_active.read(30)[0]) - env.virt.layout.rx_io_base
    assert rx[off : off + 64] == frames[30]
    assert block_status(env.rx_ring, 0) == 0


def test_a_frame_ending_at_the_ring_end_is_padded_with_zeros(env: Env) -> None:
    # One frame whose data ends exactly at the end of the ring map: its padded window
    # would read past the map, so the padding is zeros instead.
    last = BLOCKS - 1
    env.path.rx_ring.block = last  # type: ignore[union-attr]
    boff = last * BLOCK
    size, pos = 61, BLOCK - 160
    mac = 160 - size
    struct.pack_into("<II", env.rx_ring, boff + 12, 1, pos)
    struct.pack_into("<IIIIIIH", env.rx_ring, boff + pos, 0, 0, 0, size, size, 1, mac)
    env.rx_ring[boff + pos + mac : boff + BLOCK] = frame(9, size)
    struct.pack_into("<I", env.rx_ring, boff + 8, TP_STATUS_USER)
    env.path.process_rx()
    assert env.stats.rx_frames == 1
    rx = env.sim.regions["rx_data"]
    assert rx[0:size] == frame(9, size) and rx[size:64] == bytes(64 - size)


@settings(max_examples=200)
@given(
    sizes=st.lists(st.sampled_from([60, 60, 61, 64, 1514, 3000]), min_size=1, max_size=5),
    snapped=st.integers(min_value=-1, max_value=4),
    close=st.booleans(),
    repeat=st.integers(min_value=1, max_value=12),
)
def test_a_uniform_run_is_read_exactly_as_the_per_frame_walk_reads_it(
    sizes: list[int], snapped: int, close: bool, repeat: int
) -> None:
    # Bursts: each drawn size repeated, so runs of one size are common and mixed ones too.
    lengths = [n for n in sizes for _ in range(repeat)]
    while 48 + sum(align16(MAC_OFF + n) for n in lengths) > BLOCK:  # what one block holds
        lengths.pop()
    frames: list[bytes | tuple[bytes, int]] = [frame(i, n) for i, n in enumerate(lengths)]
    if 0 <= snapped < len(frames):  # one frame cut short: its tp_len is beyond its data
        frames[snapped] = (frame(snapped, lengths[snapped]), lengths[snapped] + 100)
    ring = bytearray(BLOCK)
    write_block(ring, 0, frames)
    if close:  # the kernel zeroes the last frame's tp_next_offset when it closes a block
        last = 48 + sum(align16(MAC_OFF + n) for n in lengths[:-1])
        struct.pack_into("<I", ring, last, 0)
    rx = RxRing(FakeSock(), ring, BLOCK, 1, 1)  # type: ignore[arg-type]
    # The per-frame walk: each frame kept (where its data starts, its length) or refused.
    walk: list[tuple[int, int] | None] = []
    pos = 48
    for _ in lengths:
        nxt, snap, size, mac = struct.unpack_from("<I8xII4xH", ring, pos)
        walk.append((pos + mac, size) if size <= 2048 and snap >= size else None)
        pos += nxt
    got = rx.uniform_run(48, len(lengths))
    # One run: the same spacing up to the last frame (frames of different lengths may
    # share it; the last one's own does not matter), all kept.
    spacing = {align16(MAC_OFF + n) for n in lengths[:-1]}
    alike = len(spacing) == 1 and None not in walk and len(lengths) >= 2
    if got is None:
        assert not alike
    else:
        assert alike
        assert list(zip(got[0], got[1], strict=True)) == walk and got[2] == pos


def test_bursts_of_one_size_skip_the_header_loop_and_land_like_any_frames(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = env.path.rx_ring
    assert ring is not None
    runs: list[bool] = []
    real = RxRing.uniform_run

    def spy(self: RxRing, pos: int, count: int) -> tuple[list[int], list[int], int] | None:
        got = real(self, pos, count)
        runs.append(got is not None)
        return got

    monkeypatch.setattr(RxRing, "uniform_run", spy)
    burst = [frame(i, 64) for i in range(40)]
    mixed = [frame(40 + i, 64 if i != 20 else 200) for i in range(30)]
    write_block(env.rx_ring, 0, burst)
    write_block(env.rx_ring, 1, mixed)
    env.path.process_rx()
    assert runs == [True, False]  # the burst read as one run; the mixed block frame by frame
    base = env.virt.layout.rx_io_base
    rx = env.sim.regions["rx_data"]
    got = [env.virt.rx_active.read(k) for k in range(70)]
    assert [n for _, n in got] == [64] * 40 + [64] * 20 + [200] + [64] * 9
    for k, ((io, n), want) in enumerate(zip(got, burst + mixed, strict=True)):
        off = io - base
        assert rx[off : off + n] == want, k
    assert env.stats.rx_frames == 70 and env.conserved()["ok"]


class FakeSwitch:
    """RxSwitch without sockets: records which member it was told to select."""

    SOCKET, RING = 0, 1

    def __init__(self) -> None:
        self.selected = self.SOCKET
        self.history: list[int] = []

    def select(self, member: int) -> None:
        self.selected = member
        self.history.append(member)


class QueueSocket(FakeSock):
    """A plain packet socket with frames queued for recv_into."""

    def __init__(self) -> None:
        super().__init__()
        self.rx: list[bytes] = []

    def recv_into(self, buf: memoryview, nbytes: int, flags: int) -> int:
        if not self.rx:
            raise BlockingIOError
        data = self.rx.pop(0)
        buf[: len(data)] = data
        return len(data)

    def recvmsg_into(
        self, buffers: list[memoryview], ancbufsize: int, flags: int
    ) -> tuple[int, list[tuple[int, int, bytes]], int, object]:
        """No receive timestamp, as from a socket without SO_TIMESTAMPNS."""
        return self.recv_into(buffers[0], 0, flags), [], 0, None

    def queued(self) -> int:
        """As SIOCINQ on a packet socket: the next frame's length, 0 if none."""
        return len(self.rx[0]) if self.rx else 0


def test_auto_mode_switches_to_the_ring_on_a_burst_and_back_when_blocks_come_sparse(
    env: Env,
) -> None:
    sock, switch = QueueSocket(), FakeSwitch()
    path = env.path
    path.sock, path.rx_switch = sock, switch  # type: ignore[assignment]
    path.rx_queued = sock.queued
    path.rx_socks = [sock, path.rx_ring.sock]  # type: ignore[list-item, union-attr]
    sock.rx = [frame(i, 60) for i in range(5)]
    path.process_rx()
    assert switch.history == [] and env.stats.rx_frames == 5  # a trickle: stay on the socket
    env.virt.on_rx_doorbell()
    sock.rx = [frame(i, 60) for i in range(150)]  # a burst
    path.process_rx()
    assert switch.history == [switch.RING] and env.stats.rx_frames == 155
    env.virt.on_rx_doorbell()
    ring = path.rx_ring
    assert ring is not None
    for k in range(3):  # three nearly empty blocks handed over by the timeout
        write_block(env.rx_ring, ring.block, [frame(k, 60)], timeout=True)
        path.process_rx()
        env.virt.on_rx_doorbell()
    assert switch.history == [switch.RING, switch.SOCKET] and env.stats.rx_frames == 158
    assert env.conserved()["ok"]


# ---------------------------------------------------------------------- TX


def echo_to_tx_active(env: Env, sizes: list[int]) -> list[tuple[int, int]]:
    """Queue frames on tx_active from client 0's buffers, as a client would."""
    return queue_tx_frames(env, [frame(i, n) for i, n in enumerate(sizes)])


def queue_tx_frames(env: Env, frames: list[bytes], skew: int = 0) -> list[tuple[int, int]]:
    """Queue these frames on tx_active, each `skew` bytes into a buffer of client 0."""
    virt = env.virt
    client = virt.clients[0]
    out = []
    for data in frames:
        io = client.pool.popleft() + skew
        off = client.layout.tx_map_offset + io - client.layout.tx_io_base
        virt.tx_data[off : off + len(data)] = data
        assert virt._enqueue_tx(io, len(data))
        out.append((io, len(data)))
    virt.flush()
    return out


def tagged(i: int, size: int, ethertype: int) -> bytes:
    data = bytearray(frame(i, size))
    data[12:14] = ethertype.to_bytes(2, "big")
    return bytes(data)


def test_a_frame_off_a_16_byte_boundary_leaves_its_slot_like_any_other(env: Env) -> None:
    # It moves down to the data area's start; the slot then serves a whole ring's round
    # of frames later, and the fake kernel's send() checks tp_mac and every header
    # field of each.
    queue_tx_frames(env, [frame(7, 100)], skew=4)
    env.path.process_tx()
    assert env.tx_sock.sent == [frame(7, 100)]
    env.virt.on_tx_doorbell()
    sizes = [60 + i % 7 for i in range(len(env.tx.slots))]
    echo_to_tx_active(env, sizes)
    env.path.process_tx()
    assert env.tx_sock.sent[1:] == [frame(i, n) for i, n in enumerate(sizes)]
    assert env.tx.next == 1


def test_tx_frames_longer_than_the_link_s_mtu_are_dropped_counted_and_returned(
    env: Env,
) -> None:
    # The kernel does not check a ring frame with a virtio_net_hdr against the MTU, so
    # the driver does, by the kernel's rule for a packet socket: MTU + 14 bytes, or + 18
    # with an 802.1Q tag.
    mtu = [1500]
    env.tx.read_mtu = lambda: mtu[0]
    env.tx.refresh_mtu()
    frames = [
        frame(0, 60),
        frame(1, 1514),
        frame(2, 1515),
        tagged(3, 1518, 0x8100),
        tagged(4, 1518, 0x88A8),  # a service tag: the kernel allows only 802.1Q
        tagged(5, 1519, 0x8100),
    ]
    queued = queue_tx_frames(env, frames)
    env.path.process_tx()
    assert env.tx_sock.sent == [frames[0], frames[1], frames[3]]
    assert env.stats.tx_dropped == 3 and env.stats.tx_frames == 3
    assert env.stats.tx_bytes == 60 + 1514 + 1518
    assert [env.virt.tx_free.read(k) for k in range(len(frames))] == queued
    assert env.conserved()["ok"]
    mtu[0] = 1600  # raised while the driver runs: the next long frame reads it again
    longer = frame(6, 1614)
    queue_tx_frames(env, [longer])
    env.path.process_tx()
    assert env.tx_sock.sent[-1] == longer and env.stats.tx_dropped == 3
    assert env.tx.max_len == 1614


def test_tx_ring_sends_frames_byte_exact_and_returns_the_same_descriptors(env: Env) -> None:
    sizes = [60, 61, 1514, 2048]
    queued = echo_to_tx_active(env, sizes)
    env.path.process_tx()
    assert env.tx_sock.sent == [frame(i, n) for i, n in enumerate(sizes)]
    assert [env.virt.tx_free.read(k) for k in range(len(sizes))] == queued
    assert (env.stats.tx_frames, env.stats.tx_bytes) == (4, sum(sizes))
    assert env.path.tx_ring.pending == []  # type: ignore[union-attr]
    assert env.stats.tx_latency.samples == 4 == sum(env.stats.tx_latency.counts)
    assert env.conserved()["ok"]


@pytest.fixture
def batched(env: Env, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each TX batch took the batched path (DataPath._tx_ring_fast's answers)."""
    taken: list[bool] = []
    real = env.path._tx_ring_fast
    monkeypatch.setattr(env.path, "_tx_ring_fast", lambda *a: taken.append(real(*a)) or taken[-1])
    return taken


def test_usual_tx_batches_take_the_batched_path_and_wrap_round_the_ring(
    env: Env, batched: list[bool]
) -> None:
    env.tx.next = len(env.tx.slots) - 2  # the batch wraps round the ring's end
    sizes = [60, 1514, 61, 2048, 17]
    queued = echo_to_tx_active(env, sizes)
    env.path.process_tx()
    assert batched == [env.tx.stride > 0]  # the per-slot loop only for a ring with slack
    assert env.tx_sock.sent == [frame(i, n) for i, n in enumerate(sizes)]
    assert [env.virt.tx_free.read(k) for k in range(len(sizes))] == queued
    assert env.tx.next == 3 and env.path.tx_ring.pending == []  # type: ignore[union-attr]
    assert (env.stats.tx_frames, env.stats.tx_bytes) == (5, sum(sizes))
    assert env.conserved()["ok"]


def test_a_tx_batch_with_one_unusual_descriptor_is_placed_frame_by_frame(
    env: Env, batched: list[bool]
) -> None:
    echo_to_tx_active(env, [60])
    env.virt.inject_tx_active("oversize")
    echo_to_tx_active(env, [70])
    env.path.process_tx()
    assert batched == [False]
    assert env.stats.tx_bad_descriptor == 1 and len(env.tx_sock.sent) == 2
    assert env.conserved()["ok"]


def test_every_tx_copy_reads_an_aligned_padded_window_inside_one_buffer(env: Env) -> None:
    queue_tx_frames(env, [frame(7, 100)], skew=4)  # not on a 16-byte boundary
    echo_to_tx_active(env, [17, 2048])
    env.path.process_tx()
    assert env.tx_sock.sent == [frame(7, 100), frame(0, 17), frame(1, 2048)]
    for src, dst, n in env.tx_data.outs:
        start, end = src & ~15, align16(src + n)
        assert start // 2048 == (end - 1) // 2048  # never leaves its buffer
        assert (dst - TX_DATA) % TX_FRAME == 0 or dst % 16 == 0


def test_tx_length_that_leaves_the_buffer_is_not_copied(env: Env) -> None:
    env.virt.inject_tx_active("oversize")
    env.path.process_tx()
    assert env.stats.tx_bad_descriptor == 1 and env.tx_sock.sent == []
    assert env.tx_data.outs == []
    assert env.conserved()["ok"]


def test_link_down_drops_pending_slots_and_rewinds_in_step_with_the_kernel(env: Env) -> None:
    env.tx_sock.errors.append(errno.ENETDOWN)
    echo_to_tx_active(env, [60, 70, 80])
    env.path.process_tx()
    assert env.stats.tx_dropped == 3 and env.stats.tx_frames == 0
    assert env.path.tx_ring.next == 0 and env.path.tx_ring.pending == []  # type: ignore[union-attr]
    assert all(env.tx.status[s >> 2] == TP_STATUS_AVAILABLE for s in env.tx.slots[:3])
    assert env.conserved()["ok"]  # the buffers still came back
    echo_to_tx_active(env, [90])
    env.path.process_tx()
    assert env.tx_sock.sent == [frame(0, 90)] and env.stats.tx_frames == 1
    assert env.stats.tx_latency.samples == 1  # dropped frames were never sent: no sample


def test_full_tx_ring_waits_for_the_device_and_leaves_frames_queued(env: Env) -> None:
    for slot in env.tx.slots:
        env.tx.status[slot >> 2] = 2  # TP_STATUS_SENDING: the device has not completed
    echo_to_tx_active(env, [60])
    env.path.process_tx()
    assert env.path.tx_blocked and env.tx_sock.sent == []
    assert env.path.interest()[env.tx.sock.fileno()] & 0x004  # EPOLLOUT
    assert env.virt.tx_active.head == 0  # still queued
    for slot in env.tx.slots:
        env.tx.status[slot >> 2] = TP_STATUS_AVAILABLE
    env.path.tx_blocked = False
    env.path.process_tx()
    assert env.tx_sock.sent == [frame(0, 60)]


# ---------------------------------------------------------------------- devmem batches


@settings(max_examples=200)
@given(
    src=st.integers(min_value=0, max_value=4 * 2048 - 1),
    n=st.integers(min_value=1, max_value=2048),
)
def test_copy_frames_out_reads_only_aligned_windows_inside_the_buffer(src: int, n: int) -> None:
    buf = bytearray(bytes(range(256)) * 32)
    mem = DeviceMemory("t", buf)
    out = bytearray(4096)
    if align16(src + n) > (src // 2048 + 1) * 2048:
        with pytest.raises(DeviceMemoryError):
            mem.copy_frames_out(memoryview(out), [src, 32, n])
        return
    mem.copy_frames_out(memoryview(out), [src, 32, n])
    skew = src % 16
    assert out[32 + skew : 32 + skew + n] == buf[src : src + n]


@settings(max_examples=200)
@given(
    offsets=st.lists(st.integers(min_value=-2048, max_value=5 * 2048), min_size=1, max_size=4),
    n=st.integers(min_value=1, max_value=2100),
)
def test_copy_buffer_heads_out_reads_whole_aligned_windows_from_buffer_starts(
    offsets: list[int], n: int
) -> None:
    buf = bytearray(bytes(range(256)) * 32)
    mem = DeviceMemory("t", buf)
    out = bytearray(b"\xaa") * (4 * 2112)
    width = align16(n)
    ok = width <= 2048 and all(0 <= o <= len(buf) - width and o % 2048 == 0 for o in offsets)
    if not ok:
        with pytest.raises(DeviceMemoryError):
            mem.copy_buffer_heads_out(memoryview(out), 32, 2112, offsets, n)
        return
    mem.copy_buffer_heads_out(memoryview(out), 32, 2112, offsets, n)
    for i, off in enumerate(offsets):
        at = 32 + i * 2112
        assert out[at : at + width] == buf[off : off + width]
        assert out[at + width : at + 2112 - 32] == b"\xaa" * (2080 - width)


@settings(max_examples=200)
@given(src=st.integers(min_value=-2048, max_value=5 * 2048), n=st.integers(1, 2100))
def test_copy_buffer_head_out_reads_one_whole_aligned_window_from_a_buffer_start(
    src: int, n: int
) -> None:
    buf = bytearray(bytes(range(256)) * 32)
    mem = DeviceMemory("t", buf)
    out = bytearray(b"\xaa") * 2112
    width = align16(n)
    if width > 2048 or not 0 <= src <= len(buf) - width or src % 2048:
        with pytest.raises(DeviceMemoryError):
            mem.copy_buffer_head_out(memoryview(out), 32, src, n)
        assert out == b"\xaa" * 2112
        return
    mem.copy_buffer_head_out(memoryview(out), 32, src, n)
    assert out[32 : 32 + width] == buf[src : src + width]
    assert out[:32] == b"\xaa" * 32 and out[32 + width :] == b"\xaa" * (2080 - width)


POOL = 96  # buffers in the region of the strided-copy tests


@settings(max_examples=150)
@given(
    count=st.integers(min_value=1, max_value=64),
    first=st.integers(min_value=0, max_value=POOL - 1),
    step=st.sampled_from([1, 1, 1, 2, 3]),  # in buffers; clients recycle in order: mostly 1
    n=st.integers(min_value=1, max_value=128),
)
def test_evenly_spaced_buffers_copy_out_exactly_as_one_window_each(
    count: int, first: int, step: int, n: int
) -> None:
    # Buffers taken in order round a pool, as a client recycles them: one run, or two
    # where the batch wraps round the pool. Whichever copy copy_buffer_heads_out picks,
    # each slot gets its buffer's padded window and nothing else changes.
    buf = bytearray(os.urandom(POOL * 2048))
    mem = DeviceMemory("t", buf)
    offsets = [((first + i * step) % POOL) * 2048 for i in range(count)]
    out = bytearray(b"\xaa") * (count * 2112 + 64)
    mem.copy_buffer_heads_out(memoryview(out), 32, 2112, offsets, n)
    width = align16(n)
    expect = bytearray(b"\xaa") * len(out)
    for i, off in enumerate(offsets):
        expect[32 + i * 2112 : 32 + i * 2112 + width] = buf[off : off + width]
    assert out == expect


def test_a_long_run_of_short_frames_goes_as_strided_words_and_a_wrap_splits_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = bytearray(os.urandom(POOL * 2048))
    mem = DeviceMemory("t", buf)
    each: list[int] = []
    real = DeviceMemory._heads_out_each

    def spy(self: DeviceMemory, dst: memoryview, at: int, stride: int, offs: list[int],
            width: int) -> None:  # fmt: skip
        each.append(len(offs))
        real(self, dst, at, stride, offs, width)

    monkeypatch.setattr(DeviceMemory, "_heads_out_each", spy)
    out = memoryview(bytearray(64 * 2112 + 64))
    wrapped = [((70 + i) % POOL) * 2048 for i in range(64)]  # 26 before the wrap, 38 after
    mem.copy_buffer_heads_out(out, 32, 2112, wrapped, 64)
    assert each == []  # both runs long enough to pay
    mem.copy_buffer_heads_out(out, 32, 2112, wrapped[:20], 1500)  # too wide: one each
    mem.copy_buffer_heads_out(out, 32, 2112, wrapped[:4], 64)  # too few to pay
    # Two clients' runs, the second client's buffers below the first's: both strided.
    clients = [2048 * (60 + i) for i in range(30)] + [2048 * (10 + i) for i in range(30)]
    mem.copy_buffer_heads_out(out, 32, 2112, clients, 48)
    # A run too short to pay (13 at step 2) comes first: from there, one copy each.
    shuffled = wrapped[:32:2] + wrapped[1:32:2]
    mem.copy_buffer_heads_out(out, 32, 2112, shuffled, 64)
    assert each == [20, 4, 32]
    for i, off in enumerate(shuffled):
        assert out[32 + i * 2112 : 32 + i * 2112 + 64] == buf[off : off + 64]
    mem.copy_buffer_heads_out(out, 32, 2112, clients, 48)
    for i, off in enumerate(clients):
        assert out[32 + i * 2112 : 32 + i * 2112 + 48] == buf[off : off + 48]


def test_strided_reads_keep_few_structs_and_stay_right_across_many_shapes() -> None:
    buf = bytearray(os.urandom(POOL * 2048))
    mem = DeviceMemory("t", buf)
    out = memoryview(bytearray(POOL * 2112))
    for count in range(17, POOL, 7):  # runs long enough to pay, ending mid-chunk
        for n in range(16, 129, 16):
            offsets = [2048 * i for i in range(count)]
            mem.copy_buffer_heads_out(out, 32, 2112, offsets, n)
            assert all(
                out[32 + i * 2112 : 32 + i * 2112 + n] == buf[off : off + n]
                for i, off in enumerate(offsets)
            )
    assert 0 < len(mem._gathers) <= strided.STRUCT_CACHE  # bounded, whatever the traffic


def test_even_run_finds_the_longest_evenly_increasing_prefix() -> None:
    assert even_run([4, 8, 12, 20, 24], 0) == (3, 4, 4)
    assert even_run([4, 8, 12, 20, 24], 2) == (2, 12, 8)  # any two increasing make a run
    assert even_run([4, 8, 12, 20, 24], 4) == (1, 24, 0)
    assert even_run([9, 3, 6], 0) == (1, 9, 0)
    assert even_run(list(range(0, 400, 4)), 0) == (100, 0, 4)
    assert even_run([*range(0, 40, 4), 41, *range(44, 100, 4)], 0) == (10, 0, 4)


def test_a_strided_run_with_a_bad_start_is_refused_by_the_per_frame_check() -> None:
    buf = bytearray(POOL * 2048)
    mem = DeviceMemory("t", buf)
    out = memoryview(bytearray(64 * 2112 + 64))
    for offsets in (
        [16 + 2048 * i for i in range(64)],  # evenly spaced, but not buffer starts
        [2048 * (POOL - 32 + i) for i in range(64)],  # runs off the region's end
        [-2048 * 8 + 2048 * i for i in range(64)],  # starts before the region
    ):
        with pytest.raises(DeviceMemoryError):
            mem.copy_buffer_heads_out(out, 32, 2112, offsets, 64)


# Where a copy into a 4-buffer region may be asked to go (good, misaligned or outside),
# and where its frame may start in a 4 KiB source.
BUFFER_OFFSETS = st.integers(min_value=-2048, max_value=5 * 2048)
SOURCE_STARTS = st.integers(min_value=0, max_value=4096)


@settings(max_examples=200)
@given(
    moves=st.lists(
        st.tuples(BUFFER_OFFSETS, SOURCE_STARTS, st.integers(min_value=0, max_value=2100)),
        min_size=1,
        max_size=4,
        unique_by=lambda m: m[0],
    ),
    through_object=st.booleans(),
)
def test_copy_into_buffers_writes_padded_windows_at_buffer_starts_only(
    moves: list[tuple[int, int, int]], through_object: bool
) -> None:
    buf = bytearray(b"\xaa") * (4 * 2048)
    mem = DeviceMemory("t", buf)
    ring = bytearray(bytes(range(256)) * 16)
    src = memoryview(ring)
    small = ring if through_object else None  # short windows read by slicing the object
    offsets, starts, lengths = (list(c) for c in zip(*moves, strict=True))
    ok = all(0 <= o <= len(buf) - 2048 and o % 2048 == 0 for o in offsets) and all(
        n <= 2048 for n in lengths
    )
    if not ok:
        with pytest.raises(DeviceMemoryError):
            mem.copy_into_buffers(src, offsets, starts, lengths, small)
        if len(moves) == 1:  # a refused copy wrote nothing
            assert buf == bytearray(b"\xaa") * (4 * 2048)
        return
    mem.copy_into_buffers(src, offsets, starts, lengths, small)
    for o, s, n in moves:
        width = align16(n)
        window = bytes(src[s : s + width]).ljust(width, b"\0")
        assert buf[o : o + width] == window
        assert buf[o + width : o + 2048] == b"\xaa" * (2048 - width)


@settings(max_examples=200)
@given(
    moves=st.lists(
        st.tuples(BUFFER_OFFSETS, SOURCE_STARTS),
        min_size=2,
        max_size=5,
        unique_by=lambda m: m[0],
    ),
    n=st.integers(min_value=0, max_value=2100),  # every frame's length: a uniform burst
)
def test_a_burst_of_one_length_copies_and_refuses_as_frame_by_frame(
    moves: list[tuple[int, int]], n: int
) -> None:
    """copy_into_buffers tests a burst of one length as a batch (RxRing.uniform_run's
    frames): the same windows land, zero-padded past the source's end, and a bad offset
    or length is refused as the frame-by-frame loop refuses it."""
    buf = bytearray(b"\xaa") * (4 * 2048)
    mem = DeviceMemory("t", buf)
    ring = bytearray(bytes(range(256)) * 16)
    offsets, starts = (list(c) for c in zip(*moves, strict=True))
    width = align16(n)
    good = [0 <= o <= len(buf) - 2048 and o % 2048 == 0 and n <= 2048 for o in offsets]
    if not all(good):
        with pytest.raises(DeviceMemoryError):
            mem.copy_into_buffers(memoryview(ring), offsets, starts, [n] * len(moves), ring)
        if not good[0]:
            assert buf == bytearray(b"\xaa") * (4 * 2048)  # refused before any copy
        return
    mem.copy_into_buffers(memoryview(ring), offsets, starts, [n] * len(moves), ring)
    for o, s in moves:
        window = bytes(ring[s : s + width]).ljust(width, b"\0")  # zeros past the source
        assert buf[o : o + width] == window
        assert buf[o + width : o + 2048] == b"\xaa" * (2048 - width)


def test_batched_descriptor_access_is_word_aligned_and_checked() -> None:
    buf = bytearray(8 + 16 * 4)
    mem = DeviceMemory("q", buf)
    mem.store_descs(8, [1, 2, 3, 4])
    assert mem.load_descs(8, 2) == (1, 2, 3, 4)
    assert buf[8:40] == b"".join(x.to_bytes(8, "little") for x in (1, 2, 3, 4))
    for bad in ((16, 1), (8, 5)):
        with pytest.raises(DeviceMemoryError):
            mem.load_descs(*bad)
    with pytest.raises(DeviceMemoryError):
        mem.store_descs(8, [1, 2, 3])
