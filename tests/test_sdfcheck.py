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
import subprocess
import sys
from pathlib import Path

import pytest

from netvm.board import Board, Region
from netvm.core.errors import USER_ERROR_EXIT, UserError
from netvm.core.workspace import Workspace
from netvm.guest.devicetree import DtbResult, build_guest_dtb
from netvm.guest.kernelsrc import KernelSource
from netvm.guest.render import render_all
from netvm.microkit.checks import (
    GuestTree,
    check_files,
    check_given_files,
    format_report,
    load_guest_tree,
    parse_system,
)

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ROOT / "tests" / "fixtures" / "system"
GOOD = SYSTEMS / "odroidc4-good.system"
BROKEN = sorted(p for p in SYSTEMS.glob("*.system") if not p.stem.endswith("-good"))
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


# The real toolchain's inputs, as `invoke build` takes them from the environment.
REAL_TOOLCHAIN = ("NETVM_MICROKIT_PYTHON", "NETVM_LIBVMM", "NETVM_SDDF")


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in REAL_TOOLCHAIN),
    reason="needs the real toolchain: set " + ", ".join(REAL_TOOLCHAIN) + " (docs/microkit.md)",
)
def test_good_fixture_is_what_the_real_toolchain_renders(
    odroidc4: Board, guest: DtbResult, tmp_path: Path
) -> None:
    sys.path.insert(0, str(SYSTEMS))
    try:
        from render_real import render_real_system
    finally:
        sys.path.remove(str(SYSTEMS))
    rendered = render_real_system(
        odroidc4,
        guest.dtb,
        python=os.environ["NETVM_MICROKIT_PYTHON"],
        libvmm=Path(os.environ["NETVM_LIBVMM"]),
        sddf=Path(os.environ["NETVM_SDDF"]),
        out=tmp_path,
    )
    print("real toolchain: rendered the system description with upstream's meta.py")
    if os.environ.get("NETVM_UPDATE_GOLDEN"):
        GOOD.write_text(rendered)  # then re-derive the broken fixtures' defects by hand
    assert rendered == GOOD.read_text()


def test_good_system_passes_every_check(odroidc4: Board, guest: DtbResult) -> None:
    report = check_given_files(
        odroidc4, dtb=guest.dtb, system=GOOD, dtb_display="guest.dtb", system_display=rel(GOOD)
    )
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
def test_broken_system_exact_findings(odroidc4: Board, guest: DtbResult, system: Path) -> None:
    with pytest.raises(UserError) as err:
        check_given_files(
            odroidc4,
            dtb=guest.dtb,
            system=system,
            dtb_display="guest.dtb",
            system_display=rel(system),
        )
    assert err.value.render() + "\n" == system.with_suffix(".expected").read_text()


def test_strict_turns_fault_warnings_into_errors(odroidc4: Board, guest: DtbResult) -> None:
    with pytest.raises(UserError) as err:
        check_given_files(
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
        check_files(odroidc4, Workspace(tmp_path, tmp_path / "build"), system=None, dtb=None)
    assert err.value.findings[0].hint.startswith("run `invoke build --board odroidc4` first")
    dtb = tmp_path / "g.dtb"
    dtb.write_bytes(b"")
    with pytest.raises(UserError) as err2:
        check_files(odroidc4, Workspace(tmp_path, tmp_path / "build"), system=None, dtb=dtb)
    assert err2.value.findings[0].key == "microkit"
    assert "pass --system FILE" in err2.value.findings[0].hint


def test_cli_exit_status(guest: DtbResult) -> None:
    env = dict(os.environ)
    base = [INVOKE, "check", "--board", "odroidc4", "--dtb", str(guest.dtb)]
    good = subprocess.run(
        [*base, "--system", rel(GOOD)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-1] == (
        "tests/fixtures/system/odroidc4-good.system: virtual machine 'linux' of "
        "'net_driver_vm': 16 checks passed, 19 warnings"
    )
    # The warnings come as one line per kind; --verbose gives each.
    assert len(good.stdout.splitlines()) == 3
    verbose = subprocess.run(
        [*base, "--system", rel(GOOD), "--verbose"], cwd=ROOT, capture_output=True, text=True
    )
    assert len(verbose.stdout.splitlines()) == 19 + 1
    bad_system = SYSTEMS / "partial-uio.system"
    bad = subprocess.run(
        [*base, "--system", rel(bad_system)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert bad.returncode == USER_ERROR_EXIT
    assert bad.stderr == bad_system.with_suffix(".expected").read_text()
    assert "Traceback" not in bad.stderr


def test_format_report_groups_warnings_by_kind(odroidc4: Board, guest: DtbResult) -> None:
    report = check_given_files(
        odroidc4, dtb=guest.dtb, system=GOOD, dtb_display="guest.dtb", system_display="g"
    )
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
