"""`invoke check`: the guest DTB against Microkit system descriptions.

The guest DTB is built for real (kernel's C4 DTS + netvm's overlay, dtc). The good
system file is what the pinned sdfgen renders for it (tests/fixtures/system/
render_with_sdfgen.py); each broken fixture is that file with one defect, and its
`.expected` file holds the exact error text.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from netvm.board import Board, Region
from netvm.devicetree import DtbResult, build_guest_dtb
from netvm.errors import USER_ERROR_EXIT, UserError
from netvm.kernelsrc import KernelSource
from netvm.render import render_all
from netvm.sdfcheck import (
    GuestTree,
    check_files,
    format_report,
    load_guest_tree,
    parse_system,
    run_check,
)

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ROOT / "tests" / "fixtures" / "system"
GOOD = SYSTEMS / "odroidc4-good.system"
BROKEN = sorted(p for p in SYSTEMS.glob("*.system") if p != GOOD)
INVOKE = str(Path(sys.executable).with_name("invoke"))
INITRD = Region(0x2E800000, 0x800000)


@pytest.fixture(scope="module")
def guest(odroidc4: Board, kernel_src: KernelSource, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("sdfcheck")
    rendered = render_all(odroidc4, out / "render", ROOT)
    return build_guest_dtb(
        odroidc4, rendered.overlay_dts, kernel_src, out / "dtb", header="test", initrd=INITRD
    )


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_good_fixture_is_what_sdfgen_renders(odroidc4: Board, guest: DtbResult) -> None:
    sys.path.insert(0, str(SYSTEMS))
    try:
        from render_with_sdfgen import render_system
    finally:
        sys.path.remove(str(SYSTEMS))
    rendered = render_system(odroidc4, guest.dtb.read_bytes())
    if os.environ.get("NETVM_UPDATE_GOLDEN"):
        GOOD.write_text(rendered)  # then re-derive the broken fixtures' defects by hand
    assert rendered == GOOD.read_text()


def test_good_system_passes_every_check(odroidc4: Board, guest: DtbResult) -> None:
    report = run_check(
        odroidc4, dtb=guest.dtb, system=GOOD, dtb_display="guest.dtb", system_display=rel(GOOD)
    )
    assert report.errors == [] and report.vm == "net_driver_vm"
    checked = "\n".join(report.checked)
    for name in ("data_passing", "rx_free", "tx_free", "rx_active", "tx_active", "rx_data"):
        assert f': {name} backed by <map mr="uio_{name}"' in checked
    assert "fault page rx_fault is unmapped" in checked
    assert "fault page tx_fault is unmapped" in checked
    assert "/memory@20000000: guest RAM 0x20000000-0x30000000 mapped" in checked
    assert "/soc/bus@ff600000/mdio-multiplexer@4c000: passthrough mdio_mux mapped" in checked
    # Enabled nodes nothing maps are reported, not failed: no driver may bind to them.
    paths = [w.key for w in report.warnings]
    assert "/soc/bus@ff600000/hdmi-tx@0" in paths
    assert all("will fault at boot" in w.message for w in report.warnings)
    # Emulated by the VMM or mapped: never reported.
    assert not any(p.startswith(("/soc/interrupt-controller", "/virtio-console")) for p in paths)
    assert "/soc/ethernet@ff3f0000" not in paths


@pytest.mark.parametrize("system", BROKEN, ids=lambda p: p.stem)
def test_broken_system_exact_findings(odroidc4: Board, guest: DtbResult, system: Path) -> None:
    with pytest.raises(UserError) as err:
        run_check(
            odroidc4,
            dtb=guest.dtb,
            system=system,
            dtb_display="guest.dtb",
            system_display=rel(system),
        )
    assert err.value.render() + "\n" == system.with_suffix(".expected").read_text()


def test_strict_turns_fault_warnings_into_errors(odroidc4: Board, guest: DtbResult) -> None:
    with pytest.raises(UserError) as err:
        run_check(
            odroidc4,
            dtb=guest.dtb,
            system=GOOD,
            dtb_display="guest.dtb",
            system_display=rel(GOOD),
            strict=True,
        )
    assert any(f.key == "/soc/bus@ff800000/ir@8000" for f in err.value.findings)


def test_reg_translation_through_bus_ranges(guest: DtbResult) -> None:
    tree = load_guest_tree(guest.dtb, "guest.dtb")
    assert tree.regs("/soc/bus@ff600000/mdio-multiplexer@4c000") == [(0xFF64C000, 0xA4)]
    assert tree.regs("/soc/ethernet@ff3f0000") == [(0xFF3F0000, 0x10000), (0xFF634540, 0x8)]
    assert tree.regs("/cpus/cpu@0") is None  # CPU ids are not addresses
    assert tree.enabled("/soc/ethernet@ff3f0000")
    assert not tree.enabled("/soc/bus@ff800000/serial@3000")


def test_translation_rejects_a_bus_without_ranges() -> None:
    tree = GuestTree(
        {
            "/": {"#address-cells": b"\0\0\0\1", "#size-cells": b"\0\0\0\1"},
            "/bus": {"#address-cells": b"\0\0\0\1", "#size-cells": b"\0\0\0\1"},
            "/bus/dev@10": {"reg": b"\0\0\0\x10\0\0\0\x04"},
            "/mapped": {
                "#address-cells": b"\0\0\0\1",
                "#size-cells": b"\0\0\0\1",
                "ranges": b"\0\0\0\0\xff\0\0\0\0\0\x10\0",
            },
            "/mapped/dev@20": {"reg": b"\0\0\0\x20\0\0\0\x04"},
        }
    )
    assert tree.regs("/bus/dev@10") is None
    assert tree.regs("/mapped/dev@20") == [(0xFF000020, 4)]


def test_malformed_system_file_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.system"
    bad.write_text(
        '<system><protection_domain name="p"><virtual_machine name="v">'
        '<map mr="nope" vaddr="0x1000"/></virtual_machine></protection_domain></system>'
    )
    with pytest.raises(UserError) as err:
        parse_system(bad, "bad.system")
    assert str(err.value) == (
        'bad.system: virtual_machine \'v\': <map mr="nope" vaddr="0x1000"> names no declared '
        "memory_region or has no numeric vaddr"
    )
    bad.write_text("<system>")
    with pytest.raises(UserError) as err2:
        parse_system(bad, "bad.system")
    assert "cannot read the system description" in str(err2.value)


def test_missing_inputs_say_how_to_supply_them(odroidc4: Board, tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        check_files(odroidc4, tmp_path, system=None, dtb=None)
    assert err.value.findings[0].hint.startswith("run `invoke build --board odroidc4` first")
    dtb = tmp_path / "g.dtb"
    dtb.write_bytes(b"")
    with pytest.raises(UserError) as err2:
        check_files(odroidc4, tmp_path, system=None, dtb=dtb)
    assert err2.value.findings[0].key == "microkit"
    assert "pass --system FILE" in err2.value.findings[0].hint


def test_cli_exit_status(guest: DtbResult) -> None:
    env = dict(os.environ)
    base = [INVOKE, "check", "--board", "odroidc4", "--dtb", str(guest.dtb)]
    good = subprocess.run(
        [*base, "--system", rel(GOOD)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-1].startswith(
        "tests/fixtures/system/odroidc4-good.system: virtual machine 'net_driver_vm': 16 checks"
    )
    bad_system = SYSTEMS / "partial-uio.system"
    bad = subprocess.run(
        [*base, "--system", rel(bad_system)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert bad.returncode == USER_ERROR_EXIT
    assert bad.stderr == bad_system.with_suffix(".expected").read_text()
    assert "Traceback" not in bad.stderr


def test_format_report_counts(odroidc4: Board, guest: DtbResult) -> None:
    report = run_check(
        odroidc4, dtb=guest.dtb, system=GOOD, dtb_display="guest.dtb", system_display="g"
    )
    last = format_report(report).splitlines()[-1]
    assert (
        last
        == f"g: virtual machine 'net_driver_vm': 16 checks passed, {len(report.warnings)} warnings"
    )
