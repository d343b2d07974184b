"""The guest kernel: config resolution by the real 6.12 Kconfig, the audit, the build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netvm.board import Board
from netvm.builder.build import BuildOptions, build
from netvm.core.errors import UserError
from netvm.core.workspace import Workspace
from netvm.guest.kconfig import merged_requests, parse_fragment
from netvm.guest.kernel import ARM64_IMAGE_MAGIC, configure, diffconfig
from netvm.guest.kernelsrc import KernelSource
from tests.harness import ROOT

MiB = 1024 * 1024

# Requests the 6.12 arm64 tree cannot honour from allnoconfig, one per kind of reason.
BAD_FRAGMENT = """\
# a fragment with requests the kernel cannot honour
CONFIG_UIO=y
CONFIG_UIO_PCI_GENERIC=y
CONFIG_GENERIC_PHY_MIPI_DPHY=y
CONFIG_NOT_A_REAL_SYMBOL=y
"""


def test_fragments_keep_file_and_line_and_later_ones_win(tmp_path: Path) -> None:
    a = tmp_path / "a.config"
    b = tmp_path / "b.config"
    a.write_text('# why\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S="x y"\n')
    b.write_text("\nCONFIG_B=y\n")
    assert [(r.symbol, r.value, r.line) for r in parse_fragment(a)] == [
        ("A", "y", 2),
        ("B", "n", 3),
        ("S", '"x y"', 4),
    ]
    merged = merged_requests([a, b])
    assert (merged["B"].value, merged["B"].file, merged["B"].line) == ("y", b, 2)


def test_every_option_in_the_fragments_says_why(odroidc4: Board, tmp_path: Path) -> None:
    """Each CONFIG_ line belongs to a group of options headed by a comment."""
    from netvm.guest.render import render_all

    rendered = render_all(odroidc4, tmp_path, ROOT)
    for frag in rendered.kernel_fragments:
        lines = frag.read_text().splitlines()
        for n, line in enumerate(lines):
            if not line.startswith(("CONFIG_", "# CONFIG_")):
                continue
            above = n - 1
            while above >= 0 and lines[above].startswith(("CONFIG_", "# CONFIG_")):
                above -= 1
            reason = lines[above] if above >= 0 else ""
            assert reason.startswith("#") and len(reason) > 2, f"{frag.name}:{n + 1}: {line}"


@pytest.fixture(scope="module")
def bad_config(kernel_src: KernelSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    frag = tmp_path_factory.mktemp("frag") / "bad.config"
    frag.write_text(BAD_FRAGMENT)
    return frag


def test_audit_explains_every_mismatch_and_fails(
    kernel_src: KernelSource, bad_config: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError) as err:
        configure(kernel_src.path, tmp_path, [bad_config], kernel_version=kernel_src.version)
    by_key = {f.key: f for f in err.value.findings}
    assert set(by_key) == {
        "line 3: CONFIG_UIO_PCI_GENERIC",
        "line 4: CONFIG_GENERIC_PHY_MIPI_DPHY",
        "line 5: CONFIG_NOT_A_REAL_SYMBOL",
    }
    assert all(f.file == str(bad_config) for f in err.value.findings)
    assert by_key["line 3: CONFIG_UIO_PCI_GENERIC"].message == (
        "requested y, the kernel resolved it to (absent): depends on PCI (=n)"
    )
    assert by_key["line 4: CONFIG_GENERIC_PHY_MIPI_DPHY"].message.endswith(
        "no prompt: cannot be set from a fragment"
    )
    assert by_key["line 5: CONFIG_NOT_A_REAL_SYMBOL"].message.endswith("not defined in this kernel")
    # The kernel's own resolution is the ground truth: UIO itself was honoured.
    assert "CONFIG_UIO=y" in (tmp_path / ".config").read_text().splitlines()
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert [m["symbol"] for m in audit["mismatches"]] == [
        "CONFIG_UIO_PCI_GENERIC",
        "CONFIG_GENERIC_PHY_MIPI_DPHY",
        "CONFIG_NOT_A_REAL_SYMBOL",
    ]
    text = (tmp_path / "audit.txt").read_text()
    assert f"{bad_config}:3: CONFIG_UIO_PCI_GENERIC: requested y, got (absent)" in text


def test_allowed_mismatches_are_recorded_not_fatal(
    kernel_src: KernelSource, bad_config: Path, tmp_path: Path
) -> None:
    allowed = frozenset({"UIO_PCI_GENERIC", "GENERIC_PHY_MIPI_DPHY", "NOT_A_REAL_SYMBOL"})
    result = configure(
        kernel_src.path,
        tmp_path,
        [bad_config],
        kernel_version=kernel_src.version,
        allowed=allowed,
    )
    assert len(result.mismatches) == 3
    audit = json.loads(result.audit_json.read_text())
    assert all(m["allowed"] for m in audit["mismatches"])
    assert "(allowed)" in result.audit_txt.read_text()


def test_diffconfig_prints_a_hand_edit_as_a_fragment(tmp_path: Path) -> None:
    (tmp_path / "netvm-resolved.config").write_text("CONFIG_A=y\n# CONFIG_B is not set\n")
    (tmp_path / ".config").write_text('# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C="x"\n')
    assert diffconfig(tmp_path) == '# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C="x"\n'


def test_diffconfig_without_a_configured_kernel_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no configured kernel here"):
        diffconfig(tmp_path)


@pytest.mark.slow
def test_the_odroidc4_kernel_builds_audited_and_small(odroidc4: Board) -> None:
    """One real kernel build (in the session's build dir, so later builds reuse it)."""
    ws = Workspace.at(ROOT)
    manifest = build(odroidc4, ws, BuildOptions(skip=frozenset({"rootfs", "microkit"})))
    step = next(s for s in manifest["steps"] if s["name"] == "kernel")
    assert step["status"] in ("built", "cached")
    arts = manifest["artifacts"]
    # Manifest paths are relative to the workspace's root when inside it.
    image = ws.root / arts["kernel_image"]["path"]
    assert image.read_bytes()[56:60] == ARM64_IMAGE_MAGIC
    assert arts["kernel_image"]["bytes"] <= 5 * MiB
    audit = json.loads((ws.root / arts["kernel_audit"]["path"]).read_text())
    assert audit["mismatches"] == []
    config = (ws.root / arts["kernel_config"]["path"]).read_text().splitlines()
    for needed in (
        "CONFIG_UIO_PDRV_GENIRQ=y",
        "CONFIG_PACKET=y",
        "CONFIG_DWMAC_MESON=y",
        "CONFIG_REALTEK_PHY=y",
        "CONFIG_VIRTIO_CONSOLE=y",
        "CONFIG_VIRTIO_MMIO=y",
        "CONFIG_RD_GZIP=y",
        "CONFIG_DEVTMPFS=y",
    ):
        assert needed in config
    details = step.get("details", {})
    assert details["image_bytes"] == arts["kernel_image"]["bytes"]
    print(f"Image {details['image_bytes']} bytes, built in {details['build_seconds']} s")

    again = build(odroidc4, ws, BuildOptions(skip=frozenset({"rootfs", "microkit"})))
    assert next(s for s in again["steps"] if s["name"] == "kernel")["status"] == "cached"
