"""Shared fixtures: the repository root, the Odroid C4 board and the kernel tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from netvm.board import Board, load_board
from netvm.kernelsrc import KernelSource, debian_source

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def odroidc4() -> Board:
    return load_board("odroidc4", ROOT)


@pytest.fixture(scope="session")
def kernel_src() -> KernelSource:
    """Debian's linux-source-6.12, extracted once into the netvm cache."""
    return debian_source("linux-source-6.12")
