"""The generated guest under QEMU (TCG) with the simulated VMM on its shared RAM.

One guest build (qemu_virt_aarch64 in the build root, cached by input hash) and one boot serve the
whole module; the reboot test comes last because it reboots that guest. Needs root (the
peer namespace and its tap) and qemu-system-aarch64. The VMM is netvm's SIMULATION of
it (netvm.target.qemu_vmm); everything inside the guest is the real generated system.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netvm.board import Board
from netvm.core.workspace import Workspace
from netvm.target.qemu import QemuRun, RunOptions, guest_images, uio_problems
from tests.harness import QEMU_GUEST, ROOT

pytestmark = QEMU_GUEST


@pytest.fixture(scope="module")
def guest(qemu_board: Board) -> Iterator[QemuRun]:
    options = RunOptions()
    images = guest_images(qemu_board, Workspace.at(ROOT), options, progress=lambda _msg: None)
    with QemuRun(qemu_board, Workspace.at(ROOT), images, options) as run:
        _, line = run.wait_ready()
        print(f"\nQEMU start -> driver event loop: {line.seconds:.2f} s (bar: 2 s under TCG)")
        yield run


def test_uio_devices_have_the_boards_names_and_sizes(guest: QemuRun, qemu_board: Board) -> None:
    seen = guest.uio_devices()
    assert uio_problems(qemu_board, seen) == []
    assert set(seen) == {d.name for d in qemu_board.uio}


def test_driver_start_up_log(guest: QemuRun, qemu_board: Board) -> None:
    console = guest.require_console()
    log = console.driver_log()
    text = "\n".join(log)
    assert "*** Starting up" in text
    assert "*** Setting up UIO devices by name" in text
    for name in ("data_passing", "rx_free", "tx_free", "rx_active", "tx_active"):
        assert f"({name}) with size {qemu_board.uio_device(name).maps[0].size:#x}" in text
    assert "*** Checking the data passing page" in text
    assert "entering event loop" in text
    assert not [ln for ln in log if "|ERROR" in ln]


def test_init_mounted_named_and_prioritised_the_guest(guest: QemuRun, qemu_board: Board) -> None:
    console = guest.require_console()
    mounts = {line.split()[1] for line in console.run("cat /proc/mounts", 20) if " " in line}
    assert {"/proc", "/sys", "/dev"} <= mounts
    assert console.run("hostname", 20)[-1] == qemu_board.name
    # The driver runs at the default priority, the console shell below it (netvm-init).
    nice = console.run(
        'for p in /proc/[0-9]*; do read -r s < $p/stat; set -- $s; echo "$2 ${19}"; done', 20
    )
    by_name = dict(line.rsplit(" ", 1) for line in nice if line.startswith("("))
    assert by_name.get("(netvm-driver)") == "0", by_name
    assert by_name.get("(sh)") == "10", by_name


def test_ping_and_udp_echo_through_the_guest(guest: QemuRun) -> None:
    assert guest.vmm is not None
    before = guest.vmm.stats()
    for client in guest.vmm.layout.clients:
        ping = guest.ping(client.ipv4, 3)
        assert ping["received"] == 3, ping
        echo = guest.udp_echo(client.ipv4)
        assert echo["echoed"] == echo["sent"] and not echo["mismatched"], echo
    after = guest.vmm.stats()
    # Both directions crossed the guest's driver and both notification paths were used.
    assert after["counters"]["rx_frames"] > before["counters"].get("rx_frames", 0)
    assert after["counters"]["tx_frames"] > before["counters"].get("tx_frames", 0)
    assert after["notifications"]["rx_fault"] > 0 and after["notifications"]["tx_fault"] > 0
    assert after["irqs"]["tx_irq"]["injected"] > 0
    assert after["counters"].get("violations", 0) == 0


def test_guest_reboot_with_the_simulator_running_recovers(guest: QemuRun) -> None:
    assert guest.vmm is not None
    console = guest.require_console()
    ready, _ = guest.wait_ready()
    console.send("\nreboot -f\n")
    _, line = guest.wait_ready(start=ready + 1)  # the driver came up again after the reset
    print(f"\nreboot: driver event loop again at {line.seconds:.2f} s")
    assert guest.vmm.error is None
    client = guest.vmm.layout.clients[0]
    assert guest.ping(client.ipv4, 3)["received"] == 3
    echo = guest.udp_echo(client.ipv4)
    assert echo["echoed"] == echo["sent"], echo
    assert guest.vmm.error is None
