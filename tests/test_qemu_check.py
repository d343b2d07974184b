"""`invoke run --check` end to end: the library call behind it, on the shared build.

Boots its own guest (after tests/test_qemu_boot.py released the simulation lock) and
checks the report the task prints. Markers qemu and slow; needs root.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from netvm.board import load_board
from netvm.qemu import RunOptions, run_check

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the peer namespace and tap"),
    pytest.mark.skipif(
        shutil.which("qemu-system-aarch64") is None, reason="qemu-system-aarch64 not installed"
    ),
]


def test_check_boots_reaches_the_driver_and_reports() -> None:
    board = load_board("qemu_virt_aarch64", ROOT)
    report = run_check(board, ROOT, RunOptions(check=True))
    print("\n" + report.summary())
    assert report.boot_seconds is not None, report.reason
    assert report.uio_problems == [] and len(report.uio) == len(board.uio)
    assert any("entering event loop" in line for line in report.driver_log)
    assert report.ended == "guest powered off"
    saved = json.loads((ROOT / "build" / board.name / "qemu" / "check.json").read_text())
    assert saved["boot_seconds"] == report.boot_seconds
    if "pl011" in (ROOT / "driver" / "netvm_driver" / "device.py").read_text():
        assert report.ok, report.reason
        assert all(p["received"] == p["sent"] for p in report.ping)
    else:
        pytest.skip("traffic needs the driver's doorbell wiring (docs/qemu.md)")
