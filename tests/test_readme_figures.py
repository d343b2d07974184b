"""The build figures README.md quotes are this build's: a change that grows the kernel or
the initramfs fails here until the README says so (update the table from the manifest)."""

from __future__ import annotations

import re

import pytest

from netvm.board import Board
from netvm.builder.build import BuildOptions, build
from netvm.core.workspace import Workspace
from tests.harness import ROOT


def readme_row(label: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^\| {re.escape(label)} \| (.*) \|$", text, re.MULTILINE)
    assert m is not None, f"README.md has no '{label}' row in its build figures"
    return m.group(1)


def number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.slow
def test_readme_build_figures_match_the_odroidc4_build(odroidc4: Board) -> None:
    manifest = build(odroidc4, Workspace.at(ROOT), BuildOptions(skip=frozenset({"microkit"})))
    steps = {s["name"]: s.get("details", {}) for s in manifest["steps"]}
    kernel, rootfs = steps["kernel"], steps["rootfs"]

    image = re.fullmatch(
        r"([\d,]+) B \([\d.]+ MiB; (\d+) options `=y`, (\d+) requested, (\d+) mismatches\)",
        readme_row("`Image`"),
    )
    assert image is not None
    assert number(image.group(1)) == manifest["artifacts"]["kernel_image"]["bytes"]
    assert int(image.group(2)) == kernel["enabled_symbols"]
    assert int(image.group(3)) == kernel["requested_symbols"]
    assert int(image.group(4)) == len(kernel["allowed_mismatches"])

    initramfs = re.fullmatch(
        r"([\d,]+) B gzip \(([\d.]+) MiB\), ([\d.]+) MB unpacked, (\d+) files",
        readme_row("initramfs"),
    )
    assert initramfs is not None
    packed = manifest["artifacts"]["initramfs"]["bytes"]
    assert number(initramfs.group(1)) == packed
    assert initramfs.group(2) == f"{packed / 2**20:.2f}"
    assert initramfs.group(3) == f"{rootfs['uncompressed_bytes'] / 1e6:.1f}"
    assert int(initramfs.group(4)) == rootfs["files"]
