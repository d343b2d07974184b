"""`invoke sbom`: the SPDX document of a built guest, checked with spdx-tools' validator.

The guest is the Odroid C4's built for real (render, the Debian rootfs, the DTB; no
kernel, no Microkit image) into a build root of this module's own; the licences are read
from the real Debian packages in netvm's cache. A guest with a kernel and loader.img is
described by a manifest written here around placeholder files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from license_expression import get_spdx_licensing
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from netvm import __version__
from netvm.board import Board
from netvm.builder import debcopyright
from netvm.builder.build import BuildOptions, build
from netvm.builder.debcopyright import DebDocs, package_licence, parse_copyright
from netvm.builder.sbom import SBOM_NAME, repository_licence, sbom_document, write_sbom
from netvm.core.errors import USER_ERROR_EXIT, UserError
from netvm.core.files import file_sha256
from netvm.core.workspace import Workspace, cache_dir
from netvm.guest.rootfs import DEBIAN_PACKAGES, DebPackage
from tests.harness import BUILD_DIR_ENV, ROOT, invoke_in_process, needs_qemu

DEBIAN = "Organization: Debian"


@pytest.fixture(scope="module")
def c4_build(odroidc4: Board, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The C4 guest built without kernel and Microkit image, in a build root of its own
    (other tests rebuild the session's with other steps skipped)."""
    ws = Workspace(ROOT, tmp_path_factory.mktemp("sbom") / "build")
    build(odroidc4, ws, BuildOptions(skip=frozenset({"kernel", "microkit"})))
    return ws


@pytest.fixture(scope="module")
def manifest(odroidc4: Board, c4_build: Workspace) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((c4_build.build_dir(odroidc4) / "manifest.json").read_text())
    return data


@pytest.fixture(scope="module")
def sbom_file(odroidc4: Board, c4_build: Workspace) -> Path:
    return write_sbom(odroidc4, c4_build).path


@pytest.fixture(scope="module")
def doc(sbom_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sbom_file.read_text())
    return data


def validation_messages(path: Path) -> list[str]:
    return [str(m.validation_message) for m in validate_full_spdx_document(parse_file(str(path)))]


def packages(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["SPDXID"]: p for p in doc["packages"]}


def relations(doc: dict[str, Any], kind: str) -> set[tuple[str, str]]:
    return {
        (r["spdxElementId"], r["relatedSpdxElement"])
        for r in doc["relationships"]
        if r["relationshipType"] == kind
    }


def sha256_of(pkg: dict[str, Any]) -> str | None:
    sums = [c["checksumValue"] for c in pkg.get("checksums", []) if c["algorithm"] == "SHA256"]
    return sums[0] if sums else None


def rootfs_packages(manifest: dict[str, Any]) -> dict[str, str]:
    step = next(s for s in manifest["steps"] if s["name"] == "rootfs")
    found: dict[str, str] = step["details"]["packages"]
    return found


# --- the built guest --------------------------------------------------------------------


def test_the_document_validates(sbom_file: Path, doc: dict[str, Any]) -> None:
    assert validation_messages(sbom_file) == []
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["dataLicense"] == "CC0-1.0"
    assert doc["name"] == "netvm-odroidc4-guest"
    assert doc["creationInfo"]["creators"] == [f"Tool: netvm-{__version__}"]


def test_the_kernel_appears_with_version_licence_and_source(
    doc: dict[str, Any], manifest: dict[str, Any]
) -> None:
    pkgs = packages(doc)
    kernel = pkgs["SPDXRef-Package-linux"]
    assert kernel["versionInfo"] == manifest["versions"]["kernel"]
    assert kernel["licenseDeclared"] == "GPL-2.0-only"
    assert "not build the kernel" in kernel["comment"]  # --skip kernel: no Image, no hash
    assert "checksums" not in kernel and "SPDXRef-Package-linux-config" not in pkgs
    source = pkgs["SPDXRef-Package-linux-source"]
    package, version = manifest["versions"]["kernel_source"].removeprefix("debian: ").split()
    assert (source["name"], source["versionInfo"]) == (package, version)
    assert source["licenseDeclared"] == "GPL-2.0-only WITH Linux-syscall-note"
    assert source["supplier"] == DEBIAN
    assert source["sourceInfo"].startswith("the Debian source package linux-")
    assert f"/usr/src/{package}.tar.xz" in source["comment"]
    lock = json.loads((ROOT / "boards/odroidc4/netvm.lock").read_text())
    if lock["kernel"]["origin"] == f"{package} {version}":
        assert lock["kernel"]["tarball_sha256"] in source["comment"]
    assert ("SPDXRef-Package-linux", "SPDXRef-Package-linux-source") in relations(
        doc, "GENERATED_FROM"
    )


def test_every_debian_package_appears_with_version_licence_and_hash(
    doc: dict[str, Any], manifest: dict[str, Any]
) -> None:
    pkgs = packages(doc)
    built = rootfs_packages(manifest)
    assert sorted(built) == sorted(DEBIAN_PACKAGES)  # busybox is Debian's (dynamic) busybox
    contained = {b for a, b in relations(doc, "CONTAINS") if a == "SPDXRef-Package-initramfs"}
    for name, version in built.items():
        pkg = pkgs[f"SPDXRef-Package-deb-{name}"]
        assert pkg["name"] == name and pkg["versionInfo"] == version
        assert pkg["supplier"] == DEBIAN
        assert pkg["licenseDeclared"] and pkg["licenseComments"]
        assert pkg["licenseConcluded"] == "NOASSERTION"
        # The .deb the build unpacked: in netvm's cache, by apt's name for it.
        arch = pkg["packageFileName"].rsplit("_", 1)[1].removesuffix(".deb")
        deb = cache_dir() / "debs" / DebPackage(name, version, arch, "").deb_name
        assert sha256_of(pkg) == file_sha256(deb), name
        assert pkg["packageFileName"].startswith(f"{name}_") and pkg["packageFileName"].endswith(
            f"_{arch}.deb"
        )
        location = pkg["downloadLocation"]
        assert location == "NOASSERTION" or (
            location.startswith("http") and location.endswith(f"_{arch}.deb")
        )
        purl = next(r for r in pkg["externalRefs"] if r["referenceType"] == "purl")
        assert purl["referenceLocator"].startswith(f"pkg:deb/debian/{name}@")
        assert pkg["SPDXID"] in contained


def test_checksums_are_the_manifests(doc: dict[str, Any], manifest: dict[str, Any]) -> None:
    pkgs = packages(doc)
    arts = manifest["artifacts"]
    assert sha256_of(pkgs["SPDXRef-Package-initramfs"]) == arts["initramfs"]["sha256"]
    assert sha256_of(pkgs["SPDXRef-Package-dtb"]) == arts["dtb"]["sha256"]
    overlay = pkgs["SPDXRef-Package-netvm-rootfs-overlay"]
    assert sha256_of(overlay) == arts["rootfs_overlay"]["sha256"]
    driver = pkgs["SPDXRef-Package-netvm-driver"]
    assert overlay["versionInfo"] == driver["versionInfo"] == __version__
    assert sha256_of(driver) is not None  # the staged driver, as the build staged it
    assert ("SPDXRef-Package-initramfs", overlay["SPDXID"]) in relations(doc, "CONTAINS")
    assert (overlay["SPDXID"], driver["SPDXID"]) in relations(doc, "CONTAINS")
    # No loader.img: the document describes the guest's parts.
    assert relations(doc, "DESCRIBES") == {
        ("SPDXRef-DOCUMENT", f"SPDXRef-Package-{p}") for p in ("linux", "initramfs", "dtb")
    }
    assert "SPDXRef-Package-loader-img" not in pkgs


def test_netvms_own_licence_is_its_license_file_or_noassertion(doc: dict[str, Any]) -> None:
    driver = packages(doc)["SPDXRef-Package-netvm-driver"]
    assert driver["licenseDeclared"] == repository_licence(ROOT).declared
    if not any((ROOT / n).exists() for n in ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING")):
        assert driver["licenseDeclared"] == "NOASSERTION"
        assert "no LICENSE" in driver["licenseComments"]


def test_licences_of_real_debian_packages(doc: dict[str, Any]) -> None:
    """What the copyright files of these versions say, by Debian's machine-readable format."""
    pkgs = packages(doc)

    def licence(name: str) -> dict[str, Any]:
        return pkgs[f"SPDXRef-Package-deb-{name}"]

    assert licence("zlib1g")["licenseDeclared"] == "Zlib"
    assert licence("libexpat1")["licenseDeclared"] == "MIT"
    ffi = licence("libffi8")
    # Files: * is Expat; the others are build scripts, tests and the packaging.
    assert ffi["licenseDeclared"].split(" AND ")[:4] == [
        "MIT",
        "X11",
        "GPL-2.0-or-later",
        "GPL-3.0-or-later",
    ]
    assert "(MPL-1.1 OR GPL-2.0-or-later OR LGPL-2.1-or-later)" in ffi["licenseDeclared"]
    assert "Files: * is MIT" in ffi["licenseComments"]
    refs = {r["licenseId"]: r for r in doc["hasExtractedLicensingInfos"]}
    assert "LicenseRef-libffi8-public-domain" in ffi["licenseDeclared"]
    assert "dlmalloc" in refs["LicenseRef-libffi8-public-domain"]["extractedText"]
    assert refs["LicenseRef-libffi8-GPL"]["name"] == "GPL"  # no version given: not guessed
    # Prose copyright files (python3.11, glibc, busybox): no licence is read from them.
    for name in ("python3.11-minimal", "libpython3.11-minimal", "libc6", "busybox"):
        assert licence(name)["licenseDeclared"] == "NOASSERTION", name
        assert "not in Debian's machine-readable" in licence(name)["licenseComments"]
    stdlib = licence("libpython3.11-stdlib")
    assert stdlib["licenseDeclared"] == "NOASSERTION"
    assert "is a link to usr/share/doc/libpython3.11-minimal" in stdlib["licenseComments"]


def test_two_runs_are_byte_identical(
    odroidc4: Board, c4_build: Workspace, sbom_file: Path, tmp_path: Path
) -> None:
    again = write_sbom(odroidc4, c4_build, tmp_path / "again.json").path
    assert again.read_bytes() == sbom_file.read_bytes()
    doc = json.loads(sbom_file.read_text())
    assert doc["documentNamespace"].startswith("https://spdx.org/spdxdocs/netvm-odroidc4-")
    assert [p["SPDXID"] for p in doc["packages"]] == sorted(p["SPDXID"] for p in doc["packages"])


def test_created_comes_from_source_date_epoch(
    odroidc4: Board, c4_build: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067200")
    stamped = sbom_document(odroidc4, c4_build)
    assert stamped["creationInfo"]["created"] == "2024-01-01T00:00:00Z"
    assert sbom_document(odroidc4, c4_build) == stamped
    # The namespace follows the content, and nothing else.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067201")
    later = sbom_document(odroidc4, c4_build)
    assert later["creationInfo"]["created"] == "2024-01-01T00:00:01Z"
    assert later["documentNamespace"] != stamped["documentNamespace"]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UserError, match="SOURCE_DATE_EPOCH"):
        sbom_document(odroidc4, c4_build)


def test_without_source_date_epoch_created_is_the_manifests_time(
    odroidc4: Board, c4_build: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    manifest = c4_build.build_dir(odroidc4) / "manifest.json"
    saved = manifest.stat()
    os.utime(manifest, (1700000000, 1700000000))
    try:
        created = sbom_document(odroidc4, c4_build)["creationInfo"]["created"]
    finally:
        os.utime(manifest, ns=(saved.st_atime_ns, saved.st_mtime_ns))
    assert created == "2023-11-14T22:13:20Z"


def test_invoke_sbom_writes_the_default_file_and_out(
    odroidc4: Board, c4_build: Workspace, sbom_file: Path, tmp_path: Path
) -> None:
    env = {**os.environ, BUILD_DIR_ENV: str(c4_build.build_root)}
    got = invoke_in_process("sbom", "--board", "odroidc4", env=env)
    assert got.returncode == 0, got.stderr
    default = c4_build.build_dir(odroidc4) / SBOM_NAME
    assert got.stdout.startswith(f"wrote {default}: ")
    assert "8 of them Debian" in got.stdout and "docs/sbom.md" in got.stdout
    out = tmp_path / "guest.spdx.json"
    got = invoke_in_process("sbom", "--board", "odroidc4", "--out", str(out), env=env)
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == default.read_bytes()


def test_an_unbuilt_board_is_a_user_error(odroidc4: Board, tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        write_sbom(odroidc4, Workspace(ROOT, tmp_path / "build"))
    assert "board odroidc4 has not been built" in str(info.value)
    assert "run `invoke build --board odroidc4` first" in str(info.value)
    env = {**os.environ, BUILD_DIR_ENV: str(tmp_path / "empty")}
    got = invoke_in_process("sbom", "--board", "odroidc4", env=env)
    assert got.returncode == USER_ERROR_EXIT
    assert "run `invoke build --board odroidc4` first" in got.stderr
    assert "Traceback" not in got.stderr
    assert not (tmp_path / "empty" / "odroidc4" / SBOM_NAME).exists()


@needs_qemu  # the QEMU board's base device tree is QEMU's own, dumped by QEMU
def test_a_board_with_an_sel4_variant_has_both_guests(qemu_board: Board, tmp_path: Path) -> None:
    ws = Workspace(ROOT, tmp_path / "build")
    build(qemu_board, ws, BuildOptions(skip=frozenset({"kernel", "microkit"})))
    path = write_sbom(qemu_board, ws).path
    assert validation_messages(path) == []
    doc = json.loads(path.read_text())
    pkgs = packages(doc)
    contains = relations(doc, "CONTAINS")
    for suffix in ("", "-sel4"):
        initramfs = f"SPDXRef-Package-initramfs{suffix}"
        assert pkgs[initramfs]["name"] == f"netvm-initramfs{suffix}"
        debs = {b for a, b in contains if a == initramfs and "-deb-" in b}
        assert debs == {f"SPDXRef-Package-deb-{n}" for n in DEBIAN_PACKAGES}
        assert (initramfs, f"SPDXRef-Package-netvm-rootfs-overlay{suffix}") in contains
        # QEMU's device tree: not made from the kernel source.
        assert (f"SPDXRef-Package-dtb{suffix}", "SPDXRef-Package-linux-source") not in relations(
            doc, "GENERATED_FROM"
        )
    assert {b for _, b in relations(doc, "DESCRIBES")} == {
        f"SPDXRef-Package-{p}" for p in ("linux", "initramfs", "dtb", "initramfs-sel4", "dtb-sel4")
    }


# --- a whole image: kernel, loader.img, Microkit inputs ---------------------------------


def placeholder(path: Path, data: bytes) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_a_built_image_is_described_with_its_parts_and_inputs(
    odroidc4: Board, manifest: dict[str, Any], tmp_path: Path
) -> None:
    """The C4 manifest with a kernel, loader.img and the Microkit step's record (placeholder
    files: the real ones take minutes and the real toolchain), plus a package apt does
    not know."""
    assert odroidc4.microkit is not None and odroidc4.microkit.libvmm is not None
    ws = Workspace(ROOT, tmp_path / "build")
    out = ws.build_dir(odroidc4)
    doc_in = json.loads(json.dumps(manifest))
    arts = doc_in["artifacts"]
    arts["kernel_image"] = placeholder(out / "kernel/Image", b"image")
    arts["kernel_config"] = placeholder(out / "kernel/.config", b"CONFIG_UIO=y\n")
    arts["loader_img"] = placeholder(out / "microkit/build/loader.img", b"loader")
    libvmm = "a" * 40
    sdk_sha = "b" * 64
    for step in doc_in["steps"]:
        if step["name"] == "rootfs":
            step["details"]["packages"]["libnetvm-test0"] = "0.0-1"
        if step["name"] == "microkit":
            step["status"] = "built"
            step["details"] = {
                "sdk_version": "2.0.1",
                "sdfgen_version": "0.27.0",
                "inputs": {
                    "microkit_sdk": f"verified: archive sha256 {sdk_sha}",
                    "libvmm": f"verified: git commit {libvmm}",
                    "sddf": "unverified: /x is not a git checkout (pinned 5febd61)",
                },
            }
    (out / "manifest.json").write_text(json.dumps(doc_in))
    path = write_sbom(odroidc4, ws).path
    assert validation_messages(path) == []
    doc = json.loads(path.read_text())
    pkgs = packages(doc)
    loader = "SPDXRef-Package-loader-img"
    assert relations(doc, "DESCRIBES") == {("SPDXRef-DOCUMENT", loader)}
    assert {b for a, b in relations(doc, "CONTAINS") if a == loader} == {
        f"SPDXRef-Package-{p}" for p in ("linux", "initramfs", "dtb")
    }
    assert sha256_of(pkgs[loader]) == arts["loader_img"]["sha256"]
    assert pkgs[loader]["packageFileName"] == "loader.img"
    assert sha256_of(pkgs["SPDXRef-Package-linux"]) == arts["kernel_image"]["sha256"]
    assert sha256_of(pkgs["SPDXRef-Package-linux-config"]) == arts["kernel_config"]["sha256"]
    generated = relations(doc, "GENERATED_FROM")
    assert ("SPDXRef-Package-linux", "SPDXRef-Package-linux-config") in generated
    inputs = {b for a, b in generated if a == loader}
    assert inputs == {f"SPDXRef-Package-{p}" for p in ("microkit-sdk", "libvmm", "sddf")}
    sdk = pkgs["SPDXRef-Package-microkit-sdk"]
    assert sdk["versionInfo"] == "2.0.1" and sha256_of(sdk) == sdk_sha
    vmm = pkgs["SPDXRef-Package-libvmm"]
    assert vmm["versionInfo"] == libvmm
    assert vmm["downloadLocation"] == f"git+{odroidc4.microkit.libvmm.repository}@{libvmm}"
    # Not verified by the build: the lock's full commit for the board's pin.
    lock = json.loads((ROOT / "boards/odroidc4/netvm.lock").read_text())
    sddf = pkgs["SPDXRef-Package-sddf"]
    assert sddf["versionInfo"] == lock["microkit"]["sddf"]["commit"]
    assert "unverified" in sddf["comment"]
    assert ("SPDXRef-Package-sdfgen", loader) in relations(doc, "BUILD_TOOL_OF")
    assert pkgs["SPDXRef-Package-sdfgen"]["versionInfo"] == "0.27.0"
    # A package version apt does not know: named, with nothing made up.
    unknown = pkgs["SPDXRef-Package-deb-libnetvm-test0"]
    assert unknown["versionInfo"] == "0.0-1" and "checksums" not in unknown
    assert unknown["downloadLocation"] == "NOASSERTION"
    assert unknown["licenseDeclared"] == "NOASSERTION"
    assert "not in netvm's cache" in unknown["licenseComments"]


# --- the copyright format ---------------------------------------------------------------

HEADER = "Format: copyright-format/1.0/\n\n"  # the format line, its URL left out


def licence_of(body: str, header: str = HEADER) -> debcopyright.PackageLicence:
    return parse_copyright(header + body, "pkg", "usr/share/doc/pkg/copyright")


def test_short_names_map_to_spdx_identifiers() -> None:
    assert licence_of("Files: *\nLicense: GPL-2+\n").declared == "GPL-2.0-or-later"
    assert licence_of("Files: *\nLicense: LGPL-2.1+\n").declared == "LGPL-2.1-or-later"
    assert licence_of("Files: *\nLicense: BSD-3-clause\n").declared == "BSD-3-Clause"
    assert licence_of("Files: *\nLicense: Expat\n").declared == "MIT"
    assert licence_of("Files: *\nLicense: PSF-2\n").declared == "PSF-2.0"
    assert licence_of("Files: *\nLicense: gpl-3\n").declared == "GPL-3.0-only"
    licensing = get_spdx_licensing()
    for name, spdx in debcopyright.SHORT_NAMES.items():
        assert licensing.validate(spdx, strict=True).errors == [], (name, spdx)
    for spdx in [*debcopyright.EXCEPTIONS.values(), *debcopyright.AUTOCONF.values()]:
        assert licensing.validate(f"GPL-2.0-or-later WITH {spdx}").errors == [], spdx


def test_operators_commas_and_exceptions() -> None:
    assert (
        licence_of("Files: *\nLicense: GPL-2+ or Artistic-2.0, and BSD-3-clause\n").declared
        == "(GPL-2.0-or-later OR Artistic-2.0) AND BSD-3-Clause"
    )
    # "and" binds tighter than "or" without a comma.
    assert (
        licence_of("Files: *\nLicense: MIT or GPL-2 and LGPL-2.1\n").declared
        == "MIT OR (GPL-2.0-only AND LGPL-2.1-only)"
    )
    assert (
        licence_of("Files: *\nLicense: GPL-3+ with autoconf exception\n").declared
        == "GPL-3.0-or-later WITH Autoconf-exception-3.0"
    )
    got = licence_of(
        "Files: *\nLicense: GPL-2+ with OpenSSL exception\n\n"
        "License: GPL-2+ with OpenSSL exception\n This program is free software.\n .\n "
        "As a special exception, OpenSSL may be linked.\n"
    )
    assert got.declared == "LicenseRef-pkg-GPL-2-with-OpenSSL-exception"
    (ref,) = got.extracted
    assert (
        ref.text
        == "This program is free software.\n\nAs a special exception, OpenSSL may be linked."
    )
    # Every Files paragraph counts (AND), each licence once, compound ones in parentheses.
    got = licence_of(
        "Files: *\nLicense: Zlib\n\nFiles: a/*\nLicense: MIT or Apache-2.0\n\n"
        "Files: b/*\nLicense: Zlib\n\nFiles: debian/*\nLicense: custom\n Do what you like.\n"
    )
    assert got.declared == "Zlib AND (MIT OR Apache-2.0) AND LicenseRef-pkg-custom"
    assert got.extracted[0].text == "Do what you like."
    assert "Files: * is Zlib" in got.comment


def test_what_is_not_read_is_noassertion() -> None:
    prose = licence_of(
        "This package is GPL-2, see /usr/share/common-licenses/GPL-2.\n", header="Copyright 2020\n"
    )
    assert prose.declared == "NOASSERTION" and "not in Debian's machine-readable" in prose.comment
    # A name without text anywhere in the file: a LicenseRef saying so, not a guess.
    bare = licence_of("Files: *\nLicense: GPL\n")
    assert bare.declared == "LicenseRef-pkg-GPL"
    assert bare.extracted[0].text == (
        "usr/share/doc/pkg/copyright names the licence 'GPL' without giving its text."
    )
    # Syntax outside the format: the whole synopsis is one reference.
    odd = licence_of("Files: *\nLicense: GPL-2+ | BSD\n")
    assert odd.declared.startswith("LicenseRef-pkg-GPL-2-BSD")
    assert licence_of("Files: *\nCopyright: me\n").declared == "NOASSERTION"


def test_a_doc_directory_link_reads_the_other_packages_file() -> None:
    text = HEADER + "Files: *\nLicense: ISC\n"
    docs = {
        "libfoo1": DebDocs({"usr/share/doc/libfoo1/copyright": text}),
        "libfoo-bin": DebDocs(links={"usr/share/doc/libfoo-bin": "libfoo1"}),
        "orphan": DebDocs(links={"usr/share/doc/orphan": "elsewhere"}),
        "empty": DebDocs(),
    }
    linked = package_licence("libfoo-bin", docs)
    assert linked.declared == "ISC"
    assert linked.comment.startswith("usr/share/doc/libfoo-bin is a link to usr/share/doc/libfoo1")
    assert package_licence("orphan", docs).declared == "NOASSERTION"
    assert "elsewhere is not among the packages" in package_licence("orphan", docs).comment
    assert "has no usr/share/doc/empty/copyright" in package_licence("empty", docs).comment


def test_the_repository_licence(tmp_path: Path) -> None:
    assert repository_licence(tmp_path).declared == "NOASSERTION"
    (tmp_path / "LICENSE").write_text("SPDX-License-Identifier: BSD-2-Clause\n\nText.\n")
    assert repository_licence(tmp_path).declared == "BSD-2-Clause"
    (tmp_path / "LICENSE").write_text("Do what you like.\n")
    got = repository_licence(tmp_path)
    assert got.declared == "LicenseRef-netvm" and got.extracted[0].text == "Do what you like."


# --- a build made in the build container ---------------------------------------------


def test_the_build_container_is_a_build_tool_with_its_packages(
    odroidc4: Board, manifest: dict[str, Any], tmp_path: Path
) -> None:
    """A manifest naming the container it was built in (container.run sets it), and
    container.build's record of that image in the build root."""
    ref = "localhost/netvm-build:0.1.0-0123456789ab"
    ws = Workspace(ROOT, tmp_path / "build")
    doc_in = json.loads(json.dumps(manifest))
    doc_in["versions"]["build_container"] = ref
    out = ws.build_dir(odroidc4)
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(doc_in))
    records = ws.build_root / "container"
    records.mkdir()
    (records / "image.json").write_text(json.dumps({"ref": ref, "image_id": "f" * 64}))
    (records / "packages.tsv").write_text(
        "gcc-aarch64-linux-gnu\t4:12.2.0-3\tamd64\nlibc6\t2.36-9+deb12u13\tamd64\n"
    )
    sbom = write_sbom(odroidc4, ws).path
    assert validation_messages(sbom) == []
    doc = json.loads(sbom.read_text())
    pkgs = packages(doc)
    image = pkgs["SPDXRef-Package-build-container"]
    assert (image["name"], image["versionInfo"]) == ("netvm-build", "0.1.0-0123456789ab")
    assert image["primaryPackagePurpose"] == "CONTAINER"
    assert image["sourceInfo"] == "image ID " + "f" * 64
    described = {b for _, b in relations(doc, "DESCRIBES")}
    assert relations(doc, "BUILD_TOOL_OF") >= {(image["SPDXID"], d) for d in described}
    gcc = pkgs["SPDXRef-Package-build-deb-gcc-aarch64-linux-gnu"]
    assert gcc["versionInfo"] == "4:12.2.0-3"
    assert gcc["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/gcc-aarch64-linux-gnu@4:12.2.0-3?arch=amd64"
    )
    assert {b for a, b in relations(doc, "CONTAINS") if a == image["SPDXID"]} == {
        "SPDXRef-Package-build-deb-gcc-aarch64-linux-gnu",
        "SPDXRef-Package-build-deb-libc6",
    }

    # The record of another image: the container is named, its packages are not guessed.
    (records / "image.json").write_text(json.dumps({"ref": ref + "0", "image_id": "e" * 64}))
    doc = json.loads(write_sbom(odroidc4, ws).path.read_text())
    pkgs = packages(doc)
    assert "is not of this image" in pkgs["SPDXRef-Package-build-container"]["comment"]
    assert not [p for p in pkgs if p.startswith("SPDXRef-Package-build-deb-")]
