"""The guest initramfs: a python3 base plus netvm's overlay, packed reproducibly.

Owns the base providers (Debian arm64 packages unpacked without maintainer scripts,
or a user's base ``rootfs.cpio.gz``), pruning the Debian base to what the driver and
``/init`` use, byte-compiling, and the size report. The Buildroot external tree is
`netvm.guest.buildroot`'s; the archive format is `netvm.guest.cpio`'s.

Pruning is measured, not guessed: the arm64 python runs under ``qemu-aarch64-static``
on the unpacked packages, imports the driver (and the board's extra modules) and
reports what it loaded; only those stdlib files, their shared libraries and the
busybox applets ``/init`` uses go into the image.
"""

from __future__ import annotations

import json
import os
import py_compile
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from netvm.board import INITRAMFS_NAMES
from netvm.core.errors import UserError
from netvm.core.files import file_sha256, fill_once, short_key
from netvm.core.progress import Progress, silent
from netvm.core.toollog import ToolLog
from netvm.guest import cpio

DEB_ARCH = "arm64"
# The base: python3.11's interpreter and the part of its stdlib the driver uses (mmap
# lives in -stdlib, not -minimal), the C libraries they link, and busybox for /init and
# the console. The dynamic busybox shares python's libc: half a MiB less than
# busybox-static once compressed.
DEBIAN_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "busybox",
)
PYTHON = "usr/bin/python3.11"
BUSYBOX = "bin/busybox"
STDLIB = "usr/lib/python3.11"
GUEST_PYTHONPATH = "usr/lib/netvm"
LIB_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu")
# What /init and an operator on the console use; busybox cannot run here to list its
# applets, so the links are fixed.
BUSYBOX_APPLETS = (
    "cat", "chmod", "cp", "cttyhack", "date", "dmesg", "echo", "free", "grep", "head",
    "hostname", "ifconfig", "ip", "kill", "ln", "ls", "mkdir", "mount", "mv", "pidof",
    "ping", "poweroff", "ps", "reboot", "renice", "rm", "sed", "setsid", "sh", "sleep", "tail",
    "top", "true", "umount", "uname", "vi", "wc",
)  # fmt: skip
SBIN_APPLETS = frozenset({"ifconfig", "poweroff", "reboot"})
INIT = "sbin/netvm-init"
# Made while the driver is imported under qemu; lists what python loaded. It writes plain
# lines rather than JSON: importing json here would ship json (and re) whether or not the
# driver needs them. A driver module lists what it imports only on a rare path (an error)
# in LAZY_IMPORTS, and the probe imports those too.
_PROBE = r"""
import importlib, os, runpy, sys
out = sys.argv[1]
sys.argv = ["netvm_driver", "--help"]
try:
    runpy.run_module("netvm_driver", run_name="__main__")
except SystemExit:
    pass
import netvm_driver
# os.listdir, not pkgutil: the probe must not load modules the driver does not use.
lazy = []
for name in sorted(os.listdir(netvm_driver.__path__[0])):
    if name.endswith(".py"):
        module = importlib.import_module("netvm_driver." + name[:-3])
        lazy += getattr(module, "LAZY_IMPORTS", ())
for name in lazy + EXTRA:
    importlib.import_module(name)
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
with open(out, "w") as f:
    f.write("\n".join(files) + "\n")
"""

# Byte-compiles with the guest's own python: each job is [source, guest path, optimize,
# output]. Unchecked-hash pycs carry no mtime and no host path.
_COMPILE = r"""
import json, py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
for src, dfile, optimize, out in json.load(open(sys.argv[1])):
    py_compile.compile(src, cfile=out, dfile=dfile, doraise=True,
                       invalidation_mode=mode, optimize=optimize)
"""


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str  # arm64, or all
    sha256: str

    @property
    def deb_name(self) -> str:
        """The file name apt-get download gives it (an epoch's ':' is escaped)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True)
class InitramfsResult:
    path: Path
    uncompressed_bytes: int
    compressed_bytes: int
    files: int
    largest: list[tuple[str, int]]
    packages: dict[str, str] = field(default_factory=dict)  # name -> version

    def report(self) -> dict[str, Any]:
        return {
            "compressed_bytes": self.compressed_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "files": self.files,
            "largest": [{"path": p, "bytes": b} for p, b in self.largest],
            "packages": self.packages,
        }


# ---------------------------------------------------------------------------------------
# Debian packages


def resolve_packages(
    names: Iterable[str], arch: str = DEB_ARCH, log: ToolLog | None = None
) -> list[DebPackage]:
    """Candidate version, pool file and sha256 of each package, from apt's signed lists."""
    names = list(names)
    log = log or ToolLog(None)
    proc = log.capture(["apt-cache", "show", "--no-all-versions", *(f"{n}:{arch}" for n in names)])
    found: dict[str, DebPackage] = {}
    for para in proc.stdout.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in para.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields and "Filename" in fields:
            found[fields["Package"]] = DebPackage(
                fields["Package"], fields["Version"], fields["Architecture"], fields["SHA256"]
            )
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(
            f"apt knows no {arch} package {', '.join(missing)}",
            hint=f"run ./bootstrap (it adds the {arch} architecture and runs apt-get update)",
        )
    return [found[n] for n in names]


def apt_lists_state(lists: Path = Path("/var/lib/apt/lists")) -> list[str]:
    """Names, sizes and mtimes of apt's arm64 package lists: cheap to read, and they
    change exactly when `apt-get update` may have brought new package versions."""
    return [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in sorted(lists.glob(f"*binary-{DEB_ARCH}_Packages*"))
    ]


def fetch_packages(
    packages: list[DebPackage], cache: Path, log: ToolLog | None = None
) -> list[Path]:
    """The .deb files, downloaded once by apt (which verifies them) and re-checked here."""
    cache.mkdir(parents=True, exist_ok=True)
    log = log or ToolLog(None)
    want = [p for p in packages if not _cached_ok(cache / p.deb_name, p.sha256)]
    if want:
        proc = log.stream(
            # Run as the calling user: apt's sandbox user may not write to the cache.
            ["apt-get", "download", "-o", "APT::Sandbox::User=root"]
            + [f"{p.name}:{DEB_ARCH}={p.version}" for p in want],
            cwd=cache,
        )
        log.check(
            proc,
            f"apt-get download of {', '.join(p.name for p in want)}",
            f"the Debian archive must be reachable once; later builds use the cache in {cache}",
        )
    for p in packages:
        if not _cached_ok(cache / p.deb_name, p.sha256):
            raise UserError(f"{cache / p.deb_name}: sha256 differs from apt's lists")
    return [cache / p.deb_name for p in packages]


def _cached_ok(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def unpack(debs: Iterable[Path], dest: Path, log: ToolLog | None = None) -> None:
    """dpkg-deb -x: the files only; no maintainer script runs."""
    log = log or ToolLog(None)
    for deb in debs:
        run = log.stream(["dpkg-deb", "-x", str(deb), str(dest)])
        log.check(run, f"dpkg-deb -x {deb.name}", internal=True)  # a verified package


def resolved_packages(
    names: Iterable[str], cache: Path, log: ToolLog | None = None
) -> list[DebPackage]:
    """`resolve_packages`, remembered until apt's package lists change.

    apt-cache loads its whole cache (seconds); the lists' names, sizes and mtimes say
    cheaply whether its answer can have changed, so a driver-only rebuild skips it.
    """
    names = list(names)
    memo = cache / f"resolved-{short_key(json.dumps([names, apt_lists_state()]))}.json"
    if memo.is_file():
        return [DebPackage(**p) for p in json.loads(memo.read_text())]
    packages = resolve_packages(names, log=log)
    cache.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps([vars(p) for p in packages]))
    return packages


def unpacked_base(
    packages: list[DebPackage], debs: list[Path], cache: Path, log: ToolLog | None = None
) -> Path:
    """The packages unpacked once per set of versions, shared by later builds (read-only)."""

    def fill(tmp: Path) -> str:
        unpack(debs, tmp, log)
        return "\n".join(f"{p.name} {p.version}" for p in packages)

    return fill_once(cache / "rootfs-base" / short_key("".join(p.sha256 for p in packages)), fill)


# ---------------------------------------------------------------------------------------
# Measuring what python needs


def probe_imports(
    full_root: Path, driver_path: Path, extra_modules: Iterable[str], log: ToolLog | None = None
) -> list[str]:
    """Run the arm64 python on `full_root` with the driver from `driver_path`; return the
    files it loaded, relative to `full_root`.

    `full_root` is not written to (it may be the shared cached base).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.txt"
        script = f"EXTRA = {list(extra_modules)!r}\n{_PROBE}"
        # qemu-user's -L looks under full_root first and falls back to the host path,
        # so the driver is imported from the overlay where it already is.
        # No bytecode written next to the overlay's sources: it would end up in the image.
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(driver_path),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        log = log or ToolLog(None)
        proc = log.capture(
            [
                "qemu-aarch64-static",
                "-L",
                str(full_root),
                str(full_root / PYTHON),
                "-c",
                script,
                str(out),
            ],
            env=env,
        )
        if proc.status != 0 or not out.is_file():
            raise UserError(
                "the guest python could not import the driver:\n" + proc.stderr.strip(),
                hint="check that PYTHONPATH=driver python3 -m netvm_driver --help works here; "
                "a stdlib module missing from the guest packages shows as ImportError",
            )
        loaded = out.read_text().splitlines()
    prefix = str(full_root) + "/"
    return [f[len(prefix) :] for f in loaded if f.startswith(prefix)]


def needed_libraries(elf: Path, log: ToolLog | None = None) -> list[str]:
    """DT_NEEDED sonames of an ELF file (empty for a static one)."""
    log = log or ToolLog(None)
    proc = log.check(
        log.capture(["aarch64-linux-gnu-readelf", "-d", str(elf)]),
        f"readelf -d {elf.name}",
        internal=True,
    )
    out = []
    for line in proc.stdout.splitlines():
        if "(NEEDED)" in line and "[" in line:
            out.append(line.split("[", 1)[1].rstrip("]"))
    return out


def library_closure(full_root: Path, elves: Iterable[str], log: ToolLog | None = None) -> list[str]:
    """Paths (relative) of every shared library `elves` need, transitively, + the loader."""
    seen: dict[str, str] = {}
    todo = list(elves)
    while todo:
        for soname in needed_libraries(full_root / todo.pop(), log):
            if soname in seen:
                continue
            rel = _find_library(full_root, soname)
            seen[soname] = rel
            todo.append(rel)
    return sorted(set(seen.values()))


def _find_library(full_root: Path, soname: str) -> str:
    for d in LIB_DIRS:
        if (full_root / d / soname).exists():
            return f"{d}/{soname}"
    raise UserError(f"the guest packages provide no {soname}", hint="add its package")


# ---------------------------------------------------------------------------------------
# Assembling the image


def _entries_from_tree(tree: Path, prefix: str = "") -> dict[str, cpio.Entry]:
    """Every file, symlink and directory under `tree` as archive entries."""
    out: dict[str, cpio.Entry] = {}
    for path in sorted(tree.rglob("*")):
        rel = prefix + str(path.relative_to(tree))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = cpio.symlink(rel, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = cpio.directory(rel)
        elif stat.S_ISREG(st.st_mode):
            out[rel] = cpio.regular(rel, path.read_bytes(), _perm(st.st_mode))
    return out


def _perm(mode: int) -> int:
    # Only the executable bit carries over, so a host umask cannot change the image.
    return 0o755 if mode & 0o111 else 0o644


def _copy_entry(full_root: Path, rel: str) -> cpio.Entry:
    path = full_root / rel
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return cpio.symlink(rel, os.readlink(path))
    return cpio.regular(rel, path.read_bytes(), _perm(st.st_mode))


def _compile(src: Path, guest_path: str, optimize: int = 0) -> bytes:
    """Deterministic bytecode: unchecked-hash pycs carry no mtime and no host path."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.pyc"
        py_compile.compile(
            str(src),
            cfile=str(out),
            dfile="/" + guest_path,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            optimize=optimize,
        )
        return out.read_bytes()


def guest_compile(
    full_root: Path, jobs: Mapping[str, tuple[Path, int]], log: ToolLog | None = None
) -> dict[str, bytes]:
    """Bytecode of each source, made by the guest's python under qemu-user: guest path
    -> (source, optimize) in, guest path -> pyc bytes out.

    The guest's interpreter, not the one running netvm: marshal's output differs
    between patch releases (3.11.2 and 3.11.7 give different bytes for the same
    source), so bytecode from the host's python would make the image depend on the
    host and would not be what the guest itself would have written.
    """
    log = log or ToolLog(None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        names = sorted(jobs)
        pycs = [out / f"{i}.pyc" for i in range(len(names))]
        spec = [
            [str(jobs[rel][0]), "/" + rel, jobs[rel][1], str(pyc)]
            for rel, pyc in zip(names, pycs, strict=True)
        ]
        (out / "jobs.json").write_text(json.dumps(spec))
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [
            "qemu-aarch64-static", "-L", str(full_root), str(full_root / PYTHON),
            "-c", _COMPILE, str(out / "jobs.json"),
        ]  # fmt: skip
        proc = log.capture(cmd, env=env)
        if proc.status != 0:
            raise UserError(
                "the guest python could not byte-compile the image's modules:\n"
                + proc.stderr.strip()[-2000:],
                hint="a syntax error in the driver or the overlay shows here",
            )
        return {rel: pyc.read_bytes() for rel, pyc in zip(names, pycs, strict=True)}


def busybox_applets(full_root: Path, log: ToolLog | None = None) -> frozenset[str]:
    """The applets this busybox build has (it runs under qemu-user to say)."""
    log = log or ToolLog(None)
    cmd = ["qemu-aarch64-static", "-L", str(full_root), str(full_root / BUSYBOX), "--list"]
    proc = log.check(log.capture(cmd), "busybox --list", internal=True)
    return frozenset(proc.stdout.split())


def _add_parents(entries: dict[str, cpio.Entry]) -> None:
    for rel in list(entries):
        parent = PurePosixPath(rel).parent
        while str(parent) != ".":
            entries.setdefault(str(parent), cpio.directory(str(parent)))
            parent = parent.parent


def debian_entries(
    full_root: Path, overlay: Path, extra_modules: Iterable[str], log: ToolLog | None = None
) -> dict[str, cpio.Entry]:
    """The pruned Debian base plus the overlay (overlay wins), as archive entries."""
    files = probe_imports(full_root, overlay / GUEST_PYTHONPATH, extra_modules, log)
    entries: dict[str, cpio.Entry] = {}
    elves = [PYTHON, BUSYBOX]
    # Sourceless bytecode next to where the source was (what Buildroot's "pyc only"
    # does): half the size, and nothing to compile at boot. The stdlib goes without
    # docstrings (-OO); the driver keeps its own.
    jobs = {rel: (full_root / rel, 2) for rel in files if rel.startswith(STDLIB + "/")}
    jobs = {rel: job for rel, job in jobs.items() if rel.endswith(".py")}
    jobs.update(driver_sources(overlay))
    compiled = guest_compile(full_root, jobs, log)
    for rel in files:
        if not rel.startswith(STDLIB + "/"):
            continue  # the driver comes from the overlay
        if rel.endswith(".py"):
            entries[rel + "c"] = cpio.regular(rel + "c", compiled[rel])
        elif rel.endswith(".so"):
            entries[rel] = _copy_entry(full_root, rel)
            elves.append(rel)
    # getpath.py needs lib-dynload to exist to find the platform stdlib.
    entries[f"{STDLIB}/lib-dynload"] = cpio.directory(f"{STDLIB}/lib-dynload")
    entries[PYTHON] = _copy_entry(full_root, PYTHON)
    entries["usr/bin/python3"] = cpio.symlink("usr/bin/python3", "python3.11")
    for rel in library_closure(full_root, elves, log):
        entries[rel] = _copy_entry(full_root, rel)
        target = full_root / rel
        if target.is_symlink():  # e.g. libz.so.1 -> libz.so.1.2.13
            real = str(PurePosixPath(rel).parent / os.readlink(target))
            entries[real] = _copy_entry(full_root, real)
    loader = "lib/ld-linux-aarch64.so.1"
    entries[loader] = _copy_entry(full_root, loader)
    entries[BUSYBOX] = _copy_entry(full_root, BUSYBOX)
    missing = sorted(set(BUSYBOX_APPLETS) - busybox_applets(full_root, log))
    if missing:
        # /init and the console rely on these; a Debian busybox without them is a
        # different build than netvm was made for.
        raise RuntimeError(f"busybox lacks the applets {', '.join(missing)}")
    for applet in BUSYBOX_APPLETS:
        where = "sbin" if applet in SBIN_APPLETS else "bin"
        link = "../bin/busybox" if where == "sbin" else "busybox"
        entries[f"{where}/{applet}"] = cpio.symlink(f"{where}/{applet}", link)
    entries.update(overlay_entries(overlay, compiled=compiled))
    return entries


def driver_sources(overlay: Path) -> dict[str, tuple[Path, int]]:
    """The overlay's driver modules as compile jobs: guest path -> (source, optimize)."""
    return {
        rel: (overlay / rel, 0)
        for rel, e in _entries_from_tree(overlay).items()
        if rel.startswith(GUEST_PYTHONPATH + "/") and rel.endswith(".py") and e.kind == "file"
    }


def overlay_entries(
    overlay: Path, *, compiled: Mapping[str, bytes] | None = None
) -> dict[str, cpio.Entry]:
    """The staged overlay with the driver byte-compiled, and /init.

    `compiled` (the Debian base, whose python compiled them: `guest_compile`): the
    driver's bytecode in place of its sources, which saves a tenth of the image. Else
    (a user's base, a Buildroot tree: a python netvm cannot run) the host's bytecode
    goes beside the sources in __pycache__, which a guest python of another version
    ignores and recompiles from the sources.
    """
    entries = _entries_from_tree(overlay)
    for rel in driver_sources(overlay):
        if compiled is not None:
            del entries[rel]
            entries[rel + "c"] = cpio.regular(rel + "c", compiled[rel])
        else:
            p = PurePosixPath(rel)
            pyc = f"{p.parent}/__pycache__/{p.stem}.{_cache_tag()}.pyc"
            entries[pyc] = cpio.regular(pyc, _compile(overlay / rel, rel))
    # Mount points and the console exist before /init runs (it mounts the rest).
    for d in ("dev", "proc", "sys", "tmp", "run", "root"):
        entries.setdefault(d, cpio.directory(d))
    entries["tmp"] = cpio.directory("tmp", 0o1777)
    entries["dev/console"] = cpio.char_device("dev/console", 5, 1)
    entries["init"] = cpio.symlink("init", INIT)
    return entries


def _cache_tag() -> str:
    import sys

    return sys.implementation.cache_tag  # cpython-311 on host and guest (magic checked)


def pack(
    entries: dict[str, cpio.Entry], out: Path, epoch: int, *, compress: bool = True
) -> InitramfsResult:
    # The kernel's initramfs unpacker creates no missing parent directory: a file whose
    # directory has no entry of its own is silently not unpacked.
    _add_parents(entries)
    raw = cpio.write_newc(entries.values(), epoch)
    blob = cpio.gzip_deterministic(raw) if compress else raw
    out.parent.mkdir(parents=True, exist_ok=True)
    # The other compression's file from an earlier build would only mislead.
    for name in INITRAMFS_NAMES.values():
        if name != out.name:
            (out.parent / name).unlink(missing_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    files = [e for e in entries.values() if e.kind == "file"]
    largest = sorted(((e.path, len(e.data)) for e in files), key=lambda t: (-t[1], t[0]))[:8]
    return InitramfsResult(out, len(raw), len(blob), len(files), largest)


def build_initramfs(
    provider: str,
    overlay: Path,
    out: Path,
    *,
    cache: Path,
    epoch: int,
    base_cpio: Path | None = None,
    extra_modules: Iterable[str] = (),
    compress: bool = True,
    progress: Progress = silent,
    log: ToolLog | None = None,
) -> InitramfsResult:
    """Build `out` (rootfs.cpio.gz, or rootfs.cpio uncompressed) from `provider`'s base
    and the staged `overlay`; the tools it runs (apt, dpkg-deb, the guest python under
    qemu-user, readelf) write to `log`."""
    if provider == "cpio":
        assert base_cpio is not None
        try:
            base = {e.path: e for e in cpio.read_cpio_gz(base_cpio.read_bytes())}
        except ValueError as exc:
            raise UserError(
                f"{base_cpio}: {exc}",
                hint="rootfs.base_cpio must be a newc cpio archive, gzip-compressed or not",
            ) from None
        if not any(p.startswith("usr/bin/python3") for p in base):
            raise UserError(f"{base_cpio}: no usr/bin/python3* in the base rootfs")
        base.update(overlay_entries(overlay))
        return pack(base, out, epoch, compress=compress)
    if provider != "debian":
        raise UserError(f"rootfs provider {provider} does not build an initramfs here")
    packages = resolved_packages(DEBIAN_PACKAGES, cache / "debs", log)
    progress(f"[rootfs] {len(packages)} Debian {DEB_ARCH} packages")
    debs = fetch_packages(packages, cache / "debs", log)
    base_tree = unpacked_base(packages, debs, cache, log)
    entries = debian_entries(base_tree, overlay, extra_modules, log)
    result = pack(entries, out, epoch, compress=compress)
    return InitramfsResult(
        result.path,
        result.uncompressed_bytes,
        result.compressed_bytes,
        result.files,
        result.largest,
        {p.name: p.version for p in packages},
    )
