"""Shared fixtures: the repository root, the Odroid C4 board, the kernel tree, and the
--cpu-load option that runs the suite on a machine kept busy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netvm.board import Board, load_board
from netvm.guest.kernelsrc import KernelSource, debian_source

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


# --- a loaded machine ------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-load",
        type=int,
        default=0,
        metavar="N",
        help="keep N CPUs busy with busy-loop processes for the whole run (stress run: "
        "the suite must pass on a loaded machine)",
    )


@pytest.fixture(scope="session", autouse=True)
def cpu_load(request: pytest.FixtureRequest) -> Iterator[None]:
    """With --cpu-load N, N processes spin for the session and are killed after it."""
    count: int = request.config.getoption("--cpu-load")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
