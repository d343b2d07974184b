"""The host simulation's stand-in for a UIO IRQ device (netvm.sim.vmm.SimIrq).

The driver's own IRQ calls (read_irq, enable_irq) run against the simulator's real UNIX
sockets: an interrupt reaches an enabled driver at once, one injected while it is masked
is dropped as libvmm drops it, and a restarted driver's connection takes over.
"""

from __future__ import annotations

import os
from pathlib import Path

from netvm_driver.device import _connect_sim_irq
from netvm_driver.loop import enable_irq, read_irq

from netvm.board import Board
from tests.harness import SimDriver, readable


def test_an_interrupt_reaches_an_enabled_driver_and_one_while_masked_is_dropped(
    odroidc4: Board, tmp_path: Path
) -> None:
    drv = SimDriver.open(odroidc4, tmp_path)
    try:
        irq, fd = drv.sim.irqs["tx_irq"], drv.devices.irq_fds["tx_irq"]
        assert irq.inject()  # enabled from the start, like a freshly probed UIO device
        assert readable(fd, 1.0) and read_irq(fd)
        assert not irq.enabled  # the handler masked it until the driver re-enables
        assert not irq.inject()  # masked: dropped, not kept for later
        assert (irq.injected, irq.dropped) == (1, 1)
        assert not readable(fd, 0.1) and not read_irq(fd)
        enable_irq(fd)
        assert irq.inject() and readable(fd, 1.0) and read_irq(fd)
        assert (irq.injected, irq.dropped) == (2, 1)
    finally:
        drv.close()


def test_a_restarted_driver_s_connection_replaces_the_old_one(
    odroidc4: Board, tmp_path: Path
) -> None:
    drv = SimDriver.open(odroidc4, tmp_path)
    try:
        irq = drv.sim.irqs["rx_irq"]
        seen: list[int] = []
        irq.on_connect = seen.append
        irq.read_enables()  # the first driver's connection, accepted
        assert len(seen) == 1
        new = _connect_sim_irq(irq.path)
        enable_irq(new)
        assert irq.inject()
        assert len(seen) == 2 and readable(new, 1.0) and read_irq(new)
        old = drv.devices.irq_fds["rx_irq"]
        assert readable(old, 1.0) and os.read(old, 4) == b""  # closed by the simulator
        os.close(new)
        irq.read_enables()  # the driver went away: nothing to inject into
        assert irq.conn is None and not irq.inject()
    finally:
        drv.close()
