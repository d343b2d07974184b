"""RX and TX between the packet socket and the sDDF queues (DESIGN.md §3).

Owns: the per-batch data path, descriptor validation, the signal handshake and the
doorbell decisions. Must not touch shared memory except through devmem/queue, and must
not block: the socket is non-blocking and the event loop (loop.py) decides when to run.

RX: take a buffer from rx_free, let the kernel copy the next frame straight into it
(``recv_into`` on a view of the map), hand the SAME descriptor with its len to rx_active.
TX: take a descriptor from tx_active, find the client region holding its io address, let
the kernel send the bytes straight from the map, return the SAME descriptor to tx_free.

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

import errno
import itertools
import socket
import struct

from .abi import DATA_PASSING_SIZE, NET_BUFFER_SIZE, SDDF_NET_MAGIC, DataPassing
from .checksum import fill_checksums
from .config import DriverConfig
from .device import DeviceError, Devices, Doorbell
from .log import RateLimitedLog
from .queue import Consumer, Producer, Ring, with_len
from .stats import Stats

DEFAULT_BATCH = 64
BUFFER_MASK = NET_BUFFER_SIZE - 1
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20; not exported by the socket module
SO_RCVBUFFORCE = 33
RCVBUF_BYTES = 4 << 20  # the default ~208 KiB holds only ~90 MTU frames; bursts would drop
PACKET_MREQ = struct.Struct("iHH8s")
TPACKET_STATS = struct.Struct("II")


class DataPassingError(RuntimeError):
    pass


def read_data_passing(devices: Devices) -> DataPassing:
    raw = devices.regions["data_passing"].load_words(0, DATA_PASSING_SIZE)
    return DataPassing.unpack(raw)


def check_data_passing(dp: DataPassing, config: DriverConfig) -> list[str]:
    """Everything wrong with the VMM's data-passing page for this configuration."""
    problems = []
    if dp.magic != SDDF_NET_MAGIC:
        problems.append(f"magic is {dp.magic.hex(' ')}, expected {SDDF_NET_MAGIC.hex(' ')}")
    for conn, ring in ((dp.virt_rx, "rx_free"), (dp.virt_tx, "tx_free")):
        if conn.num_buffers != config.capacity(ring):
            problems.append(
                f"{'virt_rx' if ring == 'rx_free' else 'virt_tx'}.num_buffers is "
                f"{conn.num_buffers}, but the {ring} queue holds {config.capacity(ring)}"
            )
    n = dp.num_tx_clients
    if n != len(config.tx_clients):
        problems.append(
            f"num_tx_clients is {n}, but {config.path} describes {len(config.tx_clients)}"
        )
    else:
        spans = sorted(
            (dp.tx_data_paddrs[i], dp.tx_data_paddrs[i] + c.size)
            for i, c in enumerate(config.tx_clients)
        )
        for (a0, a1), (b0, _) in itertools.pairwise(spans):
            if b0 < a1:
                problems.append(f"TX client data regions overlap at {a0:#x}..{a1:#x}")
    return problems


def open_packet_socket(interface: str) -> socket.socket:
    """Promiscuous raw socket for every protocol on `interface`, ignoring our own TX."""
    # Protocol 0 receives nothing until bind, so no frame from another interface can
    # slip in between socket() and bind().
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.bind((interface, ETH_P_ALL))
        ifindex = socket.if_nametoindex(interface)
        mreq = PACKET_MREQ.pack(ifindex, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise DeviceError(f"cannot use interface '{interface}': {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


class DataPath:
    """The queues, the socket and the counters, and what to do when either side moves."""

    def __init__(
        self,
        config: DriverConfig,
        devices: Devices,
        dp: DataPassing,
        sock: socket.socket,
        stats: Stats,
        *,
        fill_tx_checksums: bool = False,
        batch: int = DEFAULT_BATCH,
        ratelog: RateLimitedLog | None = None,
    ) -> None:
        regions = devices.regions
        rx_cap, tx_cap = config.capacity("rx_free"), config.capacity("tx_free")
        self.rx_free = Consumer(Ring(regions["rx_free"], rx_cap))
        self.rx_active = Producer(Ring(regions["rx_active"], rx_cap))
        self.tx_active = Consumer(Ring(regions["tx_active"], tx_cap))
        self.tx_free = Producer(Ring(regions["tx_free"], tx_cap))
        self.rx_data = regions["rx_data"]
        self.tx_data = regions["tx_data"]
        self.rx_base = dp.rx_data_paddr
        self.rx_limit = self.rx_data.size
        # (io start, io end, map offset - io address) per client; the stride comes from
        # the layout (driver.json), never a hard-coded 0x100000.
        self.tx_clients = tuple(
            (dp.tx_data_paddrs[i], dp.tx_data_paddrs[i] + c.size, c.offset - dp.tx_data_paddrs[i])
            for i, c in enumerate(config.tx_clients)
        )
        self.rx_doorbell = devices.doorbells["rx_fault"]
        self.tx_doorbell = devices.doorbells["tx_fault"]
        self.sock = sock
        self.stats = stats
        self.fill_tx_checksums = fill_tx_checksums
        self.batch = batch
        self.ratelog = ratelog or RateLimitedLog()
        self.rx_starved = False  # no RX buffer: stop reading the socket until virt_rx refills
        self.tx_blocked = False  # the socket said EAGAIN: wait for it to become writable
        # We want no rx_free refill signals unless starved (virt_rx then skips notifying).
        self.rx_free.ring.cancel_signal()

    # ------------------------------------------------------------------ RX

    def process_rx(self) -> None:
        """Move frames from the socket to rx_active until the socket or rx_free runs dry."""
        free, active, stats = self.rx_free, self.rx_active, self.stats
        while True:
            avail = free.available()
            if avail < 0:
                stats.bad_queue_index += 1
                self.ratelog.warn("rx_free_index", "rx_free tail is more than capacity ahead")
                avail = 0
            space = active.space()
            if space < 0:
                stats.bad_queue_index += 1
                self.ratelog.warn("rx_active_index", "rx_active head is beyond our tail")
                space = 0
            n = min(avail, space, self.batch)
            if n == 0:
                # Out of buffers: ask virt_rx for a signal, re-check, and only then stop
                # reading (the socket queue absorbs the burst meanwhile).
                free.ring.request_signal()
                if min(free.available(), active.space()) > 0:
                    free.ring.cancel_signal()
                    continue
                self.rx_starved = True
                return
            if self.rx_starved:
                self.rx_starved = False
                free.ring.cancel_signal()
            delivered, drained = self._rx_batch(n)
            if delivered:
                self._notify(active.ring, self.rx_doorbell)
            if drained:
                return

    def _rx_batch(self, n: int) -> tuple[int, bool]:
        free, active, stats = self.rx_free, self.rx_active, self.stats
        recv_into, view = self.sock.recv_into, self.rx_data.kernel_view
        base, limit = self.rx_base, self.rx_limit
        peek, put = free.peek, active.put
        consumed = delivered = nbytes = 0
        drained = False
        while consumed < n:
            io, word1 = peek(consumed)
            off = io - base
            if off < 0 or off >= limit or off & BUFFER_MASK:
                consumed += 1
                stats.rx_bad_descriptor += 1
                self.ratelog.warn("rx_bad", f"rx_free descriptor {io:#x} is not an RX buffer")
                continue
            try:
                size = recv_into(view(off, NET_BUFFER_SIZE), NET_BUFFER_SIZE, socket.MSG_TRUNC)
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
            put(delivered, io, with_len(word1, size))
            delivered += 1
            consumed += 1
            nbytes += size
        if consumed:
            free.advance(consumed)
        if delivered:
            active.commit(delivered)
            stats.rx_frames += delivered
            stats.rx_bytes += nbytes
        return delivered, drained

    # ------------------------------------------------------------------ TX

    def process_tx(self) -> None:
        """Send everything on tx_active (the canonical consumer handshake)."""
        if self.tx_blocked:
            return
        active, free, stats = self.tx_active, self.tx_free, self.stats
        while True:
            avail = active.available()
            if avail < 0:
                stats.bad_queue_index += 1
                self.ratelog.warn("tx_active_index", "tx_active tail is more than capacity ahead")
                active.ring.request_signal()
                return
            space = free.space()
            if space < 0:
                stats.bad_queue_index += 1
                self.ratelog.warn("tx_free_index", "tx_free head is beyond our tail")
                space = 0
            n = min(avail, space, self.batch)
            if n:
                returned = self._tx_batch(n)
                if returned:
                    self._notify(free.ring, self.tx_doorbell)
                if self.tx_blocked:
                    return
                continue
            if avail:
                # tx_free is full, which a well-behaved virt_tx cannot cause; the next
                # tx IRQ retries.
                self.ratelog.warn("tx_free_full", "tx_free has no room for returned buffers")
                active.ring.request_signal()
                return
            active.ring.request_signal()
            if active.available() == 0:
                return
            active.ring.cancel_signal()

    def _tx_batch(self, n: int) -> int:
        active, free, stats = self.tx_active, self.tx_free, self.stats
        send, view = self.sock.send, self.tx_data.kernel_view
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
                stats.tx_bad_descriptor += 1
                self.ratelog.warn("tx_bad_addr", f"tx_active descriptor {io:#x} is in no client")
                continue
            if length == 0 or ((io - start) & BUFFER_MASK) + length > NET_BUFFER_SIZE:
                stats.tx_bad_descriptor += 1
                self.ratelog.warn("tx_bad_len", f"tx_active descriptor {io:#x} has len {length}")
            else:
                try:
                    if self.fill_tx_checksums:
                        frame = bytearray(self.tx_data.copy_out(io + delta, length))
                        stats.tx_checksums_filled += fill_checksums(frame)
                        send(frame)
                    else:
                        send(view(io + delta, length))
                except BlockingIOError:
                    self.tx_blocked = True  # leave it on tx_active; resend when writable
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
        if consumed:
            active.advance(consumed)
        if returned:
            free.commit(returned)
        stats.tx_frames += frames
        stats.tx_bytes += nbytes
        return returned

    # ------------------------------------------------------------------ common

    def _notify(self, ring: Ring, doorbell: Doorbell) -> None:
        """Producer side of the handshake: signal only if the consumer asked for it."""
        if ring.signal_required():
            ring.cancel_signal()
            doorbell.ring()
            self.stats.notifications_sent += 1

    def socket_error(self) -> None:
        """Clear a pending socket error (EPOLLERR would otherwise repeat forever)."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.stats.rx_errors += 1
            self.ratelog.warn("sock_err", f"socket error: {errno.errorcode.get(err, err)}")

    def collect_socket_drops(self) -> None:
        """Frames the kernel dropped because we were not reading (no buffer) since last call."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS.size)
        _, drops = TPACKET_STATS.unpack(raw)
        self.stats.rx_dropped_no_buffer += drops
