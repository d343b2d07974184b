"""`invoke container.build`: netvm's build environment as an OCI image.

Owns what goes into the image and what its tag says. The image is Debian bookworm made
by debootstrap from the host's own Debian archive (imported as a base image: no registry
is pulled from), the Debian packages ``./bootstrap`` installs (requirements-debian.txt)
and a venv with the pinned requirements.txt, installed from wheels the host builds
first, so the image build resolves nothing on its own. It is tagged with netvm's version
and a digest of everything that went into it, the board's lock file among them:
``localhost/netvm-build:0.1.0-<12 hex>``. A rebuild with the same inputs finds its tag
and does nothing.

Written under ``build/container/``: the build context (Containerfile, sources,
requirements and the wheels), ``build.log`` (every tool's output), ``packages.tsv``
(the image's Debian packages: name, version, architecture) and ``image.json`` (the tag,
the image ID and the inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netvm import __version__
from netvm.board.model import Board
from netvm.builder.lock import lock_path
from netvm.container import aptsources
from netvm.container.podman import Podman, run_checked
from netvm.core.errors import UserError
from netvm.core.files import fill_once, short_key
from netvm.core.hosttools import first_line
from netvm.core.progress import Progress, silent
from netvm.core.toollog import ToolLog
from netvm.core.workspace import Workspace
from netvm.guest.render import environment

IMAGE = "localhost/netvm-build"
BASE_IMAGE = "localhost/netvm-base"
TEMPLATE = "container/Containerfile.j2"
DEBIAN_PACKAGES = "requirements-debian.txt"
PYTHON_REQUIREMENTS = "requirements.txt"


def debian_packages(root: Path) -> list[str]:
    """The packages of requirements-debian.txt: one per line, `#` starts a comment."""
    names: list[str] = []
    for line in (root / DEBIAN_PACKAGES).read_text().splitlines():
        names.extend(line.split("#", 1)[0].split())
    return names


@dataclass(frozen=True)
class ImageSpec:
    """Everything the image is made from; its tag is a digest of all of it."""

    version: str
    lock_sha256: str  # of the board's netvm.lock, "" when the board has none
    packages: tuple[str, ...]
    requirements: str
    sources: tuple[aptsources.AptSource, ...]
    template: str  # the Containerfile template's text

    @property
    def base_key(self) -> str:
        """The debootstrap base: the suite and the archive it came from."""
        return short_key(f"{aptsources.SUITE}\n{aptsources.base_mirror(self.sources)}")[:12]

    @property
    def base_ref(self) -> str:
        return f"{BASE_IMAGE}:{aptsources.SUITE}-{self.base_key}"

    @property
    def inputs_sha256(self) -> str:
        doc = {
            "version": self.version,
            "lock_sha256": self.lock_sha256,
            "packages": list(self.packages),
            "requirements": self.requirements,
            "sources": aptsources.render_sources(self.sources),
            "template": self.template,
            "base": self.base_ref,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def ref(self) -> str:
        return f"{IMAGE}:{self.version}-{self.inputs_sha256[:12]}"

    def containerfile(self, root: Path) -> str:
        return (
            environment(root)
            .get_template(TEMPLATE)
            .render(
                base=self.base_ref,
                suite=aptsources.SUITE,
                packages=self.packages,
                version=self.version,
                lock_sha256=self.lock_sha256,
                inputs_sha256=self.inputs_sha256,
            )
        )


def image_spec(
    ws: Workspace, board: Board, mirror: str | None, security_mirror: str | None
) -> ImageSpec:
    lock = lock_path(board)
    lock_sha = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else ""
    return ImageSpec(
        version=__version__,
        lock_sha256=lock_sha,
        packages=tuple(debian_packages(ws.root)),
        requirements=(ws.root / PYTHON_REQUIREMENTS).read_text(),
        sources=tuple(aptsources.debian_sources(mirror, security_mirror)),
        template=(ws.root / "templates" / TEMPLATE).read_text(),
    )


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    image_id: str
    built: bool  # False: the tag existed already
    seconds: float
    packages_file: Path
    record_file: Path


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UserError(
            f"{what} needs root (debootstrap creates device nodes and root-owned files)",
            hint="sudo .venv/bin/invoke container.build",
        )


def _require_tool(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        hint = f"run ./bootstrap --container (Debian package {package})"
        raise UserError(f"{tool} is not installed", hint=hint)


def _base_image(
    spec: ImageSpec, podman: Podman, work: Path, log: ToolLog, progress: Progress
) -> None:
    """The debootstrap base as a local image, made once per suite and archive."""
    if podman.image_exists(spec.base_ref):
        return
    _require_root("making the Debian base image")
    _require_tool("debootstrap", "debootstrap")
    mirror = aptsources.base_mirror(spec.sources)
    rootfs = work / "base-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    progress(f"[container] debootstrap {aptsources.SUITE} from {mirror} (about a minute)")
    try:
        log.check(
            log.stream(["debootstrap", "--variant=minbase", aptsources.SUITE, str(rootfs), mirror]),
            "debootstrap",
            hint="the archive must be reachable; give another with --mirror",
        )
        progress(f"[container] importing it as {spec.base_ref}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        assert tar.stdout is not None
        with tar:
            imported = subprocess.run(
                podman.command("import", "-", spec.base_ref),
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
        if tar.returncode != 0 or imported.returncode != 0:
            raise UserError(
                f"podman import of the base failed: {imported.stderr.strip()[-500:]}",
                hint=f"the whole output is in {log.display}",
            )
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def _wheels(ws: Workspace, spec: ImageSpec, log: ToolLog, progress: Progress) -> Path:
    """Wheels of every pinned requirement, built on the host once per requirements.txt
    (the host's pip knows the package index; the image build needs none)."""

    def fill(dest: Path) -> str:
        progress("[container] wheels of requirements.txt")
        log.check(
            log.stream(
                [
                    *(sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q"),
                    *("-r", str(ws.root / PYTHON_REQUIREMENTS), "-w", str(dest)),
                ]
            ),
            "pip wheel -r requirements.txt",
            hint="the package index must be reachable from this host",
        )
        return "wheels of requirements.txt\n"

    return fill_once(ws.cache / "container" / f"wheels-{short_key(spec.requirements)}", fill)


def _context(out: Path, root: Path, spec: ImageSpec, wheels: Path) -> Path:
    """The build context: Containerfile, sources, requirements and the wheels."""
    ctx = out / "context"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    (ctx / "Containerfile").write_text(spec.containerfile(root))
    (ctx / "debian.sources").write_text(aptsources.render_sources(spec.sources))
    (ctx / PYTHON_REQUIREMENTS).write_text(spec.requirements)
    shutil.copytree(wheels, ctx / "wheels", ignore=shutil.ignore_patterns(".netvm-*"))
    return ctx


def _record(podman: Podman, spec: ImageSpec, out: Path) -> tuple[str, Path, Path]:
    """The image ID, and its package list and record written under `out`."""
    image_id = run_checked(
        podman.command("image", "inspect", "--format", "{{.Id}}", spec.ref)
    ).strip()
    cat = ["run", "--rm", "--network", "none", *podman.ulimits, spec.ref, "cat"]
    packages = run_checked(podman.command(*cat, "/opt/netvm/packages.tsv"))
    packages_file = out / "packages.tsv"
    packages_file.write_text(packages)
    record: dict[str, Any] = {
        "ref": spec.ref,
        "image_id": image_id,
        "version": spec.version,
        "inputs_sha256": spec.inputs_sha256,
        "lock_sha256": spec.lock_sha256,
        "base": spec.base_ref,
        "sources": [s.uri for s in spec.sources],
        "packages": len(packages.splitlines()),
        "podman_flags": list(podman.global_flags + podman.ulimits),
        "podman_flag_reasons": list(podman.reasons),
        "podman": first_line(["podman", "--version"]),
    }
    record_file = out / "image.json"
    record_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return image_id, packages_file, record_file


def build_image(
    ws: Workspace,
    spec: ImageSpec,
    podman: Podman,
    *,
    force: bool = False,
    progress: Progress = silent,
) -> BuiltImage:
    """Build the image `spec` describes unless its tag exists (or `force`)."""
    start = time.monotonic()
    out = ws.build_root / "container"
    out.mkdir(parents=True, exist_ok=True)
    log = ToolLog(out / "build.log", display=ws.display(out / "build.log"))
    built = False
    if force or not podman.image_exists(spec.ref):
        _base_image(spec, podman, out, log, progress)
        wheels = _wheels(ws, spec, log, progress)
        ctx = _context(out, ws.root, spec, wheels)
        progress(f"[container] building {spec.ref} (Debian packages: several minutes)")
        # chroot isolation: the RUN steps need no OCI runtime, so they work wherever
        # podman can store images; the host network reaches the archive.
        build = ["build", "--isolation", "chroot", "--network", "host"]
        build += podman.ulimits
        build += ["-t", spec.ref, "-f", str(ctx / "Containerfile"), str(ctx)]
        log.check(
            log.stream(podman.command(*build)),
            "podman build",
            hint="see the log for the failing step",
        )
        built = True
    image_id, packages_file, record_file = _record(podman, spec, out)
    return BuiltImage(
        spec.ref, image_id, built, time.monotonic() - start, packages_file, record_file
    )
