"""Content hashes and directories filled once: the two facts every cache relies on.

Owns: file and tree digests (what a step's cache key and the manifest record), and the
"fill once, whole or not at all" rule for shared cache directories (extracted kernel
sources, the unpacked SDK, the unpacked Debian base). Must not: know what fills them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

CHUNK = 1 << 20
# Written last into a filled directory: a directory without it is a leftover to redo.
COMPLETE_STAMP = ".netvm-complete"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(paths: Iterable[Path], root: Path) -> str:
    """One digest over files (relative name, mode and content), independent of order."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: str(p.relative_to(root))):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
        h.update(file_sha256(path).encode() + b"\n")
    return h.hexdigest()


def short_key(text: str) -> str:
    """A 16-hex-digit name for cache entries derived from `text`."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fill_once(dest: Path, fill: Callable[[Path], str]) -> Path:
    """`dest`, filled by `fill` the first time only, and never half-filled.

    `fill` writes into a scratch directory that replaces `dest` only when it returns, so
    an interrupted fill is redone rather than reused; its return value is kept in the
    stamp (what was filled, for a reader of the cache). Concurrent callers (two builds,
    a build and the tests) take turns on a lock of the parent directory: one fills, the
    others then find the stamp.
    """
    if (dest / COMPLETE_STAMP).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The lock is the parent directory itself: no lock file to leave in the cache.
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if (dest / COMPLETE_STAMP).is_file():
            return dest  # filled while this caller waited
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        note = fill(tmp)
        (tmp / COMPLETE_STAMP).write_text(note if note.endswith("\n") else note + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return dest
    finally:
        os.close(fd)
