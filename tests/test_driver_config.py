"""driver.json validation and the command line (--help, --self-check, exit codes)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from netvm_driver.config import ConfigError, load_config, parse_config

from tests.harness import DRIVER_JSON, run_driver


def fixture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DRIVER_JSON.read_text())
    return data


def test_rendered_config_is_accepted() -> None:
    cfg = load_config(DRIVER_JSON)
    assert cfg.interface == "eth0"
    assert cfg.capacity("rx_free") == 512 and cfg.capacity("tx_active") == 1024
    assert [(c.offset, c.size) for c in cfg.tx_clients] == [(0, 0x100000), (0x100000, 0x100000)]
    assert cfg.uio["tx_irq"].irq == 401


def findings(mutate: Any) -> list[str]:
    data = copy.deepcopy(fixture())
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "driver.json")
    return exc.value.findings


def test_every_problem_is_reported_with_its_key() -> None:
    def mutate(d: dict[str, Any]) -> None:
        del d["uio"]["rx_irq"]
        d["uio"]["tx_free"]["capacity"] = 1000
        d["uio"]["rx_active"]["size"] = 0x4000
        d["tx_clients"][1]["offset"] = 0x80000

    got = findings(mutate)
    assert any(f.startswith("driver.json: uio: missing rx_irq") for f in got)
    assert any("uio.tx_free.capacity: expected a power of two" in f for f in got)
    assert any(
        "uio.rx_active.size: 0x4000 != round_up_to_page(8 + 16 × 512) = 0x3000" in f for f in got
    )
    assert any("tx_clients[1]: overlaps tx_clients[0]" in f for f in got)
    assert len(got) == 4


def test_client_region_must_fit_tx_data() -> None:
    got = findings(lambda d: d["tx_clients"].append({"offset": 0x200000, "size": 0x100000}))
    assert got == [
        "driver.json: tx_clients[2]: region 0x200000+0x100000 is not page-aligned "
        "inside tx_data (0x200000)"
    ]


def test_wrong_buffer_size_and_version() -> None:
    def mutate(d: dict[str, Any]) -> None:
        d["buffer_size"] = 4096
        d["config_version"] = 7

    got = findings(mutate)
    assert "driver.json: config_version: expected 1, found 7" in got
    assert any(f.startswith("driver.json: buffer_size: expected 2048") for f in got)


def test_help_and_self_check() -> None:
    helped = run_driver("--help")
    assert helped.returncode == 0 and "--sim-devices" in helped.stdout
    checked = run_driver("--config", str(DRIVER_JSON), "--self-check")
    assert checked.returncode == 0, checked.stderr
    assert "ok (board odroidc4, interface eth0" in checked.stdout


def test_bad_config_exits_2_with_one_line_per_finding(tmp_path: Path) -> None:
    data = fixture()
    data["uio"]["rx_free"]["capacity"] = 3
    bad = tmp_path / "driver.json"
    bad.write_text(json.dumps(data))
    proc = run_driver("--config", str(bad), "--self-check")
    assert proc.returncode == 2
    assert f"UIO(NET)|ERROR: {bad}: uio.rx_free.capacity: expected a power of two" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_devices_fail_cleanly_listing_what_was_found(tmp_path: Path) -> None:
    # No UIO devices in this host (or none named like ours): a clear error, exit 1.
    proc = run_driver("--config", str(DRIVER_JSON), "--interface", "lo")
    assert proc.returncode == 1, proc.stderr
    assert "UIO(NET): *** Starting up" in proc.stderr
    assert "UIO(NET)|ERROR: no UIO device named 'data_passing'" in proc.stderr
    assert "found under /sys/class/uio" in proc.stderr
    assert "Traceback" not in proc.stderr
