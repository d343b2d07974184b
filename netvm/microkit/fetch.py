"""Fetching the pinned Microkit inputs (SDK, libvmm, sDDF) into netvm's cache.

Owns turning a board's pins into local trees when the user gave no path: libvmm and
sDDF are `git clone`d from their pinned repository and checked out at the pinned commit
(verified with `git rev-parse HEAD`); the SDK archive is downloaded from the URL its
pinned version and host platform name, but only when its sha256 is pinned, and it is
unpacked once after the hash matched. Everything lands under
`cache_dir()/microkit/`, named after the pin, so a second build reuses it without the
network.

Nothing here raises for a failed fetch: each input yields either a path or a `Finding`
saying what is missing, why, and how to supply it by hand, so the caller (the microkit
build step) can report them all together or turn them into a skip note.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from netvm.board import GitPin, MicrokitSpec
from netvm.core.errors import Finding, UserError
from netvm.core.files import file_sha256, fill_once
from netvm.core.hosttools import git_head
from netvm.core.workspace import cache_dir

# Upstream's release assets: microkit-sdk-<version>-<platform>.tar.gz per host platform.
SDK_URL = (
    "https://github.com/seL4/microkit/releases/download/{version}/"
    "microkit-sdk-{version}-{platform}.tar.gz"
)
GIT_TIMEOUT = 900.0  # seconds for a clone: libvmm's history is small, links may not be
HTTP_TIMEOUT = 30.0  # seconds without progress before a download is abandoned
CHUNK = 1 << 20


@dataclass(frozen=True)
class Fetched:
    """One input: where it is now, or why it is not there."""

    name: str  # microkit_sdk | libvmm | sddf
    path: Path | None
    provenance: str = ""  # "verified: …" when path is set
    finding: Finding | None = None  # why path is None


def microkit_cache() -> Path:
    return cache_dir() / "microkit"


# ---------------------------------------------------------------------------------------
# git trees


def fetch_git(
    name: str,
    pin: GitPin | None,
    key: str,
    display: str,
    hint: str,
    *,
    cache: Path,
    submodules: tuple[str, ...] = (),
) -> Fetched:
    """Clone `pin.repository` into `cache/<name>-<commit>` at `pin.commit`, or reuse it.

    `submodules` are initialised after the checkout (only those asked for: sDDF needs
    none of its own, libvmm only its dep/sddf when sDDF is not fetched separately).
    """

    def fail(message: str) -> Fetched:
        return Fetched(name, None, finding=Finding(display, key, message, hint))

    if pin is None or not pin.repository:
        return fail(f"{name} was not given and the board pins no repository to fetch it from")
    dest = cache / f"{name}-{pin.commit}"
    head = git_head(dest)
    if head is not None and head.startswith(pin.commit) and _has_submodules(dest, submodules):
        return Fetched(name, dest, _git_provenance(pin, head))
    cache.mkdir(parents=True, exist_ok=True)
    # Clone beside the final place and rename: an interrupted clone never looks cached.
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        tree = work / "tree"
        try:
            _git(["clone", "--quiet", "--no-checkout", pin.repository, str(tree)], None)
        except _GitFailed as exc:
            return fail(f"cannot clone {name} from {pin.repository}: {exc}")
        try:
            # An abbreviated pin resolves only if unambiguous; ^{commit} rejects tags/trees.
            full = _git(["rev-parse", "--verify", "--quiet", f"{pin.commit}^{{commit}}"], tree)
        except _GitFailed:
            return fail(f"{pin.repository} has no commit {pin.commit} (or the prefix is ambiguous)")
        try:
            _git(["-c", "advice.detachedHead=false", "checkout", "--quiet", full], tree)
            if submodules:
                _git(["submodule", "update", "--init", "--quiet", "--", *submodules], tree)
        except _GitFailed as exc:
            return fail(f"cannot check out {name} at {pin.commit}: {exc}")
        head = git_head(tree)
        if head is None or not head.startswith(pin.commit):
            return fail(f"{name} clone is at {head}, not at the pinned {pin.commit}")
        if dest.exists():
            shutil.rmtree(dest)  # a stale clone at another commit
        tree.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Fetched(name, dest, _git_provenance(pin, head))


def _git_provenance(pin: GitPin, head: str) -> str:
    # The same words for a fresh and a cached clone: provenance is part of the step's
    # inputs, and reusing the cache must not re-run make.
    return f"verified: fetched {pin.repository} at git commit {head}"


class _GitFailed(Exception):
    pass


def _git(args: list[str], cwd: Path | None) -> str:
    # No terminal prompt: a private or moved repository must fail, not wait for a password.
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true")
    cmd = ["git", *(["-C", str(cwd)] if cwd else []), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=GIT_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise _GitFailed("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise _GitFailed(f"`git {args[0]}` took more than {GIT_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise _GitFailed(lines[-1] if lines else f"git {args[0]} exited {proc.returncode}")
    return proc.stdout.strip()


def _has_submodules(path: Path, submodules: tuple[str, ...]) -> bool:
    return all((path / s).is_dir() and any((path / s).iterdir()) for s in submodules)


# ---------------------------------------------------------------------------------------
# the SDK archive


def sdk_url(spec: MicrokitSpec, platform: str, template: str = SDK_URL) -> str:
    return template.format(version=spec.sdk_version, platform=platform)


def fetch_sdk(
    spec: MicrokitSpec,
    platform: str,
    display: str,
    hint: str,
    *,
    cache: Path,
    url_template: str = SDK_URL,
) -> Fetched:
    """Download, verify and unpack the pinned SDK archive (once) into `cache`."""
    key = f"microkit.sdk_sha256.{platform}"
    name = f"microkit-sdk-{spec.sdk_version}-{platform}.tar.gz"

    def fail(message: str, extra_hint: str = "") -> Fetched:
        return Fetched(
            "microkit_sdk",
            None,
            finding=Finding(display, key, message, f"{extra_hint}; {hint}" if extra_hint else hint),
        )

    pinned = spec.sdk_archive_sha256(platform)
    if pinned is None:
        # A download nobody can verify is not an input netvm will build from.
        return fail(
            f"the Microkit SDK was not given and cannot be fetched: no sha256 is pinned for "
            f"{name}, so a download could not be verified",
            "record the archive's sha256 under that key to let netvm fetch it",
        )
    url = sdk_url(spec, platform, url_template)
    archive = cache / name
    if not (archive.is_file() and file_sha256(archive) == pinned):
        cache.mkdir(parents=True, exist_ok=True)
        part = archive.with_name(archive.name + ".part")
        try:
            actual = _download(url, part)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            part.unlink(missing_ok=True)
            reason = getattr(exc, "reason", None) or exc
            return fail(f"cannot download the Microkit SDK from {url}: {reason}")
        if actual != pinned:
            part.unlink(missing_ok=True)
            return fail(
                f"{url} has sha256 {actual}, the board pins {pinned}; the download was discarded",
                "check the pin against upstream's release",
            )
        part.rename(archive)
    try:
        sdk = unpack_sdk(archive, cache / f"sdk-{pinned[:16]}")
    except (UserError, tarfile.TarError, OSError) as exc:
        return fail(f"cannot unpack {archive}: {exc}")
    return Fetched("microkit_sdk", sdk, f"verified: fetched {url}, archive sha256 {pinned}")


def _download(url: str, dest: Path) -> str:
    """Stream `url` into `dest`; return the sha256 of what arrived."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp, dest.open("wb") as out:
        while chunk := resp.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def unpack_sdk(archive: Path, dest: Path) -> Path:
    """Unpack a verified SDK archive once; the SDK is the archive's single top directory."""

    def extract(tmp: Path) -> str:
        root = tmp.resolve()
        with tarfile.open(archive) as tar:
            # This python predates tarfile's extraction filters: refuse members that
            # would land outside `dest` or are links/devices (a released SDK has none).
            for member in tar.getmembers():
                target = (tmp / member.name).resolve()
                inside = target == root or root in target.parents
                if not inside or not (member.isfile() or member.isdir()):
                    raise UserError(f"{archive}: unsafe member {member.name!r} in SDK archive")
            tar.extractall(tmp)
        return archive.name

    fill_once(dest, extract)
    tops = [p for p in dest.iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 else dest
