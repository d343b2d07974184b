"""Shared fixtures: the session's build root, the boards, the kernel tree, the C4 guest DTB,
and the --cpu-load option that runs the suite on a machine kept busy.

Paths, markers and helpers the test modules share are in tests/harness.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netvm.board import Board, load_board
from netvm.guest.devicetree import DtbResult
from netvm.guest.kernelsrc import KernelSource, debian_source
from tests.harness import BUILD_DIR_ENV, C4_INITRD, ROOT, build_test_dtb


@pytest.fixture(scope="session", autouse=True)
def build_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every build of the session goes to one temporary build root ($NETVM_BUILD_DIR,
    which Workspace.at and the `invoke` the tests start read), never to the repository's
    build/: a user's own build there is left alone, and the session's tests still share
    the kernels they build. The variable is restored afterwards."""
    # Named build/ so that a root whose build/ it is can be handed to what takes one.
    path = tmp_path_factory.mktemp("netvm") / "build"
    path.mkdir()
    saved = os.environ.get(BUILD_DIR_ENV)
    os.environ[BUILD_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop(BUILD_DIR_ENV, None)
        else:
            os.environ[BUILD_DIR_ENV] = saved


@pytest.fixture(scope="session")
def odroidc4() -> Board:
    return load_board("odroidc4", ROOT)


@pytest.fixture(scope="session")
def qemu_board() -> Board:
    return load_board("qemu_virt_aarch64", ROOT)


@pytest.fixture(scope="session")
def kernel_src() -> KernelSource:
    """Debian's linux-source-6.12, extracted once into the netvm cache."""
    return debian_source("linux-source-6.12")


@pytest.fixture(scope="session")
def c4_dtb(
    odroidc4: Board, kernel_src: KernelSource, tmp_path_factory: pytest.TempPathFactory
) -> DtbResult:
    """The C4 board's guest DTB (kernel's DTS + netvm's overlay, real dtc), built once."""
    return build_test_dtb(odroidc4, kernel_src, tmp_path_factory.mktemp("c4-dtb"), C4_INITRD)


# --- tests only on request --------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `container` tests (root, podman, the Debian archive, 10-20 minutes) run only
    when the -m expression names them: `-m container`. Deselected, not skipped, so any
    other selection (`-m "not slow"`, none at all) leaves them out of the run."""
    if "container" in (config.option.markexpr or ""):
        return
    keep = [i for i in items if i.get_closest_marker("container") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


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
