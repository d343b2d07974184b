"""The `build` pipeline for one board: render -> kernel -> rootfs -> dtb -> microkit.

Owns the order of the steps, what each step's inputs are (so an unchanged step is
cached), and the manifest ``build/<board>/manifest.json``. The work of each step lives
in its own module; this one only wires them together.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netvm import __version__
from netvm.board import Board, display_path
from netvm.devicetree import build_guest_dtb, initrd_window
from netvm.errors import UserError
from netvm.kernelsrc import KernelSource, debian_source, local_source, tarball_source
from netvm.pipeline import Artifact, StepOutput, StepRunner, tree_digest
from netvm.render import header_text, render_all

ARTIFACT_NAMES = (
    "kernel_config",
    "kernel_image",
    "kernel_audit",
    "dts",
    "dtb",
    "initramfs",
    "rootfs_overlay",
    "loader_img",
)


@dataclass(frozen=True)
class BuildOptions:
    force: bool = False
    kernel_src: Path | None = None  # overrides the board's kernel source (a local tree)
    build_root: Path | None = None  # default: <repo>/build


def build_dir(root: Path, board: Board, build_root: Path | None = None) -> Path:
    return (build_root or root / "build") / board.name


def kernel_source(board: Board, override: Path | None) -> KernelSource:
    """The kernel tree for `board`, from `--kernel-src` or the board's provider."""
    if override is not None:
        return local_source(override)
    spec = board.kernel.source
    if spec.provider == "debian" and spec.package:
        return debian_source(spec.package)
    if spec.provider == "tarball" and spec.url and spec.sha256:
        return tarball_source(spec.url, spec.sha256)
    if spec.provider == "local" and spec.path:
        return local_source(spec.path)
    raise AssertionError(f"unvalidated kernel source {spec}")


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def build(
    board: Board,
    root: Path,
    options: BuildOptions,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every step for `board`; write and return the manifest.

    A failing step is recorded as failed in the manifest before its error propagates.
    """
    out = build_dir(root, board, options.build_root)
    out.mkdir(parents=True, exist_ok=True)
    runner = StepRunner(out, force=options.force, progress=progress)
    header = header_text(board, root)
    versions: dict[str, str] = {"netvm": __version__, "python": platform.python_version()}
    try:
        _steps(board, root, options, runner, header, versions)
    finally:
        manifest = _manifest(board, root, runner, versions)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _steps(
    board: Board,
    root: Path,
    options: BuildOptions,
    runner: StepRunner,
    header: str,
    versions: dict[str, str],
) -> None:
    out = runner.build_dir

    # render: cheap, so it always runs; it reports "cached" when no file changed.
    rendered = render_all(board, out / "render", root)
    overlay_files = [p for p in rendered.files if rendered.rootfs_overlay in p.parents]
    render_inputs = {"files": tree_digest(rendered.files, rendered.root)}
    runner.run(
        "render",
        render_inputs,
        lambda: StepOutput({}, {"files": len(rendered.files)}),
    )
    # The staged overlay is a directory: its digest covers names, modes and contents.
    runner.artifacts["rootfs_overlay"] = Artifact(
        rendered.rootfs_overlay,
        tree_digest(overlay_files, rendered.rootfs_overlay),
        sum(p.stat().st_size for p in overlay_files),
    )

    src = kernel_source(board, options.kernel_src)
    versions["kernel"] = src.version
    versions["kernel_source"] = f"{src.provider}: {src.origin}"
    versions["dtc"] = tool_version(["dtc", "--version"])
    versions["cross_gcc"] = tool_version([f"{board.cross_compile}gcc", "--version"])

    # kernel and rootfs: built by their own modules once those land; reported, not faked.
    runner.skip("kernel", "not available yet: the kernel build step is not implemented")
    runner.skip("rootfs", "not available yet: the initramfs build step is not implemented")
    initramfs = runner.artifacts.get("initramfs")
    kernel_image = runner.artifacts.get("kernel_image")

    initrd = None
    if initramfs is not None:
        initrd = initrd_window(board, initramfs.bytes, kernel_image.bytes if kernel_image else 0)

    def make_dtb() -> StepOutput:
        result = build_guest_dtb(
            board, rendered.overlay_dts, src, out / "dtb", header=header, initrd=initrd
        )
        details: dict[str, Any] = {"initrd": str(initrd) if initrd else None}
        return StepOutput({"dtb": result.dtb, "dts": result.dts}, details)

    runner.run(
        "dtb",
        {
            "overlay": tree_digest([rendered.overlay_dts], rendered.root),
            "base": board.devicetree.base,
            "kernel_source": versions["kernel_source"],
            "kernel_path": str(src.path),
            "initrd": str(initrd),
            "dtc": versions["dtc"],
        },
        make_dtb,
    )
    runner.skip(
        "microkit",
        "loader.img needs the Microkit SDK, libvmm and sDDF inputs (not supported yet)",
    )


def _manifest(
    board: Board, root: Path, runner: StepRunner, versions: dict[str, str]
) -> dict[str, Any]:
    artifacts: dict[str, Any] = {name: None for name in ARTIFACT_NAMES}
    for name, art in runner.artifacts.items():
        artifacts[name] = art.as_dict(root)
    return {
        "board": board.name,
        "board_file": display_path(board.file, root),
        "schema_version": board.schema_version,
        "versions": dict(sorted(versions.items())),
        "steps": [r.as_dict() for r in runner.records],
        "artifacts": artifacts,
    }


def require_artifact(manifest: dict[str, Any], name: str) -> None:
    if manifest["artifacts"].get(name) is None:
        raise UserError(f"the build produced no {name}")
