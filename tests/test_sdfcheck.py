"""`invoke check`: the guest DTB against Microkit system descriptions.

The guest DTB is built for real (kernel's C4 DTS + netvm's overlay, dtc). The good
system file is what the real Microkit build's system-description step (upstream's
meta.py with the pinned driver-VM sdfgen, tests/fixtures/system/render_real.py) writes
for it; each broken fixture is that file with one defect, and its `.expected` file
holds the exact error text. The test that renders it again needs that real toolchain
and runs when its paths are given (REAL_TOOLCHAIN below).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netvm.board import Board
from netvm.core.errors import USER_ERROR_EXIT, UserError
from netvm.core.workspace import Workspace
from netvm.guest.devicetree import DtbResult
from netvm.microkit.checks import (
    GuestTree,
    SystemReport,
    check_files,
    check_given_files,
    format_report,
    load_guest_tree,
    parse_system,
)
from tests.harness import (
    ROOT,
    SYSTEMS,
    check_golden,
    import_file,
    invoke_in_process,
    needs_real_toolchain,
    run_invoke,
)

GOOD = SYSTEMS / "odroidc4-good.system"
BROKEN = sorted(p for p in SYSTEMS.glob("*.system") if not p.stem.endswith("-good"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def check(
    board: Board, guest: DtbResult, system: Path, display: str | None = None, **kw: bool
) -> SystemReport:
    """check_given_files on the guest DTB and `system`, named as `invoke check` names them."""
    return check_given_files(
        board,
        dtb=guest.dtb,
        system=system,
        dtb_display="guest.dtb",
        system_display=display or rel(system),
        **kw,
    )


# The real toolchain's inputs, as `invoke build` takes them from the environment.
@needs_real_toolchain(("NETVM_MICROKIT_PYTHON", "NETVM_LIBVMM", "NETVM_SDDF"), "docs/microkit.md")
def test_good_fixture_is_what_the_real_toolchain_renders(
    odroidc4: Board, c4_dtb: DtbResult, tmp_path: Path
) -> None:
    render_real_system = import_file(SYSTEMS / "render_real.py").render_real_system
    rendered = render_real_system(
        odroidc4,
        c4_dtb.dtb,
        python=os.environ["NETVM_MICROKIT_PYTHON"],
        libvmm=Path(os.environ["NETVM_LIBVMM"]),
        sddf=Path(os.environ["NETVM_SDDF"]),
        out=tmp_path,
    )
    print("real toolchain: rendered the system description with upstream's meta.py")
    # Updated with the golden files; then re-derive the broken fixtures' defects by hand.
    check_golden(rendered, GOOD)


def test_good_system_passes_every_check(odroidc4: Board, c4_dtb: DtbResult) -> None:
    report = check(odroidc4, c4_dtb, GOOD)
    assert report.errors == []
    assert (report.vm, report.vmm) == ("linux", "net_driver_vm")
    checked = "\n".join(report.checked)
    # The UIO windows are backed by the sDDF regions themselves.
    net = "ethernet@ff3f0000/net"
    for name, mr in (
        ("data_passing", f"{net}/driver_vm_data_passing"),
        ("rx_free", f"{net}/queue/net_driver_vm/net_virt_rx/free"),
        ("tx_free", f"{net}/queue/net_driver_vm/net_virt_tx/free"),
        ("rx_active", f"{net}/queue/net_driver_vm/net_virt_rx/active"),
        ("tx_active", f"{net}/queue/net_driver_vm/net_virt_tx/active"),
        ("rx_data", f"{net}/rx/data/device"),
    ):
        assert f': {name} backed by <map mr="{mr}"' in checked
    # tx_data: one region per client, back to back.
    assert (
        f'tx_data backed by <map mr="{net}/tx/data/client/client0" vaddr="0x600000"> '
        f'(0x600000-0x700000, uncached); <map mr="{net}/tx/data/client/client1" '
        'vaddr="0x700000"> (0x700000-0x800000, uncached)'
    ) in checked
    assert "(0xf04000-0xf05000, uncached, read-only)" in checked
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
def test_broken_system_exact_findings(odroidc4: Board, c4_dtb: DtbResult, system: Path) -> None:
    with pytest.raises(UserError) as err:
        check(odroidc4, c4_dtb, system)
    assert err.value.render() + "\n" == system.with_suffix(".expected").read_text()


def test_strict_turns_fault_warnings_into_errors(odroidc4: Board, c4_dtb: DtbResult) -> None:
    with pytest.raises(UserError) as err:
        check(odroidc4, c4_dtb, GOOD, strict=True)
    assert any(f.key == "/soc/bus@ff800000/ir@8000" for f in err.value.findings)


def test_reg_translation_through_bus_ranges(c4_dtb: DtbResult) -> None:
    tree = load_guest_tree(c4_dtb.dtb, "guest.dtb")
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
        check_files(odroidc4, Workspace(tmp_path, tmp_path / "build"), system=None, dtb=None)
    assert err.value.findings[0].hint.startswith("run `invoke build --board odroidc4` first")
    dtb = tmp_path / "g.dtb"
    dtb.write_bytes(b"")
    with pytest.raises(UserError) as err2:
        check_files(odroidc4, Workspace(tmp_path, tmp_path / "build"), system=None, dtb=dtb)
    assert err2.value.findings[0].key == "microkit"
    assert "pass --system FILE" in err2.value.findings[0].hint


def test_cli_exit_status(c4_dtb: DtbResult) -> None:
    base = ["check", "--board", "odroidc4", "--dtb", str(c4_dtb.dtb)]
    good = invoke_in_process(*base, "--system", rel(GOOD))
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-1] == (
        "tests/fixtures/system/odroidc4-good.system: virtual machine 'linux' of "
        "'net_driver_vm': 16 checks passed, 19 warnings"
    )
    # The warnings come as one line per kind; --verbose gives each.
    assert len(good.stdout.splitlines()) == 3
    verbose = invoke_in_process(*base, "--system", rel(GOOD), "--verbose")
    assert len(verbose.stdout.splitlines()) == 19 + 1
    # A failed check, through a real `invoke` process.
    bad_system = SYSTEMS / "partial-uio.system"
    bad = run_invoke(*base, "--system", rel(bad_system))
    assert bad.returncode == USER_ERROR_EXIT
    assert bad.stderr == bad_system.with_suffix(".expected").read_text()
    assert "Traceback" not in bad.stderr


def test_format_report_groups_warnings_by_kind(odroidc4: Board, c4_dtb: DtbResult) -> None:
    report = check(odroidc4, c4_dtb, GOOD, display="g")
    lines = format_report(report).splitlines()
    assert lines[0] == (
        "warning: 19 enabled DT nodes whose MMIO no <map> covers: each faults at boot if a "
        "driver binds to it (devicetree.disable, or pass it through): "
        "/soc/bus@ff600000/hdmi-tx@0, /soc/bus@ff600000/bus@30000/rng@218, "
        "/soc/bus@ff600000/phy@36000 and 16 more"
    )
    assert lines[1] == "(--verbose lists every warning with its addresses)"
    assert (
        lines[2] == "g: virtual machine 'linux' of 'net_driver_vm': 16 checks passed, 19 warnings"
    )
    # A second kind gets a line of its own.
    report.warn("disabled-passthrough", report.warnings[0])
    assert format_report(report).splitlines()[1] == (
        "warning: 1 passthrough devices disabled in the guest DT: /soc/bus@ff600000/hdmi-tx@0"
    )
    verbose = format_report(report, verbose=True).splitlines()
    assert len(verbose) == 20 + 1 and verbose[0].startswith("warning: g: /soc/")
