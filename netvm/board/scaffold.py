"""A new board from an existing one: `invoke board.new NAME --from BOARD`.

Owns: copying a board's folder under boards/NAME with its `name:` set, so the copy has
its own build directory from the start (a copy that kept the old name would be refused
by the build as another board file with that name). Must not: guess what the new
hardware needs; docs/board.md ("A new board") says what to change.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from netvm.board.model import Board
from netvm.board.reader import boards_dir, load_board, resolve_board_file
from netvm.core.errors import UserError

NAME_FORM = re.compile(r"[a-z0-9_]+")
# Files a new board does not inherit: the lock pins the source board's resolved inputs.
NOT_COPIED = ("netvm.lock",)
_NAME_LINE = re.compile(r"^name:[ \t]*\S+", re.MULTILINE)


def new_board(root: Path, name: str, source: str) -> Board:
    """Create boards/`name`/ from `source` (a board name or board.yaml path); return it."""
    if not NAME_FORM.fullmatch(name):
        raise UserError(
            f"board name {name!r}: expected lowercase letters, digits and _",
            hint="e.g. odroidc4_1g",
        )
    src_file = resolve_board_file(source, root)
    dest = boards_dir(root) / name
    if dest.exists():
        raise UserError(f"{dest}: already exists", hint="choose another name, or edit that board")
    text = src_file.read_text()
    if len(_NAME_LINE.findall(text)) != 1:
        raise UserError(f"{src_file}: expected one top-level `name:` line to rename")
    try:
        shutil.copytree(
            src_file.parent, dest, ignore=shutil.ignore_patterns(*NOT_COPIED, "board.yaml")
        )
        (dest / "board.yaml").write_text(_NAME_LINE.sub(f"name: {name}", text, count=1))
        return load_board(name, root)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # no half-made board is left behind
        raise
