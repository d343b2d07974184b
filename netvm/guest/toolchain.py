"""The host tools a guest build runs: the board's cross compiler, make and dtc.

Owns telling, before anything runs, which of them this machine lacks, as findings with
the Debian package that provides each. `invoke validate` reports them all; the build
asks only for the tools of the steps it runs. The board reader does not look: a board
file is read (and tested) on machines without the tools.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable

from netvm.board import Board
from netvm.core.errors import Finding

# What each step runs, by the names toolchain_findings takes.
KERNEL_TOOLS = ("cross_gcc", "make")
DTB_TOOLS = ("dtc",)
ALL_TOOLS = (*KERNEL_TOOLS, *DTB_TOOLS)

# The Debian package of each tool that is not the cross compiler, and what it is for.
PACKAGES = {"make": "make", "dtc": "device-tree-compiler"}
NEEDED_FOR = {"make": "the kernel", "dtc": "the guest DTB"}


def cross_gcc(board: Board) -> str:
    return f"{board.cross_compile}gcc"


def cross_gcc_package(prefix: str) -> str | None:
    """Debian's cross compiler package for a target prefix (aarch64-linux-gnu- ->
    gcc-aarch64-linux-gnu), or None for a prefix with a directory in it."""
    if "/" in prefix or not prefix.endswith("-") or len(prefix) < 2:
        return None
    return f"gcc-{prefix[:-1]}"


def toolchain_findings(
    board: Board, tools: Iterable[str] = ALL_TOOLS, *, path: str | None = None
) -> list[Finding]:
    """A finding for each of `tools` this machine does not have (on `path`, default
    $PATH): the cross compiler's names the board's `cross_compile`."""
    findings: list[Finding] = []
    for tool in tools:
        if tool == "cross_gcc":
            cc = cross_gcc(board)
            if shutil.which(cc, path=path) is not None:
                continue
            where = "is not installed" if "/" in cc else "is not on PATH"
            package = cross_gcc_package(board.cross_compile)
            get = f"apt-get install {package}" if package else f"install a cross compiler {cc}"
            findings.append(
                Finding(
                    board.display_file,
                    "cross_compile",
                    f"{cc} {where}, so the kernel cannot be built",
                    f"{get}; or set cross_compile to the prefix of a cross compiler "
                    "that is installed",
                )
            )
        elif shutil.which(tool, path=path) is None:
            findings.append(
                Finding(
                    "",
                    "",
                    f"{tool} is not on PATH, so {NEEDED_FOR[tool]} cannot be built",
                    f"apt-get install {PACKAGES[tool]}",
                )
            )
    return findings
