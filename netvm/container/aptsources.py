"""Where the build container gets its Debian packages: the host's own apt sources.

Owns reading the host's Debian entries (deb822 ``*.sources`` and one-line ``*.list``
files) for the container's suite, and writing them as the container's deb822 file. The
container installs from the same archive as the host, so both resolve the same package
versions (a build is only byte-identical inside and out when its tools are), and netvm
names no archive of its own. A host that is not Debian (a CI runner on another
distribution) passes the archive explicitly: ``--mirror`` / ``$NETVM_DEBIAN_MIRROR``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from netvm.core.errors import Finding, UserError

SUITE = "bookworm"  # Debian 12: what ./bootstrap supports and the tests run on
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # in every Debian base system
HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


@dataclass(frozen=True)
class AptSource:
    """One archive and the suites and components taken from it."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]

    def deb822(self) -> str:
        return (
            "Types: deb\n"
            f"URIs: {self.uri}\n"
            f"Suites: {' '.join(self.suites)}\n"
            f"Components: {' '.join(self.components)}\n"
            f"Signed-By: {KEYRING}\n"
        )


def render_sources(sources: Sequence[AptSource]) -> str:
    """The container's /etc/apt/sources.list.d/debian.sources."""
    return "\n".join(s.deb822() for s in sources)


def base_mirror(sources: Sequence[AptSource]) -> str:
    """The archive debootstrap takes the base system from: the one carrying the suite."""
    for s in sources:
        if SUITE in s.suites:
            return s.uri
    raise AssertionError("debian_sources() returns a source with the base suite")


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """The stanzas of a deb822 file: field -> value (continuation lines joined)."""
    fields: dict[str, str] = {}
    last = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, last = {}, ""
        elif raw[0].isspace() and last:
            fields[last] += " " + raw.strip()
        elif ":" in raw:
            name, value = raw.split(":", 1)
            last = name.strip().lower()
            fields[last] = value.strip()


def _from_deb822(text: str) -> Iterator[AptSource]:
    for f in _deb822_stanzas(text):
        if "deb" not in f.get("types", "").split() or f.get("enabled", "yes") == "no":
            continue
        suites = tuple(f.get("suites", "").split())
        components = tuple(f.get("components", "").split())
        for uri in f.get("uris", "").split():
            yield AptSource(uri, suites, components)


# deb [options] uri suite component...
_ONE_LINE = re.compile(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$")


def _from_one_line(text: str) -> Iterator[AptSource]:
    for raw in text.splitlines():
        m = _ONE_LINE.match(raw.strip())
        if m:
            yield AptSource(m.group(1), (m.group(2),), tuple(m.group(3).split()))


def host_entries(paths: Iterable[Path] = HOST_SOURCES) -> list[AptSource]:
    """Every enabled `deb` entry of the host's apt configuration."""
    found: list[AptSource] = []
    for path in paths:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                continue
            if f.suffix == ".sources":
                found.extend(_from_deb822(f.read_text(errors="replace")))
            elif f.suffix == ".list" or f.name == "sources.list":
                found.extend(_from_one_line(f.read_text(errors="replace")))
    return found


def _archive_url(value: str, flag: str, env: str) -> str:
    if not re.match(r"^(https?|file)://\S+$", value):
        raise UserError(
            [
                Finding(
                    "",
                    flag,
                    f"{value!r} is not an archive URL",
                    f"give the archive as http://HOST/PATH (or set ${env})",
                )
            ]
        )
    return value.rstrip("/")


def debian_sources(
    mirror: str | None,
    security_mirror: str | None = None,
    paths: Iterable[Path] = HOST_SOURCES,
) -> list[AptSource]:
    """The container's sources: `mirror` (the suite and its updates) and
    `security_mirror` (the security suite) when given, else the host's entries for the
    suite, its updates and its security suite. Only `main`: all netvm installs."""
    if mirror:
        out = [
            AptSource(
                _archive_url(mirror, "--mirror", "NETVM_DEBIAN_MIRROR"),
                (SUITE, f"{SUITE}-updates"),
                ("main",),
            )
        ]
        if security_mirror:
            url = _archive_url(security_mirror, "--security-mirror", "NETVM_DEBIAN_SECURITY_MIRROR")
            out.append(AptSource(url, (f"{SUITE}-security",), ("main",)))
        return out
    wanted = {SUITE, f"{SUITE}-updates", f"{SUITE}-security"}
    picked: list[AptSource] = []
    for entry in host_entries(paths):
        suites = tuple(s for s in entry.suites if s in wanted)
        if suites and "main" in entry.components:
            picked.append(AptSource(entry.uri, suites, ("main",)))
    if not any(SUITE in s.suites for s in picked):
        raise UserError(
            [
                Finding(
                    "/etc/apt/sources.list.d",
                    "",
                    f"this host's apt sources carry no Debian {SUITE} main entry to "
                    "build the container from",
                    "give the Debian archive: invoke container.build --mirror URL "
                    "[--security-mirror URL] (or $NETVM_DEBIAN_MIRROR, "
                    "$NETVM_DEBIAN_SECURITY_MIRROR)",
                )
            ]
        )
    return picked
