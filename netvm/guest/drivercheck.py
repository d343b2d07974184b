"""The guest driver's own configuration rules, applied to a board before anything builds.

Owns: running the driver's `--self-check` (its real parser and limits: queue capacities,
TX clients, region sizes) on the driver.json a board renders, and naming the board key
behind each refusal. The limits therefore exist once, in the driver; a board the toolkit
accepts is one the driver accepts at boot. Must not: restate the driver's limits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from netvm.board import Board
from netvm.core.errors import Finding, UserError
from netvm.guest.render import driver_config

DRIVER_ERROR = "UIO(NET)|ERROR: "


def board_key(config_key: str) -> str:
    """The board key a driver.json key is rendered from."""
    m = re.match(r"uio\.(\w+)\.capacity", config_key)
    if m is not None:
        return "net.rx_buffers" if m.group(1).startswith("rx_") else "net.clients"
    m = re.match(r"uio\.(\w+)", config_key)
    if m is not None:
        return f"uio.{m.group(1)}"
    if config_key.startswith("tx_clients"):
        return "net.clients"
    if config_key == "interface":
        return "net.interface"
    return "net"


def driver_findings(board: Board, root: Path) -> list[Finding]:
    """What the driver (under `root`/driver) says about `board`'s driver.json."""
    with tempfile.TemporaryDirectory(prefix="netvm-drivercheck-") as tmp:
        path = Path(tmp) / "driver.json"
        path.write_text(json.dumps(driver_config(board, root), indent=2))
        proc = subprocess.run(
            [sys.executable, "-S", "-m", "netvm_driver", "--config", str(path), "--self-check"],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(root / "driver")),
            check=False,
            timeout=60,
        )
    if proc.returncode == 0:
        return []
    findings = []
    prefix = f"{DRIVER_ERROR}{path}: "
    for line in proc.stderr.splitlines():
        if not line.startswith(prefix):
            continue
        key, _, message = line[len(prefix) :].partition(": ")
        findings.append(
            Finding(
                board.display_file,
                board_key(key),
                f"the guest driver would refuse this board: driver.json {key}: {message}",
                "the driver's limits are in docs/driver-config.md",
            )
        )
    if not findings:  # not a configuration refusal: the driver itself is broken
        raise RuntimeError(f"netvm_driver --self-check failed: {proc.stderr.strip()}")
    return findings


def check_driver_rules(board: Board, root: Path) -> None:
    """Raise the driver's refusals of `board` as one UserError."""
    findings = driver_findings(board, root)
    if findings:
        raise UserError(findings)
