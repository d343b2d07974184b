"""The VMM-side view of one sDDF net queue in a simulated shared region.

Owns: reading and writing the queue header and descriptors from the host side. Written
independently of the driver's queue.py on purpose: the simulation checks the driver
against the contract (docs/contract.md), not against the driver's own reading of it.

Indices and the signal flag are read and written with one 16/32-bit access through
``memoryview.cast``: ``struct`` with an explicit byte order moves one byte at a time, and
the driver, running concurrently, would then see torn indices.
"""

from __future__ import annotations

import mmap
import struct
import sys

DESC = struct.Struct("<QH6x")
TAIL, HEAD, SIGNALLED, FIRST_DESC, DESC_SIZE = 0, 2, 4, 8, 16


class SimRing:
    def __init__(self, name: str, buf: mmap.mmap, capacity: int) -> None:
        if capacity & (capacity - 1) or not 0 < capacity <= 0x8000:
            raise ValueError(f"{name}: capacity {capacity} is not a power of two")
        if len(buf) < FIRST_DESC + DESC_SIZE * capacity:
            raise ValueError(f"{name}: region too small for {capacity} descriptors")
        if sys.byteorder != "little":
            raise RuntimeError("the simulation assumes a little-endian host, like the target")
        self.name = name
        self.buf = buf
        self.capacity = capacity
        self.mask = capacity - 1
        header = memoryview(buf)[:FIRST_DESC]
        self._u16 = header.cast("H")
        self._u32 = header.cast("I")

    @property
    def tail(self) -> int:
        return int(self._u16[TAIL // 2])

    @property
    def head(self) -> int:
        return int(self._u16[HEAD // 2])

    def publish_tail(self, value: int) -> None:
        self._u16[TAIL // 2] = value & 0xFFFF

    def publish_head(self, value: int) -> None:
        self._u16[HEAD // 2] = value & 0xFFFF

    def signal_required(self) -> bool:
        return int(self._u32[SIGNALLED // 4]) == 0

    def request_signal(self) -> None:
        self._u32[SIGNALLED // 4] = 0

    def cancel_signal(self) -> None:
        self._u32[SIGNALLED // 4] = 1

    def release(self) -> None:
        """Drop the views so the mapping can be closed."""
        self._u16.release()
        self._u32.release()

    def read(self, index: int) -> tuple[int, int]:
        io, length = DESC.unpack_from(self.buf, FIRST_DESC + DESC_SIZE * (index & self.mask))
        return int(io), int(length)

    def write(self, index: int, io: int, length: int) -> None:
        DESC.pack_into(self.buf, FIRST_DESC + DESC_SIZE * (index & self.mask), io, length)

    def entries(self, head: int, tail: int) -> list[tuple[int, int]]:
        """Descriptors between two indices (for conservation checks)."""
        n = (tail - head) & 0xFFFF
        if n > self.capacity:
            return []
        return [self.read(head + k) for k in range(n)]
