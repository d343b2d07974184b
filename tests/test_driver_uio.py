"""Finding UIO devices by name in sysfs (a fake /sys/class/uio tree)."""

from __future__ import annotations

from pathlib import Path

import pytest
from netvm_driver.uio import UioError, match, scan


def add_uio(
    root: Path,
    n: int,
    *,
    compatible: bytes | None = None,
    uio_name: bytes | None = None,
    name: str = "uio",
    addr: int = 0x1000,
) -> None:
    dev = root / f"uio{n}"
    of = dev / "device" / "of_node"
    of.mkdir(parents=True)
    if compatible is not None:
        (of / "compatible").write_bytes(compatible)
    if uio_name is not None:
        (of / "linux,uio-name").write_bytes(uio_name)
    (dev / "name").write_text(name + "\n")
    m = dev / "maps" / "map0"
    m.mkdir(parents=True)
    (m / "addr").write_text(f"0x{addr:016x}\n")
    (m / "size").write_text("0x0000000000001000\n")


def test_names_come_from_compatible_uio_name_or_name(tmp_path: Path) -> None:
    add_uio(tmp_path, 0, compatible=b"generic-uio\0rx_free\0", addr=0x200000)
    add_uio(tmp_path, 1, uio_name=b"tx_free\0", name="tx_free", addr=0x210000)
    add_uio(tmp_path, 10, name="rx_irq", addr=0x302000)
    add_uio(tmp_path, 2, compatible=b"vendor,thing\0other\0", addr=0x999000)
    found = scan(str(tmp_path))
    assert [d.node for d in found] == ["uio0", "uio1", "uio2", "uio10"]
    got = match({"rx_free": 0, "tx_free": 0, "rx_irq": 0}, found)
    assert {k: v.node for k, v in got.items()} == {
        "rx_free": "uio0",
        "tx_free": "uio1",
        "rx_irq": "uio10",
    }
    assert found[0].maps == ((0x200000, 0x1000),)


def test_probe_order_does_not_matter(tmp_path: Path) -> None:
    add_uio(tmp_path, 0, compatible=b"generic-uio\0tx_data\0")
    add_uio(tmp_path, 1, compatible=b"generic-uio\0rx_data\0")
    got = match({"rx_data": 0, "tx_data": 0}, scan(str(tmp_path)))
    assert (got["rx_data"].node, got["tx_data"].node) == ("uio1", "uio0")


def test_falls_back_to_the_map_address(tmp_path: Path) -> None:
    add_uio(tmp_path, 3, addr=0xF04000)  # node name only: "uio"
    got = match({"data_passing": 0xF04000}, scan(str(tmp_path)))
    assert got["data_passing"].node == "uio3"


def test_missing_and_ambiguous_devices_list_everything_found(tmp_path: Path) -> None:
    add_uio(tmp_path, 0, compatible=b"generic-uio\0rx_free\0", addr=0x200000)
    add_uio(tmp_path, 1, compatible=b"generic-uio\0rx_free\0", addr=0x220000)
    with pytest.raises(UioError) as exc:
        match({"rx_free": 0x200000, "tx_irq": 0x303000}, scan(str(tmp_path)))
    text = str(exc.value)
    assert "'rx_free' is claimed by more than one device (uio0, uio1)" in text
    assert "no UIO device named 'tx_irq' (or with map0 at 0x303000)" in text
    assert "uio0: names rx_free/uio; map0 0x200000+0x1000" in text
    assert "uio_pdrv_genirq.of_id=generic-uio" in text


def test_no_uio_at_all(tmp_path: Path) -> None:
    with pytest.raises(UioError, match=r"\(no UIO devices at all\)"):
        match({"rx_free": 0}, scan(str(tmp_path / "absent")))
