"""Kernel source providers: where the guest kernel tree comes from.

Owns turning a board's `kernel.source` into an extracted, read-only tree in the
cache. Three providers:

- ``debian`` (offline default): Debian's ``linux-source-X.Y`` package, whose tarball
  sits in /usr/src; extracted once into the cache.
- ``tarball``: a pinned kernel.org-style tarball given by URL and sha256; downloaded
  once into the cache, hash verified before use.
- ``local``: a tree the user already has (``--kernel-src PATH``); used in place.

Builds never write into the tree: they use ``make O=<build dir>``.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from netvm.core.errors import UserError
from netvm.core.files import COMPLETE_STAMP, file_sha256, fill_once
from netvm.core.workspace import cache_dir

# Written last into an extracted tree, so a half-extracted tree is never reused.


@dataclass(frozen=True)
class KernelSource:
    path: Path
    version: str  # e.g. "6.12.117"
    provider: str
    origin: str  # package version, URL or local path, for the manifest


def tree_version(tree: Path) -> str:
    """Read VERSION.PATCHLEVEL.SUBLEVEL from a kernel tree's top Makefile."""
    fields: dict[str, str] = {}
    with (tree / "Makefile").open() as f:
        for line in f:
            key, _, value = line.partition("=")
            key = key.strip()
            if key in ("VERSION", "PATCHLEVEL", "SUBLEVEL"):
                fields[key] = value.strip()
            if len(fields) == 3:
                break
    return f"{fields.get('VERSION')}.{fields.get('PATCHLEVEL')}.{fields.get('SUBLEVEL')}"


def _extract(tarball: Path, dest: Path) -> Path:
    """Extract `tarball` under `dest` once; return the single top-level directory."""

    def extract(tmp: Path) -> str:
        # tar(1) is several times faster than tarfile on a 150 MB xz archive.
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)], check=True)
        tops = [p for p in tmp.iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise UserError(f"{tarball}: expected one top-level directory, found {len(tops)}")
        return tops[0].name

    fill_once(dest, extract)
    return dest / (dest / COMPLETE_STAMP).read_text().strip()


def debian_source(package: str) -> KernelSource:
    """Debian's linux-source-X.Y package: /usr/src/<package>.tar.xz, extracted once."""
    tarball = Path("/usr/src") / f"{package}.tar.xz"
    if not tarball.exists():
        raise UserError(
            f"{tarball} not found: the Debian package {package} is not installed",
            hint=f"run ./bootstrap, or apt-get install {package}",
        )
    pkg_version = (
        subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    top = _extract(tarball, cache_dir() / "src" / f"{package}_{pkg_version}")
    return KernelSource(top, tree_version(top), "debian", f"{package} {pkg_version}")


def tarball_source(url: str, sha256: str) -> KernelSource:
    """A pinned tarball: downloaded once into the cache and verified before use."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / name
    if not target.exists() or file_sha256(target) != sha256:
        partial = target.with_name(name + ".partial")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, partial.open("wb") as out:
                shutil.copyfileobj(resp, out)
        except (urllib.error.URLError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise UserError(
                f"cannot download kernel tarball {url}: {exc}",
                hint=f"place the file at {target} by hand, or use the debian or local provider",
            ) from None
        got = file_sha256(partial)
        if got != sha256:
            partial.unlink(missing_ok=True)
            raise UserError(
                f"kernel tarball {url}: sha256 {got} does not match the pinned {sha256}",
                hint="check the URL and the sha256 pinned in the board file",
            )
        partial.rename(target)
    if not tarfile.is_tarfile(target):
        raise UserError(f"{target}: not a tar archive")
    top = _extract(target, cache_dir() / "src" / f"tarball-{sha256[:16]}")
    return KernelSource(top, tree_version(top), "tarball", url)


def local_source(path: Path) -> KernelSource:
    """A kernel tree given by the user; it must look like a kernel tree."""
    path = path.expanduser().resolve()
    if not (path / "Makefile").is_file() or not (path / "Kconfig").is_file():
        raise UserError(
            f"{path}: not a Linux kernel tree (no top-level Makefile and Kconfig)",
            hint="pass the root of an extracted kernel source with --kernel-src",
        )
    return KernelSource(path, tree_version(path), "local", str(path))
