"""AF_PACKET sockets and mmap rings: a TPACKET_V3 RX ring and a TPACKET_V2 TX ring.

Owns: opening every packet socket of the driver (the rings' and the plain one, per RX
and TX mode: open_packet_io), the ring geometry and the kernel's ring formats (block
descriptor, packet headers, slot status words). Must not touch the sDDF shared memory
(devmem.py does) nor decide what a descriptor means (datapath.py). The ring memory is
ordinary kernel-shared RAM, not Device memory: plain struct access is fine here.

Why rings: with a ring the kernel copies frames into (RX) or out of (TX) memory mapped
into the driver, so the driver makes no system call per frame:
- RX, TPACKET_V3: frames are packed into blocks; the kernel hands over a whole block when
  it is full or when ``timeout_ms`` passed since its first frame, and wakes the reader
  once per block. Small blocks and a ~1 ms timeout bound the latency at low rates.
  Frames are never truncated silently: ``tp_len`` is the frame's real length and
  ``tp_snaplen`` what the ring holds; the data path drops and counts a frame whose
  ``tp_len`` exceeds a 2048-byte buffer or whose ``tp_snaplen`` is short of ``tp_len``.
- TX, TPACKET_V2 with ``PACKET_QDISC_BYPASS``: the driver fills slots and marks them
  ``TP_STATUS_SEND_REQUEST``; one non-blocking ``send()`` per batch makes the kernel
  transmit every requested slot straight to the device (no qdisc; like a NIC ring, a
  full device queue drops). ``PACKET_TX_HAS_OFF`` lets ``tp_mac`` point past the
  slot's header to where the driver put the frame (after its ``virtio_net_hdr``, at a
  16-byte aligned data area: the padded, aligned copy out of an sDDF buffer lands
  there as it is). ``PACKET_LOSS`` makes the kernel skip a frame it cannot send
  instead of stalling the whole ring.
- ``PACKET_VNET_HDR`` on the TX ring: each frame follows a 10-byte ``virtio_net_hdr``
  whose ``hdr_len`` is the frame's length, so the kernel copies the whole frame into
  the skb. Without it the kernel copies only the 14-byte Ethernet header and hands the
  rest over as a reference to the ring's page, which the first consumer that must own
  the bytes (a veth peer, a bridge to a local socket) copies again into a page it
  allocates per frame: measured on the host, that cost 16 % of the CPU time per frame. The
  header also turns off the kernel's MTU check, so the driver checks the length
  against the link's MTU itself (``TxRing.max_len``, ``link_mtu``).
The RX socket is separate from the TX socket (one ``PACKET_VERSION`` per socket); it has
``PACKET_IGNORE_OUTGOING``, and bypassed TX frames never reach packet taps anyway, so the
driver's own frames do not come back as RX.
"""

from __future__ import annotations

import _socket as socket  # not socket.py: see docs/driver.md, "Start-up"
import array
import fcntl
import mmap
import os
import struct

from .abi import NET_BUFFER_SIZE
from .device import DeviceError
from .records import Record
from .strided import READ_CHUNK, strided_unpack

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import TypeVar

    from .strided import Unpack

    T = TypeVar("T")

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_TX_HAS_OFF = 19
PACKET_QDISC_BYPASS = 20
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20; not exported by the socket module
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_CBPF = 6
PACKET_OUTGOING = 4  # sll_pkttype of a frame this host sends
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # asm-generic (arm64, x86_64); the cmsg type is the same number
STAMP_CMSG_SPACE = 32  # CMSG_SPACE(sizeof(struct timespec)) on LP64
TIMESPEC = struct.Struct("@qq")
RCVBUF_BYTES = 4 << 20  # the default ~208 KiB holds only ~90 MTU frames; bursts would drop
PACKET_MR_PROMISC = 1
TPACKET_V2 = 1
TPACKET_V3 = 2
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1  # RX block: handed to user space
TP_STATUS_AVAILABLE = 0  # TX slot: free for user space
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4
TX_BUSY = TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING

# struct tpacket_block_desc: version u32 @0, offset_to_priv u32 @4, then tpacket_hdr_v1:
# block_status u32 @8, num_pkts u32 @12, offset_to_first_pkt u32 @16, blk_len u32 @20.
BLOCK_STATUS = 8
BLOCK_PKTS = struct.Struct("<II")  # num_pkts, offset_to_first_pkt, at +12
BLOCK_PKTS_AT = 12
# struct tpacket3_hdr: tp_next_offset u32 @0, tp_sec @4, tp_nsec @8, tp_snaplen u32 @12,
# tp_len u32 @16, tp_status @20, tp_mac u16 @24, tp_net u16 @26.
RX_HDR = struct.Struct("<I8xII4xH")  # next_offset, snaplen, len, mac (unpack only)
RX_NEXT = struct.Struct("<I")  # tp_next_offset alone
RX_HDR_FIELDS = RX_HDR.format.lstrip("<")  # one header's layout, for strided reads
RX_STAMP = struct.Struct("<II")  # tp_sec, tp_nsec: when the kernel received the frame
RX_STAMP_AT = 4
# struct tpacket2_hdr: tp_status u32 @0, tp_len u32 @4, tp_snaplen u32 @8, tp_mac u16 @12.
TX_LEN_MAC = struct.Struct("<IIH")  # tp_len, tp_snaplen, tp_mac, packed at slot + 4
TX_LEN_MAC_AT = 4
TX_HEADER = struct.Struct("@IIIH")  # tp_status, tp_len, tp_snaplen, tp_mac, at the slot
# struct virtio_net_hdr, little-endian (the kernel's legacy virtio byte order on arm64
# and x86_64): flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16,
# csum_offset u16. All zero but hdr_len: no offload, no checksum to fill.
VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
# Where a TX frame's data area starts: 16-byte aligned, with room for the virtio_net_hdr
# in front of a frame that starts it, past TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)
# (32), the lowest tp_mac the kernel accepts. A slot's tp_mac is where that header is.
TX_DATA = 48
TX_VNET = TX_DATA - VNET_HDR_LEN  # every slot's tp_mac: the header, then the frame
HDR_LEN_AT = TX_VNET + 2  # the header's hdr_len in a slot (32-bit aligned, with gso_size)
ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_8021Q = 0x8100
SIOCGIFMTU = 0x8921
SIOCINQ = 0x541B  # on a packet socket: the length of the next queued frame, 0 if none
TPACKET_REQ = struct.Struct("=4I")
TPACKET_REQ3 = struct.Struct("=7I")
PACKET_MREQ = struct.Struct("iHH8s")

TP_STATUS_BLK_TMO = 0x20  # RX block handed over by the timeout, not because it was full

# Classic BPF (linux/filter.h): struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}.
BPF_RET_K = 0x06
BPF_LD_B_ABS = 0x30
BPF_JEQ_K = 0x15
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE, as a u32
DROP_ALL = ((BPF_RET_K, 0, 0, 0),)
NOT_OUTGOING = (
    (BPF_LD_B_ABS, 0, 0, SKF_AD_PKTTYPE),
    (BPF_JEQ_K, 0, 1, PACKET_OUTGOING),
    (BPF_RET_K, 0, 0, 0),
    (BPF_RET_K, 0, 0, 0xFFFFFFFF),
)

RX_BLOCK_SIZE = 1 << 17  # 128 KiB: ~80 MTU frames or ~900 minimum-size frames
RX_RING_BYTES = 4 << 20
RX_BLOCK_COUNT = RX_RING_BYTES // RX_BLOCK_SIZE
RX_TIMEOUT_MS = 1
# Data area at 48, then the copy window: at most 2048 bytes, as it never leaves its
# buffer, with the frame's skew (0-15 bytes) inside it; then padding to 33 pages.
TX_FRAME_SIZE = 2112
# 33 pages hold exactly 64 slots, so every slot sits at k * TX_FRAME_SIZE from the start of
# the map: one stride for the whole ring lets the data path write a batch's slot headers
# with one strided store per field (datapath.py). 256 slots (528 KiB): a batch fills at
# most one ring's worth per send, and TX batches of 256 instead of 128 took 11 % (64 B)
# and 16 % (1514 B) off the CPU time per frame in the host bench. A slot's bytes live
# for one batch (copied in, then read by send() in the same batch), so the ring's size
# is not a cache working set across batches.
TX_BLOCK_SIZE = 33 * 4096
TX_BLOCK_COUNT = 4


class RingGeometry(Record):
    """The RX ring's block size and block timeout (the ring stays ~RX_RING_BYTES)."""

    block_size: int = RX_BLOCK_SIZE
    timeout_ms: int = RX_TIMEOUT_MS

    @property
    def block_count(self) -> int:
        return max(2, RX_RING_BYTES // self.block_size)


def _set(sock: socket.socket, option: int, value: int | bytes) -> None:
    sock.setsockopt(SOL_PACKET, option, value)


class _closing_on_error:
    """Close `sock` if the block fails (a plain class: contextlib costs start-up time)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.sock.close()


def _close_ring(sock: socket.socket, ring: mmap.mmap, views: tuple[memoryview, ...]) -> None:
    """Release the views (casts first), unmap the ring, close its socket."""
    for view in views:
        view.release()
    try:
        ring.close()
    except BufferError:  # a view someone else still holds: the mapping goes with it later
        pass
    sock.close()


def _promiscuous(sock: socket.socket, interface: str) -> None:
    mreq = PACKET_MREQ.pack(socket.if_nametoindex(interface), PACKET_MR_PROMISC, 0, b"")
    _set(sock, PACKET_ADD_MEMBERSHIP, mreq)


class RxRing:
    """A TPACKET_V3 receive ring and the driver's position in it.

    ``block`` is the block the driver reads next (or is reading); ``pos`` the offset of
    its next frame header and ``left`` the frames not yet read from it. ``pos`` is -1
    while the driver holds no block.
    """

    __slots__ = (
        "block",
        "block_count",
        "block_size",
        "left",
        "map",
        "pos",
        "runs",
        "sock",
        "status",
        "timeout_ms",
        "view",
    )

    def __init__(
        self, sock: socket.socket, ring: mmap.mmap, block_size: int, block_count: int, tov: int
    ) -> None:
        self.sock = sock
        self.map = ring
        self.view = memoryview(ring)
        self.status = self.view.cast("I")  # block_status words, index (block_off + 8) >> 2
        self.block_size = block_size
        self.block_count = block_count
        self.timeout_ms = tov
        self.block = 0
        self.pos = -1
        self.left = 0
        # uniform_run's header reads, kept by shape (strided.py).
        self.runs: dict[tuple[str, int, int], Unpack] = {}

    def uniform_run(self, pos: int, count: int) -> tuple[list[int], list[int], int] | None:
        """The `count` frames from the header at `pos` on, when they are evenly spaced
        and alike (a burst of one size): their data offsets, their lengths and the
        position after the last; None when they are not, or one is larger than a buffer
        or cut short, and the per-frame walk decides. The headers are read READ_CHUNK at a
        time by one struct call each; the checks are comparisons over the fields.

        Frame i is at pos + i * step only if every frame before it says so (its
        tp_next_offset is step), so each header read is a real one until the first that
        differs, where the run is refused."""
        if count < 2:
            return None
        view = self.view
        step = RX_NEXT.unpack_from(view, pos)[0]
        if step < RX_HDR.size or pos + (count - 1) * step + RX_HDR.size > len(view):
            return None
        fields: list[int] = []
        for k in range(0, count, READ_CHUNK):
            n = count - k if count - k < READ_CHUNK else READ_CHUNK
            read = strided_unpack(self.runs, RX_HDR_FIELDS, RX_HDR.size, n, step)
            got: tuple[int, ...] = read(view, pos + k * step)
            # Every tp_next_offset is step, but the run's last may be anything (0 where it
            # ends a block).
            nexts = got[0:-4:4] if k + n == count else got[0::4]
            if nexts.count(step) != len(nexts):
                return None
            fields += got
        sizes = fields[2::4]
        macs = fields[3::4]
        if fields[1::4] != sizes or max(sizes) > NET_BUFFER_SIZE or macs.count(macs[0]) != count:
            return None
        start = pos + macs[0]
        return (
            list(range(start, start + count * step, step)),
            sizes,
            pos + (count - 1) * step + fields[-4],
        )

    def ready(self, block: int) -> bool:
        """Whether the kernel has handed `block` to user space."""
        return bool(self.status[(block * self.block_size + BLOCK_STATUS) >> 2] & TP_STATUS_USER)

    def frames_ready(self, limit: int) -> int:
        """Frames the driver could read now (the held block's rest, then each block the
        kernel has handed over), counted up to `limit`: a batch then reads only as many
        rx_free descriptors as it can fill. Reads one header word per block."""
        count = self.left
        block = self.block if self.pos < 0 else self.block + 1
        for _ in range(self.block_count - (self.pos >= 0)):
            if count >= limit:
                break
            block = block if block < self.block_count else 0
            boff = block * self.block_size
            if not self.status[(boff + BLOCK_STATUS) >> 2] & TP_STATUS_USER:
                break
            count += self.status[(boff + BLOCK_PKTS_AT) >> 2]
            block += 1
        return count if count < limit else limit

    def release(self, block: int) -> None:
        """Give `block` back to the kernel (after every copy out of it is done)."""
        self.status[(block * self.block_size + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL

    def frames(self) -> Iterator[tuple[int, int, int]]:
        """(data offset, tp_len, tp_snaplen) of every frame in the held and ready blocks,
        releasing each block once read: for tests and tools, not the data path."""
        while True:
            if not self.left:
                if self.pos >= 0:
                    self.release(self.block)
                    self.block = (self.block + 1) % self.block_count
                    self.pos = -1
                if not self.ready(self.block):
                    return
                boff = self.block * self.block_size
                self.left, first = BLOCK_PKTS.unpack_from(self.view, boff + BLOCK_PKTS_AT)
                self.pos = boff + first
                continue
            nxt, snap, length, mac = RX_HDR.unpack_from(self.view, self.pos)
            yield self.pos + mac, length, snap
            self.pos += nxt
            self.left -= 1

    def close(self) -> None:
        _close_ring(self.sock, self.map, (self.status, self.view))


class TxRing:
    """A TPACKET_V2 transmit ring; ``next`` is the slot the driver fills next.

    The kernel sends slots strictly in ring order, so the driver fills them in that order
    and keeps ``pending``, the slots requested but not yet handed to a ``send()`` that
    succeeded. ``max_len`` is the longest frame the link takes untagged (its MTU plus the
    Ethernet header, at most a buffer); `read_mtu` (None: a buffer is the limit) reads
    the MTU, again whenever a frame is longer (``refresh_mtu``).
    """

    __slots__ = (
        "half", "map", "max_len", "mtu", "next", "pending", "read_mtu", "slots", "sock",
        "status", "stride", "view",
    )  # fmt: skip

    def __init__(
        self,
        sock: socket.socket,
        ring: mmap.mmap,
        frame_size: int,
        block_size: int,
        blocks: int,
        read_mtu: Callable[[], int] | None = None,
    ) -> None:
        self.sock = sock
        self.map = ring
        self.view = memoryview(ring)
        # tp_status at slot_off >> 2, tp_len at +1; tp_mac (u16) at (slot_off >> 1) + 6.
        self.status = self.view.cast("I")
        self.half = self.view.cast("H")
        per_block = block_size // frame_size
        self.slots = [
            b * block_size + k * frame_size for b in range(blocks) for k in range(per_block)
        ]
        # The distance between consecutive slots when it is the same everywhere (blocks
        # filled exactly by whole slots), else 0: the data path's batched slot writes
        # need it (datapath.DataPath._tx_ring_fast).
        self.stride = frame_size if block_size % frame_size == 0 else 0
        self.next = 0
        self.pending: list[int] = []
        # Every frame starts the data area, after its virtio_net_hdr: tp_mac and the
        # header's fields but hdr_len are the same in every slot for good, so the data
        # path writes only tp_len, hdr_len and tp_status per frame.
        for slot in self.slots:
            TX_LEN_MAC.pack_into(self.view, slot + TX_LEN_MAC_AT, 0, 0, TX_VNET)
            VNET_HDR.pack_into(self.view, slot + TX_VNET, 0, 0, 0, 0, 0, 0)
        self.read_mtu = read_mtu
        self.mtu = self.max_len = 0
        self.refresh_mtu()

    def refresh_mtu(self) -> None:
        """Read the link's MTU (it may have changed while the driver runs); if it cannot
        be read, the last one stays."""
        if self.read_mtu is None:
            self.mtu = NET_BUFFER_SIZE - ETH_HLEN
        else:
            try:
                self.mtu = self.read_mtu()
            except OSError:
                if not self.mtu:
                    raise
        self.max_len = min(self.mtu + ETH_HLEN, NET_BUFFER_SIZE)

    def takes(self, length: int, ethertype: int) -> bool:
        """Whether the link takes a frame of `length` bytes with this EtherType: the
        kernel's own rule for a packet socket's send (MTU + 14 bytes, 4 more for an
        802.1Q tag), which a TX ring with a virtio_net_hdr does not apply."""
        vlan = VLAN_HLEN if ethertype == ETH_P_8021Q else 0
        return length <= self.mtu + ETH_HLEN + vlan

    def close(self) -> None:
        _close_ring(self.sock, self.map, (self.status, self.half, self.view))


def queued_probe(sock: socket.socket) -> Callable[[], int]:
    """A call returning the length of the frame next in `sock`'s receive queue, 0 when
    the queue is empty (SIOCINQ): one ioctl, about a third of what a receive that finds
    nothing costs (it raises BlockingIOError), measured on the host."""
    fd, ioctl, out = sock.fileno(), fcntl.ioctl, array.array("i", (0,))

    def queued() -> int:
        ioctl(fd, SIOCINQ, out, True)
        return out[0]

    return queued


def link_mtu(sock: socket.socket, interface: str) -> int:
    """The interface's MTU (SIOCGIFMTU on any socket)."""
    ifreq = struct.pack("16si20x", interface.encode(), 0)  # struct ifreq: name, ifr_mtu
    return int(struct.unpack_from("i", fcntl.ioctl(sock.fileno(), SIOCGIFMTU, ifreq), 16)[0])


def set_filter(
    sock: socket.socket, level: int, option: int, prog: tuple[tuple[int, ...], ...]
) -> None:
    """Hand a classic BPF program (a struct sock_fprog) to the kernel, which copies it."""
    code = array.array("B", b"".join(struct.pack("=HBBI", *ins) for ins in prog))
    address, _ = code.buffer_info()
    sock.setsockopt(level, option, struct.pack("@HQ", len(prog), address))


def open_rx_ring(
    interface: str,
    *,
    block_size: int = RX_BLOCK_SIZE,
    block_count: int = RX_BLOCK_COUNT,
    timeout_ms: int = RX_TIMEOUT_MS,
    receive: bool = True,
) -> RxRing:
    """A promiscuous TPACKET_V3 ring socket for every protocol on `interface`.

    With receive=False it is bound with a filter that drops everything, ready to join a
    fanout group (RxSwitch) without ever receiving a frame twice.
    """
    if block_size % mmap.PAGESIZE or block_size < 4096 or block_count < 2:
        raise ValueError(f"RX ring: block size {block_size} x {block_count} blocks")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing until bind
    with _closing_on_error(sock):
        _set(sock, PACKET_IGNORE_OUTGOING, 1)
        _set(sock, PACKET_VERSION, TPACKET_V3)
        frame = 2048  # V3 frames are variable; this only has to divide the block
        req = TPACKET_REQ3.pack(
            block_size, block_count, frame, block_size // frame * block_count, timeout_ms, 0, 0
        )
        _set(sock, PACKET_RX_RING, req)
        ring = mmap.mmap(
            sock.fileno(), block_size * block_count, mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )  # fmt: skip
        try:
            if not receive:
                set_filter(sock, socket.SOL_SOCKET, SO_ATTACH_FILTER, DROP_ALL)
            sock.bind((interface, ETH_P_ALL))
            _promiscuous(sock, interface)
            sock.setblocking(False)
        except BaseException:
            ring.close()
            raise
    return RxRing(sock, ring, block_size, block_count, timeout_ms)


class RxSwitch:
    """The RX ring and the plain packet socket as one fanout group, one of them receiving.

    A TPACKET_V3 ring wakes the driver once per block, so at a low frame rate a frame
    waits up to the block timeout; a plain socket wakes it per frame but costs a system
    call per frame. Both sockets join one ``PACKET_FANOUT_CBPF`` group whose program
    returns the index of the member that gets every frame; changing the program is
    atomic, so each frame goes to exactly one of them, none is lost or duplicated.
    Members are indexed in joining order, and the kernel re-links them in creation order
    after the link goes down and up; the plain socket is both created and joined first.
    A socket filter on each drops the host's own outgoing frames (a fanout group does
    not honour the members' PACKET_IGNORE_OUTGOING).
    """

    SOCKET, RING = 0, 1

    __slots__ = ("group", "selected", "sock")

    def __init__(self, sock: socket.socket, ring: RxRing) -> None:
        self.sock = sock
        last: OSError | None = None
        for attempt in range(16):
            group = (os.getpid() + attempt * 4099) & 0xFFFF
            try:
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group | PACKET_FANOUT_CBPF << 16)
                break
            except OSError as exc:  # the id is taken in this namespace: try another
                last = exc
        else:
            assert last is not None
            raise last
        self.group = group
        self.selected = -1
        self.select(self.SOCKET)
        ring.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group | PACKET_FANOUT_CBPF << 16)
        for member in (sock, ring.sock):
            set_filter(member, socket.SOL_SOCKET, SO_ATTACH_FILTER, NOT_OUTGOING)

    def select(self, member: int) -> None:
        """Send every frame from now on to `member` (SOCKET or RING)."""
        if member != self.selected:
            set_filter(self.sock, SOL_PACKET, PACKET_FANOUT_DATA, ((BPF_RET_K, 0, 0, member),))
            self.selected = member


def open_tx_ring(
    interface: str,
    *,
    frame_size: int = TX_FRAME_SIZE,
    block_size: int = TX_BLOCK_SIZE,
    block_count: int = TX_BLOCK_COUNT,
) -> TxRing:
    """A TPACKET_V2 TX ring socket on `interface` that bypasses the qdisc and takes a
    virtio_net_hdr before each frame; it receives nothing."""
    if frame_size % 16 or frame_size < TX_DATA + NET_BUFFER_SIZE or block_size < frame_size:
        raise ValueError(f"TX ring: frame size {frame_size}, block size {block_size}")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with _closing_on_error(sock):
        _set(sock, PACKET_VERSION, TPACKET_V2)
        _set(sock, PACKET_QDISC_BYPASS, 1)
        _set(sock, PACKET_VNET_HDR, 1)  # before the ring: the kernel refuses it after
        _set(sock, PACKET_TX_HAS_OFF, 1)
        _set(sock, PACKET_LOSS, 1)
        per_block = block_size // frame_size
        _set(
            sock,
            PACKET_TX_RING,
            TPACKET_REQ.pack(block_size, block_count, frame_size, per_block * block_count),
        )
        ring = mmap.mmap(
            sock.fileno(), block_size * block_count, mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )  # fmt: skip
        try:
            sock.bind((interface, 0))  # protocol 0: no receive hook at all
            sock.setblocking(False)
            return TxRing(
                sock, ring, frame_size, block_size, block_count,
                lambda: link_mtu(sock, interface),
            )  # fmt: skip
        except BaseException:
            ring.close()
            raise


def open_tx_socket(interface: str) -> socket.socket:
    """A plain packet socket for per-frame ``send`` that receives nothing (protocol 0)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with _closing_on_error(sock):
        sock.bind((interface, 0))
        sock.setblocking(False)
    return sock


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
        # Receive timestamps for the latency histogram (datapath: one read per batch).
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
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


class PacketIO:
    """What the data path sends and receives with, for the chosen RX and TX modes."""

    def __init__(
        self,
        sock: socket.socket | None = None,  # plain socket: socket-mode RX and/or TX
        rx_ring: RxRing | None = None,
        tx_ring: TxRing | None = None,
        rx_switch: RxSwitch | None = None,  # "auto": the socket and the ring, one receiving
    ) -> None:
        self.sock = sock
        self.rx_ring = rx_ring
        self.tx_ring = tx_ring
        self.rx_switch = rx_switch

    def close(self) -> None:
        for thing in (self.sock, self.rx_ring, self.tx_ring):
            if thing is not None:
                thing.close()


def open_packet_io(
    interface: str, rx_mode: str, tx_mode: str, geometry: RingGeometry | None = None
) -> PacketIO:
    """The packet socket and/or rings for the chosen modes ("socket", "ring" or "auto").

    RX "socket" and "auto" receive on a plain socket (auto: in a fanout group with the
    ring, RxSwitch); RX "ring" opens the plain socket (with protocol 0, receiving nothing)
    only if TX uses it.
    """
    io = PacketIO()
    g = geometry or RingGeometry()

    def rx_ring(interface: str, receive: bool) -> RxRing:
        return open_rx_ring(
            interface,
            block_size=g.block_size,
            block_count=g.block_count,
            timeout_ms=g.timeout_ms,
            receive=receive,
        )

    try:
        if rx_mode in ("socket", "auto"):
            io.sock = sock = open_packet_socket(interface)
            if rx_mode == "auto":
                io.rx_ring = ring = _device_error(interface, lambda i: rx_ring(i, False))
                io.rx_switch = _device_error(interface, lambda i: RxSwitch(sock, ring))
        elif rx_mode == "ring":
            io.rx_ring = _device_error(interface, lambda i: rx_ring(i, True))
            if tx_mode == "socket":
                io.sock = _device_error(interface, open_tx_socket)
        if tx_mode == "ring":
            io.tx_ring = _device_error(interface, open_tx_ring)
    except BaseException:
        io.close()
        raise
    return io


def _device_error(interface: str, opener: Callable[[str], T]) -> T:
    try:
        return opener(interface)
    except OSError as exc:
        raise DeviceError(f"cannot use interface '{interface}': {exc.strerror or exc}") from None
