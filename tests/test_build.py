"""`invoke build`: the pipeline, its manifest, and step caching by input hashes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from netvm.board import Board, load_board
from netvm.builder import build as build_module
from netvm.builder.build import ARTIFACT_NAMES, BuildOptions, build
from netvm.core.workspace import Workspace
from tests.harness import ROOT, copy_board, invoke_in_process, run_invoke

# The pipeline's own behaviour does not need a kernel or initramfs built per test:
# test_kernel.py and test_rootfs.py build those once.
FAST = frozenset({"kernel", "rootfs"})


def statuses(manifest: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in manifest["steps"]}


def test_manifest_shape_and_caching(odroidc4: Board, tmp_path: Path) -> None:
    opts = BuildOptions(skip=FAST)
    first = build(odroidc4, Workspace(ROOT, tmp_path), opts)
    assert list(statuses(first)) == ["render", "kernel", "rootfs", "dtb", "microkit"]
    assert statuses(first)["dtb"] == "built"
    assert set(first["artifacts"]) == set(ARTIFACT_NAMES)
    assert first["board"] == "odroidc4" and first["schema_version"] == 1
    assert first["versions"]["kernel"].startswith("6.12.")
    dtb = first["artifacts"]["dtb"]
    assert dtb["bytes"] == (tmp_path / "odroidc4/dtb/guest.dtb").stat().st_size
    on_disk = json.loads((tmp_path / "odroidc4/manifest.json").read_text())
    assert on_disk == first

    start = time.monotonic()
    second = build(odroidc4, Workspace(ROOT, tmp_path), opts)
    print(f"no-op build: {time.monotonic() - start:.3f} s")
    assert {s for n, s in statuses(second).items() if s != "skipped"} == {"cached"}
    assert second["artifacts"] == first["artifacts"]

    forced = build(odroidc4, Workspace(ROOT, tmp_path), BuildOptions(force=True, skip=FAST))
    assert statuses(forced)["dtb"] == "built"
    assert forced["artifacts"]["dtb"]["sha256"] == dtb["sha256"]  # byte-identical rebuild


def test_a_board_change_rebuilds_the_dtb(odroidc4: Board, tmp_path: Path) -> None:
    board_file = copy_board(tmp_path / "boards" / "odroidc4")
    ws = Workspace(ROOT, tmp_path / "build")
    opts = BuildOptions(skip=FAST)
    build(load_board(str(board_file), ROOT), ws, opts)
    board_file.write_text(board_file.read_text().replace("maxcpus=1 nosmp", "maxcpus=1"))
    changed = build(load_board(str(board_file), ROOT), ws, opts)
    assert statuses(changed)["render"] == "built" and statuses(changed)["dtb"] == "built"


def test_a_change_to_the_code_that_shapes_the_dtb_rebuilds_it(
    odroidc4: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guest DTB depends on netvm's own code too (e.g. which QEMU nodes it deletes):
    # the step's key holds a digest of that code, so an upgraded netvm never reuses a
    # DTB the old code made. A different file set stands in for edited code here.
    opts = BuildOptions(skip=FAST)
    build(odroidc4, Workspace(ROOT, tmp_path), opts)
    recipe = build_module.DTB_RECIPE
    monkeypatch.setattr(build_module, "DTB_RECIPE", (*recipe, recipe[0].with_name("fdt.py")))
    assert statuses(build(odroidc4, Workspace(ROOT, tmp_path), opts))["dtb"] == "built"


def test_a_tampered_artifact_is_rebuilt(odroidc4: Board, tmp_path: Path) -> None:
    opts = BuildOptions(skip=FAST)
    good = build(odroidc4, Workspace(ROOT, tmp_path), opts)["artifacts"]["dtb"]["sha256"]
    dtb = tmp_path / "odroidc4/dtb/guest.dtb"
    dtb.write_bytes(dtb.read_bytes()[:-4] + b"XXXX")
    again = build(odroidc4, Workspace(ROOT, tmp_path), opts)
    assert statuses(again)["dtb"] == "built" and again["artifacts"]["dtb"]["sha256"] == good


def test_invoke_build_json_prints_the_manifest(odroidc4: Board) -> None:
    args = ["--board", "odroidc4", "--skip", "kernel", "--skip", "rootfs", "--json", "-"]
    got = invoke_in_process("build", *args)
    assert got.returncode == 0, got.stderr
    manifest = json.loads(got.stdout)
    written = Workspace.at(ROOT).build_dir(odroidc4) / "manifest.json"
    assert manifest == json.loads(written.read_text())
    assert manifest["artifacts"]["dtb"] is not None
    notes = {s["name"]: s.get("note") for s in manifest["steps"]}
    assert notes["kernel"] == "not run: --skip kernel"


def test_skipping_an_unknown_step_is_a_user_error() -> None:
    proc = run_invoke("build", "--skip", "kernle")
    assert proc.returncode == 2
    assert "--skip kernle: not a step that can be skipped" in proc.stderr
    assert "choose from kernel, rootfs, dtb, microkit" in proc.stderr
    assert "Traceback" not in proc.stderr
