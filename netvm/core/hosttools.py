"""What this host's tools say about themselves: versions and git commits.

Owns: running a tool for its ``--version`` line and asking git for a checkout's commit.
These strings go into step cache keys and the manifest, so there is one way to get them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def first_line(cmd: list[str]) -> str | None:
    """The first line `cmd` prints (stdout, else stderr; "" for none); None when the
    program is not installed."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except (FileNotFoundError, PermissionError):
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else ""


def tool_version(cmd: list[str]) -> str:
    """`cmd`'s version line, or "not installed" (recorded as such in the manifest)."""
    line = first_line(cmd)
    return "not installed" if line is None else line


def compiler_version(cc: str) -> str:
    """`cc --version`'s first line ("" when `cc` is missing): the kernel's CC_VERSION_TEXT."""
    return first_line([cc, "--version"]) or ""


def git_head(path: Path) -> str | None:
    """The commit checked out at `path` if it is the top of a git work tree."""
    if not (path / ".git").exists():
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None
