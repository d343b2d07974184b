"""Where things live: the repository, the build directories and the download cache.

Owns the paths every step derives from (``build/<board>``, the cache), their overrides
(``$NETVM_BUILD_DIR``, ``$NETVM_CACHE``) and how a path is shown to the user.
Must not: know what a step writes inside its directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class BuildTarget(Protocol):
    """What names a build directory: a board's name and its variant ("" or "sel4")."""

    @property
    def name(self) -> str: ...

    @property
    def variant(self) -> str: ...


def cache_dir() -> Path:
    """The toolkit's download/extract cache (``$NETVM_CACHE`` or ``~/.cache/netvm``)."""
    env = os.environ.get("NETVM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "netvm"


def display_path(path: Path, root: Path) -> str:
    """`path` relative to `root` when it lies inside it (what users see), else as given."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Workspace:
    """The repository a build reads (templates/, driver/, boards/) and where it writes."""

    root: Path
    build_root: Path

    @classmethod
    def at(cls, root: Path, build_root: Path | None = None) -> Workspace:
        """`root`'s workspace; the build root is `build_root`, ``$NETVM_BUILD_DIR`` or
        ``<root>/build``, in that order."""
        env = os.environ.get("NETVM_BUILD_DIR")
        return cls(root, build_root or (Path(env) if env else root / "build"))

    @property
    def cache(self) -> Path:
        return cache_dir()

    def build_dir(self, board: BuildTarget) -> Path:
        """The board's build directory; a variant's (Board.sel4) is a subdirectory of it."""
        out = self.build_root / board.name
        return out / board.variant if board.variant else out

    def display(self, path: Path) -> str:
        return display_path(path, self.root)
