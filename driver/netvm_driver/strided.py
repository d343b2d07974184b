"""Structs that read one field layout repeated at a fixed spacing: a run in one C call.

Owns: ``strided_unpack`` (the ``unpack_from`` of such a struct, kept by shape in a
cache the caller holds) and the chunk size and cache bound both users share. devmem
reads a run of buffer heads with it (`{width}s` each), ring a burst of RX frame headers.

Why chunks: compiling a struct costs ~14,000 instructions for 16 copies of a layout and
~54,000 for 128, so runs are read READ_CHUNK copies per call, which also keeps the
shapes (and the cache) few.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Unpack = Callable[..., tuple[Any, ...]]  # the fields, as the layout gives them

READ_CHUNK = 16  # copies of a layout per struct
STRUCT_CACHE = 64  # structs a cache keeps; full, it starts again (old shapes rebuild)


def strided_unpack(
    cache: dict[tuple[str, int, int], Unpack], field: str, size: int, count: int, step: int
) -> Unpack:
    """``unpack_from`` of `count` copies of `field` (a struct layout of `size` bytes,
    no byte-order prefix), each `step` bytes after the one before; the bytes between
    are skipped, not read."""
    key = (field, count, step)
    read = cache.get(key)
    if read is None:
        if len(cache) >= STRUCT_CACHE:
            cache.clear()
        gap = f"{step - size}x"
        read = cache[key] = struct.Struct("<" + (field + gap) * (count - 1) + field).unpack_from
    return read
