"""`invoke clean`: remove build directories, and the download cache when asked.

Owns what may be removed: a board's build directory ``<build root>/<name>`` (the build
root is ``build/`` or ``$NETVM_BUILD_DIR``), every netvm build directory in the build
root (``--all``), and the download cache's own entries (``--cache``, with ``--all``).
Nothing outside the build root (or the cache) is ever removed: a name that would lead
out of it is refused, a symlink is removed as a link and never followed, and a directory
is removed only when it looks like netvm's (a build leaves ``board-file``,
``manifest.json``, ``state/`` or ``render/`` in it), so a build root pointed at a
directory holding other things loses none of them. A build directory a build is using
right now is left alone.
Must not: know what a step writes beyond those marks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netvm.board import load_board
from netvm.builder.build import LOCK_FILE, OWNER_FILE
from netvm.builder.manifest import MANIFEST_NAME
from netvm.core.errors import UserError
from netvm.core.workspace import Workspace

# What a build directory holds that marks it as netvm's.
BUILD_MARKS = (OWNER_FILE, MANIFEST_NAME, "state", "render")
# Directories of the build root that are netvm's without being a board's build
# (netvm.bench.tools compiles the benchmark's C tools into bench/; container.build keeps
# its context and records in container/).
TOOL_DIRS = ("bench", "container")
# The download cache's entries, as the modules that fill them name them: extracted
# kernel sources, downloaded tarballs, Debian packages, the unpacked rootfs base, QEMU's
# dumped device trees, fetched Microkit inputs, the build container's wheels. Anything
# else there is left alone.
CACHE_ENTRIES = ("src", "downloads", "debs", "rootfs-base", "qemu-dtb", "microkit", "container")
PLAIN_NAME = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class Removed:
    path: Path
    bytes: int


@dataclass
class CleanResult:
    dry_run: bool
    removed: list[Removed] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)  # left alone, and why
    absent: list[Path] = field(default_factory=list)  # asked for, nothing there

    def summary(self, ws: Workspace) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{verb} {ws.display(r.path)} ({human_size(r.bytes)})" for r in self.removed]
        lines += [f"left alone: {ws.display(p)} ({why})" for p, why in self.kept]
        lines += [f"nothing to remove: {ws.display(p)} does not exist" for p in self.absent]
        if self.removed:
            total = sum(r.bytes for r in self.removed)
            lines.append(f"{verb} {len(self.removed)} in all, {human_size(total)}")
        elif not self.absent:
            lines.append("nothing to remove")
        return "\n".join(lines)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def tree_size(path: Path) -> int:
    """Bytes of the files under `path`, symlinks counted as links (never followed)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for top, dirs, files in os.walk(path):
        # os.walk lists a symlink to a directory among the directories; count it as a link.
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        for name in files + links:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += os.lstat(os.path.join(top, name)).st_size
    return total


def build_name(board: str, ws: Workspace) -> str:
    """The build directory name of `--board`: the board's `name:`; for a board that no
    longer loads (deleted, or broken), a plain name whose build directory exists."""
    try:
        return load_board(board, ws.root).name
    except UserError:
        if PLAIN_NAME.fullmatch(board) and (ws.build_root / board).exists():
            return board
        raise


def _inside(path: Path, root: Path) -> bool:
    """Whether `path` (not followed if a symlink) is a direct entry of `root`."""
    return path.parent.resolve() == root.resolve() and path.name not in ("", ".", "..")


def _why_not_netvm(path: Path) -> str | None:
    """None when `path` is a netvm build or tool directory, else why it is not."""
    if path.is_symlink():
        return "a symlink: netvm does not make them here"
    if not path.is_dir():
        return "not a directory"
    if path.name in TOOL_DIRS or any((path / m).exists() for m in BUILD_MARKS):
        return None
    return f"not a netvm build directory: none of {', '.join(BUILD_MARKS)} in it"


@contextlib.contextmanager
def _unused(path: Path) -> Iterator[bool]:
    """Hold `path`'s build lock (build.claim_build_dir's) while removing it; yields False
    when a build holds it now."""
    lock = path / LOCK_FILE
    if not lock.is_file():
        yield True
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _remove(path: Path, result: CleanResult) -> None:
    size = tree_size(path)
    if not result.dry_run:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    result.removed.append(Removed(path, size))


def clean(
    ws: Workspace,
    *,
    board: str | None = None,
    all_boards: bool = False,
    cache: bool = False,
    dry_run: bool = False,
) -> CleanResult:
    """Remove `board`'s build directory, or with `all_boards` every netvm directory in
    the build root, and with `cache` (only with `all_boards`) the download cache's
    entries. Raises UserError, removing nothing, for a board directory that is outside
    the build root, not netvm's, or in use by a build."""
    if cache and not all_boards:
        raise UserError(
            "--cache goes with --all: the download cache is shared by every board",
            hint="invoke clean --all --cache",
        )
    result = CleanResult(dry_run)
    root = ws.build_root
    if all_boards:
        entries = sorted(root.iterdir()) if root.is_dir() else []
        for path in entries:
            why = _why_not_netvm(path)
            if why is not None:
                result.kept.append((path, why))
                continue
            with _unused(path) as free:
                if free:
                    _remove(path, result)
                else:
                    result.kept.append((path, "a build is using it now"))
        if cache:
            _clean_cache(ws.cache, result)
        return result
    assert board is not None, "either a board or all_boards"
    name = build_name(board, ws)
    path = root / name
    if not PLAIN_NAME.fullmatch(name) or not _inside(path, root):
        raise UserError(
            f"--board {board}: {path} is not a directory of the build root {root}",
            hint="clean removes only build directories under the build root",
        )
    if not path.exists() and not path.is_symlink():
        result.absent.append(path)
        return result
    why = _why_not_netvm(path)
    if why is not None:
        raise UserError(f"--board {board}: {ws.display(path)} is {why}; nothing was removed")
    with _unused(path) as free:
        if not free:
            raise UserError(
                f"--board {board}: a build is using {ws.display(path)} now",
                hint="wait for it to finish, then clean",
            )
        _remove(path, result)
    return result


def _clean_cache(cache: Path, result: CleanResult) -> None:
    if not cache.is_dir():
        return
    for path in sorted(cache.iterdir()):
        if path.name in CACHE_ENTRIES and not path.is_symlink():
            _remove(path, result)
        else:
            result.kept.append((path, "not one of netvm's cache entries"))
