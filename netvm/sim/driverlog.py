"""The guest driver's log lines the host waits for or reads, in one place.

The driver (driver/netvm_driver/__main__.py) writes them; the simulation, the QEMU boot
and the whole-system check match them; a test checks that the driver's
source still says each of them (tests/test_driverlog.py).
"""

from __future__ import annotations

import re

PREFIX = "UIO(NET)"  # every driver line starts with it (UIO(NET): , UIO(NET)|WARN: , ...)
# The last start-up line: the driver serves the queues from here on.
READY = "entering event loop"
# Without a VMM the data-passing page is empty: the driver gets as far as checking it,
# which still proves the kernel, the DT, the UIO devices and the rootfs.
DATA_PAGE_CHECK = "*** Checking the data passing page"
# The exit line after SIGTERM: counters, then every queue's occupancy.
STOPPED = re.compile(r"\*\*\* Stopped: (.*); queues (.*)$")
