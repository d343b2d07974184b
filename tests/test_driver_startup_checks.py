"""The start-up check of the data-passing page's io address ranges (docs/contract.md).

rx_data_paddr spans uio.rx_data.size bytes and tx_data_paddrs[i] spans tx_clients[i].size
bytes. A range that runs past 2^64, or two ranges that overlap, make the driver refuse to
start (one ERROR line, exit 1) instead of running and dropping every buffer. Each page is
the simulated VMM's (netvm.sim.vmm) with one field changed, read back through the
driver's own devices and checked by the driver's own check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netvm_driver.abi import DATA_PASSING_SIZE, DataPassing
from netvm_driver.config import DriverConfig, parse_config
from netvm_driver.datapath import check_data_passing, read_data_passing
from netvm_driver.device import Devices, open_sim_devices

from netvm.board import Board
from netvm.sim.layout import SimLayout, sim_layout
from netvm.sim.vmm import SimDevices, create_devices
from tests.harness import ROOT

# The simulated layout of the Odroid C4 (netvm.sim.layout): rx_data is 1 MiB at
# 0x5FEFF000; the two 1 MiB client regions run downwards from 0x5FDFF000 with a page
# between them. The test below pins these numbers, so the reasons can be spelt out.
MIB = 0x100000
RX_IO = 0x5FEFF000
TX0_IO = 0x5FCFF000
TX1_IO = 0x5FBFE000
TOP = 1 << 64


class Page:
    """The simulated VMM's devices, with a way to rewrite the data-passing page."""

    def __init__(self, layout: SimLayout, sim: SimDevices, config: DriverConfig) -> None:
        self.layout = layout
        self.sim = sim
        self.config = config
        self.devices: Devices = open_sim_devices(config, str(sim.devices_file), lambda _m: None)
        self.original = read_data_passing(self.devices)

    def write(self, rx: int | None = None, tx: dict[int, int] | None = None) -> None:
        """Rewrite rx_data_paddr and/or some tx_data_paddrs[i], as a VMM would."""
        dp = self.original
        paddrs = list(dp.tx_data_paddrs)
        for i, paddr in (tx or {}).items():
            paddrs[i] = paddr
        page = DataPassing(
            dp.magic,
            dp.virt_rx,
            dp.virt_tx,
            dp.rx_data_paddr if rx is None else rx,
            dp.num_tx_clients,
            tuple(paddrs),
        ).pack()
        self.sim.regions["data_passing"][:DATA_PASSING_SIZE] = page

    def problems(self, rx: int | None = None, tx: dict[int, int] | None = None) -> list[str]:
        """What the driver's start-up check says about the page with these changes."""
        self.write(rx, tx)
        return check_data_passing(read_data_passing(self.devices), self.config)


@pytest.fixture
def page(odroidc4: Board, tmp_path: Path) -> Iterator[Page]:
    layout = sim_layout(odroidc4, ROOT)
    sim = create_devices(layout, tmp_path / "run")
    p = Page(layout, sim, parse_config(layout.driver_config, "driver.json"))
    yield p
    p.devices.close()
    sim.close()


def test_the_layout_the_reasons_are_written_for(page: Page) -> None:
    assert page.original.rx_data_paddr == RX_IO
    assert page.original.tx_data_paddrs[:2] == (TX0_IO, TX1_IO)
    assert page.config.uio["rx_data"].size == MIB
    assert [c.size for c in page.config.tx_clients] == [MIB, MIB]


def test_the_simulated_vmms_page_is_accepted(page: Page) -> None:
    assert page.problems() == []


def test_rx_inside_a_tx_client_region_is_refused(page: Page) -> None:
    rx = TX0_IO + 0x80000  # the middle of client 0's region
    assert page.problems(rx=rx) == [
        "rx_data_paddr is 0x5fd7f000, but rx_data 0x5fd7f000..0x5fe7f000 overlaps "
        "tx_data_paddrs[0] 0x5fcff000..0x5fdff000"
    ]


def test_rx_wrapping_past_2_64_is_refused(page: Page) -> None:
    rx = TOP - 0x80000  # rx_data would be half below 2^64, half wrapped round to 0
    assert page.problems(rx=rx) == [
        "rx_data_paddr is 0xfffffffffff80000, but rx_data (0x100000 bytes) would end at "
        "0x10000000000080000, past 2^64"
    ]


def test_a_tx_client_region_wrapping_past_2_64_is_refused(page: Page) -> None:
    assert page.problems(tx={1: TOP - 0x1000}) == [
        "tx_data_paddrs[1] is 0xfffffffffffff000, but tx_clients[1] (0x100000 bytes) "
        "would end at 0x100000000000ff000, past 2^64"
    ]


def test_two_tx_client_regions_overlapping_are_refused(page: Page) -> None:
    tx1 = TX0_IO + 0x800  # one 2048-byte buffer into client 0's region
    assert page.problems(tx={1: tx1}) == [
        "tx_data_paddrs[1] is 0x5fcff800, but its region 0x5fcff800..0x5fdff800 overlaps "
        "tx_data_paddrs[0] 0x5fcff000..0x5fdff000"
    ]
    assert page.problems(tx={1: TX0_IO}) == [
        "tx_data_paddrs[1] is 0x5fcff000, but its region 0x5fcff000..0x5fdff000 overlaps "
        "tx_data_paddrs[0] 0x5fcff000..0x5fdff000"
    ]


def test_regions_may_touch_but_not_share_a_byte(page: Page) -> None:
    # rx_data right after client 0's region; then the three back to back up to 2^64,
    # rx_data ending at 2^64 exactly; then rx_data one byte lower, sharing a byte with
    # client 1's region or with client 0's.
    assert page.problems(rx=TX0_IO + MIB) == []
    assert page.problems(rx=TOP - MIB, tx={0: TOP - 3 * MIB, 1: TOP - 2 * MIB}) == []
    assert page.problems(rx=TOP - MIB - 1, tx={0: TOP - 3 * MIB, 1: TOP - 2 * MIB}) == [
        "rx_data_paddr is 0xffffffffffefffff, but rx_data 0xffffffffffefffff..0xffffffffffffffff "
        "overlaps tx_data_paddrs[1] 0xffffffffffe00000..0xfffffffffff00000"
    ]
    assert page.problems(rx=TX0_IO + MIB - 1) == [
        "rx_data_paddr is 0x5fdfefff, but rx_data 0x5fdfefff..0x5fefefff overlaps "
        "tx_data_paddrs[0] 0x5fcff000..0x5fdff000"
    ]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="the driver opens a packet socket before it checks the page: needs root and unshare",
)
def test_the_driver_refuses_to_start_with_one_error_line(page: Page, tmp_path: Path) -> None:
    # The whole start-up, in a network namespace of its own (its lo is the interface).
    config = tmp_path / "driver.json"
    config.write_text(json.dumps(page.layout.driver_config))
    page.write(rx=TX0_IO + 0x80000)
    argv = [
        "unshare", "--net", sys.executable, "-S", "-m", "netvm_driver",
        "--config", str(config), "--sim-devices", str(page.sim.devices_file),
        "--interface", "lo", "--rx-mode", "socket", "--tx-mode", "socket", "--keep-offloads",
    ]  # fmt: skip
    try:
        proc = subprocess.run(argv, cwd=ROOT / "driver", capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the driver started on a bad page:\n{exc.stderr!r}")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines[-2:] == [
        "UIO(NET): *** Checking the data passing page",
        "UIO(NET)|ERROR: data passing page: rx_data_paddr is 0x5fd7f000, but rx_data "
        "0x5fd7f000..0x5fe7f000 overlaps tx_data_paddrs[0] 0x5fcff000..0x5fdff000",
    ], proc.stderr
