"""The guest kernel: resolve the config with the kernel's own make, audit it, build Image.

Owns the make invocations (allnoconfig + fragments, olddefconfig, Image, menuconfig)
in a persistent ``O=`` build directory, so make itself stays incremental, their log
(``build.log``), the audit files (``audit.txt``, ``audit.json``), and what netvm
remembers there between builds: the ``.config`` it wrote (so a hand edit is noticed
before a build would drop it) and how many objects the tree compiles (the total of the
progress line). Turning a hand edit into fragment lines is here too (`diffconfig`,
`save_fragment`). Fragment parsing and mismatch reasons live in `netvm.guest.kconfig`.
The kernel tree is never written to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netvm.board import Board
from netvm.core.errors import Finding, UserError
from netvm.core.files import file_sha256
from netvm.core.hosttools import compiler_version
from netvm.core.progress import StepProgress, silent
from netvm.core.toollog import LOG_NAME, ToolLog
from netvm.core.workspace import display_path
from netvm.guest.kconfig import (
    Mismatch,
    explain,
    find_mismatches,
    kconfig_env,
    load_kconfig,
    merged_requests,
    parse_fragment,
    read_config,
)

# Fixed so two builds of the same inputs give the same Image.
REPRODUCIBLE_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 2024",
    "KBUILD_BUILD_USER": "netvm",
    "KBUILD_BUILD_HOST": "netvm",
    "KBUILD_BUILD_VERSION": "1",
}
ARM64_IMAGE_MAGIC = b"ARM\x64"  # at offset 56 of an arm64 Image header

# What netvm keeps in the O= directory besides make's own files.
RESOLVED_CONFIG = "netvm-resolved.config"  # .config as netvm's make left it
CONFIG_RECORD = "netvm-config.sha256"  # its sha256: any other .config was edited by hand
OBJECT_COUNT = "netvm-objects.json"  # objects a build of this tree compiles
# kbuild's line for an object it compiles: "  CC      drivers/net/phy/phy.o"
OBJECT_LINE = re.compile(r"^\s+(?:CC|AS)\s+\S+\.o$")
MAKE_HINT = (
    "the whole output is in that log; a compile error usually comes from a kernel fragment "
    "(kernel.fragments), a hand-edited .config or the kernel tree"
)


@dataclass(frozen=True)
class ConfigResult:
    config: Path
    audit_txt: Path
    audit_json: Path
    requested: int
    enabled: int  # =y symbols in the resolved config
    mismatches: tuple[Mismatch, ...]  # includes allowed ones


@dataclass(frozen=True)
class KernelImage:
    image: Path
    bytes: int
    seconds: float
    compiler: str


ABSENT_TOOL = "/nonexistent/netvm-no-such-tool"


def _make_vars(arch: str, cross_compile: str) -> list[str]:
    cc = f"{cross_compile}gcc"
    # ccache keeps rebuilds after `make clean` or a fresh O= cheap; same CC everywhere,
    # or Kconfig would see a compiler change and re-resolve the config.
    if shutil.which("ccache"):
        cc = f"ccache {cc}"
    # Kconfig asks for rustc, bindgen and pahole by name and records their versions in
    # the .config (RUSTC_VERSION, PAHOLE_VERSION, ...): a host with rustup on its PATH
    # would get another .config than one without. The guest kernel uses none of them,
    # so they are named as absent, whatever this host has.
    absent = [f"{tool}={ABSENT_TOOL}" for tool in ("RUSTC", "BINDGEN", "PAHOLE")]
    return [f"ARCH={arch}", f"CROSS_COMPILE={cross_compile}", f"CC={cc}", *absent]


def _make_cmd(src: Path, build_dir: Path, arch: str, cross_compile: str, *args: str) -> list[str]:
    return ["make", "-C", str(src), f"O={build_dir}", *_make_vars(arch, cross_compile), *args]


def _log_for(build_dir: Path, log: ToolLog | None) -> ToolLog:
    """`log`, or the directory's own build.log (started afresh) for a call outside a build."""
    return log if log is not None else ToolLog(build_dir / LOG_NAME)


def record_config(build_dir: Path) -> None:
    """Remember the .config netvm's make left: a copy (what diffconfig compares with) and
    its sha256 (what tells a hand edit)."""
    config = build_dir / ".config"
    if not config.is_file():
        return
    shutil.copyfile(config, build_dir / RESOLVED_CONFIG)
    (build_dir / CONFIG_RECORD).write_text(file_sha256(config) + "\n")


def configure(
    src: Path,
    build_dir: Path,
    fragments: Sequence[Path],
    *,
    kernel_version: str,
    arch: str = "arm64",
    cross_compile: str = "aarch64-linux-gnu-",
    allowed: frozenset[str] = frozenset(),
    log: ToolLog | None = None,
    status: StepProgress | None = None,
) -> ConfigResult:
    """allnoconfig + fragments, resolved by the kernel's Kconfig; audited.

    make's output goes to `log` (default: a fresh ``build.log`` in `build_dir`); a make
    that fails is a ToolFailed naming it. Raises UserError (one finding per mismatch,
    naming fragment and line) when a requested value did not survive and the symbol is
    not in `allowed`.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    log = _log_for(build_dir, log)
    status = status or StepProgress(silent, "kernel", tick=None)
    status.phase("configuring (allnoconfig + fragments, olddefconfig)")
    merged = build_dir / "netvm-fragments.config"
    merged.write_text("".join(f"# from {f}\n{f.read_text()}\n" for f in fragments))
    for target, extra in (
        ("allnoconfig", {"KCONFIG_ALLCONFIG": str(merged)}),
        ("olddefconfig", {}),
    ):
        env = {**os.environ, **REPRODUCIBLE_ENV, **extra}
        run = log.stream(_make_cmd(src, build_dir, arch, cross_compile, target), env=env)
        log.check(run, f"make {target}", MAKE_HINT)
    config = build_dir / ".config"
    # The resolved config as netvm made it; diffconfig compares a hand-edited one to it.
    record_config(build_dir)
    requests = merged_requests(fragments)
    values = read_config(config)
    wrong = find_mismatches(requests, values)
    mismatches: list[Mismatch] = []
    if wrong:
        kconf = load_kconfig(src, kconfig_env(src, arch, cross_compile, kernel_version))
        kconf.load_config(str(config))
        for req in wrong:
            actual = values.get(req.symbol, "")
            mismatches.append(Mismatch(req, actual, explain(kconf, req)))
    enabled = sum(1 for v in values.values() if v == "y")
    audit_txt, audit_json = _write_audit(build_dir, len(requests), enabled, mismatches, allowed)
    result = ConfigResult(config, audit_txt, audit_json, len(requests), enabled, tuple(mismatches))
    failing = [m for m in mismatches if m.request.symbol not in allowed]
    if failing:
        raise UserError(
            [
                Finding(
                    str(m.request.file),
                    f"line {m.request.line}: CONFIG_{m.request.symbol}",
                    f"requested {m.request.value}, the kernel resolved it to "
                    f"{m.actual or '(absent)'}: {m.reason}",
                    "fix the fragment, or list the symbol in kernel.allow_mismatch",
                )
                for m in failing
            ]
        )
    return result


def _write_audit(
    build_dir: Path,
    requested: int,
    enabled: int,
    mismatches: list[Mismatch],
    allowed: frozenset[str],
) -> tuple[Path, Path]:
    lines = [f"requested symbols: {requested}", f"=y in .config: {enabled}"]
    lines.append(f"mismatches: {len(mismatches)}")
    for m in mismatches:
        tag = " (allowed)" if m.request.symbol in allowed else ""
        lines.append(
            f"{m.request.file}:{m.request.line}: CONFIG_{m.request.symbol}: requested "
            f"{m.request.value}, got {m.actual or '(absent)'}: {m.reason}{tag}"
        )
    txt = build_dir / "audit.txt"
    txt.write_text("\n".join(lines) + "\n")
    data = {
        "requested": requested,
        "enabled": enabled,
        "mismatches": [dict(m.as_dict(), allowed=m.request.symbol in allowed) for m in mismatches],
    }
    js = build_dir / "audit.json"
    js.write_text(json.dumps(data, indent=2) + "\n")
    return txt, js


def build_kernel_image(
    src: Path,
    build_dir: Path,
    *,
    arch: str = "arm64",
    cross_compile: str = "aarch64-linux-gnu-",
    jobs: int | None = None,
    log: ToolLog | None = None,
    status: StepProgress | None = None,
) -> KernelImage:
    """`make Image` in the configured build dir; incremental; reproducible.

    The output goes to `log` (default: a fresh ``build.log`` in `build_dir`); `status`
    counts the objects compiled against the count this tree's builds compiled before.
    """
    jobs = jobs or os.cpu_count() or 1
    log = _log_for(build_dir, log)
    status = status or StepProgress(silent, "kernel", tick=None)
    cmd = _make_cmd(src, build_dir, arch, cross_compile, f"-j{jobs}", "Image")
    start = time.monotonic()
    known = known_object_count(build_dir, src)
    status.count("objects", known)
    compiled = 0

    def on_line(line: str) -> None:
        nonlocal compiled
        if OBJECT_LINE.match(line):
            compiled += 1
            status.advance()

    try:
        run = log.stream(cmd, env={**os.environ, **REPRODUCIBLE_ENV}, on_line=on_line)
    finally:
        # make's syncconfig may have rewritten .config: that one is netvm's too.
        record_config(build_dir)
    log.check(run, "make Image", MAKE_HINT)
    image = build_dir / "arch" / arch / "boot" / "Image"
    if not image.is_file():
        raise RuntimeError(f"make Image succeeded but left no {image}")
    remember_object_count(build_dir, src, compiled, known)
    return KernelImage(
        image,
        image.stat().st_size,
        time.monotonic() - start,
        compiler_version(f"{cross_compile}gcc"),
    )


def known_object_count(build_dir: Path, src: Path) -> int | None:
    """How many objects a build of `src` in `build_dir` compiles, as remembered from its
    earlier builds; None when none of this tree succeeded here."""
    try:
        data = json.loads((build_dir / OBJECT_COUNT).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tree") != str(src):
        return None
    count = data.get("objects")
    return count if isinstance(count, int) and count > 0 else None


def remember_object_count(build_dir: Path, src: Path, compiled: int, known: int | None) -> None:
    """After a successful build: the count for the next build's progress line. An
    incremental build compiles fewer objects than the tree has, so the larger of this
    build's count and the one remembered stands for a full build."""
    count = max(compiled, known or 0)
    if count > 0:
        data = {"tree": str(src), "objects": count}
        (build_dir / OBJECT_COUNT).write_text(json.dumps(data) + "\n")


def config_changes(build_dir: Path) -> dict[str, str]:
    """Symbol -> value for every symbol whose value in .config differs from the .config
    netvm resolved (an unset one is "n"), in symbol order."""
    base_file = build_dir / RESOLVED_CONFIG
    if not base_file.is_file() or not (build_dir / ".config").is_file():
        raise UserError(f"{build_dir}: no configured kernel here", hint="run invoke build first")
    base = read_config(base_file)
    edited = read_config(build_dir / ".config")
    changes = {}
    for sym in sorted(set(base) | set(edited)):
        old, new = base.get(sym, "n"), edited.get(sym, "n")
        if old != new:
            changes[sym] = new
    return changes


def fragment_line(symbol: str, value: str) -> str:
    return f"# CONFIG_{symbol} is not set" if value == "n" else f"CONFIG_{symbol}={value}"


def diffconfig(build_dir: Path) -> str:
    """What a hand-edited .config changed against netvm's resolution, as a fragment."""
    lines = [fragment_line(sym, value) for sym, value in config_changes(build_dir).items()]
    return "\n".join(lines) + ("\n" if lines else "")


def hand_edits(build_dir: Path) -> dict[str, str]:
    """The changes (as `config_changes`) of a .config edited by hand since netvm's make
    last wrote it, or since `save_fragment` saved it; empty when it was not (or when the
    edit changed no value, so regenerating it loses nothing)."""
    config = build_dir / ".config"
    if not config.is_file() or not (build_dir / RESOLVED_CONFIG).is_file():
        return {}
    record = build_dir / CONFIG_RECORD
    if record.is_file() and record.read_text().strip() == file_sha256(config):
        return {}
    return config_changes(build_dir)


@dataclass(frozen=True)
class SavedFragment:
    """What `save_fragment` did to a fragment file."""

    path: Path
    created: bool
    added: tuple[str, ...]  # symbols appended
    replaced: tuple[str, ...]  # symbols whose earlier line now has the new value
    unchanged: tuple[str, ...]  # symbols the fragment already set to the edited value
    left_out: tuple[str, ...]  # changed symbols a fragment cannot set (no prompt)

    @property
    def written(self) -> bool:
        return bool(self.added or self.replaced)


SAVED_HEADER = "# From a hand-edited .config (invoke kernel.savefragment): say why each is needed."


def settable_symbols(
    src: Path, symbols: Sequence[str], *, arch: str, cross_compile: str, kernel_version: str
) -> set[str]:
    """Those of `symbols` a fragment can set: defined in the tree's Kconfig with a prompt.
    The others changed only because a symbol they depend on did."""
    kconf = load_kconfig(src, kconfig_env(src, arch, cross_compile, kernel_version))
    settable = set()
    for name in symbols:
        sym = kconf.syms.get(name)
        if sym is not None and any(node.prompt for node in sym.nodes):
            settable.add(name)
    return settable


def save_fragment(
    src: Path,
    build_dir: Path,
    fragment: Path,
    *,
    kernel_version: str,
    arch: str = "arm64",
    cross_compile: str = "aarch64-linux-gnu-",
) -> SavedFragment:
    """Merge the settable changes of a hand-edited .config into `fragment` (created if
    need be): a symbol the fragment already sets gets its line replaced in place (its
    comment stays), a new one is appended under a comment asking why. Afterwards the
    edited .config counts as saved, so a build may regenerate it."""
    changes = config_changes(build_dir)
    settable = settable_symbols(
        src, list(changes), arch=arch, cross_compile=cross_compile, kernel_version=kernel_version
    )
    created = not fragment.exists()
    lines = [] if created else fragment.read_text().splitlines()
    where: dict[str, list[int]] = {}
    for req in [] if created else parse_fragment(fragment):
        where.setdefault(req.symbol, []).append(req.line - 1)
    added: list[str] = []
    replaced: list[str] = []
    unchanged: list[str] = []
    drop: set[int] = set()
    for sym, value in changes.items():
        if sym not in settable:
            continue
        line = fragment_line(sym, value)
        if sym not in where:
            added.append(sym)
            continue
        *earlier, last = where[sym]
        drop.update(earlier)  # a symbol set again replaces its earlier lines
        if lines[last].strip() == line and not earlier:
            unchanged.append(sym)
        else:
            lines[last] = line
            replaced.append(sym)
    merged = [text for i, text in enumerate(lines) if i not in drop]
    if added:
        if merged and merged[-1].strip():
            merged.append("")
        merged.append(SAVED_HEADER)
        merged += [fragment_line(sym, changes[sym]) for sym in added]
    if added or replaced:
        fragment.parent.mkdir(parents=True, exist_ok=True)
        fragment.write_text("\n".join(merged) + "\n")
    # The edits are kept now: the next build may regenerate .config from the fragments.
    (build_dir / CONFIG_RECORD).write_text(file_sha256(build_dir / ".config") + "\n")
    left_out = tuple(sym for sym in changes if sym not in settable)
    return SavedFragment(
        fragment, created and bool(added), tuple(added), tuple(replaced), tuple(unchanged), left_out
    )


def saved_report(saved: SavedFragment, board: Board, root: Path) -> str:
    """What `save_fragment` did, for the user: one line per kind of change, and what to
    do next."""
    shown = display_path(saved.path, root)

    def names(symbols: Sequence[str]) -> str:
        return ", ".join(f"CONFIG_{sym}" for sym in symbols)

    if not (saved.added or saved.replaced or saved.unchanged or saved.left_out):
        return "nothing to save: the kernel's .config has the values netvm resolved"
    lines = []
    if saved.written:
        parts = [f"{len(saved.added)} added ({names(saved.added)})"] if saved.added else []
        if saved.replaced:
            parts.append(f"{len(saved.replaced)} replaced ({names(saved.replaced)})")
        lines.append(f"{'created' if saved.created else 'updated'} {shown}: {', '.join(parts)}")
    if saved.unchanged:
        lines.append(f"already in {shown}: {names(saved.unchanged)}")
    if saved.left_out:
        lines.append(
            "left out, as no fragment can set them (no prompt in this kernel's Kconfig, "
            f"or not in it at all): {names(saved.left_out)}"
        )
    if saved.added:
        lines.append(f"replace the comment above the new lines in {shown} with why they are needed")
    if saved.written and saved.path.resolve() not in {f.resolve() for f in board.kernel.fragments}:
        lines.append(
            f"{shown} is not one of the board's kernel fragments: add {saved.path.name} to "
            f"kernel.fragments in {board.display_file}, or builds will not use it"
        )
    return "\n".join(lines)


def menuconfig(
    src: Path, build_dir: Path, *, arch: str = "arm64", cross_compile: str = "aarch64-linux-gnu-"
) -> int:
    """Interactive menuconfig on the configured tree (needs a terminal)."""
    if not (build_dir / ".config").is_file():
        raise UserError(f"{build_dir}: no configured kernel here", hint="run invoke build first")
    cmd = _make_cmd(src, build_dir, arch, cross_compile, "menuconfig")
    return subprocess.call(cmd, env={**os.environ, **REPRODUCIBLE_ENV})
