"""RX and TX between the packet socket and the sDDF queues (docs/contract.md).

Owns: the per-batch data path, descriptor validation, the signal handshake and the
doorbell decisions. Must not touch shared memory except through devmem/queue, and must
not block: the socket is non-blocking and the event loop (loop.py) decides when to run.

RX: take a buffer from rx_free, copy the next frame into it (from the packet ring, or
from ordinary memory the socket received it into), hand the SAME descriptor with its len
to rx_active. TX: take a descriptor from tx_active, find the client region holding its io
address, copy the bytes out to the packet ring (or to ordinary memory the socket sends
from), return the SAME descriptor to tx_free. The kernel never copies to or from a map
itself: every copy is devmem's, 16-byte aligned at both ends in the map.

Shared memory is untrusted. Every descriptor is validated before use; a bad one is
counted, logged (rate-limited) and dropped, and the driver carries on:
- an rx_free entry outside rx_data or off a buffer boundary is consumed and never used;
- a tx_active entry outside every client region is consumed and not handed back (it is
  not a buffer virt_tx could take back); one inside a client region but with len 0 or a
  len that leaves its 2048-byte buffer is not sent but IS returned, so the client gets its
  buffer back and conservation holds;
- a peer index more than capacity away from ours makes the ring count as empty/full.
A frame larger than a buffer is dropped and counted (``MSG_TRUNC`` reports its real size),
never truncated. Per batch: one head publish, one tail publish, at most one doorbell.
"""

from __future__ import annotations

import _socket as socket  # not socket.py: see docs/driver.md, "Start-up"
import errno
import select
import struct
import time
from _operator import and_, or_  # not operator.py, as _socket
from array import array
from itertools import repeat

from .abi import (
    DATA_PASSING_SIZE,
    DESC_LEN_MASK,
    NET_BUFFER_SIZE,
    SDDF_NET_MAGIC,
    DataPassing,
)
from .checksum import fill_checksums
from .config import DriverConfig
from .device import Devices
from .log import RateLimitedLog
from .queue import Consumer, Producer, Ring, ring_length, with_len
from .ring import (
    BLOCK_PKTS,
    BLOCK_PKTS_AT,
    BLOCK_STATUS,
    HDR_LEN_AT,
    RX_HDR,
    RX_STAMP,
    RX_STAMP_AT,
    SO_TIMESTAMPNS,
    STAMP_CMSG_SPACE,
    TIMESPEC,
    TP_STATUS_AVAILABLE,
    TP_STATUS_BLK_TMO,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_USER,
    TX_BUSY,
    TX_DATA,
    TX_HEADER,
    TX_VNET,
    VNET_HDR,
    VNET_HDR_LEN,
    RxRing,
    RxSwitch,
    TxRing,
    queued_probe,
)
from .stats import Stats

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .device import Doorbell

# RX "auto" (ring.RxSwitch): to the ring at >= 100 frames in 10 ms on the socket (10k/s);
# back to the socket after 3 blocks in a row handed over by the timeout with < 8 frames.
SWITCH_WINDOW_S = 0.01
SWITCH_UP_FRAMES = 100
SPARSE_FRAMES = 8
# From this many frames in a block run on, RX first tries them as one burst of one size
# (RxRing.uniform_run: ~800 instructions a frame against ~1,950 for the header loop; a
# refused try costs about one 16-frame read).
UNIFORM_MIN = 4
SPARSE_BLOCKS = 3
DEFAULT_BATCH = 256  # descriptors per batch; queues hold 512 on the boards so far
BUFFER_MASK = NET_BUFFER_SIZE - 1
SOL_PACKET = 263
PACKET_STATISTICS = 6
TPACKET_STATS = struct.Struct("II")
SOL_SOCKET = socket.SOL_SOCKET
IO_LIMIT = 1 << 64  # io addresses are u64: a region must end at or below 2^64


class DataPassingError(RuntimeError):
    pass


def buffer_table(io: int, size: int, offset: int) -> dict[int, int]:
    """io address -> map offset of each whole 2048-byte buffer of a region at `io` that
    starts at `offset` in its map; none if that offset is off a buffer boundary (devmem
    copies whole buffers from their starts only)."""
    if offset & BUFFER_MASK:
        return {}
    return {io + k: offset + k for k in range(0, size - NET_BUFFER_SIZE + 1, NET_BUFFER_SIZE)}


def read_data_passing(devices: Devices) -> DataPassing:
    raw = devices.regions["data_passing"].load_words(0, DATA_PASSING_SIZE)
    return DataPassing.unpack(raw)


def check_data_passing(dp: DataPassing, config: DriverConfig) -> list[str]:
    """Everything wrong with the VMM's data-passing page for this configuration.

    Besides the magic and the counts, the io address ranges: rx_data_paddr spans
    uio.rx_data.size bytes and tx_data_paddrs[i] spans tx_clients[i].size bytes (the
    ranges the data path classifies descriptors by). No range may run past 2^64, and no
    two may overlap: an address in two of them would be one buffer with two owners.
    Ranges are written start..end, the end excluded.
    """
    problems = []
    if dp.magic != SDDF_NET_MAGIC:
        problems.append(f"magic is {dp.magic.hex(' ')}, expected {SDDF_NET_MAGIC.hex(' ')}")
    for conn, ring in ((dp.virt_rx, "rx_free"), (dp.virt_tx, "tx_free")):
        if conn.num_buffers != config.capacity(ring):
            problems.append(
                f"{'virt_rx' if ring == 'rx_free' else 'virt_tx'}.num_buffers is "
                f"{conn.num_buffers}, but the {ring} queue holds {config.capacity(ring)}"
            )
    rx_size = config.uio["rx_data"].size
    rx0 = dp.rx_data_paddr
    rx1 = rx0 + rx_size
    if rx1 > IO_LIMIT:
        problems.append(
            f"rx_data_paddr is {rx0:#x}, but rx_data ({rx_size:#x} bytes) would end at "
            f"{rx1:#x}, past 2^64"
        )
    n = dp.num_tx_clients
    if n != len(config.tx_clients):
        problems.append(
            f"num_tx_clients is {n}, but {config.path} describes {len(config.tx_clients)}"
        )
        return problems
    spans = []  # (start, end, i)
    for i, c in enumerate(config.tx_clients):
        a0 = dp.tx_data_paddrs[i]
        a1 = a0 + c.size
        if a1 > IO_LIMIT:
            problems.append(
                f"tx_data_paddrs[{i}] is {a0:#x}, but tx_clients[{i}] ({c.size:#x} bytes) "
                f"would end at {a1:#x}, past 2^64"
            )
        if a0 < rx1 and rx0 < a1:
            problems.append(
                f"rx_data_paddr is {rx0:#x}, but rx_data {rx0:#x}..{rx1:#x} overlaps "
                f"tx_data_paddrs[{i}] {a0:#x}..{a1:#x}"
            )
        spans.append((a0, a1, i))
    # Sorted by start, a region overlaps an earlier one iff it starts before the furthest
    # end so far: one line per such region, naming the region that reaches furthest.
    spans.sort()
    reach: tuple[int, int, int] | None = None
    for b0, b1, j in spans:
        if reach is not None and b0 < reach[1]:
            a0, a1, i = reach
            problems.append(
                f"tx_data_paddrs[{j}] is {b0:#x}, but its region {b0:#x}..{b1:#x} overlaps "
                f"tx_data_paddrs[{i}] {a0:#x}..{a1:#x}"
            )
        if reach is None or b1 > reach[1]:
            reach = (b0, b1, j)
    return problems


class DataPath:
    """The queues, the socket(s) and the counters, and what to do when either side moves.

    Each direction runs in one of two modes: "socket" (one ``recv_into``/``send`` per
    frame on `sock`, through a frame of ordinary memory) or "ring" (the kernel fills or
    drains an mmap ring, ring.py; no system call per frame). Either way the frame bytes
    move to or from the map only by devmem's aligned, padded copies. Validation, counters, drops and
    the handshake are the same in both.
    """

    def __init__(
        self,
        config: DriverConfig,
        devices: Devices,
        dp: DataPassing,
        sock: socket.socket | None,
        stats: Stats,
        *,
        fill_tx_checksums: bool = False,
        batch: int = DEFAULT_BATCH,
        ratelog: RateLimitedLog | None = None,
        rx_ring: RxRing | None = None,
        tx_ring: TxRing | None = None,
        rx_switch: RxSwitch | None = None,
    ) -> None:
        if sock is None and (rx_ring is None or tx_ring is None):
            raise ValueError("a direction without a ring needs the packet socket")
        regions = devices.regions
        rx_cap, tx_cap = config.capacity("rx_free"), config.capacity("tx_free")
        self.rx_free = Consumer(Ring(regions["rx_free"], rx_cap))
        self.rx_active = Producer(Ring(regions["rx_active"], rx_cap))
        self.tx_active = Consumer(Ring(regions["tx_active"], tx_cap))
        self.tx_free = Producer(Ring(regions["tx_free"], tx_cap))
        self.rx_data = regions["rx_data"]
        self.tx_data = regions["tx_data"]
        self.rx_base = dp.rx_data_paddr
        # (io start, io end, map offset - io address) per client; the stride comes from
        # the layout (driver.json), never a hard-coded 0x100000.
        self.tx_clients = tuple(
            (dp.tx_data_paddrs[i], dp.tx_data_paddrs[i] + c.size, c.offset - dp.tx_data_paddrs[i])
            for i, c in enumerate(config.tx_clients)
        )
        # The io address of every whole buffer -> where it starts in its map. One lookup
        # per descriptor answers "one of ours, at a buffer's start" for a whole batch at C
        # speed (map over the dict's item lookup); a miss is a bad descriptor on RX, and
        # on TX a frame the per-descriptor loop must place (inside its buffer, or in no
        # client at all).
        self.rx_buffers = buffer_table(self.rx_base, self.rx_data.size, 0)
        self.tx_buffers: dict[int, int] = {}
        for lo, hi, delta in self.tx_clients:
            self.tx_buffers.update(buffer_table(lo, hi - lo, lo + delta))
        self.rx_doorbell = devices.doorbells["rx_fault"]
        self.tx_doorbell = devices.doorbells["tx_fault"]
        self.sock = sock
        self.rx_ring = rx_ring
        self.tx_ring = tx_ring
        self.rx_switch = rx_switch
        plain_rx = sock if rx_switch or not rx_ring else None
        ring_rx = rx_ring.sock if rx_ring else None
        self.rx_socks = [s for s in (plain_rx, ring_rx) if s is not None]
        self.rx_sock = self.rx_socks[0]
        tx_sock = tx_ring.sock if tx_ring else sock
        assert tx_sock is not None  # the ValueError above: no TX ring, so a socket
        self.tx_sock = tx_sock
        # Ordinary memory the plain socket receives into and sends from (one frame each;
        # the window a TX copy reads may start up to 15 bytes before the frame).
        self.rx_scratch = memoryview(bytearray(NET_BUFFER_SIZE))
        self.rx_scratch_list = [self.rx_scratch]  # recvmsg_into takes a list of buffers
        self.rx_queued = queued_probe(plain_rx) if plain_rx is not None else None
        self.tx_scratch = memoryview(bytearray(NET_BUFFER_SIZE))
        # RX "auto": frames seen on the socket in the current 10 ms window, and how many
        # ring blocks in a row the timeout handed over nearly empty.
        self.window_start = 0.0
        self.window_frames = 0
        self.sparse_blocks = 0
        self.stats = stats
        self.fill_tx_checksums = fill_tx_checksums
        self.batch = batch
        self.ratelog = ratelog or RateLimitedLog()
        self.rx_starved = False  # no RX buffer: stop reading the socket until virt_rx refills
        self.rx_starved_since = 0  # when it ran out (time.monotonic_ns())
        self.tx_blocked = False  # the socket said EAGAIN: wait for it to become writable
        # The last look at tx_active / rx_free found an impossible index (and counted it).
        self.tx_index_bad = self.rx_index_bad = False
        self.tx_since = 0  # when the current TX batch started (process_tx sets it)
        self.rx_since = 0  # the wake-up, or the last RX publish since (process_rx sets it)
        # We want no rx_free refill signals unless starved (virt_rx then skips notifying).
        self.rx_free.ring.cancel_signal()

    def census(self) -> dict[str, int]:
        """Entries in each of the four queues now, as their indices in shared memory say.

        At rest (no frame in flight anywhere) every RX buffer is back in rx_free and the
        TX queues are empty: a buffer lost on either side of the driver shows up here.
        """
        return {
            name: ring_length(q.ring.load_tail(), q.ring.load_head())
            for name, q in (
                ("rx_free", self.rx_free),
                ("rx_active", self.rx_active),
                ("tx_active", self.tx_active),
                ("tx_free", self.tx_free),
            )
        }

    # ------------------------------------------------------------------ RX

    def _rx_auto_batch(self, n: int) -> tuple[int, bool]:
        """RX "auto": the source not receiving now first (its frames are older), then the
        other; switch to the ring when the socket sees a burst, back when the ring's
        blocks come nearly empty (RxSwitch)."""
        sw = self.rx_switch
        assert sw is not None
        on_ring = sw.selected == sw.RING
        first, second = (self._rx_batch, self._rx_ring_batch) if on_ring else (
            self._rx_ring_batch, self._rx_batch)  # fmt: skip
        delivered, drained = first(n)
        socket_frames = delivered if on_ring else 0
        if drained:
            # The caller found n buffers and n slots; the first source used `delivered` of
            # each, so the rest are there still (the peers only add to them).
            m = n - delivered
            if m <= 0:
                drained = False  # out of buffers: the caller's handshake takes over
            else:
                more, drained = second(m)
                delivered += more
                if not on_ring:
                    socket_frames = more
        if on_ring:
            if self.sparse_blocks >= SPARSE_BLOCKS:
                sw.select(sw.SOCKET)
                self.sparse_blocks = 0
                self.window_start, self.window_frames = time.monotonic(), 0
        elif socket_frames:
            now = time.monotonic()
            if now - self.window_start > SWITCH_WINDOW_S:
                self.window_start, self.window_frames = now, 0
            self.window_frames += socket_frames
            if self.window_frames >= SWITCH_UP_FRAMES:
                sw.select(sw.RING)
                self.sparse_blocks = 0
        return delivered, drained

    def process_rx(self, woken_ns: int | None = None) -> None:
        """Move frames from the socket to rx_active until the socket or rx_free runs dry.

        `woken_ns` is when the event loop woke for this (time.time_ns()): the driver's own
        share of the RX latency (stats.rx_wake) counts from there for the first batch,
        from the publish before for each later one.
        """
        self.rx_since = time.time_ns() if woken_ns is None else woken_ns
        free, active, stats = self.rx_free, self.rx_active, self.stats
        while True:
            avail = free.available()
            self.rx_index_bad = avail < 0
            if avail < 0:
                stats.bad_queue_index += 1
                self.ratelog.warn("rx_free_index", "rx_free tail is more than capacity ahead")
                avail = 0
            space = active.space()
            if space < 0:
                stats.bad_queue_index += 1
                self.ratelog.warn("rx_active_index", "rx_active head is beyond our tail")
                space = 0
            n = avail if avail < space else space
            if n > self.batch:
                n = self.batch
            if n == 0:
                # Out of buffers: ask virt_rx for a signal, re-check, and only then stop
                # reading (the socket queue absorbs the burst meanwhile).
                free.ring.request_signal()
                if min(free.available(), active.space()) > 0:
                    free.ring.cancel_signal()
                    continue
                if not self.rx_starved:
                    # What the kernel dropped so far was not for want of a buffer.
                    self.collect_socket_drops()
                    self.rx_starved = True
                    self.rx_starved_since = time.monotonic_ns()
                    stats.rx_buffer_waits += 1
                return
            if self.rx_starved:
                self.rx_starved = False
                free.ring.cancel_signal()
                stats.rx_dropped_buffer_wait += self.collect_socket_drops()
                stats.rx_wait.add(time.monotonic_ns() - self.rx_starved_since)
            if self.rx_switch is not None:
                delivered, drained = self._rx_auto_batch(n)
            elif self.rx_ring is not None:
                delivered, drained = self._rx_ring_batch(n)
            else:
                delivered, drained = self._rx_batch(n)
            if delivered:
                self._notify(active.ring, self.rx_doorbell)
            if drained:
                return
            if self.tx_active.available() > 0:
                # A backlog of RX (after a stall, tens of ms of frames) would otherwise
                # hold TX until it is all read: the clients, out of TX buffers meanwhile,
                # would drop. So TX waits for one RX batch at most.
                self.process_tx()

    def _rx_batch(self, n: int) -> tuple[int, bool]:
        """Up to n frames from the plain socket, one ``recv_into`` each.

        The kernel receives into ordinary memory (`rx_scratch`), never into the map: its
        copy aligns the source, not the destination (devmem.py says why that matters),
        and devmem's aligned, padded copy moves the frame into the buffer. The batch's
        first frame is received with ``recvmsg_into`` for its kernel timestamp
        (SO_TIMESTAMPNS), which stands for the batch in stats.rx_latency; the others
        skip the ancillary data.
        """
        free, active, stats = self.rx_free, self.rx_active, self.stats
        assert self.sock is not None
        recv_into, scratch = self.sock.recv_into, self.rx_scratch
        recvmsg_into, scratches = self.sock.recvmsg_into, self.rx_scratch_list
        queued = self.rx_queued
        assert queued is not None
        trunc = socket.MSG_TRUNC
        copy_in = self.rx_data.copy_frame_in
        buffer_at = self.rx_buffers.get
        peek, put = free.peek, active.put
        consumed = delivered = nbytes = 0
        drained = False
        stamp = -1  # the first frame's receive time in ns (0: the kernel gave none)
        while consumed < n:
            io, word1 = peek(consumed)
            off = buffer_at(io)
            if off is None:
                consumed += 1
                stats.rx_bad_descriptor += 1
                self.ratelog.warn("rx_bad", f"rx_free descriptor {io:#x} is not an RX buffer")
                continue
            try:
                if stamp < 0:
                    size, ancillary, _, _ = recvmsg_into(scratches, STAMP_CMSG_SPACE, trunc)
                    stamp = 0
                    if ancillary:  # SO_TIMESTAMPNS is the only ancillary data enabled
                        level, kind, data = ancillary[0]
                        if kind == SO_TIMESTAMPNS and level == SOL_SOCKET and len(data) >= 16:
                            sec, nsec = TIMESPEC.unpack_from(data)
                            stamp = sec * 1_000_000_000 + nsec
                else:
                    size = recv_into(scratch, NET_BUFFER_SIZE, trunc)
            except BlockingIOError:
                drained = True
                break
            except OSError as exc:  # e.g. ENETDOWN once when the link goes down
                stats.rx_errors += 1
                self.ratelog.warn("rx_err", f"receive failed: {exc.strerror}")
                drained = True
                break
            if size > NET_BUFFER_SIZE or size == 0:
                # The buffer was not handed over, so it is simply reused for the next frame.
                if size:
                    stats.rx_dropped_oversize += 1
                    self.ratelog.warn(
                        "rx_oversize",
                        f"dropped a {size}-byte frame: buffers hold {NET_BUFFER_SIZE}",
                    )
                continue
            copy_in(off, scratch, size)
            put(delivered, io, with_len(word1, size))
            delivered += 1
            consumed += 1
            nbytes += size
            if delivered == 1 and consumed < n and not queued():
                # One frame is what a low-rate wake-up brings: asking whether another is
                # queued costs a third of a receive that finds none (an exception), and
                # keeps that off the way to the publish.
                drained = True
                break
        if consumed:
            free.advance(consumed)
        if delivered:
            active.commit(delivered)
            now = time.time_ns()
            if stamp > 0:
                stats.rx_latency.add(now - stamp, delivered)
            stats.rx_wake.add(now - self.rx_since, delivered)
            self.rx_since = now
            stats.rx_frames += delivered
            stats.rx_bytes += nbytes
        return delivered, drained

    def _rx_ring_batch(self, n: int) -> tuple[int, bool]:
        """Up to n frames from the RX ring into rx_free buffers: the hot loop of RX.

        One batched read of n rx_free descriptors, checked as a batch (one table lookup
        each, at C speed), one walk of the ring's frame headers, the copies as one devmem
        call, one batched write of the rx_active descriptors, and no system call at all.
        A descriptor that is not one of our buffers' starts is consumed, counted and never
        used. A block is given back to the kernel only after the copies out of it.
        """
        ring = self.rx_ring
        assert ring is not None
        if not ring.left and not ring.ready(ring.block):
            # Nothing in the ring (RX auto on the socket, or an RX IRQ with no frames):
            # do not read n descriptors for nothing, it lengthens every wake-up.
            return 0, True
        free, active, stats = self.rx_free, self.rx_active, self.stats
        # Read only as many descriptors as there are frames to fill them (a batch's cost
        # then follows its frames, not the free buffers); oversize frames may leave some.
        # At least one: a ready block with no frames must still be walked and released.
        limit = n
        ready = ring.frames_ready(n)
        n = ready if ready > 1 else 1
        words = free.peek_words(n)
        usable: list[int] | None = None  # word-pair indices of the good ones, if any is bad
        try:
            good = list(map(self.rx_buffers.__getitem__, words[0::2]))
        except KeyError:  # not all of them our buffers' starts: keep the good ones
            offsets = list(map(self.rx_buffers.get, words[0::2]))
            usable = [k for k, off in enumerate(offsets) if off is not None]
            good = [off for off in offsets if off is not None]
        rview, status = ring.view, ring.status
        hdr, blk_pkts, uniform = RX_HDR.unpack_from, BLOCK_PKTS.unpack_from, ring.uniform_run
        bsize, nblocks = ring.block_size, ring.block_count
        block, pos, left = ring.block, ring.pos, ring.left
        sw = self.rx_switch
        watch = sw is not None and sw.selected == sw.RING
        starts: list[int] = []
        sizes: list[int] = []
        add_start, add_size = starts.append, sizes.append
        release: list[int] = []
        oversize = 0
        drained = False
        # The header of the batch's first (oldest) frame: its kernel timestamp stands for
        # the whole batch's latency (stats.rx_latency), read once per batch.
        oldest = pos if left else -1
        want = len(good)
        while len(sizes) < want:
            if left:
                # A run of frames from the block in hand: the tightest loop of RX.
                take = want - len(sizes)
                if take > left:
                    take = left
                left -= take
                run = uniform(pos, take) if take >= UNIFORM_MIN else None
                if run is not None:  # a burst of one size: no per-frame header loop
                    starts += run[0]
                    sizes += run[1]
                    pos = run[2]
                    continue
                for _ in range(take):
                    nxt, snap, size, mac = hdr(rview, pos)
                    if size <= NET_BUFFER_SIZE and snap >= size:
                        add_start(pos + mac)
                        add_size(size)
                    else:  # larger than a buffer, or not all of it in the ring
                        oversize += 1
                    pos += nxt
                continue
            if pos >= 0:  # done with this block
                release.append(block)
                block = block + 1 if block + 1 < nblocks else 0
                pos = -1
            boff = block * bsize
            if not status[(boff + BLOCK_STATUS) >> 2] & TP_STATUS_USER:
                drained = True
                break
            left, first = blk_pkts(rview, boff + BLOCK_PKTS_AT)
            pos = boff + first
            if oldest < 0:
                oldest = pos
            if watch:  # RX auto: a run of nearly empty blocks means a low rate
                if left < SPARSE_FRAMES and status[(boff + BLOCK_STATUS) >> 2] & (
                    TP_STATUS_BLK_TMO
                ):
                    self.sparse_blocks += 1
                else:
                    self.sparse_blocks = 0
        if not left and pos >= 0:  # finished this block: hand it back now
            release.append(block)
            block = block + 1 if block + 1 < nblocks else 0
            pos = -1
        ring.block, ring.pos, ring.left = block, pos, left
        delivered = len(sizes)
        if ready < limit and delivered + oversize >= ready:
            drained = True  # every frame the ring held is taken: no second look needed
        if delivered:
            # Read while the block is still ours (it goes back to the kernel below).
            sec, nsec = RX_STAMP.unpack_from(rview, oldest + RX_STAMP_AT)
            self.rx_data.copy_into_buffers(rview, good[:delivered], starts, sizes, ring.map)
        for b in release:
            status[(b * bsize + BLOCK_STATUS) >> 2] = 0
        if oversize:
            stats.rx_dropped_oversize += oversize
            self.ratelog.warn(
                "rx_oversize", f"dropped {oversize} frame(s) larger than {NET_BUFFER_SIZE} bytes"
            )
        ios: Sequence[int]
        firsts: Sequence[int]
        if usable is None:
            consumed = delivered if drained else n
            ios, firsts = words[0 : 2 * delivered : 2], words[1 : 2 * delivered : 2]
        else:
            consumed = usable[delivered] if delivered < len(usable) else n
            self._bad_rx(words, usable, consumed)
            ios = [words[2 * k] for k in usable[:delivered]]
            firsts = [words[2 * k + 1] for k in usable[:delivered]]
        if consumed:
            free.advance(consumed)
        if delivered:
            out: list[int] = [0] * (2 * delivered)
            out[0::2] = ios
            # The len goes in the low 16 bits; the reserved bits above are kept (with_len).
            out[1::2] = sizes if max(firsts) <= DESC_LEN_MASK else map(or_, map(
                and_, firsts, repeat(~DESC_LEN_MASK)), sizes)  # fmt: skip
            active.put_words(out)
            active.commit(delivered)
            now = time.time_ns()
            stats.rx_latency.add(now - sec * 1_000_000_000 - nsec, delivered)
            stats.rx_wake.add(now - self.rx_since, delivered)
            self.rx_since = now
            stats.rx_frames += delivered
            stats.rx_bytes += sum(sizes)
        return delivered, drained

    def _bad_rx(self, words: Sequence[int], usable: list[int], consumed: int) -> None:
        """Count and log the rx_free descriptors among the first `consumed` that are not
        our buffers' starts (`usable` lists the good ones): consumed, never used."""
        good = set(usable)
        for k in range(consumed):
            if k not in good:
                self.stats.rx_bad_descriptor += 1
                self.ratelog.warn(
                    "rx_bad", f"rx_free descriptor {words[2 * k]:#x} is not an RX buffer"
                )

    # ------------------------------------------------------------------ TX

    def process_tx(self, woken_ns: int | None = None) -> None:
        """Send everything on tx_active (the canonical consumer handshake).

        `woken_ns` is when the event loop woke for this (time.time_ns()); the TX
        latency of the first batch counts from there, each later one from the end of
        the one before (stats.tx_latency).
        """
        if self.tx_blocked:
            return
        self.tx_since = time.time_ns() if woken_ns is None else woken_ns
        active, free, stats = self.tx_active, self.tx_free, self.stats
        ring = self.tx_ring
        if ring is not None and ring.pending:
            self._tx_flush(ring)  # slots left by a send that would have blocked
            if self.tx_blocked:
                return
        while True:
            avail = active.available()
            self.tx_index_bad = avail < 0
            if avail <= 0:
                if avail < 0:
                    stats.bad_queue_index += 1
                    self.ratelog.warn(
                        "tx_active_index", "tx_active tail is more than capacity ahead"
                    )
                    active.ring.request_signal()
                    return
                # Empty: ask virt_tx for a signal, then look once more, as the queue
                # protocol requires (work queued in between would otherwise wait).
                active.ring.request_signal()
                if active.available() == 0:
                    return
                active.ring.cancel_signal()
                continue
            space = free.space()
            if space < 0:
                stats.bad_queue_index += 1
                self.ratelog.warn("tx_free_index", "tx_free head is beyond our tail")
                space = 0
            # min() parses keywords: a comparison is cheaper on a path run per wake-up.
            n = avail if avail < space else space
            if n > self.batch:
                n = self.batch
            if ring is not None and n > len(ring.slots):
                n = len(ring.slots)  # one pass round the TX ring per send
            if n:
                returned = self._tx_ring_batch(n) if ring else self._tx_batch(n)
                if returned:
                    self._notify(free.ring, self.tx_doorbell)
                if self.tx_blocked:
                    return
                continue
            # tx_free is full, which a well-behaved virt_tx cannot cause; the next tx IRQ
            # retries.
            self.ratelog.warn("tx_free_full", "tx_free has no room for returned buffers")
            active.ring.request_signal()
            return

    def rescan(self, *, rx: bool, tx: bool) -> None:
        """After the event loop re-enabled the rx and/or tx IRQ: process what arrived
        while it was masked (the VMM drops an interrupt injected then). One queue index
        load per direction when nothing did. An impossible index (-1) is processed (and
        counted) only if it is new since the processing this wake-up did: one the VMM
        published while the IRQ was masked raises no interrupt, and one already counted
        is not counted twice."""
        if tx and not self.tx_blocked:
            avail = self.tx_active.available()
            if avail > 0 or (avail < 0 and not self.tx_index_bad):
                self.process_tx()
        if rx and self.rx_starved:
            avail = self.rx_free.available()
            if avail > 0 or (avail < 0 and not self.rx_index_bad):
                self.process_rx()

    def _wait_to_send(self) -> None:
        """The socket would block (TX ring or send buffer full): stop TX until the event
        loop sees it writable (EPOLLOUT), and count the wait."""
        self.tx_blocked = True
        self.stats.tx_send_waits += 1

    def _link_takes(self, ring: TxRing, src: int, length: int) -> bool:
        """Whether the link takes a frame longer than its MTU allows untagged (rare):
        the MTU is read again (it may have been raised since) and the frame's EtherType
        looked at (an 802.1Q tag allows 4 bytes more). A frame it does not take is
        counted and logged as dropped: a TX ring with a virtio_net_hdr would hand it to
        the device whatever its length."""
        ring.refresh_mtu()
        if length <= ring.max_len:
            return True
        scratch = self.tx_scratch
        skew = self.tx_data.copy_frame_out(src, scratch, length)
        if ring.takes(length, int.from_bytes(scratch[skew + 12 : skew + 14], "big")):
            return True
        self.stats.tx_dropped += 1
        self.ratelog.warn(
            "tx_too_long", f"dropped a {length}-byte frame: the link's MTU is {ring.mtu}"
        )
        return False

    def _bad_tx(self, io: int, length: int | None) -> None:
        """Count and log a tx_active descriptor that is no client's buffer (length None)
        or whose length does not fit its buffer. Only the rare path calls this: the checks
        themselves stay inline in the TX loops, which run once per frame."""
        self.stats.tx_bad_descriptor += 1
        if length is None:
            self.ratelog.warn("tx_bad_addr", f"tx_active descriptor {io:#x} is in no client")
        else:
            self.ratelog.warn("tx_bad_len", f"tx_active descriptor {io:#x} has len {length}")

    def _tx_batch(self, n: int) -> int:
        """Up to n tx_active frames, one ``send`` each.

        Each frame is first copied out of the map (devmem's aligned window) into ordinary
        memory, `tx_scratch`, and sent from there: the kernel never reads the map itself.
        """
        active, free, stats = self.tx_active, self.tx_free, self.stats
        assert self.sock is not None
        send, scratch = self.sock.send, self.tx_scratch
        copy_out = self.tx_data.copy_frame_out
        clients = self.tx_clients
        peek, put = active.peek, free.put
        consumed = returned = frames = nbytes = 0
        while consumed < n:
            io, word1 = peek(consumed)
            length = word1 & 0xFFFF
            for client in clients:
                if client[0] <= io < client[1]:
                    start, _, delta = client
                    break
            else:
                consumed += 1
                self._bad_tx(io, None)
                continue
            if length == 0 or ((io - start) & BUFFER_MASK) + length > NET_BUFFER_SIZE:
                self._bad_tx(io, length)
            else:
                skew = copy_out(io + delta, scratch, length)
                frame = scratch[skew : skew + length]
                try:
                    if self.fill_tx_checksums:
                        stats.tx_checksums_filled += fill_checksums(frame)
                    send(frame)
                except BlockingIOError:
                    self._wait_to_send()  # leave it on tx_active; resend when writable
                    break
                except OSError as exc:  # ENETDOWN, EMSGSIZE, ENOBUFS: the frame is lost
                    stats.tx_dropped += 1
                    self.ratelog.warn(f"tx_err{exc.errno}", f"send failed: {exc.strerror}")
                else:
                    frames += 1
                    nbytes += length
            put(returned, io, word1)  # the SAME descriptor back, whatever became of it
            returned += 1
            consumed += 1
        if frames:
            now = time.time_ns()
            stats.tx_latency.add(now - self.tx_since, frames)  # the last send returned
            self.tx_since = now
        if consumed:
            active.advance(consumed)
        if returned:
            free.commit(returned)
        stats.tx_frames += frames
        stats.tx_bytes += nbytes
        return returned

    def _tx_ring_batch(self, n: int) -> int:
        """Up to n tx_active frames into the TX ring, then one send: the hot loop of TX.

        One batched read of the descriptors, one batched write of the returned ones, each
        slot's header (send request included) in one store as its descriptor passes
        validation, the frame copies as one devmem call, then one non-blocking send. A
        descriptor is returned only after its frame was copied.
        """
        ring = self.tx_ring
        assert ring is not None
        active, free, stats = self.tx_active, self.tx_free, self.stats
        if n == 1 and self._tx_ring_one(ring):
            return 1
        words = active.peek_words(n)
        if n > 1 and self._tx_ring_fast(ring, words, n):
            return n
        clients = self.tx_clients
        rview, status, slots = ring.view, ring.status, ring.slots
        nslots = len(slots)
        nxt = ring.next
        # The region of the last descriptor's client, most often the next one's too: one
        # chained comparison instead of a search (precomputed bounds, in locals).
        lo, hi, delta = clients[0]
        header, vnet = TX_HEADER.pack_into, VNET_HDR.pack_into
        moves: list[int] = []
        skewed: list[int] = []  # (slot, skew, length) of frames not at a 16-byte boundary
        unowned: list[int] = []  # word indices of descriptors that are no client's buffer
        k = 0
        end = 2 * n
        while k < end:
            io = words[k]
            word1 = words[k + 1]
            length = word1 & 0xFFFF
            if not lo <= io < hi:
                for client in clients:
                    if client[0] <= io < client[1]:
                        lo, hi, delta = client
                        break
                else:
                    unowned.append(k)
                    k += 2
                    self._bad_tx(io, None)
                    continue
            if length == 0 or ((io - lo) & BUFFER_MASK) + length > NET_BUFFER_SIZE:
                self._bad_tx(io, length)
            elif length > ring.max_len and not self._link_takes(ring, io + delta, length):
                pass  # counted as dropped; its buffer goes back like any other
            else:
                slot = slots[nxt]
                if status[slot >> 2] & TX_BUSY:
                    self._wait_to_send()  # ring full until the device completes
                    break
                src = io + delta
                moves += (src, slot + TX_DATA, length)
                if src & 15:
                    skewed += (slot, src & 15, length)
                # tp_status, tp_len (the frame and its virtio_net_hdr), tp_snaplen (not
                # read on TX) and tp_mac in one store, then the header (hdr_len: the
                # frame's length); the kernel reads a slot only inside send().
                header(rview, slot, TP_STATUS_SEND_REQUEST, length + VNET_HDR_LEN, length, TX_VNET)
                vnet(rview, slot + TX_VNET, 0, 0, length, 0, 0, 0)
                nxt = nxt + 1 if nxt + 1 < nslots else 0
            k += 2
        if moves:
            first, count = ring.next, len(moves) // 3
            queued = slots[first : first + count]
            if first + count > nslots:  # the batch wrapped round the ring
                queued += slots[: first + count - nslots]
            self.tx_data.copy_frames_out(rview, moves)
            # A frame that does not start at a 16-byte boundary (rare: sDDF clients use
            # whole buffers) moves down to the data area's start, in ordinary memory, so
            # the header and tp_mac keep their one place in every slot.
            for i in range(0, len(skewed), 3):
                at, skew, length = skewed[i] + TX_DATA, skewed[i + 1], skewed[i + 2]
                rview[at : at + length] = rview[at + skew : at + skew + length]
            if self.fill_tx_checksums:
                self._fill_ring_checksums(ring, queued)
            ring.next = nxt
            ring.pending += queued
            stats.tx_frames += len(queued)
            stats.tx_bytes += sum(moves[2::3])
        consumed = k >> 1
        if consumed:
            active.advance(consumed)
        # The SAME descriptors go back, whatever became of their frames, except one that
        # is no client's buffer: giving that to a client would spread the damage.
        out: Sequence[int] = words[:k]
        if unowned:
            out = [w for i, w in enumerate(out) if i & ~1 not in unowned]
        returned = len(out) >> 1
        if returned:
            free.put_words(out)
            free.commit(returned)
        if ring.pending:
            self._tx_flush(ring)
        return returned

    def _tx_ring_one(self, ring: TxRing) -> bool:
        """The one frame of a low-rate wake-up, when it is the usual one: a client's whole
        buffer, the frame at its start with 1..max_len bytes, the next slot free. Returns
        False, having changed nothing, otherwise (the per-descriptor loop decides then).

        The batch paths' set-up (slices, runs, the checks' passes) costs more than a
        whole frame when the batch is one frame, and this is the path a ping takes, so
        it is the send latency at low load (docs/driver.md, "Latency added by the driver").
        """
        active = self.tx_active
        io, word1 = active.peek(0)
        # word1 is the len alone: reserved bits or len 0 go the general way.
        if not 0 < word1 <= ring.max_len or self.fill_tx_checksums:
            return False
        src = self.tx_buffers.get(io)
        slot = ring.slots[ring.next]
        status = ring.status
        if src is None or status[slot >> 2]:
            return False  # not a buffer's start, or a slot the kernel still holds
        self.tx_data.copy_buffer_head_out(ring.view, slot + TX_DATA, src, word1)
        # As _tx_ring_fast: tp_len (the frame and its virtio_net_hdr), then hdr_len and
        # gso_size (0) as one 32-bit word, then tp_status; the kernel reads a slot only
        # inside send().
        at = slot >> 2
        status[at + 1] = word1 + VNET_HDR_LEN
        status[at + (HDR_LEN_AT >> 2)] = word1
        status[at] = TP_STATUS_SEND_REQUEST
        ring.next = ring.next + 1 if ring.next + 1 < len(ring.slots) else 0
        ring.pending.append(slot)
        stats = self.stats
        stats.tx_frames += 1
        stats.tx_bytes += word1
        active.advance(1)
        free = self.tx_free
        free.put(0, io, word1)
        free.commit(1)
        self._tx_flush(ring)
        return True

    def _tx_ring_fast(self, ring: TxRing, words: tuple[int, ...], n: int) -> bool:
        """All n descriptors at once, when the batch is the usual one: each a whole buffer
        of a client, the frame at its start with 1..2048 bytes, and the next n ring slots
        free. Returns False, having changed nothing, when any of that does not hold; the
        per-descriptor loop then decides frame by frame.

        The checks are batch operations at C speed (one table lookup per descriptor,
        max() of the len words, which also rules out reserved bits, and all() for no len
        0), each slot header
        field is one strided store for the whole run of slots, and the copies are one
        devmem call per run: the only per-frame Python left is the copy itself.
        """
        stride = ring.stride
        lens = words[1::2]
        # One max() pass (it is also every copy's width) and all() for "no len 0": each
        # min()/max() over a batch costs ~150 instructions a frame. max_len is at most a
        # buffer.
        longest = max(lens)
        if not stride or longest > ring.max_len or not all(lens):
            return False
        try:
            offsets = list(map(self.tx_buffers.__getitem__, words[0::2]))
        except KeyError:
            return False
        status, slots = ring.status, ring.slots
        first, nslots = ring.next, len(slots)
        head = n if n < nslots - first else nslots - first  # to the ring's end, then from 0
        runs = ((first, 0, head), (0, head, n - head))
        words_per_slot = stride >> 2
        len_at = HDR_LEN_AT >> 2  # hdr_len, then gso_size: one 32-bit word of a slot
        vnet_lanes = VNET_HDR_LEN.to_bytes(4, "little")
        for slot, _, count in runs:
            at = slot * words_per_slot
            if count and any(status[at : at + count * words_per_slot : words_per_slot]):
                return False  # a slot the kernel still holds: the loop stops there
        copy_out, view = self.tx_data.copy_buffer_heads_out, ring.view
        for slot, done, count in runs:
            if not count:
                continue
            part = lens[done : done + count]
            copy_out(view, slot * stride + TX_DATA, stride, offsets[done : done + count], longest)
            # tp_len (the frame and its virtio_net_hdr), the header's hdr_len (the frame's
            # length) and gso_size (0) as one 32-bit store, then tp_status; the kernel
            # reads a slot only inside send(). tp_mac and the header's other fields
            # never change (TxRing). Each strided store costs ~100 instructions a frame,
            # an array built from ints ~140: tp_len comes from the lengths' array as one
            # integer sum, 10 added in each 32-bit lane (no carry: a length is < 2^16).
            at, end = slot * words_per_slot, (slot + count) * words_per_slot
            sizes = array("I", part)
            tp_len = int.from_bytes(sizes, "little") + int.from_bytes(vnet_lanes * count, "little")
            status[at + 1 : end + 1 : words_per_slot] = memoryview(
                tp_len.to_bytes(4 * count, "little")
            ).cast("I")
            status[at + len_at : end + len_at : words_per_slot] = sizes
            status[at:end:words_per_slot] = array("I", (TP_STATUS_SEND_REQUEST,)) * count
        queued = slots[first : first + head] + slots[: n - head]
        if self.fill_tx_checksums:
            self._fill_ring_checksums(ring, queued)
        ring.next = (first + n) % nslots
        ring.pending += queued
        stats = self.stats
        stats.tx_frames += n
        stats.tx_bytes += sum(lens)
        self.tx_active.advance(n)
        self.tx_free.put_words(words)
        self.tx_free.commit(n)
        self._tx_flush(ring)
        return True

    def _fill_ring_checksums(self, ring: TxRing, queued: list[int]) -> None:
        """--fill-tx-checksums: the checksums of the frames just placed in these slots."""
        half, view, stats = ring.half, ring.view, self.stats
        for slot in queued:
            size, at = half[(slot + HDR_LEN_AT) >> 1], slot + TX_DATA  # hdr_len: its length
            stats.tx_checksums_filled += fill_checksums(view[at : at + size])

    def _tx_flush(self, ring: TxRing) -> None:
        """One non-blocking send for every requested slot; account for what it left.

        The kernel takes requested slots strictly in ring order and stops at the first it
        cannot send: the socket's send buffer is full (retry when writable), or the device
        refused it (link down, queue full). A refused frame stays requested at the
        kernel's position, so the driver drops that one and the rest of the pending slots
        and rewinds its fill position there, which keeps the two in step.
        """
        pending, status = ring.pending, ring.status
        err = 0
        try:
            ring.sock.send(b"", socket.MSG_DONTWAIT)
        except BlockingIOError:
            err = errno.EAGAIN
        except OSError as exc:
            err = exc.errno or errno.EIO
        now = time.time_ns()
        latency = now - self.tx_since
        self.tx_since = now
        if status[pending[-1] >> 2] != TP_STATUS_SEND_REQUEST:
            self.stats.tx_latency.add(latency, len(pending))
            pending.clear()  # the last requested slot was taken, so all of them were
            return
        left = [s for s in pending if status[s >> 2] == TP_STATUS_SEND_REQUEST]
        if len(left) < len(pending):
            self.stats.tx_latency.add(latency, len(pending) - len(left))
        if err in (0, errno.EAGAIN):
            # The socket's send buffer is full: the rest goes when it drains.
            ring.pending = left
            self._wait_to_send()
            return
        half, stats = ring.half, self.stats
        for slot in left:
            status[slot >> 2] = TP_STATUS_AVAILABLE
            stats.tx_dropped += 1
            stats.tx_frames -= 1
            stats.tx_bytes -= half[(slot + HDR_LEN_AT) >> 1]  # hdr_len: the frame's length
        ring.next = ring.slots.index(left[0])
        pending.clear()
        why = errno.errorcode.get(err, str(err)) if err else "nothing sent"
        self.ratelog.warn(f"tx_err{err}", f"send failed ({why}): dropped {len(left)} frame(s)")

    # ------------------------------------------------------------------ common

    def _notify(self, ring: Ring, doorbell: Doorbell) -> None:
        """Producer side of the handshake: signal only if the consumer asked for it."""
        if ring.signal_required():
            ring.cancel_signal()
            doorbell.ring()
            self.stats.notifications_sent += 1

    def sockets(self) -> dict[int, socket.socket]:
        """Every socket the event loop watches, by file descriptor."""
        socks = (*self.rx_socks, self.tx_sock)
        return {s.fileno(): s for s in socks if s is not None}

    def interest(self) -> dict[int, int]:
        """The epoll events wanted now per socket: input unless out of RX buffers, output
        only while a send would block."""
        want = dict.fromkeys(self.sockets(), 0)
        if not self.rx_starved:
            for sock in self.rx_socks:
                want[sock.fileno()] |= select.EPOLLIN
        if self.tx_blocked:
            want[self.tx_sock.fileno()] |= select.EPOLLOUT
        return want

    def socket_error(self, fd: int | None = None) -> None:
        """Clear a pending socket error (EPOLLERR would otherwise repeat forever)."""
        sock = self.sockets().get(fd) if fd is not None else self.rx_sock
        if sock is None:
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.stats.rx_errors += 1
            self.ratelog.warn("sock_err", f"socket error: {errno.errorcode.get(err, err)}")

    def collect_socket_drops(self) -> int:
        """Frames the kernel dropped since the last call (its queue or ring was full: we
        did not read fast enough, or had no buffer to read into); adds and returns them.
        The kernel zeroes its count on every read."""
        total = 0
        for sock in self.rx_socks:
            # The first two words of tpacket_stats and tpacket_stats_v3 (a ring's) agree.
            raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS.size)
            total += TPACKET_STATS.unpack(raw)[1]
        self.stats.rx_dropped_no_buffer += total
        return total
