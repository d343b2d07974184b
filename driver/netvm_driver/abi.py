"""The binary contract with sDDF and libvmm: offsets and struct formats (docs/contract.md).

Owns: the layout of the data-passing page, the queue header and the buffer descriptor,
and the decoding of the data-passing page from its words. Must not touch shared memory
itself (devmem.py does) and holds no state.

All layouts are little-endian LP64 and identical on aarch64 and x86_64 (checked against
the sDDF headers with a compiler probe; see the upstream notes).
"""

from __future__ import annotations

import struct

from .records import Record

PAGE_SIZE = 4096

# sDDF include/sddf/network/constants.h and config.h
NET_BUFFER_SIZE = 2048
SDDF_NET_MAGIC = b"sDDF\x05"
SDDF_NET_MAX_CLIENTS = 64

# net_drv_vm_data_passing_t (libvmm tools/linux/include/uio/net.h): 616 bytes.
DATA_PASSING_FORMAT = "<5s3x" + "QQQQHB5x" + "QQQQHB5x" + "Qi4x" + f"{SDDF_NET_MAX_CLIENTS}Q"
DATA_PASSING = struct.Struct(DATA_PASSING_FORMAT)
DATA_PASSING_SIZE = 616
DP_MAGIC = 0
DP_VIRT_RX = 8
DP_VIRT_TX = 48
CONN_FREE_QUEUE = 0  # region_resource_t {vaddr u64, size u64}
CONN_ACTIVE_QUEUE = 16
CONN_NUM_BUFFERS = 32  # u16
CONN_ID = 34  # u8
CONN_SIZE = 40
DP_RX_DATA_PADDR = 88  # u64
DP_NUM_TX_CLIENTS = 96  # int32
DP_TX_DATA_PADDRS = 104  # u64[64]

# net_queue_t: header then descriptors.
QUEUE_TAIL = 0  # u16, written by the producer
QUEUE_HEAD = 2  # u16, written by the consumer
QUEUE_CONSUMER_SIGNALLED = 4  # u32; 0 = "the consumer wants a signal"
QUEUE_HEADER_SIZE = 8
QUEUE_HEADER = struct.Struct("<HHI")

# net_buff_desc_t: io_or_offset u64 @0, len u16 @8, the rest reserved (sDDF HEAD keeps a
# 6-bit oid at byte 10, so descriptors are passed on verbatim with only len changed).
DESC_SIZE = 16
DESC_IO = 0
DESC_LEN = 8
DESC = struct.Struct("<QH6x")
DESC_LEN_MASK = 0xFFFF  # len is the low 16 bits of the descriptor's second u64 word

INDEX_MASK = 0xFFFF  # queue indices are u16 and wrap


def queue_region_size(capacity: int) -> int:
    """Bytes a queue of `capacity` descriptors needs, rounded up to a page (sdfgen's rule)."""
    raw = QUEUE_HEADER_SIZE + DESC_SIZE * capacity
    return (raw + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def desc_offset(slot: int) -> int:
    """Byte offset of descriptor `slot` inside a queue region."""
    return QUEUE_HEADER_SIZE + DESC_SIZE * slot


# NamedTuple, not dataclasses: dataclasses imports inspect, ast and dis, which cost the
# guest initramfs 0.1 MiB and python start-up time under QEMU.
class Connection(Record):
    free_queue: tuple[int, int]  # (vaddr, size) as the VMM sees them
    active_queue: tuple[int, int]
    num_buffers: int
    id: int


class DataPassing(Record):
    """The fields of the data-passing page (the driver uses magic, num_buffers and paddrs)."""

    magic: bytes
    virt_rx: Connection
    virt_tx: Connection
    rx_data_paddr: int
    num_tx_clients: int
    tx_data_paddrs: tuple[int, ...]  # all 64 slots; only the first num_tx_clients matter

    @classmethod
    def unpack(cls, raw: bytes) -> DataPassing:
        f = DATA_PASSING.unpack(raw[:DATA_PASSING_SIZE])
        return cls(
            magic=f[0],
            virt_rx=Connection((f[1], f[2]), (f[3], f[4]), f[5], f[6]),
            virt_tx=Connection((f[7], f[8]), (f[9], f[10]), f[11], f[12]),
            rx_data_paddr=f[13],
            num_tx_clients=f[14],
            tx_data_paddrs=tuple(f[15:]),
        )

    def pack(self) -> bytes:
        """The page image (used by tests and by the host simulation's VMM stand-in)."""
        rx, tx = self.virt_rx, self.virt_tx
        paddrs = list(self.tx_data_paddrs) + [0] * (SDDF_NET_MAX_CLIENTS - len(self.tx_data_paddrs))
        return DATA_PASSING.pack(
            self.magic,
            *rx.free_queue,
            *rx.active_queue,
            rx.num_buffers,
            rx.id,
            *tx.free_queue,
            *tx.active_queue,
            tx.num_buffers,
            tx.id,
            self.rx_data_paddr,
            self.num_tx_clients,
            *paddrs,
        )
