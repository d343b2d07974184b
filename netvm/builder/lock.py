"""The lock file `boards/<board>/netvm.lock`: every resolved input of a build, by hash.

Owns resolving what a board's build takes from outside the repository into exact
identities (full commits of libvmm, sDDF and sdfgen; the Microkit SDK archive's sha256
or the digest of an SDK directory; the kernel source package and its tarball's sha256;
every Debian package of the rootfs with version and sha256), writing that as
`netvm.lock`, and comparing a later build's resolution with it (`invoke build --locked`).

The board file says what netvm *wants* (pins, package names); the lock says what a
build *got*. An input the lock does not name (say, no SDK was given when it was made)
is not compared; anything the lock names that resolves differently now is drift, and
so is a package the lock does not list. The SDK hash is trust on first use: the
archive a user hands to `invoke lock` is the one every later `--locked` build must match.

House rules: plain data in, plain data out; the lock is JSON with sorted keys so that
its diff is the review.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netvm.board import Board, GitPin
from netvm.core.errors import Finding, UserError
from netvm.core.files import file_sha256, tree_digest
from netvm.core.workspace import display_path
from netvm.guest.kernelsrc import KernelSource
from netvm.guest.rootfs import DEBIAN_PACKAGES, resolved_packages
from netvm.microkit.handoff import MicrokitInputs, host_platform, sdk_version

LOCK_NAME = "netvm.lock"
LOCK_FORMAT = 1


def lock_path(board: Board) -> Path:
    return board.dir / LOCK_NAME


@dataclass(frozen=True)
class LockInputs:
    """What a resolution can see: the kernel tree in use and the Microkit inputs given."""

    kernel: KernelSource
    microkit: MicrokitInputs | None
    cache: Path  # netvm's cache (the Debian packages' resolution is remembered there)


def resolve(board: Board, inputs: LockInputs) -> dict[str, Any]:
    """The lock's content for `board` as this machine resolves it now."""
    out: dict[str, Any] = {"format": LOCK_FORMAT, "board": board.name}
    out["kernel"] = _kernel(inputs.kernel)
    out["rootfs"] = _rootfs(board, inputs.cache)
    if board.microkit is not None:
        spec = board.microkit
        microkit: dict[str, Any] = {
            "libvmm": _git(spec.libvmm),
            "sddf": _git(spec.sddf),
            "sdfgen": {
                "repository": spec.sdfgen.repository,
                "commit": spec.sdfgen.commit,
                "version": spec.sdfgen.version,
            },
            "sdk": {"version": spec.sdk_version},
        }
        given = inputs.microkit.sdk if inputs.microkit else None
        if given is not None:
            microkit["sdk"].update(_sdk(given.path))
        out["microkit"] = microkit
    return out


def _git(pin: GitPin | None) -> dict[str, Any] | None:
    return None if pin is None else {"repository": pin.repository, "commit": pin.commit}


def _kernel(src: KernelSource) -> dict[str, Any]:
    out: dict[str, Any] = {"provider": src.provider, "version": src.version, "origin": src.origin}
    if src.provider == "debian":
        package = src.origin.split(" ", 1)[0]
        out["tarball_sha256"] = file_sha256(Path("/usr/src") / f"{package}.tar.xz")
    return out


def _rootfs(board: Board, cache: Path) -> dict[str, Any]:
    spec = board.rootfs
    out: dict[str, Any] = {"provider": spec.provider}
    if spec.provider == "debian":
        out["packages"] = {
            p.name: {"version": p.version, "architecture": p.architecture, "sha256": p.sha256}
            for p in resolved_packages(DEBIAN_PACKAGES, cache / "debs")
        }
    elif spec.provider == "cpio" and spec.base_cpio is not None:
        out["base_cpio_sha256"] = file_sha256(spec.base_cpio)
    return out


def _sdk(path: Path) -> dict[str, Any]:
    """An archive is locked by its sha256 for this host platform; a directory by a
    digest of every file in it (names, modes, contents)."""
    if path.is_file():
        return {"archive_sha256": {host_platform(): file_sha256(path)}}
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return {"version": sdk_version(path), "tree_sha256": tree_digest(files, path)}


# ---------------------------------------------------------------------------------------
# Reading, writing, comparing


def write_lock(board: Board, content: Mapping[str, Any]) -> Path:
    path = lock_path(board)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return path


def summary(content: Mapping[str, Any]) -> str:
    """One line saying what a lock holds."""
    parts = [f"kernel {content['kernel']['origin']}"]
    packages = content["rootfs"].get("packages")
    if packages:
        parts.append(f"{len(packages)} Debian packages")
    microkit = content.get("microkit")
    if microkit:
        for name in ("libvmm", "sddf", "sdfgen"):
            if microkit.get(name):
                parts.append(f"{name} {microkit[name]['commit'][:12]}")
        sdk = microkit["sdk"]
        if "archive_sha256" in sdk or "tree_sha256" in sdk:
            parts.append(f"Microkit SDK {sdk['version']} by hash")
        else:
            parts.append("no SDK hash (pass --microkit-sdk ARCHIVE to record one)")
    return ", ".join(parts)


def read_lock(board: Board, root: Path) -> dict[str, Any]:
    path = lock_path(board)
    display = display_path(path, root)
    if not path.is_file():
        raise UserError(
            [
                Finding(
                    display,
                    "",
                    "--locked, but the board has no lock file",
                    f"run `invoke lock --board {board.name}`, review it and commit it",
                )
            ]
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(
            [Finding(display, f"line {exc.lineno}", f"not JSON: {exc.msg}", "run `invoke lock`")]
        ) from None
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT:
        raise UserError(
            [
                Finding(
                    display,
                    "format",
                    f"expected lock format {LOCK_FORMAT}",
                    "run `invoke lock` with this netvm to rewrite it",
                )
            ]
        )
    return data


def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        for key in sorted(data):
            yield from _leaves(data[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, data


# What an SDK given to this build adds: compared only where the lock has it, since a
# lock made without the SDK (or with its archive rather than a directory) cannot say.
SDK_PREFIX = "microkit.sdk."


def drift(locked: Mapping[str, Any], current: Mapping[str, Any], display: str) -> list[Finding]:
    """Every leaf that resolves differently now, is new, or is no longer resolved."""
    old = dict(_leaves(locked))
    new = dict(_leaves(current))
    findings: list[Finding] = []
    for key in sorted(old.keys() | new.keys()):
        if key not in old:
            if not key.startswith(SDK_PREFIX):
                findings.append(Finding(display, key, f"is {new[key]!r} now, not in the lock"))
        elif key not in new:
            if not key.startswith(SDK_PREFIX):
                findings.append(Finding(display, key, f"locked {old[key]!r}, gone now"))
        elif old[key] != new[key]:
            findings.append(Finding(display, key, f"locked {old[key]!r}, now {new[key]!r}"))
    return findings


def check_locked(board: Board, root: Path, inputs: LockInputs) -> None:
    """`--locked`: raise one UserError naming every drift from the board's lock file."""
    locked = read_lock(board, root)
    display = display_path(lock_path(board), root)
    findings = drift(locked, resolve(board, inputs), display)
    if findings:
        total = Finding(
            display,
            "",
            f"the build's inputs differ from the lock in {len(findings)} places",
            f"if that is intended: `invoke lock --board {board.name}`, review the diff of "
            f"{display} and commit it (docs/lock.md)",
        )
        raise UserError([*findings, total])
