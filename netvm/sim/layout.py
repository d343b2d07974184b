"""Where the simulated VMM puts things: regions, io addresses and client buffers.

Owns: turning a board into the numbers the simulation needs, through the same rendered
driver configuration the guest gets (netvm.guest.render.driver_config), so the simulation and
the target cannot disagree about the layout. Pure data; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netvm.board import Board
from netvm.guest.render import driver_config, sim_settings

NET_BUFFER_SIZE = 2048
# Simulated physical (io) addresses of the data regions. They differ from the guest-
# physical UIO addresses on purpose (descriptors carry io addresses, the driver must
# translate), the TX client regions run downwards like upstream's, and a gap page between
# them catches a driver that assumes a fixed stride or contiguous client regions.
RX_IO_BASE = 0x5FEFF000
TX_IO_TOP = 0x5FDFF000
TX_IO_GAP = 0x1000
QUEUES = ("rx_free", "rx_active", "tx_free", "tx_active")
REGIONS = ("data_passing", *QUEUES, "rx_data", "tx_data")
DOORBELLS = ("rx_fault", "tx_fault")
IRQS = ("rx_irq", "tx_irq")


@dataclass(frozen=True)
class ClientLayout:
    index: int
    name: str
    mac: str
    ipv4: str
    tx_io_base: int  # tx_data_paddrs[index]
    tx_map_offset: int  # where its region starts inside the tx_data map
    tx_region_size: int
    tx_buffers: int

    def tx_buffer_ios(self) -> tuple[int, ...]:
        return tuple(self.tx_io_base + NET_BUFFER_SIZE * k for k in range(self.tx_buffers))


@dataclass(frozen=True)
class SimLayout:
    board: str
    driver_config: dict[str, Any]  # exactly what the guest's /etc/netvm/driver.json holds
    settings: dict[str, Any]  # netvm.guest.render.sim_settings
    sizes: dict[str, int]  # region name -> bytes
    paddrs: dict[str, int]  # UIO name -> guest-physical address (for the data-passing page)
    rx_capacity: int
    tx_capacity: int
    rx_io_base: int
    clients: tuple[ClientLayout, ...]

    def rx_buffer_ios(self) -> tuple[int, ...]:
        return tuple(self.rx_io_base + NET_BUFFER_SIZE * k for k in range(self.rx_capacity))


def sim_layout(board: Board, root: Path) -> SimLayout:
    cfg = driver_config(board, root)
    settings = sim_settings(board)
    uio = cfg["uio"]
    clients = []
    io_top = TX_IO_TOP
    for i, (spec, client) in enumerate(zip(cfg["tx_clients"], board.net.clients, strict=True)):
        base = io_top - spec["size"]
        clients.append(
            ClientLayout(
                index=i,
                name=client.name,
                mac=client.mac,
                ipv4=client.ipv4,
                tx_io_base=base,
                tx_map_offset=spec["offset"],
                tx_region_size=spec["size"],
                tx_buffers=client.tx_buffers,
            )
        )
        io_top = base - TX_IO_GAP
    return SimLayout(
        board=board.name,
        driver_config=cfg,
        settings=settings,
        sizes={name: uio[name]["size"] for name in (*REGIONS, *DOORBELLS, *IRQS)},
        paddrs={name: entry["paddr"] for name, entry in uio.items()},
        rx_capacity=uio["rx_free"]["capacity"],
        tx_capacity=uio["tx_free"]["capacity"],
        rx_io_base=RX_IO_BASE,
        clients=tuple(clients),
    )
