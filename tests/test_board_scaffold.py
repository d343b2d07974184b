"""`invoke board.new`: a copy of a board with its own name, validated, nothing half-made."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from netvm.board import load_board
from netvm.board.scaffold import new_board
from netvm.core.errors import UserError
from tests.harness import ROOT


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A checkout with the shipped boards (the reader needs nothing else)."""
    shutil.copytree(ROOT / "boards", tmp_path / "boards")
    return tmp_path


def test_new_board_is_a_renamed_copy_without_the_lock(tree: Path) -> None:
    board = new_board(tree, "odroidc4_1g", "odroidc4")
    original = load_board("odroidc4", tree)
    assert board.name == "odroidc4_1g" and board.file == tree / "boards/odroidc4_1g/board.yaml"
    assert board.uio == original.uio and board.net == original.net
    assert (board.dir / "kernel.config").read_bytes() == (
        original.dir / "kernel.config"
    ).read_bytes()
    assert not (board.dir / "netvm.lock").exists() and (original.dir / "netvm.lock").exists()


def test_new_board_refuses_an_existing_name_and_a_bad_one(tree: Path) -> None:
    before = sorted(p.name for p in (tree / "boards").iterdir())
    with pytest.raises(UserError, match="already exists"):
        new_board(tree, "qemu_virt_aarch64", "odroidc4")
    with pytest.raises(UserError, match="expected lowercase letters, digits and _"):
        new_board(tree, "My Board", "odroidc4")
    assert sorted(p.name for p in (tree / "boards").iterdir()) == before


def test_a_source_that_does_not_load_leaves_nothing_behind(tree: Path) -> None:
    broken = tree / "broken"
    broken.mkdir()
    (broken / "board.yaml").write_text("schema_version: 1\nname: broken\n")
    with pytest.raises(UserError):
        new_board(tree, "copy", str(broken / "board.yaml"))
    assert not (tree / "boards" / "copy").exists()
