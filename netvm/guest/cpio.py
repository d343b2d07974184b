"""newc cpio archives: read a user's base rootfs, write a reproducible initramfs.

Owns the archive format only. Entries are values (`Entry`); writing sorts them by
path, numbers inodes in that order and gives every entry uid/gid 0 and one fixed
mtime, so the same entries always give the same bytes. Hard links are not written
(each entry is its own inode); the kernel's initramfs unpacker does not need them.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading "/" (e.g. "usr/bin/python3")
    mode: int  # full st_mode: type bits and permissions
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device node

    @property
    def kind(self) -> str:
        if stat.S_ISDIR(self.mode):
            return "dir"
        if stat.S_ISLNK(self.mode):
            return "symlink"
        if stat.S_ISREG(self.mode):
            return "file"
        return "node"


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def regular(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, b"", (major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: Entry, name: bytes, mtime: int) -> bytes:
    fields = (
        ino,
        e.mode,
        0,  # uid
        0,  # gid
        2 if e.kind == "dir" else 1,
        mtime,
        len(e.data),
        0,  # devmajor
        0,  # devminor
        e.rdev[0],
        e.rdev[1],
        len(name) + 1,
        0,  # check (newc has none)
    )
    return NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)


def write_newc(entries: Iterable[Entry], mtime: int) -> bytes:
    """The archive of `entries`, sorted by path, uid/gid 0, every mtime = `mtime`."""
    out = bytearray()
    ordered = sorted(entries, key=lambda e: e.path.encode())
    paths = [e.path for e in ordered]
    if len(set(paths)) != len(paths):
        raise ValueError("duplicate paths in archive")
    for ino, e in enumerate(ordered, start=1):
        name = e.path.encode()
        head = _header(ino, e, name, mtime)
        out += head + name + b"\0"
        out += _pad4(len(head) + len(name) + 1)
        out += e.data + _pad4(len(e.data))
    trailer = Entry(TRAILER, 0)
    head = _header(0, trailer, TRAILER.encode(), 0)
    out += head + TRAILER.encode() + b"\0" + _pad4(len(head) + len(TRAILER) + 1)
    return bytes(out)


def read_newc(blob: bytes) -> list[Entry]:
    """Entries of a newc archive (ValueError with the offset when it is not one)."""
    entries: list[Entry] = []
    pos = 0
    while True:
        head = blob[pos : pos + 110]
        if len(head) < 110 or head[:6] not in (NEWC_MAGIC, b"070702"):
            raise ValueError(f"not a newc cpio header at byte {pos}")
        f = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name_start = pos + 110
        name = blob[name_start : name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        data = blob[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == TRAILER:
            return entries
        # Archives made with `find .` name entries "./x"; the kernel's own say "x".
        path = name[2:] if name.startswith("./") else name.lstrip("/")
        if path not in ("", "."):
            entries.append(Entry(path, mode, data, (rmaj, rmin)))


def gzip_deterministic(data: bytes) -> bytes:
    """gzip -9 -n: no name and mtime 0 in the header, so equal input gives equal output."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def read_cpio_gz(blob: bytes) -> list[Entry]:
    if blob[:2] != GZIP_MAGIC:
        raise ValueError("not gzip-compressed")
    return read_newc(gzip.decompress(blob))
