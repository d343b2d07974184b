"""`invoke sbom`: an SPDX 2.3 document (JSON) of a board's guest as its last build made it.

Owns turning ``build/<board>/manifest.json`` (read through `netvm.builder.manifest`) into
SPDX packages and relationships: the kernel (Image, .config, source), every Debian
package in the initramfs (version, .deb sha256, apt's download location, the licence of
its copyright file: `netvm.builder.debcopyright`), netvm's overlay and driver, the
initramfs, the guest DTB and loader.img with its Microkit inputs. What the manifest does
not say comes from apt's signed lists, the board's ``netvm.lock`` (only where it names
exactly what was built) and netvm's cache of .deb files.

The output is deterministic: sorted, stable SPDXIDs, ``created`` from SOURCE_DATE_EPOCH
(else the manifest's modification time, the time of the build it describes) and a
namespace derived from the content, so two runs on the same build are byte-identical.
What netvm does not know is NOASSERTION, never a guess (docs/sbom.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from netvm import __version__
from netvm.board import Board, TarballKernelSource
from netvm.builder.debcopyright import (
    NOASSERTION,
    DebDocs,
    ExtractedLicence,
    PackageLicence,
    deb_docs,
    package_licence,
)
from netvm.builder.lock import lock_path
from netvm.builder.manifest import MANIFEST_NAME, BuiltFile, Manifest, read_manifest
from netvm.core.errors import Finding, UserError
from netvm.core.files import file_sha256, short_key, tree_digest
from netvm.core.workspace import Workspace
from netvm.guest.rootfs import (
    DEB_ARCH,
    GUEST_PYTHONPATH,
    DebPackage,
    apt_lists_state,
    fetch_packages,
)

SBOM_NAME = "sbom.spdx.json"
SPDX_VERSION = "SPDX-2.3"
# The namespace prefix the SPDX specification's examples use; the document's own part is
# a hash of its content.
NAMESPACE_PREFIX = "https://spdx.org/spdxdocs/"
DEBIAN = "Organization: Debian"
# The kernel's COPYING: the kernel is GPL-2.0-only; the syscall note covers the user-space
# API headers of the source, which are not in the Image.
KERNEL_SOURCE_LICENCE = "GPL-2.0-only WITH Linux-syscall-note"
KERNEL_IMAGE_LICENCE = "GPL-2.0-only"
KERNEL_LICENCE_COMMENT = (
    "the Linux kernel's COPYING: GPL-2.0-only, with the Linux-syscall-note for the "
    "user-space API headers (the source has them, the Image does not)"
)
DRIVER_DIR = f"{GUEST_PYTHONPATH}/netvm_driver"
REPOSITORY_LICENCE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING")
_HOMEPAGE = re.compile(r"^https?://[A-Za-z0-9.-]+\.[A-Za-z]{2,5}(:[0-9]{1,5})?(/\S*)?$")


@dataclass(frozen=True)
class SbomResult:
    path: Path
    packages: int
    debian: tuple[str, ...]  # the Debian packages in the initramfs
    debian_unlicensed: tuple[str, ...]  # those whose declared licence is NOASSERTION

    def summary(self) -> str:
        text = f"{self.packages} packages, {len(self.debian)} of them Debian"
        if self.debian_unlicensed:
            text += (
                f"; licence NOASSERTION for {', '.join(self.debian_unlicensed)} (no "
                "machine-readable copyright file: docs/sbom.md)"
            )
        return text


def write_sbom(board: Board, ws: Workspace, out: Path | None = None) -> SbomResult:
    """Write the SPDX document of `board`'s last build to `out` (default
    build/<board>/sbom.spdx.json)."""
    doc = sbom_document(board, ws)
    out = out if out is not None else ws.build_dir(board) / SBOM_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(doc), encoding="utf-8")
    tmp.replace(out)
    debian = [p for p in doc["packages"] if p["SPDXID"].startswith(DEB_PREFIX)]
    return SbomResult(
        out,
        len(doc["packages"]),
        tuple(p["name"] for p in debian),
        tuple(p["name"] for p in debian if p["licenseDeclared"] == NOASSERTION),
    )


def render(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def sbom_document(board: Board, ws: Workspace) -> dict[str, Any]:
    """The SPDX document (as JSON data) of the guest `board`'s last build made."""
    file = ws.build_dir(board) / MANIFEST_NAME
    display = ws.display(file)
    if not file.is_file():
        raise UserError(
            [
                Finding(
                    display,
                    "",
                    f"board {board.name} has not been built: there is no manifest",
                    f"run `invoke build --board {board.name}` first",
                )
            ]
        )
    manifest = read_manifest(file, display, ws.root)
    doc = _Document(board, ws, manifest)
    doc.collect()
    return doc.finish(_created(file))


def _created(manifest_file: Path) -> str:
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None:
        seconds = int(manifest_file.stat().st_mtime)
    else:
        try:
            seconds = int(raw)
        except ValueError:
            raise UserError(
                f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds",
                hint="unset it, or set it to an integer (seconds since 1970)",
            ) from None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


DEB_PREFIX = "SPDXRef-Package-deb-"


def spdx_id(*parts: str) -> str:
    return "SPDXRef-Package-" + "-".join(re.sub(r"[^A-Za-z0-9.-]", "-", p) for p in parts)


def _package(
    ident: str,
    name: str,
    *,
    version: str | None = None,
    file_name: str | None = None,
    download: str = NOASSERTION,
    sha256: str | None = None,
    supplier: str | None = None,
    licence: str = NOASSERTION,
    licence_comment: str | None = None,
    purpose: str | None = None,
    source_info: str | None = None,
    homepage: str | None = None,
    comment: str | None = None,
    refs: Iterable[tuple[str, str, str]] = (),
) -> dict[str, Any]:
    """One SPDX package. Files are not analysed (no SHA1s, no verification code): the
    checksum is the artifact's sha256 as the manifest (or apt) records it. The declared
    licence is what the source says; netvm concludes none of its own (NOASSERTION)."""
    pkg: dict[str, Any] = {
        "SPDXID": ident,
        "name": name,
        "downloadLocation": download,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": licence,
    }
    optional = {
        "versionInfo": version,
        "packageFileName": file_name,
        "supplier": supplier,
        "licenseComments": licence_comment,
        "primaryPackagePurpose": purpose,
        "sourceInfo": source_info,
        "homepage": homepage if homepage and _HOMEPAGE.match(homepage) else None,
        "comment": comment,
    }
    pkg.update({k: v for k, v in optional.items() if v})
    if sha256:
        pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": sha256}]
    ext = sorted(set(refs))
    if ext:
        pkg["externalRefs"] = [
            {"referenceCategory": c, "referenceType": t, "referenceLocator": loc}
            for c, t, loc in ext
        ]
    return pkg


# ---------------------------------------------------------------------------------------
# Debian packages: apt's record of each, the .deb, its licence


@dataclass(frozen=True)
class DebRecord:
    """What is known of one Debian package version (apt's lists, else the lock or cache)."""

    name: str
    version: str
    architecture: str | None = None
    sha256: str | None = None
    filename: str | None = None  # in the archive (apt's Filename), e.g. pool/main/...
    uri: str | None = None  # where apt would download it from
    source: str | None = None  # the Debian source package (apt's Source, else the name)
    homepage: str | None = None
    origin: str = ""  # where sha256 comes from

    @property
    def file_name(self) -> str:
        """The .deb's name in the archive (the epoch is not part of it)."""
        if self.filename:
            return self.filename.rsplit("/", 1)[-1]
        upstream = self.version.split(":", 1)[-1]
        return f"{self.name}_{upstream}_{self.architecture or DEB_ARCH}.deb"

    @property
    def purl(self) -> str:
        return deb_purl(self.name, self.version, self.architecture)


def deb_purl(name: str, version: str, architecture: str | None) -> str:
    """The package URL of a Debian package (an epoch's ':' kept as it is)."""
    qualifiers = f"?arch={architecture}" if architecture else ""
    return f"pkg:deb/debian/{name}@{quote(version, safe=':')}{qualifiers}"


def apt_records(wanted: Iterable[tuple[str, str, str]], cache: Path) -> dict[str, DebRecord]:
    """apt's record of each (name, version, apt name) wanted, by "name=version": from its
    signed package lists (apt-cache show) and download URI (apt-get --print-uris).
    Remembered until the lists change; a version apt no longer knows is left out."""
    wanted = sorted(set(wanted))
    if not wanted:
        return {}
    memo = cache / f"sbom-apt-{short_key(json.dumps([wanted, apt_lists_state()]))}.json"
    if memo.is_file():
        try:
            return {k: DebRecord(**v) for k, v in json.loads(memo.read_text()).items()}
        except (ValueError, TypeError):
            pass
    specs = [f"{apt_name}={version}" for _, version, apt_name in wanted]
    # Each prints what it knows even when it knows not every version asked for.
    show = _stdout(["apt-cache", "show", *specs])
    uris = _stdout(["apt-get", "download", "--print-uris", *specs])
    by_sha: dict[str, str] = {}
    for line in uris.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3].startswith("SHA256:"):
            by_sha[fields[3].removeprefix("SHA256:")] = fields[0].strip("'")
    names = {(n, v) for n, v, _ in wanted}
    found: dict[str, DebRecord] = {}
    for para in show.split("\n\n"):
        f = dict(ln.split(": ", 1) for ln in para.splitlines() if ": " in ln and ln[0] != " ")
        key = (f.get("Package", ""), f.get("Version", ""))
        if key in names and "SHA256" in f:
            found[f"{key[0]}={key[1]}"] = DebRecord(
                key[0],
                key[1],
                f.get("Architecture"),
                f["SHA256"],
                f.get("Filename"),
                by_sha.get(f["SHA256"]),
                f.get("Source", key[0]).split(" ", 1)[0],
                f.get("Homepage"),
                "apt's package lists",
            )
    cache.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({k: vars(v) for k, v in sorted(found.items())}))
    return found


def _stdout(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:  # no apt here: nothing is known from it
        return ""


def known_packages(lock: Mapping[str, Any], debs: Path) -> dict[str, DebPackage]:
    """Name, version, architecture and sha256 the lock or netvm's earlier resolutions
    (remembered in the cache) record, by "name=version": apt's answer at that time."""
    out: dict[str, DebPackage] = {}
    for memo in sorted(debs.glob("resolved-*.json")):
        try:
            for p in json.loads(memo.read_text()):
                pkg = DebPackage(**p)
                out.setdefault(f"{pkg.name}={pkg.version}", pkg)
        except (OSError, ValueError, TypeError):
            continue
    rootfs = lock.get("rootfs")
    packages = rootfs.get("packages") if isinstance(rootfs, dict) else None
    for name, p in packages.items() if isinstance(packages, dict) else ():
        try:
            pkg = DebPackage(name, p["version"], p["architecture"], p["sha256"])
        except (KeyError, TypeError):
            continue
        out[f"{pkg.name}={pkg.version}"] = pkg
    return out


def deb_record(
    name: str, version: str, apt: Mapping[str, DebRecord], known: Mapping[str, DebPackage]
) -> DebRecord:
    key = f"{name}={version}"
    if key in apt:
        return apt[key]
    if key in known:
        p = known[key]
        return DebRecord(name, version, p.architecture, p.sha256, origin="an earlier resolution")
    return DebRecord(name, version)


def deb_file(record: DebRecord, debs: Path) -> Path | None:
    """The record's .deb in netvm's cache, checked against its sha256; fetched again by
    apt (which verifies it) when apt still has that version. None when neither works."""
    if record.architecture is None or record.sha256 is None:
        return None
    pkg = DebPackage(record.name, record.version, record.architecture, record.sha256)
    path = debs / pkg.deb_name
    if path.is_file() and file_sha256(path) == record.sha256:
        return path
    if record.uri is None:
        return None
    try:
        return fetch_packages([pkg], debs)[0]
    except UserError:
        return None


def debian_licences(records: Iterable[DebRecord], debs: Path) -> dict[str, PackageLicence]:
    """The licence of each record (by "name=version") from its copyright file."""
    records = list(records)
    docs: dict[str, DebDocs] = {}
    missing: dict[str, str] = {}
    for r in records:
        path = deb_file(r, debs)
        read = deb_docs(path) if path is not None else None
        if read is None:
            missing[r.name] = (
                f"the .deb of {r.name} {r.version} is not in netvm's cache and apt cannot "
                "fetch it, so its copyright file cannot be read"
            )
        else:
            docs.setdefault(r.name, read)
    return {
        f"{r.name}={r.version}": PackageLicence(NOASSERTION, missing[r.name])
        if r.name in missing
        else package_licence(r.name, docs)
        for r in records
    }


def repository_licence(root: Path) -> PackageLicence:
    """netvm's own licence: its LICENSE (or COPYING) file's SPDX-License-Identifier, else
    the file's text as a LicenseRef; NOASSERTION without such a file."""
    for name in REPOSITORY_LICENCE_FILES:
        path = root / name
        if path.is_file():
            text = path.read_text(errors="replace")
            match = re.search(r"SPDX-License-Identifier:\s*(\S[^\n]*)", text)
            if match:
                return PackageLicence(match.group(1).strip(), f"{name}: SPDX-License-Identifier")
            ref = ExtractedLicence("LicenseRef-netvm", "netvm", text.strip(), f"from {name}")
            return PackageLicence(ref.licence_id, f"the text of {name}", (ref,))
    return PackageLicence(
        NOASSERTION, "the netvm repository has no LICENSE or COPYING file stating one"
    )


# ---------------------------------------------------------------------------------------
# The document


@dataclass
class _Guest:
    """One guest of the build: the board's own, or its seL4 variant's."""

    board: Board
    suffix: str  # of SPDXIDs and names: "" or "-sel4"
    prefix: str  # of its step names: "" or "sel4 "
    artifacts: Mapping[str, BuiltFile]


@dataclass
class _Document:
    board: Board
    ws: Workspace
    manifest: Manifest
    packages: dict[str, dict[str, Any]] = field(default_factory=dict)
    relationships: set[tuple[str, str, str]] = field(default_factory=set)
    extracted: dict[str, ExtractedLicence] = field(default_factory=dict)
    describes: list[str] = field(default_factory=list)

    def add(self, pkg: dict[str, Any], licence: PackageLicence | None = None) -> str:
        if licence is not None:
            pkg["licenseDeclared"] = licence.declared
            pkg["licenseComments"] = licence.comment
            for ref in licence.extracted:
                self.extracted.setdefault(ref.licence_id, ref)
        self.packages[pkg["SPDXID"]] = pkg
        return str(pkg["SPDXID"])

    def relate(self, a: str, kind: str, b: str) -> None:
        self.relationships.add((a, kind, b))

    # -- what goes in

    def guests(self) -> list[_Guest]:
        own = dict(self.manifest.artifacts)
        out = []
        sel4 = self.manifest.variants.get("sel4")
        if sel4 is not None:
            own.pop("loader_img", None)  # the manifest repeats the seL4 guest's image
        out.append(_Guest(self.board, "", "", own))
        if sel4 is not None and self.board.sel4 is not None:
            kernel = {k: v for k, v in own.items() if k.startswith("kernel_")}
            out.append(_Guest(self.board.sel4, "-sel4", "sel4 ", {**kernel, **sel4}))
        return out

    def lock(self) -> dict[str, Any]:
        try:
            data = json.loads(lock_path(self.board).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("board") == self.board.name else {}

    def collect(self) -> None:
        lock = self.lock()
        debs = self.ws.cache / "debs"
        guests = self.guests()
        rootfs_packages = {
            g.suffix: self._rootfs_packages(g) for g in guests if "initramfs" in g.artifacts
        }
        wanted = {(n, v, f"{n}:{DEB_ARCH}") for pkgs in rootfs_packages.values() for n, v in pkgs}
        provider, origin = self._kernel_origin()
        kernel_deb: DebRecord | None = None
        if provider == "debian" and " " in origin:
            package, version = origin.split(" ", 1)
            wanted.add((package, version, package))
        apt = apt_records(wanted, debs)
        if provider == "debian" and " " in origin:
            kernel_deb = deb_record(package, version, apt, {})
        known = known_packages(lock, debs)
        records = {
            f"{n}={v}": deb_record(n, v, apt, known)
            for pkgs in rootfs_packages.values()
            for n, v in pkgs
        }
        licences = debian_licences(records.values(), debs)
        versions_of: dict[str, set[str]] = {}
        for r in records.values():
            versions_of.setdefault(r.name, set()).add(r.version)
        deb_ids = {
            key: self._debian_package(r, licences[key], len(versions_of[r.name]) > 1)
            for key, r in records.items()
        }
        kernel = self._kernel(provider, origin, kernel_deb, lock)
        own_licence = repository_licence(self.ws.root)
        # The document describes each loader.img, and the parts of a guest that has none
        # (with the kernel, when no loader.img holds it).
        images, loose = [], []
        for g in guests:
            parts = self._guest(g, rootfs_packages.get(g.suffix, []), deb_ids, own_licence)
            if "loader_img" in g.artifacts:
                images.append(self._loader(g, kernel, parts, lock))
            else:
                loose.extend(parts)
        self.describes = [*images, *loose] if images else [kernel, *loose]
        self._build_container(self.describes)

    def _build_container(self, built: list[str]) -> None:
        """The build container the build ran in (`invoke container.run` names it in the
        manifest) as a build tool of what the document describes, and the Debian
        packages in it when `invoke container.build`'s record of that image is in the
        build root (build/container/: image.json, packages.tsv)."""
        ref = self.manifest.versions.get("build_container")
        if not ref:
            return
        records = self.ws.build_root / "container"
        try:
            record = json.loads((records / "image.json").read_text())
            listing = (records / "packages.tsv").read_text()
        except (OSError, ValueError):
            record, listing = {}, ""
        same = isinstance(record, dict) and record.get("ref") == ref
        where = self.ws.display(records / "packages.tsv")
        note = (
            f"its Debian packages from {where}"
            if same
            else f"its packages are not listed: {where} is not of this image"
        )
        image_id = self.add(
            _package(
                spdx_id("build-container"),
                ref.rsplit("/", 1)[-1].split(":", 1)[0],
                version=ref.rsplit(":", 1)[-1],
                purpose="CONTAINER",
                comment=f"the build container {ref} the build ran in (docs/ci.md); {note}",
                source_info=f"image ID {record['image_id']}" if same else None,
            )
        )
        for ident in built:
            self.relate(image_id, "BUILD_TOOL_OF", ident)
        if not same:
            return
        for line in listing.splitlines():
            name, version, arch = [*line.split("\t"), "", ""][:3]
            if not name or not version:
                continue
            ident = self.add(
                _package(
                    spdx_id("build-deb", name),
                    name,
                    version=version,
                    supplier=DEBIAN,
                    comment=f"Debian package in the build container {ref}",
                    refs=[("PACKAGE-MANAGER", "purl", deb_purl(name, version, arch))],
                )
            )
            self.relate(image_id, "CONTAINS", ident)

    def _kernel_origin(self) -> tuple[str, str]:
        provider, _, origin = self.manifest.versions.get("kernel_source", "").partition(": ")
        return provider, origin

    def _rootfs_packages(self, g: _Guest) -> list[tuple[str, str]]:
        step = self.manifest.step(f"{g.prefix}rootfs")
        raw = step.details.get("packages") if step is not None and step.ran else None
        if not isinstance(raw, dict):
            return []
        return sorted((n, v) for n, v in raw.items() if isinstance(n, str) and isinstance(v, str))

    def _debian_package(self, r: DebRecord, licence: PackageLicence, versioned: bool) -> str:
        ident = spdx_id("deb", r.name, r.version) if versioned else spdx_id("deb", r.name)
        source = f"the Debian source package {r.source}" if r.source else None
        where = f"sha256 from {r.origin}" if r.sha256 else "no sha256: apt no longer lists it"
        pkg = _package(
            ident,
            r.name,
            version=r.version,
            file_name=r.file_name,
            download=r.uri or NOASSERTION,
            sha256=r.sha256,
            supplier=DEBIAN,
            source_info=source,
            homepage=r.homepage,
            comment=f"Debian {r.architecture or DEB_ARCH} package; {where}",
            refs=[("PACKAGE-MANAGER", "purl", r.purl)],
        )
        return self.add(pkg, licence)

    def _kernel(
        self, provider: str, origin: str, deb: DebRecord | None, lock: Mapping[str, Any]
    ) -> str:
        """The kernel Image (built or not), its .config and its source; the Image's id."""
        version = self.manifest.versions.get("kernel")
        source_id = spdx_id("linux-source")
        if provider == "debian" and deb is not None:
            locked = _section(lock, "kernel")
            note = f"netvm builds the kernel from /usr/src/{deb.name}.tar.xz in this package"
            if locked.get("origin") == origin and locked.get("tarball_sha256"):
                lock_file = self.ws.display(lock_path(self.board))
                note += f" (sha256 {locked['tarball_sha256']}, as {lock_file} records it)"
            self.add(
                _package(
                    source_id,
                    deb.name,
                    version=deb.version,
                    file_name=deb.file_name,
                    download=deb.uri or NOASSERTION,
                    sha256=deb.sha256,
                    supplier=DEBIAN,
                    source_info=f"the Debian source package {deb.source or deb.name}",
                    purpose="SOURCE",
                    comment=note,
                    refs=[("PACKAGE-MANAGER", "purl", deb.purl)],
                    licence=KERNEL_SOURCE_LICENCE,
                    licence_comment=KERNEL_LICENCE_COMMENT,
                )
            )
        elif provider == "tarball":
            spec = self.board.kernel.source
            pinned = None
            if isinstance(spec, TarballKernelSource) and spec.url == origin:
                pinned = spec.sha256
            self.add(
                _package(
                    source_id,
                    "linux-source",
                    version=version,
                    file_name=origin.rstrip("/").rsplit("/", 1)[-1],
                    download=origin,
                    sha256=pinned,
                    purpose="SOURCE",
                    comment="the kernel tarball; the build verified it against the sha256 "
                    "the board pins"
                    if pinned
                    else "the kernel tarball the build used (the board pins another now)",
                    licence=KERNEL_SOURCE_LICENCE,
                    licence_comment=KERNEL_LICENCE_COMMENT,
                )
            )
        else:
            self.add(
                _package(
                    source_id,
                    "linux-source",
                    version=version,
                    purpose="SOURCE",
                    source_info=f"a local kernel tree: {origin}" if provider == "local" else None,
                    licence=KERNEL_SOURCE_LICENCE,
                    licence_comment=KERNEL_LICENCE_COMMENT,
                )
            )
        image = self.manifest.get("kernel_image")
        config = self.manifest.get("kernel_config")
        kernel_id = self.add(
            _package(
                spdx_id("linux"),
                "linux",
                version=version,
                file_name=image.path.name if image else None,
                sha256=image.sha256 if image else None,
                licence=KERNEL_IMAGE_LICENCE,
                licence_comment=KERNEL_LICENCE_COMMENT,
                purpose="OPERATING-SYSTEM",
                comment=None
                if image
                else "the last build did not build the kernel (no Image to name by hash)",
                refs=[("SECURITY", "cpe23Type", _kernel_cpe(version))] if version else [],
            )
        )
        self.relate(kernel_id, "GENERATED_FROM", source_id)
        if config is not None:
            config_id = self.add(
                _package(
                    spdx_id("linux-config"),
                    "linux-config",
                    version=version,
                    file_name=config.path.name,
                    sha256=config.sha256,
                    purpose="FILE",
                    comment="the guest kernel's configuration: allnoconfig plus netvm's "
                    "fragments, resolved by the kernel's Kconfig",
                )
            )
            self.relate(kernel_id, "GENERATED_FROM", config_id)
        return kernel_id

    def _guest(
        self,
        g: _Guest,
        debian: list[tuple[str, str]],
        deb_ids: Mapping[str, str],
        own_licence: PackageLicence,
    ) -> list[str]:
        """The guest's initramfs (with what it contains) and DTB; their ids."""
        parts = []
        initramfs = g.artifacts.get("initramfs")
        if initramfs is not None:
            initramfs_id = self.add(
                _package(
                    spdx_id("initramfs" + g.suffix),
                    "netvm-initramfs" + g.suffix,
                    file_name=initramfs.path.name,
                    sha256=initramfs.sha256,
                    purpose="ARCHIVE",
                    comment=f"the guest's initramfs (rootfs provider {g.board.rootfs.provider})",
                )
            )
            parts.append(initramfs_id)
            for name, version in debian:
                self.relate(initramfs_id, "CONTAINS", deb_ids[f"{name}={version}"])
            base = g.board.rootfs.base_cpio
            if g.board.rootfs.provider == "cpio" and base is not None:
                base_id = self.add(
                    _package(
                        spdx_id("rootfs-base" + g.suffix),
                        "rootfs-base" + g.suffix,
                        file_name=base.name,
                        purpose="ARCHIVE",
                        comment="the user's base initramfs (rootfs.base_cpio); netvm does not "
                        "analyse what it contains",
                    )
                )
                self.relate(initramfs_id, "CONTAINS", base_id)
            overlay = g.artifacts.get("rootfs_overlay")
            if overlay is not None:
                self.relate(initramfs_id, "CONTAINS", self._overlay(g, overlay, own_licence))
        dtb = g.artifacts.get("dtb")
        if dtb is not None:
            dtb_id = self.add(
                _package(
                    spdx_id("dtb" + g.suffix),
                    "netvm-guest-dtb" + g.suffix,
                    file_name=dtb.path.name,
                    sha256=dtb.sha256,
                    purpose="FILE",
                    comment="the guest device tree: "
                    + (
                        f"the kernel's {g.board.devicetree.base} with netvm's overlay"
                        if g.board.devicetree.base
                        else "QEMU's own with netvm's overlay"
                    ),
                )
            )
            if g.board.devicetree.base:
                self.relate(dtb_id, "GENERATED_FROM", spdx_id("linux-source"))
            parts.append(dtb_id)
        return parts

    def _overlay(self, g: _Guest, overlay: BuiltFile, licence: PackageLicence) -> str:
        files = [p for p in overlay.path.rglob("*") if p.is_file()] if overlay.path.is_dir() else []
        intact = bool(files) and tree_digest(files, overlay.path) == overlay.sha256
        digest_note = (
            "SHA256: netvm's digest of the staged directory (relative names, modes and "
            "contents: netvm.core.files.tree_digest), not of one file"
        )
        overlay_id = self.add(
            _package(
                spdx_id("netvm-rootfs-overlay" + g.suffix),
                "netvm-rootfs-overlay" + g.suffix,
                version=__version__,
                sha256=overlay.sha256,
                comment="netvm's files in the initramfs (init, configuration, the driver); "
                f"{digest_note}, as manifest.json records it",
            ),
            licence,
        )
        driver_files = [p for p in files if (overlay.path / DRIVER_DIR) in p.parents]
        driver_id = self.add(
            _package(
                spdx_id("netvm-driver" + g.suffix),
                "netvm-driver" + g.suffix,
                version=__version__,
                sha256=tree_digest(driver_files, overlay.path) if intact and driver_files else None,
                purpose="APPLICATION",
                comment=f"the guest's Ethernet driver (/{DRIVER_DIR}, byte-compiled); "
                + (
                    digest_note.replace("directory", "driver directory")
                    if intact and driver_files
                    else "no checksum: the staged overlay has changed since the build"
                ),
            ),
            licence,
        )
        self.relate(overlay_id, "CONTAINS", driver_id)
        return overlay_id

    def _loader(self, g: _Guest, kernel: str, parts: list[str], lock: Mapping[str, Any]) -> str:
        image = g.artifacts["loader_img"]
        loader_id = self.add(
            _package(
                spdx_id("loader-img" + g.suffix),
                "netvm-loader-image" + g.suffix,
                file_name=image.path.name,
                sha256=image.sha256,
                purpose="FIRMWARE",
                comment="the seL4 system image (Microkit): seL4, the VMM, sDDF and the driver "
                "VM with this guest",
            )
        )
        for part in [kernel, *parts]:
            self.relate(loader_id, "CONTAINS", part)
        spec = g.board.microkit
        step = self.manifest.step(f"{g.prefix}microkit")
        details = step.details if step is not None and step.ran else {}
        raw = details.get("inputs")
        provenance = {
            k: v for k, v in (raw.items() if isinstance(raw, dict) else ()) if isinstance(v, str)
        }
        locked = _section(lock, "microkit")
        sdk_version = details.get("sdk_version") or (spec.sdk_version if spec else None)
        archive = re.search(r"archive sha256 ([0-9a-f]{64})", provenance.get("microkit_sdk", ""))
        sdk_id = self.add(
            _package(
                spdx_id("microkit-sdk" + g.suffix),
                "microkit-sdk",
                version=str(sdk_version) if sdk_version else None,
                sha256=archive.group(1) if archive else None,
                comment=_provenance(provenance.get("microkit_sdk")),
            )
        )
        self.relate(loader_id, "GENERATED_FROM", sdk_id)
        for name in ("libvmm", "sddf"):
            pin = getattr(spec, name) if spec else None
            commit = _commit(provenance.get(name), pin.commit if pin else None, locked.get(name))
            ident = self.add(
                _package(
                    spdx_id(name + g.suffix),
                    name,
                    version=commit,
                    download=_git_location(pin.repository if pin else None, commit),
                    comment=_provenance(provenance.get(name)),
                )
            )
            self.relate(loader_id, "GENERATED_FROM", ident)
        if spec is not None:
            commit = _commit(provenance.get("sdfgen"), spec.sdfgen.commit, locked.get("sdfgen"))
            version = details.get("sdfgen_version") or spec.sdfgen.version
            sdfgen_id = self.add(
                _package(
                    spdx_id("sdfgen" + g.suffix),
                    "sdfgen",
                    version=str(version),
                    download=_git_location(spec.sdfgen.repository, commit),
                    source_info=f"git commit {commit}" if commit else None,
                    comment=_provenance(provenance.get("sdfgen")),
                )
            )
            self.relate(sdfgen_id, "BUILD_TOOL_OF", loader_id)
        return loader_id

    # -- what comes out

    def finish(self, created: str) -> dict[str, Any]:
        relationships = {("SPDXRef-DOCUMENT", "DESCRIBES", d) for d in self.describes}
        relationships |= self.relationships
        doc: dict[str, Any] = {
            "spdxVersion": SPDX_VERSION,
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": f"netvm-{self.board.name}-guest",
            "creationInfo": {
                "created": created,
                "creators": [f"Tool: netvm-{__version__}"],
                "comment": f"the guest of board {self.board.name} as its last build recorded "
                f"it ({self.board.name}/{MANIFEST_NAME} in netvm's build root)",
            },
            "packages": [self.packages[k] for k in sorted(self.packages)],
            "relationships": [
                {"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b}
                for a, kind, b in sorted(relationships)
            ],
        }
        if self.extracted:
            doc["hasExtractedLicensingInfos"] = [
                {
                    "licenseId": ref.licence_id,
                    "name": ref.name,
                    "extractedText": ref.text,
                    "comment": ref.comment,
                }
                for ref in sorted(self.extracted.values(), key=lambda r: r.licence_id)
            ]
        digest = hashlib.sha256(render(doc).encode()).hexdigest()
        doc["documentNamespace"] = f"{NAMESPACE_PREFIX}netvm-{self.board.name}-{digest}"
        return doc


def _section(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _kernel_cpe(version: str) -> str:
    return f"cpe:2.3:o:linux:linux_kernel:{version}:*:*:*:*:*:*:*"


def _provenance(text: str | None) -> str:
    if text is None:
        return "the manifest records no check of this input"
    return f"netvm's check when it built loader.img: {text}"


def _commit(provenance: str | None, pin: str | None, locked: Any) -> str | None:
    """The commit built from: the one the build verified, else the lock's full commit for
    the pin, else the pin itself."""
    match = re.search(r"git commit ([0-9a-f]{7,40})", provenance or "")
    if match:
        return match.group(1)
    full = locked.get("commit") if isinstance(locked, dict) else None
    if pin and isinstance(full, str) and full.startswith(pin):
        return full
    return pin


def _git_location(repository: str | None, commit: str | None) -> str:
    if not repository or not commit:
        return NOASSERTION
    return f"git+{repository}@{commit}"
