"""Rendering: golden files for every rendered artifact, determinism, headers, staging.

Regenerate the golden files after an intended change with
``NETVM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_render.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from netvm.board import Board
from netvm.guest.render import GUEST_DRIVER_DIR, planned_files, render_all
from tests.harness import DRIVER_DIR, FIXTURES, GOLDEN, ROOT, check_golden

# Files rendered from the board model (the rest of the overlay is copied verbatim).
RENDERED = (
    "overlay.dts",
    "sim.json",
    "kernel/00-driver-vm.config",
    "rootfs_overlay/etc/netvm/driver.json",
    "rootfs_overlay/etc/netvm/netvm.conf",
)


@pytest.mark.parametrize("rel", RENDERED)
def test_rendered_file_matches_golden(odroidc4: Board, rel: str) -> None:
    check_golden(planned_files(odroidc4, ROOT)[rel][0].decode(), GOLDEN / "odroidc4" / rel)


def test_every_rendered_file_says_it_is_generated(odroidc4: Board) -> None:
    files = planned_files(odroidc4, ROOT)
    generated = [rel for rel in files if rel.startswith("kernel/")] + list(RENDERED)
    for rel in generated:
        head = files[rel][0].decode().splitlines()[:3]
        assert any("boards/odroidc4/board.yaml" in line for line in head), rel
        assert any("enerated" in line for line in head), rel


def test_render_is_deterministic_and_idempotent(odroidc4: Board, tmp_path: Path) -> None:
    first = render_all(odroidc4, tmp_path / "a", ROOT)
    second = render_all(odroidc4, tmp_path / "b", ROOT)
    assert first.changed and not render_all(odroidc4, tmp_path / "a", ROOT).changed
    for a, b in zip(first.files, second.files, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_render_removes_files_it_no_longer_produces(odroidc4: Board, tmp_path: Path) -> None:
    stale = tmp_path / "rootfs_overlay" / "etc" / "stale.conf"
    render_all(odroidc4, tmp_path, ROOT)
    stale.write_text("left over\n")
    result = render_all(odroidc4, tmp_path, ROOT)
    assert stale in result.changed and not stale.exists()


def test_staged_overlay_holds_static_files_driver_and_config(
    odroidc4: Board, tmp_path: Path
) -> None:
    result = render_all(odroidc4, tmp_path, ROOT)
    staged = result.rootfs_overlay
    static = [p for p in (ROOT / "rootfs_overlay").rglob("*") if p.is_file()]
    for path in static:
        copy = staged / path.relative_to(ROOT / "rootfs_overlay")
        assert copy.read_bytes() == path.read_bytes()
        assert os.access(copy, os.X_OK) == os.access(path, os.X_OK)
    driver = [p for p in (DRIVER_DIR / "netvm_driver").rglob("*.py")]
    for path in driver:
        rel = path.relative_to(DRIVER_DIR / "netvm_driver")
        assert (staged / GUEST_DRIVER_DIR / rel).read_bytes() == path.read_bytes()
    config = json.loads((staged / "etc/netvm/driver.json").read_text())
    assert config["uio"]["tx_free"] == {"paddr": 0x210000, "size": 0x5000, "capacity": 1024}
    assert config["tx_clients"] == [
        {"offset": 0, "size": 0x100000},
        {"offset": 0x100000, "size": 0x100000},
    ]


@pytest.mark.parametrize(
    ("fixture", "rel"),
    [
        ("odroidc4-driver.json", "rootfs_overlay/etc/netvm/driver.json"),
        ("odroidc4-sim.json", "sim.json"),
    ],
)
def test_driver_and_sim_fixtures_are_what_the_board_renders(
    odroidc4: Board, fixture: str, rel: str
) -> None:
    # The driver and simulation tests run on these fixtures; they must not drift.
    path = FIXTURES / fixture
    rendered = json.loads(planned_files(odroidc4, ROOT)[rel][0])
    if rel == "sim.json":
        del rendered["generated"]  # run_sim takes the settings without it
    assert json.loads(path.read_text()) == rendered
