"""A minimal reader for flattened device trees (DTB files).

Owns parsing a DTB into ``{node path: {property: bytes}}`` so the toolkit can check
what `dtc` produced without extra Python dependencies. Read-only; version 17 blobs.
"""

from __future__ import annotations

import struct
from pathlib import Path

from netvm.core.toollog import ToolLog

FDT_MAGIC = 0xD00DFEED
_BEGIN_NODE, _END_NODE, _PROP, _NOP, _END = 1, 2, 3, 4, 9


class FdtError(ValueError):
    pass


def parse_dtb(blob: bytes) -> dict[str, dict[str, bytes]]:
    """Every node of the tree by absolute path, with its raw property values."""
    if len(blob) < 40:
        raise FdtError("too short for an FDT header")
    magic, total, off_struct, off_strings, _, version = struct.unpack_from(">6I", blob, 0)
    if magic != FDT_MAGIC:
        raise FdtError(f"bad magic {magic:#x}")
    if total > len(blob) or version < 16:
        raise FdtError(f"unsupported blob (size {total}, version {version})")

    def string_at(off: int) -> str:
        end = blob.index(b"\0", off_strings + off)
        return blob[off_strings + off : end].decode()

    nodes: dict[str, dict[str, bytes]] = {}
    stack: list[str] = []
    pos = off_struct
    while True:
        (token,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if token == _BEGIN_NODE:
            end = blob.index(b"\0", pos)
            name = blob[pos:end].decode()
            pos = (end + 4) & ~3
            parent = stack[-1] if stack else ""
            path = "/" if not stack else (parent.rstrip("/") + "/" + name)
            stack.append(path)
            nodes[path] = {}
        elif token == _END_NODE:
            stack.pop()
        elif token == _PROP:
            length, name_off = struct.unpack_from(">II", blob, pos)
            pos += 8
            nodes[stack[-1]][string_at(name_off)] = blob[pos : pos + length]
            pos = (pos + length + 3) & ~3
        elif token == _NOP:
            continue
        elif token == _END:
            return nodes
        else:
            raise FdtError(f"bad token {token:#x} at offset {pos - 4}")


def cells(value: bytes) -> list[int]:
    """A property as a list of big-endian 32-bit cells."""
    return list(struct.unpack(f">{len(value) // 4}I", value))


def strings(value: bytes) -> list[str]:
    """A string-list property (NUL separated)."""
    return value.rstrip(b"\0").decode().split("\0") if value else []


def u64_pairs(value: bytes) -> list[tuple[int, int]]:
    """A `reg` with 2 address and 2 size cells as (address, size) pairs."""
    c = cells(value)
    return [((c[i] << 32) | c[i + 1], (c[i + 2] << 32) | c[i + 3]) for i in range(0, len(c) - 3, 4)]


def decompile(dtb: Path, log: ToolLog | None = None) -> str:
    """The DTS text `dtc` makes of `dtb` (for reading and for diffing; raises on failure).
    `log` gets dtc's complaints, not the text."""
    log = log or ToolLog(None)
    cmd = ["dtc", "-q", "-I", "dtb", "-O", "dts", str(dtb)]
    run = log.capture(cmd, log_stdout=False)
    return log.check(run, f"dtc decompiling {dtb.name}", internal=True).stdout
