"""The guest kernel: resolve the config with the kernel's own make, audit it, build Image.

Owns the make invocations (allnoconfig + fragments, olddefconfig, Image, menuconfig)
in a persistent ``O=`` build directory, so make itself stays incremental, and the
audit files (``audit.txt``, ``audit.json``). Fragment parsing and mismatch reasons
live in `netvm.guest.kconfig`. The kernel tree is never written to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netvm.core.errors import Finding, UserError
from netvm.core.hosttools import compiler_version
from netvm.core.progress import Progress, silent
from netvm.guest.kconfig import (
    Mismatch,
    explain,
    find_mismatches,
    kconfig_env,
    load_kconfig,
    merged_requests,
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


def _make_vars(arch: str, cross_compile: str) -> list[str]:
    cc = f"{cross_compile}gcc"
    # ccache keeps rebuilds after `make clean` or a fresh O= cheap; same CC everywhere,
    # or Kconfig would see a compiler change and re-resolve the config.
    if shutil.which("ccache"):
        cc = f"ccache {cc}"
    return [f"ARCH={arch}", f"CROSS_COMPILE={cross_compile}", f"CC={cc}"]


def _make(
    src: Path, build_dir: Path, arch: str, cross_compile: str, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    cmd = ["make", "-s", "-C", str(src), f"O={build_dir}", *_make_vars(arch, cross_compile), *args]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def configure(
    src: Path,
    build_dir: Path,
    fragments: Sequence[Path],
    *,
    kernel_version: str,
    arch: str = "arm64",
    cross_compile: str = "aarch64-linux-gnu-",
    allowed: frozenset[str] = frozenset(),
) -> ConfigResult:
    """allnoconfig + fragments, resolved by the kernel's Kconfig; audited.

    Raises UserError (one finding per mismatch, naming fragment and line) when a
    requested value did not survive and the symbol is not in `allowed`.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    merged = build_dir / "netvm-fragments.config"
    merged.write_text("".join(f"# from {f}\n{f.read_text()}\n" for f in fragments))
    env = dict(REPRODUCIBLE_ENV, KCONFIG_ALLCONFIG=str(merged))
    _check(_make(src, build_dir, arch, cross_compile, "allnoconfig", env=env), "allnoconfig")
    _check(
        _make(src, build_dir, arch, cross_compile, "olddefconfig", env=REPRODUCIBLE_ENV),
        "olddefconfig",
    )
    config = build_dir / ".config"
    # The resolved config as netvm made it; diffconfig compares a hand-edited one to it.
    shutil.copyfile(config, build_dir / "netvm-resolved.config")
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
    progress: Progress = silent,
) -> KernelImage:
    """`make Image` in the configured build dir; incremental; reproducible."""
    jobs = jobs or os.cpu_count() or 1
    cmd = [
        "make",
        "-C",
        str(src),
        f"O={build_dir}",
        *_make_vars(arch, cross_compile),
        f"-j{jobs}",
        "Image",
    ]
    start = time.monotonic()
    compiled = 0
    tail: list[str] = []
    with subprocess.Popen(
        cmd,
        env={**os.environ, **REPRODUCIBLE_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-40:], line.rstrip()]
            if line.lstrip().startswith("CC "):
                compiled += 1
                if compiled % 200 == 0:
                    progress(f"[kernel] {compiled} objects compiled")
    if proc.returncode != 0:
        raise RuntimeError("make Image failed:\n" + "\n".join(tail[-20:]))
    image = build_dir / "arch" / arch / "boot" / "Image"
    return KernelImage(
        image,
        image.stat().st_size,
        time.monotonic() - start,
        compiler_version(f"{cross_compile}gcc"),
    )


def diffconfig(build_dir: Path) -> str:
    """What a hand-edited .config changed against netvm's resolution, as a fragment."""
    base_file = build_dir / "netvm-resolved.config"
    if not base_file.is_file():
        raise UserError(f"{build_dir}: no configured kernel here", hint="run invoke build first")
    base = read_config(base_file)
    edited = read_config(build_dir / ".config")
    lines = []
    for sym in sorted(set(base) | set(edited)):
        old, new = base.get(sym, "n"), edited.get(sym, "n")
        if old != new:
            lines.append(f"# CONFIG_{sym} is not set" if new == "n" else f"CONFIG_{sym}={new}")
    return "\n".join(lines) + ("\n" if lines else "")


def menuconfig(
    src: Path, build_dir: Path, *, arch: str = "arm64", cross_compile: str = "aarch64-linux-gnu-"
) -> int:
    """Interactive menuconfig on the configured tree (needs a terminal)."""
    if not (build_dir / ".config").is_file():
        raise UserError(f"{build_dir}: no configured kernel here", hint="run invoke build first")
    cmd = ["make", "-C", str(src), f"O={build_dir}", *_make_vars(arch, cross_compile)]
    return subprocess.call([*cmd, "menuconfig"], env={**os.environ, **REPRODUCIBLE_ENV})
