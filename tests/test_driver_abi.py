"""The binary contract (docs/contract.md): data-passing page, queue header and descriptors."""

from __future__ import annotations

import struct

from netvm_driver import abi
from netvm_driver.abi import Connection, DataPassing

from netvm.board import Board
from netvm.sim.layout import sim_layout
from netvm.sim.vmm import data_passing_page
from tests.harness import ROOT


def test_data_passing_page_is_616_bytes_with_upstream_offsets() -> None:
    assert abi.DATA_PASSING.size == abi.DATA_PASSING_SIZE == 616
    assert (abi.DP_MAGIC, abi.DP_VIRT_RX, abi.DP_VIRT_TX) == (0, 8, 48)
    assert (abi.DP_RX_DATA_PADDR, abi.DP_NUM_TX_CLIENTS, abi.DP_TX_DATA_PADDRS) == (88, 96, 104)
    assert (abi.CONN_FREE_QUEUE, abi.CONN_ACTIVE_QUEUE) == (0, 16)
    assert (abi.CONN_NUM_BUFFERS, abi.CONN_ID, abi.CONN_SIZE) == (32, 34, 40)
    assert abi.DP_TX_DATA_PADDRS + 8 * abi.SDDF_NET_MAX_CLIENTS == 616
    assert bytes((0x73, 0x44, 0x44, 0x46, 0x05)) == abi.SDDF_NET_MAGIC


def test_each_field_lands_at_its_offset() -> None:
    dp = DataPassing(
        magic=abi.SDDF_NET_MAGIC,
        virt_rx=Connection((0x200000, 0x3000), (0x220000, 0x3000), 512, 7),
        virt_tx=Connection((0x210000, 0x5000), (0x230000, 0x5000), 1024, 9),
        rx_data_paddr=0x5FEFF000,
        num_tx_clients=2,
        tx_data_paddrs=(0x5FDFF000, 0x5FCFF000),
    )
    raw = dp.pack()
    assert len(raw) == 616
    assert raw[0:5] == abi.SDDF_NET_MAGIC and raw[5:8] == b"\0\0\0"
    assert struct.unpack_from("<QQQQHB", raw, 8) == (0x200000, 0x3000, 0x220000, 0x3000, 512, 7)
    assert struct.unpack_from("<QQQQHB", raw, 48) == (0x210000, 0x5000, 0x230000, 0x5000, 1024, 9)
    assert struct.unpack_from("<Q", raw, 88)[0] == 0x5FEFF000
    assert struct.unpack_from("<i", raw, 96)[0] == 2
    assert struct.unpack_from("<QQQ", raw, 104) == (0x5FDFF000, 0x5FCFF000, 0)
    back = DataPassing.unpack(raw)
    assert back.virt_tx.num_buffers == 1024 and back.tx_data_paddrs[:2] == dp.tx_data_paddrs


def test_queue_header_and_descriptor_layout() -> None:
    assert abi.QUEUE_HEADER.size == abi.QUEUE_HEADER_SIZE == 8
    assert (abi.QUEUE_TAIL, abi.QUEUE_HEAD, abi.QUEUE_CONSUMER_SIGNALLED) == (0, 2, 4)
    assert abi.DESC.size == abi.DESC_SIZE == 16
    assert (abi.DESC_IO, abi.DESC_LEN) == (0, 8)
    assert [abi.desc_offset(i) for i in (0, 1, 511)] == [8, 24, 8 + 16 * 511]
    # sdfgen's rule for the queue UIO sizes of the Odroid C4
    assert abi.queue_region_size(512) == 0x3000
    assert abi.queue_region_size(1024) == 0x5000


def test_driver_reads_what_the_simulated_vmm_writes(odroidc4: Board) -> None:
    # Two independent encodings of the page (simulator and driver) must agree.
    layout = sim_layout(odroidc4, ROOT)
    dp = DataPassing.unpack(data_passing_page(layout))
    assert dp.magic == abi.SDDF_NET_MAGIC
    assert dp.virt_rx.num_buffers == 512 and dp.virt_tx.num_buffers == 1024
    assert dp.virt_rx.free_queue == (0x200000, 0x3000)
    assert dp.virt_tx.active_queue == (0x230000, 0x5000)
    assert dp.rx_data_paddr == layout.rx_io_base
    assert dp.num_tx_clients == 2
    assert dp.tx_data_paddrs[:2] == tuple(c.tx_io_base for c in layout.clients)
    assert set(dp.tx_data_paddrs[2:]) == {0}
