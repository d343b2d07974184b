"""The host matches the driver's own log lines: each text netvm.sim.driverlog waits for
is one the driver's source writes, so rewording a driver line cannot silently break a
boot check."""

from __future__ import annotations

import re

from netvm.sim import driverlog
from tests.harness import DRIVER_DIR

DRIVER = DRIVER_DIR / "netvm_driver"


def driver_source() -> str:
    return "\n".join(p.read_text() for p in sorted(DRIVER.glob("*.py")))


def test_the_driver_writes_the_lines_the_host_waits_for() -> None:
    source = driver_source()
    assert f'PREFIX = "{driverlog.PREFIX}: "' in source
    for text in (driverlog.READY, driverlog.DATA_PAGE_CHECK):
        assert re.search(rf'log\.info\(f?"[^"]*{re.escape(text)}', source), text


def test_the_stop_line_pattern_reads_what_the_driver_prints() -> None:
    assert "log.info(f\"*** Stopped: {counters or 'no traffic'}; queues {queues}\")" in (
        driver_source()
    )
    line = "*** Stopped: rx_frames=3; queues rx_free=512 rx_active=0 tx_active=0 tx_free=0"
    m = driverlog.STOPPED.search(line)
    assert m is not None and m.group(2) == "rx_free=512 rx_active=0 tx_active=0 tx_free=0"
