"""sDDF net queue logic: indices, slots, batches and the signal flag (docs/contract.md).

Owns: the ring arithmetic and its validation. The driver keeps its own copy of the index
it owns (the head of a ring it consumes, the tail of a ring it produces) and only ever
reads the other side's index, so a hostile peer cannot make it re-read or skip its own
position. Must not touch memory except through devmem.DeviceMemory, and must not decide
what a descriptor means (datapath.py).

Indices are u16 and wrap; the length of a ring is ``(tail - head) & 0xFFFF``. A length
above the capacity can only come from a corrupt or hostile index: it is reported as -1
and the ring is treated as empty (or full) until the index makes sense again.
"""

from __future__ import annotations

from .abi import (
    DESC_LEN_MASK,
    DESC_SIZE,
    INDEX_MASK,
    QUEUE_CONSUMER_SIGNALLED,
    QUEUE_HEAD,
    QUEUE_HEADER_SIZE,
    QUEUE_TAIL,
)
from .devmem import DeviceMemory

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_CAPACITY = 0x8000  # u16 indices: a full ring must differ from an empty one


class QueueConfigError(ValueError):
    pass


def ring_length(tail: int, head: int) -> int:
    """Entries between head and tail, modulo the u16 index space."""
    return (tail - head) & INDEX_MASK


def check_capacity(capacity: int, region_size: int, name: str) -> None:
    if capacity < 1 or capacity > MAX_CAPACITY or capacity & (capacity - 1):
        # Slots stay consistent across the u16 wrap only if capacity divides 65536.
        raise QueueConfigError(
            f"{name}: capacity {capacity} must be a power of two between 1 and {MAX_CAPACITY}"
        )
    need = QUEUE_HEADER_SIZE + DESC_SIZE * capacity
    if region_size < need:
        raise QueueConfigError(
            f"{name}: region of {region_size:#x} bytes is too small for {capacity} "
            f"descriptors ({need:#x} bytes)"
        )


class Ring:
    """One queue (header and descriptors) in a shared region.

    The header words are devmem cells: ``load_tail()``, ``load_head()``, ``store_tail(v)``
    and ``store_head(v)`` are single aligned accesses made without an interpreter frame
    (they run several times on every wake-up). A store takes a value already reduced to
    16 bits (a larger one raises); ``publish_*`` reduce it first.
    """

    __slots__ = (
        "_load_signal",
        "_store_signal",
        "capacity",
        "load_head",
        "load_tail",
        "mask",
        "mem",
        "name",
        "store_head",
        "store_tail",
    )

    def __init__(self, mem: DeviceMemory, capacity: int, name: str | None = None) -> None:
        self.name = name or mem.name
        check_capacity(capacity, mem.size, self.name)
        self.mem = mem
        self.capacity = capacity
        self.mask = capacity - 1
        self.load_tail, self.store_tail = mem.cell16(QUEUE_TAIL)
        self.load_head, self.store_head = mem.cell16(QUEUE_HEAD)
        self._load_signal, self._store_signal = mem.cell32(QUEUE_CONSUMER_SIGNALLED)

    def publish_tail(self, tail: int) -> None:
        self.store_tail(tail & INDEX_MASK)

    def publish_head(self, head: int) -> None:
        self.store_head(head & INDEX_MASK)

    def request_signal(self) -> None:
        """Consumer: "signal me when you add work" (consumer_signalled = 0)."""
        self._store_signal(0)

    def cancel_signal(self) -> None:
        self._store_signal(1)

    def signal_required(self) -> bool:
        return self._load_signal() == 0

    def slot_offset(self, index: int) -> int:
        return QUEUE_HEADER_SIZE + DESC_SIZE * (index & self.mask)


class Consumer:
    """Our end of a ring we dequeue from; `head` is ours, `tail` is the peer's."""

    __slots__ = ("capacity", "head", "ring")

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.capacity = ring.capacity
        self.head = ring.load_head()

    def available(self) -> int:
        """Entries ready to dequeue, or -1 if the peer's tail is impossible."""
        n = (self.ring.load_tail() - self.head) & INDEX_MASK
        return n if n <= self.capacity else -1

    def peek(self, k: int) -> tuple[int, int]:
        """Descriptor words of the k-th entry after head (k < available())."""
        ring = self.ring
        return ring.mem.load_desc(ring.slot_offset(self.head + k))

    def peek_words(self, n: int) -> tuple[int, ...]:
        """The next n entries (n <= available()) flat as (io, word1, io, word1, ...).

        One batched read (two at the ring's wrap) instead of one call per descriptor.
        """
        ring = self.ring
        slot = self.head & ring.mask
        first = n if n < ring.capacity - slot else ring.capacity - slot
        words = ring.mem.load_descs(QUEUE_HEADER_SIZE + DESC_SIZE * slot, first)
        if first < n:
            words += ring.mem.load_descs(QUEUE_HEADER_SIZE, n - first)
        return words

    def advance(self, n: int) -> None:
        """Dequeue n entries: one head publish."""
        self.head = (self.head + n) & INDEX_MASK
        self.ring.store_head(self.head)


class Producer:
    """Our end of a ring we enqueue to; `tail` is ours, `head` is the peer's."""

    __slots__ = ("capacity", "ring", "tail")

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.capacity = ring.capacity
        self.tail = ring.load_tail()

    def space(self) -> int:
        """Free slots, or -1 if the peer's head is impossible."""
        used = (self.tail - self.ring.load_head()) & INDEX_MASK
        return self.capacity - used if used <= self.capacity else -1

    def put(self, k: int, word0: int, word1: int) -> None:
        """Write the k-th new entry after tail (not visible until commit)."""
        ring = self.ring
        ring.mem.store_desc(ring.slot_offset(self.tail + k), word0, word1)

    def put_words(self, words: Sequence[int]) -> int:
        """Write len(words) // 2 new entries after tail, given flat as in peek_words.

        Not visible until commit; returns the number of entries written.
        """
        ring = self.ring
        n = len(words) >> 1
        slot = self.tail & ring.mask
        first = n if n < ring.capacity - slot else ring.capacity - slot
        ring.mem.store_descs(QUEUE_HEADER_SIZE + DESC_SIZE * slot, words[: 2 * first])
        if first < n:
            ring.mem.store_descs(QUEUE_HEADER_SIZE, words[2 * first :])
        return n

    def commit(self, n: int) -> None:
        """Publish n written entries: the descriptors are complete before the tail moves."""
        self.tail = (self.tail + n) & INDEX_MASK
        self.ring.store_tail(self.tail)


def with_len(word1: int, length: int) -> int:
    """A descriptor's second word with its len replaced and the reserved bits kept."""
    return (word1 & ~DESC_LEN_MASK) | length
