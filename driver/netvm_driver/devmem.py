"""Every access the driver makes to shared memory goes through this module.

Owns: loads and stores of indices, flags and descriptor words; the padded, aligned frame
copies; the guest->VMM doorbell store.
Must not hold queue logic (queue.py) or decide what is valid (datapath.py).

Why so strict: in the guest these maps are uncached Device memory. An unaligned or
wider-than-natural access faults, and a byte-wise store of an index can be seen torn by
the other side. So:
- indices and flags are published with ONE aligned 16/32-bit store and read with one
  aligned load (``memoryview.cast`` gives exactly one ``ldrh``/``strh``/``ldr``/``str``);
- descriptor words are moved as aligned 64-bit words;
- frame bytes are moved only by user copies whose both ends are 16-byte aligned in the
  map, padded inside the 2048-byte buffer (a plain slice copy uses memcpy, which issues
  unaligned overlapping accesses for odd lengths). The kernel never copies to or from a
  map: its copy_to_user aligns the *source* (the skb), so a frame that does not start
  16-byte aligned there would reach the map as unaligned stores, which fault on Device
  memory; so the sockets receive into and send from ordinary memory;
- the fault page is only ever written, with a single byte store: the VMM skips the
  faulting instruction without emulating it, so a read would return garbage.
Every offset is checked (alignment, and bounds by memoryview itself), so a bad offset
raises instead of touching memory outside the mapped region.
"""

from __future__ import annotations

import struct

from .abi import NET_BUFFER_SIZE
from .strided import READ_CHUNK, strided_unpack

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Sequence
    from functools import partial

    from .strided import Unpack
else:
    from _functools import partial  # not functools.py: see docs/driver.md, "Start-up"

COPY_ALIGN = 16
_PAD = COPY_ALIGN - 1
_BUF_MASK = NET_BUFFER_SIZE - 1
# Up to this many bytes, a copy reads the mapped object itself (slicing an mmap gives a
# bytes object from CPython's small-object allocator, cheaper than a view); a longer
# window would need malloc and a second copy of the bytes, where a view is cheaper.
SMALL_COPY = 464
# copy_buffer_heads_out's choice between a slice copy per frame and, for a run of evenly
# spaced buffers, one read of all windows (struct) and strided word copies into the ring,
# in instructions under Debian's python3.11 (callgrind): a slice copy costs ~2,300 a
# frame whatever its width up to SMALL_COPY; a run costs a fixed ~12,000, ~2,000 per word
# of the width, and ~75 per word copied. So 64-byte frames pay from ~17 in a run,
# 128-byte ones from ~41, and wider ones never.
STRIDED_MAX_WIDTH = 128
STRIDED_CALL, STRIDED_PASS, STRIDED_WORD, SLICE_COPY = 12_000, 2_000, 75, 2_300
_WORDS: dict[int, struct.Struct] = {}


def _words(count: int) -> struct.Struct:
    """A precompiled native-order struct of `count` u64 words.

    Native (``@``) formats move each field with one ``memcpy`` of its natural size, which
    compiles to a single aligned 64-bit load or store; an explicit byte order (``<``)
    would move the words a byte at a time.
    """
    s = _WORDS.get(count)
    if s is None:
        s = _WORDS[count] = struct.Struct(f"@{count}Q")
    return s


def even_run(values: list[int], start: int) -> tuple[int, int, int]:
    """The longest run of evenly increasing values from values[start]: (count, first,
    step); count is 1 where the next value does not increase. Each test is a list
    comparison (C speed); a run that is not the whole rest is found by bisection."""
    rest, first = len(values) - start, values[start]
    if rest < 2 or values[start + 1] <= first:
        return min(rest, 1), first, 0
    step = values[start + 1] - first
    if values[start:] == list(range(first, first + rest * step, step)):
        return rest, first, step
    good, bad = 2, rest  # a prefix this long is a run; one this long is not
    while bad - good > 1:
        mid = (good + bad) >> 1
        if values[start : start + mid] == list(range(first, first + mid * step, step)):
            good = mid
        else:
            bad = mid
    return good, first, step


class DeviceMemoryError(ValueError):
    """An access the device-memory rules forbid (misaligned, or outside the region/buffer)."""


def padded_window(
    offset: int, length: int, region_size: int, buffer_size: int = NET_BUFFER_SIZE
) -> tuple[int, int]:
    """The aligned [start, end) a user copy of `length` bytes at `offset` really touches.

    Both ends are rounded out to COPY_ALIGN; the window must stay inside the buffer that
    holds `offset` (buffers sit at multiples of `buffer_size` in the region) and inside
    the region.
    """
    if offset < 0 or length < 0:
        raise DeviceMemoryError(f"negative copy: offset {offset}, length {length}")
    start = offset & ~(COPY_ALIGN - 1)
    end = (offset + length + COPY_ALIGN - 1) & ~(COPY_ALIGN - 1)
    buffer_end = (offset & ~(buffer_size - 1)) + buffer_size
    if end > buffer_end or end > region_size:
        raise DeviceMemoryError(
            f"copy of {length} bytes at {offset:#x} crosses its {buffer_size}-byte buffer "
            f"or the region ({region_size:#x} bytes)"
        )
    return start, end


class DeviceMemory:
    """One shared region (a UIO map, or its simulated stand-in)."""

    __slots__ = ("_gathers", "_h", "_i", "_mv", "_q", "_raw", "name", "size")

    def __init__(self, name: str, buf: mmap.mmap | bytearray) -> None:
        mv = memoryview(buf)
        if mv.nbytes % 8:
            raise DeviceMemoryError(f"{name}: region size {mv.nbytes} is not a multiple of 8")
        self.name = name
        self.size = mv.nbytes
        self._mv = mv.cast("B")
        # Slicing the mmap itself hands back the bytes in one copy without building a
        # view object: short batched copies out of a map read through it (SMALL_COPY).
        self._raw = buf
        self._h = self._mv.cast("H")
        self._i = self._mv.cast("I")
        self._q = self._mv.cast("Q")
        # _heads_out_strided's reads, kept by shape (strided.py).
        self._gathers: dict[tuple[str, int, int], Unpack] = {}

    # Single aligned loads and stores. memoryview indexing is bounds-checked; the explicit
    # checks reject misaligned and negative offsets (which would index the wrong element).

    def load16(self, offset: int) -> int:
        if offset & 1 or offset < 0:
            raise DeviceMemoryError(f"{self.name}: misaligned 16-bit load at {offset:#x}")
        return self._h[offset >> 1]

    def store16(self, offset: int, value: int) -> None:
        if offset & 1 or offset < 0:
            raise DeviceMemoryError(f"{self.name}: misaligned 16-bit store at {offset:#x}")
        self._h[offset >> 1] = value

    def load32(self, offset: int) -> int:
        if offset & 3 or offset < 0:
            raise DeviceMemoryError(f"{self.name}: misaligned 32-bit load at {offset:#x}")
        return self._i[offset >> 2]

    def store32(self, offset: int, value: int) -> None:
        if offset & 3 or offset < 0:
            raise DeviceMemoryError(f"{self.name}: misaligned 32-bit store at {offset:#x}")
        self._i[offset >> 2] = value

    def load64(self, offset: int) -> int:
        if offset & 7 or offset < 0:
            raise DeviceMemoryError(f"{self.name}: misaligned 64-bit load at {offset:#x}")
        return self._q[offset >> 3]

    def store64(self, offset: int, value: int) -> None:
        if offset & 7 or offset < 0:
            raise DeviceMemoryError(f"{self.name}: misaligned 64-bit store at {offset:#x}")
        self._q[offset >> 3] = value

    def cell16(self, offset: int) -> tuple[Callable[[], int], Callable[[int], None]]:
        """One aligned 16-bit word as (load, store) callables, checked once here.

        Each call is the same single aligned access as load16/store16, made by C code
        (a partial of the cast view's item access): no interpreter frame per access, for
        the queue indices read and published on every wake-up. A store of a value that
        does not fit raises, as memoryview does.
        """
        if offset & 1 or not 0 <= offset < self.size - 1:
            raise DeviceMemoryError(f"{self.name}: misaligned 16-bit cell at {offset:#x}")
        return partial(self._h.__getitem__, offset >> 1), partial(self._h.__setitem__, offset >> 1)

    def cell32(self, offset: int) -> tuple[Callable[[], int], Callable[[int], None]]:
        """One aligned 32-bit word as (load, store) callables: as cell16."""
        if offset & 3 or not 0 <= offset < self.size - 3:
            raise DeviceMemoryError(f"{self.name}: misaligned 32-bit cell at {offset:#x}")
        return partial(self._i.__getitem__, offset >> 2), partial(self._i.__setitem__, offset >> 2)

    def load_desc(self, offset: int) -> tuple[int, int]:
        """The two 64-bit words of a descriptor (io_or_offset; len and reserved bits)."""
        if offset & 15 != 8 or offset < 0:
            raise DeviceMemoryError(f"{self.name}: descriptor offset {offset:#x} misaligned")
        w = offset >> 3
        q = self._q
        return q[w], q[w + 1]

    def store_desc(self, offset: int, word0: int, word1: int) -> None:
        if offset & 15 != 8 or offset < 0:
            raise DeviceMemoryError(f"{self.name}: descriptor offset {offset:#x} misaligned")
        w = offset >> 3
        q = self._q
        q[w] = word0
        q[w + 1] = word1

    def load_descs(self, offset: int, count: int) -> tuple[int, ...]:
        """`count` consecutive descriptors as 2·count aligned 64-bit loads (one call).

        Returns the words flat: (io_or_offset, len word, io_or_offset, len word, ...).
        """
        if offset & 15 != 8 or count < 0 or offset + 16 * count > self.size:
            raise DeviceMemoryError(f"{self.name}: {count} descriptors at {offset:#x}")
        return _words(2 * count).unpack_from(self._mv, offset)

    def store_descs(self, offset: int, words: Sequence[int]) -> None:
        """Store descriptors given flat as in load_descs: one aligned 64-bit store per word."""
        n = len(words)
        if offset & 15 != 8 or n & 1 or offset + 8 * n > self.size:
            raise DeviceMemoryError(f"{self.name}: {n // 2} descriptors at {offset:#x}")
        _words(n).pack_into(self._mv, offset, *words)

    def load_words(self, offset: int, nbytes: int) -> bytes:
        """`nbytes` (a multiple of 8) read as aligned 64-bit loads, e.g. the data-passing page."""
        if offset & 7 or nbytes & 7 or offset < 0 or offset + nbytes > self.size:
            raise DeviceMemoryError(f"{self.name}: word read {offset:#x}+{nbytes} not aligned")
        q = self._q
        first = offset >> 3
        words = [q[first + k] for k in range(nbytes >> 3)]
        return b"".join(w.to_bytes(8, "little") for w in words)

    # Frame data. Only these copies touch frame bytes, and each moves a whole 16-byte
    # aligned window of the map; no view of a map is ever handed out, so the kernel never
    # copies into or out of device memory itself (docs/driver.md, "Device memory").

    def _not_a_window(self, dst: int, length: int) -> DeviceMemoryError:
        return DeviceMemoryError(
            f"{self.name}: frame copy of {length} bytes to {dst:#x} is not an aligned "
            "window inside one buffer"
        )

    def copy_frame_in(self, dst: int, src: memoryview, length: int) -> None:
        """One frame from the start of `src` (ordinary memory) into the buffer at `dst`.

        As copy_into_buffers for one frame whose source starts at offset 0, at any 16-byte
        aligned offset of its buffer: the per-frame socket path uses it.
        """
        end = dst + ((length + _PAD) & ~_PAD)
        if dst & _PAD or not 0 <= dst <= end <= (dst | _BUF_MASK) + 1 or end > self.size:
            raise self._not_a_window(dst, length)
        if end - dst <= len(src):
            self._mv[dst:end] = src[: end - dst]
        else:
            self._mv[dst:end] = bytes(src[:length]).ljust(end - dst, b"\0")

    def copy_frame_out(self, src: int, dst: memoryview, length: int) -> int:
        """One frame at `src` out to the start of `dst` (ordinary memory), as
        copy_frames_out does it: the aligned window around it is read and written at
        dst[0:], so the frame is at dst[src % 16:]; returns that skew."""
        start = src & ~_PAD
        end = (src + length + _PAD) & ~_PAD
        if src < 0 or length < 0 or end > (src | _BUF_MASK) + 1 or end > self.size:
            raise DeviceMemoryError(
                f"{self.name}: frame copy of {length} bytes from {src:#x} leaves its buffer"
            )
        dst[: end - start] = self._mv[start:end]
        return src - start

    def copy_frames_out(self, dst: memoryview, moves: Sequence[int]) -> None:
        """Copy frames from buffers of this region out to ordinary memory (a packet ring).

        `moves` is flat (src_offset, dst_offset, length) triples. Each copy reads the
        padded window [src rounded down to 16, src + length rounded up to 16), which must
        lie inside src's 2048-byte buffer and the region, and writes it at dst_offset; the
        frame itself therefore starts at dst_offset + (src_offset % 16).
        """
        mv, size = self._mv, self.size
        it = iter(moves)
        for s, d, n in zip(it, it, it, strict=True):
            start = s & ~_PAD
            end = (s + n + _PAD) & ~_PAD
            if s < 0 or n < 0 or end > (s | _BUF_MASK) + 1 or end > size:
                raise DeviceMemoryError(
                    f"{self.name}: frame copy of {n} bytes from {s:#x} leaves its buffer"
                )
            dst[d : d + end - start] = mv[start:end]

    # Whole-batch copies for frames that start at their buffer's start (what sDDF clients
    # and virt_rx hand over): one call per batch, each buffer's offset tested in the copy
    # loop itself (a buffer's start, inside the region), so the per-frame work is little
    # more than the copy.

    def copy_buffer_heads_out(
        self, dst: memoryview, at: int, stride: int, offsets: Sequence[int], length: int
    ) -> None:
        """The first `length` bytes (rounded up to 16) of each buffer starting at
        offsets[i], to dst[at + i * stride:] (ordinary memory, e.g. TX ring slots).

        A batch is usually a few runs of evenly spaced buffers: virt_tx moves one
        client's queue at a time and a client recycles its buffers in order, so a run
        breaks only between clients and where a client's pool wraps. Runs of short
        frames long enough to pay go as strided word copies (_heads_out_strided); from
        the first run that does not, one window per frame."""
        width = self._head_width(length)
        if width > STRIDED_MAX_WIDTH or (at | stride) & 7:
            self._heads_out_each(dst, at, stride, offsets, width)
            return
        offsets, n, done = list(offsets), len(offsets), 0
        while done < n:
            count, first, step = even_run(offsets, done)
            cost = STRIDED_CALL + (width >> 3) * (STRIDED_PASS + STRIDED_WORD * count)
            if cost >= SLICE_COPY * count or not self._heads_out_strided(
                dst, at + done * stride, stride, first, step, count, width
            ):
                break
            done += count
        if done < n:
            self._heads_out_each(dst, at + done * stride, stride, offsets[done:], width)

    def copy_buffer_head_out(self, dst: memoryview, at: int, src: int, length: int) -> None:
        """The first `length` bytes (rounded up to 16) of the buffer starting at `src`, to
        dst[at:]: copy_buffer_heads_out for one buffer, without a batch's set-up."""
        self._heads_out_each(dst, at, 0, (src,), self._head_width(length))

    def _head_width(self, length: int) -> int:
        """The padded window of a `length`-byte frame at a buffer's start."""
        width = (length + _PAD) & ~_PAD
        if width > NET_BUFFER_SIZE:
            raise DeviceMemoryError(f"{self.name}: a {length}-byte copy leaves its buffer")
        return width

    def _heads_out_each(
        self, dst: memoryview, at: int, stride: int, offsets: Sequence[int], width: int
    ) -> None:
        last, source = self.size - width, self._raw if width <= SMALL_COPY else self._mv
        for src in offsets:
            # One test per buffer (no min()/max() passes): a buffer's start, inside the map.
            if src & _BUF_MASK or not 0 <= src <= last:
                raise DeviceMemoryError(f"{self.name}: {src:#x} is not a buffer's start")
            dst[at : at + width] = source[src : src + width]
            at += stride

    def _heads_out_strided(
        self, dst: memoryview, at: int, stride: int, first: int, step: int, n: int, width: int
    ) -> bool:
        """The heads of the n buffers at first, first + step, ... (an even_run): read by
        struct, READ_CHUNK windows a call, each window by the same aligned memcpy as the
        per-frame copy (so the map sees the same accesses), then written as `width` / 8
        strided copies of 64-bit words (word j of every frame in one assignment) into
        `dst`, which is ordinary memory. Returns False, having written nothing, unless
        every one is a buffer's start inside the map and every slot fits in `dst`; the
        per-frame copy then decides (and refuses a bad offset)."""
        if (
            first & _BUF_MASK or first < 0 or step & _BUF_MASK or step <= 0
            or first + (n - 1) * step + width > self.size
            or at + (n - 1) * stride + width > dst.nbytes or dst.nbytes & 7
        ):  # fmt: skip
            return False
        frames: list[bytes] = []
        field = f"{width}s"
        for k in range(0, n, READ_CHUNK):
            count = n - k if n - k < READ_CHUNK else READ_CHUNK
            read = strided_unpack(self._gathers, field, width, count, step)
            frames += read(self._mv, first + k * step)
        words = memoryview(b"".join(frames)).cast("Q")
        out = dst.cast("Q")
        d, ds, per = at >> 3, stride >> 3, width >> 3
        dn = n * ds
        for j in range(per):
            out[d + j : d + j + dn : ds] = words[j::per]
        return True

    def copy_into_buffers(
        self,
        src: memoryview,
        offsets: Sequence[int],
        starts: Sequence[int],
        lengths: Sequence[int],
        small: mmap.mmap | bytearray | None = None,
    ) -> None:
        """Frame i, `lengths[i]` bytes at src[starts[i]:] (ordinary memory, e.g. an RX
        ring), into the buffer starting at offsets[i], padded to 16 bytes from the source
        (the ring's slack) or with zeros where the source ends. The window is each
        frame's own: a longer one would carry other frames' bytes into the buffer.
        `small`, the object `src` views (whole, from offset 0), serves the windows of
        up to SMALL_COPY bytes."""
        if not len(offsets) == len(starts) == len(lengths):
            raise DeviceMemoryError(f"{self.name}: sources do not match the buffers")
        if small is not None and len(small) != len(src):
            raise DeviceMemoryError(f"{self.name}: the small-copy source is not the view's")
        mv, srclen, last = self._mv, len(src), self.size - NET_BUFFER_SIZE
        short = src if small is None else small
        count = len(lengths)
        if count > 1 and lengths.count(lengths[0]) == count:
            # A burst of one size (RxRing.uniform_run): one width, and the tests of the
            # sources as batch operations, so per frame only the buffer's test and the
            # copy. A burst that reaches past the source's end takes the loop below.
            width = (lengths[0] + _PAD) & ~_PAD
            if 0 <= width <= NET_BUFFER_SIZE and min(starts) >= 0 and max(starts) + width <= srclen:
                source = short if width <= SMALL_COPY else src
                for dst, s in zip(offsets, starts, strict=False):  # checked above
                    if dst & _BUF_MASK or not 0 <= dst <= last:
                        raise self._not_a_window(dst, lengths[0])
                    mv[dst : dst + width] = source[s : s + width]
                return
        for dst, s, n in zip(offsets, starts, lengths, strict=False):  # checked above
            width = (n + _PAD) & ~_PAD
            if dst & _BUF_MASK or not 0 <= dst <= last or not 0 <= width <= NET_BUFFER_SIZE:
                raise self._not_a_window(dst, n)
            if s + width <= srclen:
                mv[dst : dst + width] = (short if width <= SMALL_COPY else src)[s : s + width]
            else:
                mv[dst : dst + width] = bytes(src[s : s + n]).ljust(width, b"\0")


class FaultDoorbell:
    """Guest->VMM notification: one store to a page the VMM left unmapped in stage 2."""

    __slots__ = ("_mv",)

    def __init__(self, buf: mmap.mmap | bytearray) -> None:
        self._mv = memoryview(buf).cast("B")

    def ring(self) -> None:
        # A single byte store, never a read: the VMM skips the instruction (pc += 4).
        self._mv[0] = 0
