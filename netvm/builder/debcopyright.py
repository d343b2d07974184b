"""Licences of Debian packages, read from their copyright files, as SPDX expressions.

Owns reading ``usr/share/doc/<package>/copyright`` out of a ``.deb`` (following a doc
directory that is a link to another package's, as Debian policy allows within one
source package), parsing Debian's machine-readable copyright format (DEP-5) and mapping
its licence short names to SPDX identifiers.

Nothing is guessed: only the ``License:`` fields of a machine-readable file are read;
a short name netvm does not know becomes a ``LicenseRef-`` with the text the file gives
for it; a file in free prose gives NOASSERTION. The expression is every licence the
file declares (all its ``Files`` paragraphs, joined with AND): the copyright file
describes the whole source package, so it may name licences of files (build scripts,
tests) this binary package does not ship.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

NOASSERTION = "NOASSERTION"
DOC = "usr/share/doc"


def _gnu(family: str, spdx: str, versions: Iterable[str]) -> dict[str, str]:
    """Debian's GPL-style short names of `family` (GPL-2, GPL-2+, GPL-2.0, GPL-2.0+) for
    the SPDX identifiers `spdx`-V-only / -or-later."""
    out: dict[str, str] = {}
    for v in versions:
        full = v if "." in v else f"{v}.0"
        for name in {v, full}:
            out[f"{family}-{name}"] = f"{spdx}-{full}-only"
            out[f"{family}-{name}+"] = f"{spdx}-{full}-or-later"
    return out


# Debian short name (lower case) -> SPDX licence identifier. The names of the copyright
# format's specification, and the SPDX identifiers themselves where a file uses those.
SHORT_NAMES: dict[str, str] = {
    **_gnu("gpl", "GPL", ("1", "2", "3")),
    **_gnu("lgpl", "LGPL", ("2", "2.1", "3")),
    **_gnu("agpl", "AGPL", ("3",)),
    **_gnu("gfdl", "GFDL", ("1.1", "1.2", "1.3")),
    **{
        name.lower(): spdx
        for name, spdx in {
            "Apache-2.0": "Apache-2.0",
            "Artistic-2.0": "Artistic-2.0",
            "BSD-2-clause": "BSD-2-Clause",
            "BSD-3-clause": "BSD-3-Clause",
            "BSD-4-clause": "BSD-4-Clause",
            "0BSD": "0BSD",
            "BSL-1.0": "BSL-1.0",
            "CC0-1.0": "CC0-1.0",
            "CC-BY-3.0": "CC-BY-3.0",
            "CC-BY-4.0": "CC-BY-4.0",
            "CC-BY-SA-3.0": "CC-BY-SA-3.0",
            "CC-BY-SA-4.0": "CC-BY-SA-4.0",
            "EPL-1.0": "EPL-1.0",
            "EPL-2.0": "EPL-2.0",
            "Expat": "MIT",
            "MIT": "MIT",
            "ISC": "ISC",
            "MPL-1.0": "MPL-1.0",
            "MPL-1.1": "MPL-1.1",
            "MPL-2.0": "MPL-2.0",
            "OpenSSL": "OpenSSL",
            "PSF-2": "PSF-2.0",
            "PSF-2.0": "PSF-2.0",
            "Python-2.0": "Python-2.0",
            "Unlicense": "Unlicense",
            "WTFPL": "WTFPL",
            "X11": "X11",
            "Zlib": "Zlib",
            "Zope-2.1": "ZPL-2.1",
            "ZPL-2.1": "ZPL-2.1",
            "curl": "curl",
            "libpng": "Libpng",
            "FTL": "FTL",
        }.items()
    },
}
# "with <name> exception" (lower case, without "exception") -> SPDX exception identifier.
EXCEPTIONS: dict[str, str] = {
    "libtool": "Libtool-exception",
    "classpath": "Classpath-exception-2.0",
    "gcc-exception-3.1": "GCC-exception-3.1",
    "gcc-exception-2.0": "GCC-exception-2.0",
}
# Autoconf's exception has one version per GPL version.
AUTOCONF = {"GPL-2.0": "Autoconf-exception-2.0", "GPL-3.0": "Autoconf-exception-3.0"}


@dataclass(frozen=True)
class ExtractedLicence:
    """A licence with no SPDX identifier: an SPDX ``LicenseRef-`` with its text."""

    licence_id: str
    name: str
    text: str
    comment: str


@dataclass(frozen=True)
class PackageLicence:
    declared: str  # an SPDX licence expression, or NOASSERTION
    comment: str  # where it comes from (or why there is none)
    extracted: tuple[ExtractedLicence, ...] = ()


@dataclass(frozen=True)
class DebDocs:
    """The copyright files and doc links of one .deb (paths without the leading ./)."""

    files: Mapping[str, str] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)


def deb_docs(deb: Path) -> DebDocs | None:
    """The ``usr/share/doc/*/copyright`` files and ``usr/share/doc/*`` links in `deb`,
    read with dpkg-deb (whatever its compression); None when it cannot be read."""
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                path = posixpath.normpath(member.name.removeprefix("./"))
                parts = path.split("/")
                if path.startswith(DOC + "/") and len(parts) in (4, 5):
                    if member.issym() or member.islnk():
                        links[path] = member.linkname
                    elif member.isfile() and parts[-1] == "copyright" and len(parts) == 5:
                        data = tar.extractfile(member)
                        if data is not None:
                            files[path] = data.read().decode("utf-8", "replace")
    except tarfile.TarError:
        return None
    finally:
        proc.stdout.close()
        code = proc.wait()
    return DebDocs(files, links) if code == 0 else None


def package_licence(name: str, docs: Mapping[str, DebDocs]) -> PackageLicence:
    """The licence `name`'s copyright file declares; `docs` holds the doc files of every
    package of the set (a doc directory may be a link into another package's)."""
    owner, directory = name, f"{DOC}/{name}"
    via = ""
    for _ in range(8):  # a chain of doc-directory links, never a loop
        pkg_docs = docs.get(owner)
        if pkg_docs is None:
            return PackageLicence(
                NOASSERTION,
                f"{via}the package {owner} is not among the packages read, so its "
                "copyright file is not available",
            )
        path = f"{directory}/copyright"
        if path in pkg_docs.files:
            return parse_copyright(pkg_docs.files[path], owner, via + path)
        target = pkg_docs.links.get(directory)
        if target is None:
            return PackageLicence(NOASSERTION, f"{via}the package has no {path}")
        directory = posixpath.normpath(posixpath.join(posixpath.dirname(directory), target))
        if posixpath.dirname(directory) != DOC:
            return PackageLicence(NOASSERTION, f"{via}{DOC}/{owner} links outside {DOC}")
        via += f"{DOC}/{owner} is a link to {directory}; "
        owner = posixpath.basename(directory)  # a doc directory is named after its package
    return PackageLicence(NOASSERTION, f"{via}too many links")


# ---------------------------------------------------------------------------------------
# The machine-readable copyright format


def paragraphs(text: str) -> list[dict[str, str]]:
    """The deb822 paragraphs of `text`: field names in lower case, continuation lines
    kept (with their leading space) after a newline."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                out.append(current)
            current, last = {}, ""
        elif line[0] in " \t":
            if last:
                current[last] += "\n" + line
        elif not line.startswith("#"):
            key, sep, value = line.partition(":")
            if sep:
                last = key.strip().lower()
                current[last] = value.strip()
    if current:
        out.append(current)
    return out


def machine_readable(paras: list[dict[str, str]]) -> bool:
    """Whether the header names Debian's copyright format (1.0, or a DEP-5 draft)."""
    if not paras:
        return False
    header = paras[0]
    value = (header.get("format") or header.get("format-specification") or "").lower()
    return "copyright-format" in value or "dep5" in value


def _text(field_value: str) -> str:
    """A field's continuation lines as text (" ." is an empty line)."""
    lines = field_value.split("\n")[1:]
    return "\n".join("" if ln.strip() == "." else ln[1:] for ln in lines).strip()


# A parsed License synopsis: a leaf (name, exception or "") or (operator, children).
Node = tuple[str, str] | tuple[str, list["Node"]]


class _Unparsable(ValueError):
    pass


def parse_synopsis(synopsis: str) -> Node:
    """DEP-5's licence syntax: `or` and `and` (`and` binds tighter), a comma before
    either makes it bind loosest ("A or B, and C" is "(A or B) and C"), and
    "NAME with EXC exception"."""
    segments = synopsis.split(",")
    node = _plain(segments[0].split())
    for segment in segments[1:]:
        words = segment.split()
        if len(words) < 2 or words[0].lower() not in ("and", "or"):
            raise _Unparsable(synopsis)
        node = ("op-" + words[0].lower(), [node, _plain(words[1:])])
    return node


def _plain(words: list[str]) -> Node:
    alternatives = _split(words, "or")
    if len(alternatives) > 1:
        return ("op-or", [_conjunction(a) for a in alternatives])
    return _conjunction(words)


def _conjunction(words: list[str]) -> Node:
    parts = _split(words, "and")
    if len(parts) > 1:
        return ("op-and", [_leaf(p) for p in parts])
    return _leaf(words)


def _split(words: list[str], op: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for w in words:
        if w.lower() == op:
            out.append([])
        else:
            out[-1].append(w)
    if any(not part for part in out):
        raise _Unparsable(" ".join(words))
    return out


def _leaf(words: list[str]) -> Node:
    if len(words) == 1:
        return (words[0], "")
    if len(words) >= 3 and words[1].lower() == "with":
        exc = words[2:]
        if exc[-1].lower() == "exception":
            exc = exc[:-1]
        if exc:
            return (words[0], " ".join(exc))
    raise _Unparsable(" ".join(words))


class _Renderer:
    """Turns parsed synopses into SPDX expressions, collecting the LicenseRefs used."""

    def __init__(self, owner: str, path: str, paras: list[dict[str, str]]) -> None:
        self.owner = owner
        self.path = path
        self.refs: dict[str, tuple[str, list[str]]] = {}  # id -> (name, texts)
        # Standalone License paragraphs: the text for a short name, by synopsis.
        self.texts: dict[str, list[str]] = {}
        for para in paras:
            if "license" in para and "files" not in para:
                synopsis, text = _synopsis(para["license"]), _text(para["license"])
                if text:
                    self.texts.setdefault(synopsis.lower(), []).append(text)

    def expression(self, synopsis: str, own_text: str) -> tuple[str, bool]:
        """`synopsis` as SPDX (and whether it is compound); `own_text` is the text given
        with it in its paragraph, if any."""
        try:
            node = parse_synopsis(synopsis)
        except _Unparsable:
            return self._ref(synopsis, own_text), False
        return self._render(node, own_text if isinstance(node[1], str) else "")

    def _render(self, node: Node, own_text: str) -> tuple[str, bool]:
        head, rest = node
        if isinstance(rest, str):
            return self._leaf(head, rest, own_text), False
        children = [self._render(child, "") for child in rest]
        joined = f" {head.removeprefix('op-').upper()} ".join(
            f"({s})" if compound else s for s, compound in children
        )
        return joined, True

    def _leaf(self, name: str, exception: str, own_text: str) -> str:
        spdx = SHORT_NAMES.get(name.lower())
        if spdx is not None and not exception:
            return spdx
        if spdx is not None:
            exc = EXCEPTIONS.get(exception.lower())
            if exception.lower() == "autoconf":
                exc = next((v for k, v in AUTOCONF.items() if spdx.startswith(k + "-")), None)
            if exc is not None:
                return f"{spdx} WITH {exc}"
        full = f"{name} with {exception} exception" if exception else name
        return self._ref(full, own_text)

    def _ref(self, name: str, own_text: str) -> str:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") or "unnamed"
        if len(slug) > 48:
            slug = slug[:40] + "-" + hashlib.sha256(name.encode()).hexdigest()[:7]
        licence_id = f"LicenseRef-{re.sub(r'[^A-Za-z0-9.]+', '-', self.owner)}-{slug}"
        _, texts = self.refs.setdefault(licence_id, (name, []))
        for text in ([own_text] if own_text else []) + self.texts.get(name.lower(), []):
            if text not in texts:
                texts.append(text)
        return licence_id

    def extracted(self) -> tuple[ExtractedLicence, ...]:
        out = []
        for licence_id, (name, texts) in sorted(self.refs.items()):
            text = "\n\n".join(texts) or (
                f"{self.path} names the licence {name!r} without giving its text."
            )
            out.append(ExtractedLicence(licence_id, name, text, f"from {self.path}"))
        return tuple(out)


def _synopsis(value: str) -> str:
    return value.split("\n", 1)[0].strip()


def parse_copyright(text: str, owner: str, path: str) -> PackageLicence:
    """The licence a copyright file (`path` of package `owner`) declares.

    Machine-readable: every Files paragraph's (and the header's) License, deduplicated
    and joined with AND, in the order of the file. Otherwise NOASSERTION.
    """
    paras = paragraphs(text)
    if not machine_readable(paras):
        return PackageLicence(
            NOASSERTION,
            f"{path} is not in Debian's machine-readable copyright format, and netvm does "
            "not read licences from prose",
        )
    renderer = _Renderer(owner, path, paras)
    terms: list[tuple[str, bool]] = []
    files_star = None
    declaring = [p for p in paras[1:] if "files" in p and "license" in p]
    if "license" in paras[0]:
        declaring.insert(0, paras[0])
    for para in declaring:
        synopsis = _synopsis(para["license"])
        if not synopsis:
            continue
        term = renderer.expression(synopsis, _text(para["license"]))
        if term not in terms:
            terms.append(term)
        if para.get("files", "").split() == ["*"]:
            files_star = term[0]
    if not terms:
        return PackageLicence(NOASSERTION, f"{path} has no License field in its Files paragraphs")
    declared = " AND ".join(f"({s})" if compound and len(terms) > 1 else s for s, compound in terms)
    files = len([p for p in paras[1:] if "files" in p])
    comment = (
        f"{path} (machine-readable): the License fields of its {files} Files paragraphs, "
        "which cover the whole source package"
    )
    if files_star is not None and len(terms) > 1:
        comment += f"; Files: * is {files_star}"
    return PackageLicence(declared, comment, renderer.extracted())
