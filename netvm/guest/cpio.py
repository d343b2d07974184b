"""newc cpio archives: read a user's base rootfs, write a reproducible initramfs.

Owns the archive format only. Entries are values (`Entry`); writing sorts them by
path, numbers inodes in that order and gives every entry uid/gid 0 and one fixed
mtime, so the same entries always give the same bytes.

Reading follows the kernel's initramfs unpacker: an image may be several archives,
gzip'd or plain, one after the other (a later entry replaces an earlier one with the
same path), and the names of a hard-linked file all get its contents. Hard links are
not written back: each name becomes a regular file of its own with the full contents.
That keeps an entry a self-contained value (an overlay or a later archive replacing
one name of a link set leaves the others as they were, as on the kernel's rootfs),
keeps the writer's output a function of the entries alone (no link-set order or
which-name-carries-the-data rule to make reproducible), and the kernel does not need
the links; the cost is the linked contents stored once per name.
"""

from __future__ import annotations

import gzip
import re
import stat
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

NEWC_MAGIC = b"070701"
MAGICS = (NEWC_MAGIC, b"070702")  # newc, and newc with checksums (not checked)
HEADER_LEN = 110  # magic and 13 fields of 8 hex digits
_HEX_FIELDS = re.compile(rb"[0-9A-Fa-f]{104}")
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


def _hardlink_key(fields: list[int]) -> tuple[int, int, int] | None:
    """The inode a regular-file entry shares with others of its link set, if any.

    Like the kernel's unpacker: a link set is the entries with c_nlink > 1 and the same
    (c_devmajor, c_devminor, c_ino), within one archive (its trailer ends all sets).
    """
    mode, nlink = fields[1], fields[4]
    if nlink < 2 or not stat.S_ISREG(mode):
        return None
    return fields[7], fields[8], fields[0]


def _read_archive(blob: bytes, start: int) -> tuple[list[Entry], int]:
    """The entries of the one archive at `start` (through its TRAILER!!!) and the offset
    after it. Padding is counted from `start`, where the archive's first header is.
    ValueError names the offset of what is wrong."""
    entries: list[tuple[Entry, tuple[int, int, int] | None]] = []
    # A link set's contents: GNU cpio and the kernel's gen_init_cpio write them once,
    # with the set's last entry, and give the other names filesize 0. Every name whose
    # own data is empty gets them, whichever entry of the set carried them.
    link_data: dict[tuple[int, int, int], bytes] = {}
    pos = start
    while True:
        head = blob[pos : pos + HEADER_LEN]
        if len(head) < HEADER_LEN:
            what = "no TRAILER!!!: archive ends" if not head else "truncated header"
            raise ValueError(f"{what} at byte {pos}")
        if head[:6] not in MAGICS:
            raise ValueError(f"not a newc cpio header at byte {pos}")
        if not _HEX_FIELDS.fullmatch(head, 6):
            raise ValueError(f"cpio header at byte {pos} has a field that is not 8 hex digits")
        f = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name_start = pos + HEADER_LEN
        name_end = name_start + namesize  # the name's NUL included
        if namesize < 1:
            raise ValueError(f"the entry at byte {pos} has no name (name size 0)")
        if name_end > len(blob):
            raise ValueError(f"the name of the entry at byte {pos} runs past the end")
        if blob[name_end - 1] != 0:
            raise ValueError(f"the name of the entry at byte {pos} is not NUL-terminated")
        try:  # a C string to the kernel: what follows a NUL inside the name is ignored
            name = blob[name_start:name_end].split(b"\0", 1)[0].decode()
        except UnicodeDecodeError:
            raise ValueError(f"the name of the entry at byte {pos} is not UTF-8") from None
        data_start = name_end + (-(name_end - start) % 4)
        data_end = data_start + size
        if data_end > len(blob):
            raise ValueError(f"the data of {name!r} (entry at byte {pos}) runs past the end")
        data = blob[data_start:data_end]
        pos = data_end + (-(data_end - start) % 4)
        if name == TRAILER:
            break
        key = _hardlink_key(f)
        if key is not None and data:
            link_data[key] = data
        # Archives made with `find .` name entries "./x"; the kernel's own say "x".
        path = name[2:] if name.startswith("./") else name.lstrip("/")
        if path not in ("", "."):
            entries.append((Entry(path, mode, data, (rmaj, rmin)), key))
    resolved = [
        replace(e, data=link_data[key]) if key in link_data and not e.data else e
        for e, key in entries
    ]
    return resolved, min(pos, len(blob))


_NULS = re.compile(rb"\0+")


def _skip_nuls(blob: bytes, pos: int) -> int:
    """The offset of the first non-NUL byte from `pos` (padding between archives)."""
    m = _NULS.match(blob, pos)
    return m.end() if m else pos


def read_newc(blob: bytes) -> list[Entry]:
    """Entries of one or more concatenated newc archives (NUL padding between them is
    skipped, as the kernel does); an entry overrides an earlier one with its path.
    ValueError with the offset when `blob` is not such a stream."""
    merged: dict[str, Entry] = {}
    pos = 0
    while True:
        entries, pos = _read_archive(blob, pos)
        merged.update((e.path, e) for e in entries)
        pos = _skip_nuls(blob, pos)
        if pos == len(blob):
            return list(merged.values())


def gzip_deterministic(data: bytes) -> bytes:
    """gzip -9 -n: no name and mtime 0 in the header, so equal input gives equal output."""
    return gzip.compress(data, compresslevel=9, mtime=0)


# Magics the kernel's unpacker also knows, for a clearer refusal than "junk".
OTHER_COMPRESSIONS = {
    b"BZh": "bzip2",
    b"\x5d\x00\x00": "lzma",
    b"\xfd7zXZ\x00": "xz",
    b"\x89LZO": "lzo",
    b"\x02\x21\x4c\x18": "lz4",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def _gunzip_member(blob: bytes, pos: int) -> tuple[bytes, int]:
    """The data of the gzip member at `pos` and the offset after it."""
    d = zlib.decompressobj(wbits=31)  # gzip header and trailer, CRC checked
    try:
        data = d.decompress(memoryview(blob)[pos:])
    except zlib.error as exc:
        raise ValueError(f"corrupt gzip data at byte {pos}: {exc}") from None
    if not d.eof:
        raise ValueError(f"truncated gzip data at byte {pos}")
    return data, len(blob) - len(d.unused_data)


def read_cpio_gz(blob: bytes) -> list[Entry]:
    """Entries of an initramfs image as the kernel unpacks it: a sequence of gzip'd
    and/or plain newc archives (e.g. an uncompressed early-microcode archive, then the
    gzip'd rootfs), NUL padding between them skipped; an entry overrides an earlier one
    with its path. ValueError naming the offset when `blob` is not such an image."""
    if not blob:
        raise ValueError("empty file")
    merged: dict[str, Entry] = {}
    pos = 0
    while pos < len(blob):
        if blob.startswith(GZIP_MAGIC, pos):
            data, end = _gunzip_member(blob, pos)
            try:
                entries = read_newc(data)
            except ValueError as exc:
                where = f"in the uncompressed data of the gzip member at byte {pos}"
                raise ValueError(f"{where}: {exc}") from None
            pos = end
        elif blob[pos : pos + 6] in MAGICS:
            entries, pos = _read_archive(blob, pos)
        else:
            kind = next((k for m, k in OTHER_COMPRESSIONS.items() if blob.startswith(m, pos)), "")
            if kind:
                raise ValueError(f"{kind}-compressed data at byte {pos}: only gzip is read")
            raise ValueError(f"not gzip-compressed nor a newc cpio archive at byte {pos}")
        merged.update((e.path, e) for e in entries)
        pos = _skip_nuls(blob, pos)
    return list(merged.values())
