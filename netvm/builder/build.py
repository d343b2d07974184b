"""The `build` pipeline for one board: render -> kernel -> rootfs -> dtb -> microkit.

Owns the order of the steps, what each step's inputs are (so an unchanged step is
cached), and the manifest ``build/<board>/manifest.json``. The work of each step lives
in its own module; this one only wires them together. Each step's inputs are computed by
one function (`kernel_inputs`, …) that the build and `plan_build` (`invoke info`: what
the next build would reuse, without running it) share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from netvm import __version__
from netvm.board import Board, DebianKernelSource, Region, TarballKernelSource
from netvm.builder.lock import LockInputs, check_locked
from netvm.builder.manifest import MANIFEST_NAME
from netvm.core.errors import Finding, UserError
from netvm.core.files import file_sha256, tree_digest
from netvm.core.hosttools import tool_version
from netvm.core.pipeline import Artifact, PlanRunner, Prediction, StepOutput, StepRunner
from netvm.core.progress import Progress, StepProgress, show_status, silent
from netvm.core.toollog import LOG_NAME, ToolLog
from netvm.core.workspace import Workspace, cache_dir, display_path
from netvm.guest.buildroot import export_external_tree
from netvm.guest.devicetree import build_guest_dtb, initrd_window
from netvm.guest.drivercheck import check_driver_rules
from netvm.guest.kernel import build_kernel_image, configure, hand_edits
from netvm.guest.kernelsrc import (
    KernelSource,
    debian_source,
    local_source,
    tarball_source,
)
from netvm.guest.qemu_machine import base_description
from netvm.guest.render import Rendered, header_text, render_all
from netvm.guest.rootfs import DEBIAN_PACKAGES, apt_lists_state, build_initramfs
from netvm.guest.toolchain import DTB_TOOLS, KERNEL_TOOLS, toolchain_findings
from netvm.microkit import handoff as microkit
from netvm.microkit.handoff import MicrokitInputs

# Fixed archive timestamps unless the caller sets SOURCE_DATE_EPOCH (2024-01-01, the same
# date the kernel build stamps into its version string).
DEFAULT_SOURCE_DATE_EPOCH = 1704067200

KERNEL_ARTIFACTS = ("kernel_config", "kernel_image", "kernel_audit")
# Set by `invoke container.run` to the image's tag: the manifest names the build
# container a build ran in (versions.build_container), and the SBOM lists its packages.
BUILD_CONTAINER_ENV = "NETVM_BUILD_CONTAINER"
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
# The code that shapes the initramfs and the guest DTB: a change to it rebuilds them.
# The guest modules whose code shapes the rootfs and DTB bytes: part of those steps' keys.
GUEST_CODE = Path(__file__).resolve().parents[1] / "guest"
ROOTFS_RECIPE = tuple(GUEST_CODE / m for m in ("rootfs.py", "cpio.py"))
DTB_RECIPE = tuple(GUEST_CODE / m for m in ("devicetree.py", "qemu_machine.py"))
# How the kernel is configured and made (its make variables among them): a change there
# must rebuild the kernel, as one to the rootfs or DTB code rebuilds theirs.
KERNEL_RECIPE = tuple(GUEST_CODE / m for m in ("kernel.py", "kconfig.py"))


@dataclass(frozen=True)
class BuildOptions:
    force: bool = False
    kernel_src: Path | None = None  # overrides the board's kernel source (a local tree)
    skip: frozenset[str] = frozenset()  # steps not to run (e.g. iterate on the DTB alone)
    microkit: MicrokitInputs | None = None  # SDK/libvmm/sDDF; None: loader.img is skipped
    require_image: bool = False  # a build that cannot make loader.img is an error (CI)
    locked: bool = False  # fail before any step if an input differs from netvm.lock
    verbose: bool = False  # the tools' output to the terminal too (it always goes to build.log)

    def __post_init__(self) -> None:
        unknown = sorted(self.skip - set(SKIPPABLE))
        if unknown:
            raise UserError(
                f"--skip {', '.join(unknown)}: not a step that can be skipped",
                hint=f"choose from {', '.join(SKIPPABLE)}",
            )


def kernel_source(board: Board, override: Path | None) -> KernelSource:
    """The kernel tree for `board`, from `--kernel-src` or the board's provider."""
    if override is not None:
        return local_source(override)
    spec = board.kernel.source
    if isinstance(spec, DebianKernelSource):
        return debian_source(spec.package)
    if isinstance(spec, TarballKernelSource):
        return tarball_source(spec.url, spec.sha256)
    return local_source(spec.path)


def lock_inputs(board: Board, options: BuildOptions) -> LockInputs:
    """What `netvm.lock` resolves for this build: its kernel tree and Microkit inputs."""
    return LockInputs(kernel_source(board, options.kernel_src), options.microkit, cache_dir())


def build(
    board: Board,
    ws: Workspace,
    options: BuildOptions,
    progress: Progress = silent,
) -> dict[str, Any]:
    """Run every step for `board`; write and return the manifest.

    A failing step is recorded as failed in the manifest before its error propagates.
    """
    if options.require_image and image_board(board) is None:
        raise UserError(
            [
                Finding(
                    ws.display(board.file),
                    "microkit",
                    "this board has no microkit section, so there is no loader.img to build",
                    "drop --require-image, or give the board a microkit section (docs/microkit.md)",
                )
            ]
        )
    if options.locked:
        check_locked(board, ws.root, lock_inputs(board, options))
    out = ws.build_dir(board)
    with claim_build_dir(out, ws.display(board.file), progress):
        return _build(board, ws, options, out, progress)


OWNER_FILE = "board-file"  # which board file a build directory belongs to
LOCK_FILE = ".lock"


@contextlib.contextmanager
def claim_build_dir(out: Path, owner: str, progress: Progress) -> Iterator[None]:
    """Hold `out` for one build: two builds of the same board never interleave, and a
    second board file with the same `name` cannot reuse (or overwrite) the first's."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UserError(
            f"{out}: cannot use it as a build directory: {exc.strerror}",
            hint="move the file away, or set NETVM_BUILD_DIR to another directory",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build in {out} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        recorded = out / OWNER_FILE
        previous = recorded.read_text().strip() if recorded.is_file() else None
        if previous not in (None, owner):
            raise UserError(
                [
                    Finding(
                        owner,
                        "name",
                        f"{out} holds the build of {previous}, another board file with this name",
                        "give this board its own name:, or build it with NETVM_BUILD_DIR set "
                        "to another directory",
                    )
                ]
            )
        if previous is None:
            recorded.write_text(owner + "\n")
        yield
    finally:
        os.close(fd)  # releases the lock


def _build(
    board: Board, ws: Workspace, options: BuildOptions, out: Path, progress: Progress
) -> dict[str, Any]:
    runner = StepRunner(out, force=options.force, progress=progress)
    header = header_text(board, ws.root)
    versions: dict[str, str] = {"netvm": __version__, "python": platform.python_version()}
    container = os.environ.get(BUILD_CONTAINER_ENV)
    if container:
        # Recorded, not hashed into any step: the bytes do not depend on it (docs/ci.md).
        versions["build_container"] = container
    sel4_runner = None
    try:
        run_steps(GuestBuild.prepare(board, ws, options, runner, header, versions))
        if board.sel4 is not None:
            # The seL4 system's guest: its own render, rootfs, DTB and loader.img under
            # sel4/, on the kernel just built (the variant cannot change the kernel).
            sel4_runner = StepRunner(
                ws.build_dir(board.sel4), force=options.force, progress=progress, label="sel4 "
            )
            kernel = {k: v for k, v in runner.artifacts.items() if k in KERNEL_ARTIFACTS}
            run_steps(
                GuestBuild.prepare(
                    board.sel4, ws, options, sel4_runner, header, versions, kernel=kernel
                )
            )
    finally:
        manifest = _manifest(board, ws.root, runner, versions, sel4_runner)
        (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass(frozen=True)
class BuildPlan:
    """What the next `build` of a board would do, found without running a step."""

    board: Board
    build_dir: Path
    src: KernelSource
    versions: dict[str, str]  # as the manifest would record them
    steps: list[Prediction] = field(default_factory=list)


def plan_build(board: Board, ws: Workspace, options: BuildOptions) -> BuildPlan:
    """The steps `build(board, ws, options)` would run, each predicted "cached",
    "rebuild" (with the inputs that changed since the last build) or "skipped", from the
    state files the last build wrote. Each step's inputs are computed by the same
    functions the build uses; the rendering goes to a temporary directory, nothing is
    fetched (a missing Microkit input is reported as the build reports it) and nothing
    is written under the build directory, except what checking a given Microkit SDK
    archive unpacks there, as a build would."""
    if options.microkit is not None:
        options = replace(options, microkit=replace(options.microkit, fetch=False))
    header = header_text(board, ws.root)
    versions: dict[str, str] = {"netvm": __version__, "python": platform.python_version()}
    pending: dict[str, str] = {}
    out = ws.build_dir(board)
    runner = PlanRunner(out, reads=STEP_READS, outputs=STEP_OUTPUTS, pending=pending)
    with tempfile.TemporaryDirectory(prefix="netvm-plan-") as tmp:
        g = GuestBuild.prepare(
            board, ws, options, runner, header, versions, render_dir=Path(tmp) / "render"
        )
        run_steps(g)
        steps = list(runner.predictions)
        if board.sel4 is not None:
            sel4_runner = PlanRunner(
                ws.build_dir(board.sel4),
                reads=STEP_READS,
                outputs=STEP_OUTPUTS,
                pending=pending,
                label="sel4 ",
            )
            kernel = {k: v for k, v in runner.artifacts.items() if k in KERNEL_ARTIFACTS}
            run_steps(
                GuestBuild.prepare(
                    board.sel4,
                    ws,
                    options,
                    sel4_runner,
                    header,
                    versions,
                    kernel=kernel,
                    render_dir=Path(tmp) / "sel4-render",
                )
            )
            steps += sel4_runner.predictions
    return BuildPlan(board, out, g.src, dict(sorted(versions.items())), steps)


def image_board(board: Board) -> Board | None:
    """The board (or its seL4 variant) whose build makes loader.img, if any."""
    if board.microkit is not None:
        return board
    if board.sel4 is not None and board.sel4.microkit is not None:
        return board.sel4
    return None


@dataclass
class GuestBuild:
    """One guest's build in progress: what its steps read and where they record."""

    board: Board
    ws: Workspace
    options: BuildOptions
    runner: StepRunner
    header: str
    versions: dict[str, str]
    rendered: Rendered
    src: KernelSource
    # Given: the kernel artifacts of the board this guest is a variant of (no kernel step).
    kernel: dict[str, Artifact] | None = None

    @property
    def out(self) -> Path:
        return self.runner.build_dir

    @classmethod
    def prepare(
        cls,
        board: Board,
        ws: Workspace,
        options: BuildOptions,
        runner: StepRunner,
        header: str,
        versions: dict[str, str],
        *,
        kernel: dict[str, Artifact] | None = None,
        render_dir: Path | None = None,
    ) -> GuestBuild:
        """Render (cheap, so it always runs; "cached" when no file changed) and resolve
        the kernel tree and tool versions every later step's key names. `render_dir`
        renders elsewhere than the build directory's render/ (a plan writes nothing
        there); every input is computed relative to it, so the keys are the same."""
        out = runner.build_dir
        # The driver's own rules first: a board it would refuse at boot builds nothing.
        check_driver_rules(board, ws.root)
        rendered = render_all(board, render_dir or out / "render", ws.root)
        overlay_files = [p for p in rendered.files if rendered.rootfs_overlay in p.parents]
        runner.run(
            "render",
            render_inputs(rendered),
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
        return cls(board, ws, options, runner, header, versions, rendered, src, kernel)

    @property
    def planning(self) -> bool:
        """True when the steps are only predicted (`plan_build`): nothing is written."""
        return isinstance(self.runner, PlanRunner)

    def tool_log(self, step: str) -> ToolLog:
        """A fresh build.log in the step's directory, echoed to the terminal with --verbose."""
        path = self.out / step / LOG_NAME
        echo = self.runner.progress if self.options.verbose else None
        return ToolLog(path, display=self.ws.display(path), echo=echo)

    def need_tools(self, tools: tuple[str, ...]) -> None:
        """Refuse to start a step whose tools this machine does not have."""
        missing = toolchain_findings(self.board, tools)
        if missing:
            raise UserError(missing)

    def skipped(self, name: str) -> bool:
        """True (and recorded) when the user asked not to run step `name`."""
        if name in self.options.skip:
            self.runner.skip(name, f"not run: --skip {name}")
            return True
        return False


def kernel_step(g: GuestBuild) -> None:
    if g.kernel is not None:
        g.runner.artifacts.update(g.kernel)
        return
    if g.skipped("kernel"):
        return
    board, src, kdir = g.board, g.src, g.out / "kernel"

    def make_kernel() -> StepOutput:
        edits = {} if g.options.force else hand_edits(kdir)
        if edits:
            raise UserError([hand_edit_finding(g, kdir / ".config", edits)])
        g.need_tools(KERNEL_TOOLS)
        log = g.tool_log("kernel")
        with StepProgress(g.runner.progress, g.runner.label + "kernel") as status:
            cfg = configure(
                src.path,
                kdir,
                g.rendered.kernel_fragments,
                kernel_version=src.version,
                arch=board.arch,
                cross_compile=board.cross_compile,
                allowed=board.kernel.allow_mismatch,
                log=log,
                status=status,
            )
            image = build_kernel_image(
                src.path,
                kdir,
                arch=board.arch,
                cross_compile=board.cross_compile,
                log=log,
                status=status,
            )
        details = {
            "image_bytes": image.bytes,
            "build_seconds": round(image.seconds, 1),
            "compiler": image.compiler,
            "requested_symbols": cfg.requested,
            "enabled_symbols": cfg.enabled,
            "allowed_mismatches": [f"CONFIG_{m.request.symbol}" for m in cfg.mismatches],
        }
        files = {"kernel_config": cfg.config, "kernel_image": image.image}
        return StepOutput(dict(files, kernel_audit=cfg.audit_json), details)

    g.runner.run("kernel", kernel_inputs(g), make_kernel)


def render_inputs(rendered: Rendered) -> dict[str, Any]:
    return {"files": tree_digest(rendered.files, rendered.root)}


def kernel_inputs(g: GuestBuild) -> dict[str, Any]:
    return {
        "fragments": tree_digest(g.rendered.kernel_fragments, g.rendered.root),
        "kernel_source": g.versions["kernel_source"],
        "kernel_path": str(g.src.path),
        "cross_gcc": g.versions["cross_gcc"],
        "allowed": sorted(g.board.kernel.allow_mismatch),
        "recipe": tree_digest(KERNEL_RECIPE, GUEST_CODE),
    }


def board_arg(board: Board, root: Path) -> str:
    """How `--board` names `board` on the command line: its name when it is a board under
    boards/, else its file."""
    if board.file.resolve() == (root / "boards" / board.name / "board.yaml").resolve():
        return board.name
    return display_path(board.file, root)


def hand_edit_finding(g: GuestBuild, config: Path, edits: dict[str, str]) -> Finding:
    shown = ", ".join(f"CONFIG_{sym}" for sym in list(edits)[:5])
    if len(edits) > 5:
        shown += f" and {len(edits) - 5} more"
    return Finding(
        g.ws.display(config),
        "",
        f"edited by hand since netvm wrote it ({shown}); building would regenerate it "
        "from the fragments and drop those edits",
        "save them into the board's kernel fragment with `invoke kernel.savefragment "
        f"--board {board_arg(g.board, g.ws.root)}`, or build with --force to discard them",
    )


def rootfs_step(g: GuestBuild) -> None:
    spec = g.board.rootfs
    overlay = g.rendered.rootfs_overlay
    if spec.provider == "buildroot":
        tree = g.out / "buildroot-external"
        if not g.planning:
            export_external_tree(g.board, overlay, tree, g.ws.root)
        g.runner.skip(
            "rootfs",
            f"provider buildroot: build {g.ws.display(tree)} with your Buildroot "
            "(docs/rootfs.md), then use provider cpio",
        )
        return
    if g.skipped("rootfs"):
        return
    epoch = source_date_epoch()

    def make_rootfs() -> StepOutput:
        result = build_initramfs(
            spec.provider,
            overlay,
            g.out / "rootfs" / spec.initramfs_name,
            cache=g.ws.cache,
            epoch=epoch,
            base_cpio=spec.base_cpio,
            extra_modules=spec.python_modules,
            compress=spec.compression == "gzip",
            # On a terminal its notes take the step's status line.
            progress=lambda line: show_status(g.runner.progress, line),
            log=g.tool_log("rootfs"),
        )
        return StepOutput({"initramfs": result.path}, result.report())

    g.runner.run("rootfs", rootfs_inputs(g, epoch), make_rootfs)


def source_date_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_SOURCE_DATE_EPOCH))


def rootfs_inputs(g: GuestBuild, epoch: int) -> dict[str, Any]:
    spec = g.board.rootfs
    debian = spec.provider == "debian"
    return {
        "overlay": g.runner.artifacts["rootfs_overlay"].sha256,
        "provider": spec.provider,
        "base_cpio": file_sha256(spec.base_cpio) if spec.base_cpio else None,
        "packages": DEBIAN_PACKAGES if debian else None,
        "apt_lists": apt_lists_state() if debian else None,
        "python_modules": spec.python_modules,
        "compression": spec.compression,
        "epoch": epoch,
        "recipe": tree_digest(ROOTFS_RECIPE, GUEST_CODE),
    }


def dtb_step(g: GuestBuild) -> None:
    if g.skipped("dtb"):
        return
    initrd = dtb_initrd(g)

    def make_dtb() -> StepOutput:
        g.need_tools(DTB_TOOLS)
        result = build_guest_dtb(
            g.board,
            g.rendered.overlay_dts,
            g.src,
            g.out / "dtb",
            header=g.header,
            initrd=initrd,
            log=g.tool_log("dtb"),
        )
        details: dict[str, Any] = {"initrd": str(initrd) if initrd else None}
        return StepOutput({"dtb": result.dtb, "dts": result.dts}, details)

    g.runner.run("dtb", dtb_inputs(g, initrd), make_dtb)


def dtb_initrd(g: GuestBuild) -> Region | None:
    """The initramfs window the guest DTB names, from the sizes the earlier steps made."""
    initramfs = g.runner.artifacts.get("initramfs")
    kernel_image = g.runner.artifacts.get("kernel_image")
    if initramfs is None:
        return None
    kernel_bytes = kernel_image.bytes if kernel_image else 0
    return initrd_window(g.board, initramfs.bytes, kernel_bytes)


def dtb_inputs(g: GuestBuild, initrd: Region | None) -> dict[str, Any]:
    return {
        "overlay": tree_digest([g.rendered.overlay_dts], g.rendered.root),
        # A QEMU base is described by the QEMU version and machine options it is dumped with.
        "base": g.board.devicetree.base or base_description(g.board),
        "kernel_source": g.versions["kernel_source"],
        "kernel_path": str(g.src.path),
        "initrd": str(initrd),
        "dtc": g.versions["dtc"],
        "recipe": tree_digest(DTB_RECIPE, GUEST_CODE),
    }


def microkit_step(g: GuestBuild) -> None:
    if g.board.microkit is None:
        return  # no handoff for this board: no step, and no note about loader.img
    if g.skipped("microkit"):
        return
    microkit.run_step(
        g.board,
        g.ws.display(g.board.file),
        g.runner,
        g.options.microkit,
        require_image=g.options.require_image,
        root=g.ws.root,
        header=g.header,
        echo=g.runner.progress if g.options.verbose else None,
    )


# The steps after render, in order: each reads what the earlier ones put in the runner.
STEPS: tuple[tuple[str, Callable[[GuestBuild], None]], ...] = (
    ("kernel", kernel_step),
    ("rootfs", rootfs_step),
    ("dtb", dtb_step),
    ("microkit", microkit_step),
)
SKIPPABLE = tuple(name for name, _ in STEPS)  # render is not: every step reads its files
# What each step writes, and which earlier outputs it reads (rootfs_overlay comes from
# render, which always runs): a plan predicts a step that reads the output of a step
# it rebuilds to be rebuilt after it.
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {
    "kernel": KERNEL_ARTIFACTS,
    "rootfs": ("initramfs",),
    "dtb": ("dtb", "dts"),
    "microkit": ("loader_img",),
}
STEP_READS: dict[str, tuple[str, ...]] = {
    "dtb": ("initramfs", "kernel_image"),
    "microkit": ("kernel_image", "initramfs", "dts", "dtb"),
}


def run_steps(g: GuestBuild) -> None:
    for _name, step in STEPS:
        step(g)


def _manifest(
    board: Board,
    root: Path,
    runner: StepRunner,
    versions: dict[str, str],
    sel4_runner: StepRunner | None = None,
) -> dict[str, Any]:
    artifacts: dict[str, Any] = {name: None for name in ARTIFACT_NAMES}
    for name, art in runner.artifacts.items():
        artifacts[name] = art.as_dict(root)
    records = list(runner.records)
    manifest: dict[str, Any] = {
        "board": board.name,
        "board_file": display_path(board.file, root),
        "schema_version": board.schema_version,
        "versions": dict(sorted(versions.items())),
    }
    if sel4_runner is not None:
        records += sel4_runner.records
        own = {n: a for n, a in sel4_runner.artifacts.items() if n not in KERNEL_ARTIFACTS}
        # The seL4 system's guest files; its loader.img is the board's image.
        manifest["sel4"] = {n: a.as_dict(root) for n, a in sorted(own.items())}
        if "loader_img" in own:
            artifacts["loader_img"] = own["loader_img"].as_dict(root)
    manifest["steps"] = [r.as_dict() for r in records]
    manifest["artifacts"] = artifacts
    return manifest
