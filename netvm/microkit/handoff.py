"""The Microkit handoff: from netvm's guest artifacts to the seL4 system image `loader.img`.

Owns finding the external inputs of the image build (Microkit SDK, libvmm with its
Ethernet driver VM example, sDDF, and the python whose sdfgen runs the example's meta.py),
checking them and the host tools against the board's pins before anything runs, and
running upstream's example Makefile with netvm's kernel, initramfs and guest DTS
substituted on the command line, so that loader.img is the same on every build. It must
not edit the upstream trees: everything it writes goes under the build directory it is
given.

Inputs come from, in order: the task's flags (`--microkit-sdk`, `--libvmm`, `--sddf`),
`invoke.yaml` (`netvm: {microkit_sdk: …, libvmm: …, sddf: …}`) and the environment
(`NETVM_MICROKIT_SDK`, `NETVM_LIBVMM`, `NETVM_SDDF`). sDDF defaults to libvmm's own
`dep/sddf` submodule. Only when asked (`invoke build --fetch`) is an input given nowhere
fetched at its pin into netvm's cache (`netvm.microkit.fetch`); when that fails (offline, no
sha256 pinned for the SDK archive, a commit the repository lacks) the missing input is
reported with why and exactly how to supply it.

House rules: no module state; every problem is a `Finding` naming the board file and the
pinned key it concerns; all findings of a check are raised together.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from netvm.board import Board, MicrokitSpec
from netvm.core.errors import AddFinding, Finding, Findings, UserError
from netvm.core.files import file_sha256
from netvm.core.hosttools import git_head
from netvm.core.pipeline import StepOutput, StepRunner
from netvm.core.progress import Progress, StepProgress, silent
from netvm.core.toollog import LOG_NAME, ToolLog
from netvm.microkit.fetch import SDK_URL, fetch_git, fetch_sdk, microkit_cache, unpack_sdk
from netvm.microkit.system import render_system, system_files

# name -> (task flag, environment variable, what it is)
INPUTS: dict[str, tuple[str, str, str]] = {
    "microkit_sdk": ("--microkit-sdk", "NETVM_MICROKIT_SDK", "the Microkit SDK"),
    "libvmm": ("--libvmm", "NETVM_LIBVMM", "libvmm (with the Ethernet driver VM example)"),
    "sddf": ("--sddf", "NETVM_SDDF", "sDDF"),
}
# The python that runs upstream's meta.py (it imports sdfgen). Config/env only: rarely set.
PYTHON_ENV = "NETVM_MICROKIT_PYTHON"
# Where a missing SDK is fetched from: a template with {version} and {platform}, for a
# mirror of upstream's release assets. Config/env only: rarely set.
SDK_URL_ENV = "NETVM_MICROKIT_SDK_URL"
# Host commands upstream's make runs, by name, with the Debian package holding each.
# Checked before make so a missing one is one clear error, not a failure minutes in.
HOST_TOOLS: dict[str, str] = {
    "make": "make",
    "clang": "clang",
    "ld.lld": "lld",
    "llvm-ar": "llvm",
    "llvm-ranlib": "llvm",
    "llvm-objcopy": "llvm",
    "dtc": "device-tree-compiler",
    "shasum": "perl",
}
METAPROGRAM = Path(__file__).with_name("metaprogram.py")
CONFIG_SECTION = "netvm"  # invoke.yaml section holding microkit_sdk / libvmm / sddf / python


@dataclass(frozen=True)
class InputPath:
    path: Path  # absolute
    origin: str  # where it came from, e.g. "--libvmm" or "$NETVM_LIBVMM"


@dataclass(frozen=True)
class MicrokitInputs:
    """Where the external inputs are, before they are checked."""

    sdk: InputPath | None
    libvmm: InputPath | None
    sddf: InputPath | None
    python: str
    fetch: bool = False  # fetch inputs given nowhere at their pins (the task's default)
    sdk_url: str = SDK_URL  # template of the SDK archive's URL when it is fetched

    @property
    def missing(self) -> tuple[str, ...]:
        names = ("microkit_sdk", "libvmm", "sddf")
        return tuple(
            n for n, v in zip(names, (self.sdk, self.libvmm, self.sddf), strict=True) if v is None
        )


@dataclass(frozen=True)
class CheckedInputs:
    """Inputs that passed every check, with what could be verified about each."""

    sdk: Path  # an SDK directory (extracted when an archive was given)
    sdk_version: str
    libvmm: Path
    example: Path  # the directory holding upstream's Makefile
    sddf: Path
    python: str
    sdfgen_version: str
    provenance: dict[str, str]  # input -> "verified: …" or "unverified: …"


@dataclass(frozen=True)
class GuestArtifacts:
    kernel_image: Path
    initramfs: Path
    guest_dts: Path  # the merged base + overlay DTS (has /dts-v1/)
    guest_dtb: Path  # it compiled, as netvm checked it


@dataclass(frozen=True)
class LoaderImage:
    loader_img: Path
    log: Path
    report: Path | None
    command: tuple[str, ...]
    seconds: float


def resolve_inputs(
    flags: Mapping[str, str | None],
    config: Mapping[str, Any] | None,
    env: Mapping[str, str],
    *,
    cwd: Path,
    config_dir: Path,
    fetch: bool = False,
) -> MicrokitInputs:
    """Pick each input from the flags, then invoke.yaml, then the environment.

    Relative paths are taken from where the user typed them: flags and environment
    from `cwd`, invoke.yaml from the directory holding it (`config_dir`). With `fetch`
    (`--fetch`, or `netvm.microkit.fetch: true` in invoke.yaml) the build step fetches whatever
    is still missing (see `fetch_missing`); without it nothing touches the network.
    """
    section = dict(config or {})
    fetch = fetch or section.get("fetch") is True
    found: dict[str, InputPath | None] = {}
    for name, (flag, var, _what) in INPUTS.items():
        found[name] = None
        if flags.get(name):
            found[name] = InputPath(_abs(str(flags[name]), cwd), flag)
        elif section.get(name):
            found[name] = InputPath(
                _abs(str(section[name]), config_dir), f"invoke.yaml {CONFIG_SECTION}.{name}"
            )
        elif env.get(var):
            found[name] = InputPath(_abs(env[var], cwd), f"${var}")
    libvmm = found["libvmm"]
    if found["sddf"] is None and libvmm is not None:
        # Upstream's example builds against libvmm's own submodule; use it when present.
        sub = libvmm.path / "dep" / "sddf"
        if sub.is_dir() and any(sub.iterdir()):
            found["sddf"] = InputPath(sub, f"{libvmm.origin} dep/sddf submodule")
    # meta.py imports sdfgen: by default the interpreter running netvm, whose venv is where
    # the docs install it (make's own default, python3, rarely has it).
    python = str(section.get("python") or env.get(PYTHON_ENV) or sys.executable)
    url = str(section.get("microkit_sdk_url") or env.get(SDK_URL_ENV) or SDK_URL)
    return MicrokitInputs(found["microkit_sdk"], libvmm, found["sddf"], python, fetch, url)


def _abs(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path).absolute()


def _pins(board: Board) -> MicrokitSpec:
    """The board's Microkit pins; callers run only for boards that have them."""
    assert board.microkit is not None, f"board {board.name} has no microkit section"
    return board.microkit


def how_to_supply(name: str, spec: MicrokitSpec) -> str:
    flag, var, _what = INPUTS[name]
    form = {
        "microkit_sdk": f"DIR (an extracted microkit-sdk-{spec.sdk_version}) or its .tar.gz",
        "libvmm": "DIR (a libvmm checkout" + (f" at {spec.libvmm.commit})" if spec.libvmm else ")"),
        "sddf": "DIR (an sDDF checkout" + (f" at {spec.sddf.commit})" if spec.sddf else ")"),
    }[name]
    return f"pass {flag} {form}, set ${var}, or set {CONFIG_SECTION}.{name} in invoke.yaml"


def missing_note(inputs: MicrokitInputs, failures: Mapping[str, Finding] | None = None) -> str:
    """The one short line of a build that stops before loader.img.

    The reasons in full (what failed, how to supply each input) are what
    `--require-image` prints; the note only says which inputs and where to look.
    """
    names = ", ".join(INPUTS[n][0].lstrip("-") for n in inputs.missing)
    if failures:
        return f"loader.img not built: fetching {names} failed (--require-image says why)"
    return f"loader.img not built: no {names} given (docs/microkit.md)"


def missing_findings(
    board: Board,
    display: str,
    inputs: MicrokitInputs,
    failures: Mapping[str, Finding] | None = None,
) -> list[Finding]:
    """One finding per missing input: why its fetch failed, else that none was given."""
    spec = _pins(board)
    keys = {
        "microkit_sdk": "microkit.sdk_version",
        "libvmm": "microkit.libvmm",
        "sddf": "microkit.sddf",
    }
    failures = failures or {}
    return [
        failures.get(name)
        or Finding(
            display,
            keys[name],
            f"loader.img needs {INPUTS[name][2]} and none was given",
            how_to_supply(name, spec),
        )
        for name in inputs.missing
    ]


# ---------------------------------------------------------------------------------------
# Fetching what was not given


@dataclass(frozen=True)
class FetchOutcome:
    inputs: MicrokitInputs  # with every fetched input filled in
    failures: dict[str, Finding]  # input name -> why it could not be fetched
    provenance: dict[str, str]  # input name -> how the fetched copy was verified


def fetch_missing(
    board: Board,
    display: str,
    inputs: MicrokitInputs,
    *,
    cache: Path | None = None,
    platform_name: str | None = None,
) -> FetchOutcome:
    """Fetch each missing input at the board's pin into `cache` (netvm's cache by default).

    sDDF comes from its own pinned repository when it has one; otherwise from the
    fetched libvmm's dep/sddf submodule, which is then the only submodule initialised.
    A libvmm the user gave is never touched: sDDF then has to be given or fetched.
    """
    spec = _pins(board)
    cache = cache or microkit_cache()
    failures: dict[str, Finding] = {}
    provenance: dict[str, str] = {}
    found = {"microkit_sdk": inputs.sdk, "libvmm": inputs.libvmm, "sddf": inputs.sddf}

    def take(got: Any) -> None:
        if got.path is None:
            failures[got.name] = got.finding
        else:
            found[got.name] = InputPath(got.path, f"fetched into {cache}")
            provenance[got.name] = got.provenance

    sddf_separately = spec.sddf is not None and bool(spec.sddf.repository)
    if found["libvmm"] is None:
        sub = () if sddf_separately or found["sddf"] is not None else ("dep/sddf",)
        take(
            fetch_git(
                "libvmm",
                spec.libvmm,
                "microkit.libvmm",
                display,
                how_to_supply("libvmm", spec),
                cache=cache,
                submodules=sub,
            )
        )
        libvmm = found["libvmm"]
        if found["sddf"] is None and not sddf_separately and libvmm is not None:
            sub_dir = libvmm.path / "dep" / "sddf"
            if sub_dir.is_dir() and any(sub_dir.iterdir()):
                found["sddf"] = InputPath(sub_dir, f"{libvmm.origin} dep/sddf submodule")
    if found["sddf"] is None:
        take(
            fetch_git(
                "sddf",
                spec.sddf,
                "microkit.sddf",
                display,
                how_to_supply("sddf", spec),
                cache=cache,
            )
        )
    if found["microkit_sdk"] is None:
        take(
            fetch_sdk(
                spec,
                platform_name or host_platform(),
                display,
                how_to_supply("microkit_sdk", spec),
                cache=cache,
                url_template=inputs.sdk_url,
            )
        )
    fetched = replace(inputs, sdk=found["microkit_sdk"], libvmm=found["libvmm"], sddf=found["sddf"])
    return FetchOutcome(fetched, failures, provenance)


# ---------------------------------------------------------------------------------------
# Checking the inputs against the board's pins


def host_platform() -> str:
    """The Microkit SDK archive suffix for this machine, e.g. linux-x86-64."""
    system = {"Linux": "linux", "Darwin": "macos"}.get(platform.system(), platform.system())
    machine = {"x86_64": "x86-64", "AMD64": "x86-64", "arm64": "aarch64"}.get(
        platform.machine(), platform.machine()
    )
    return f"{system}-{machine}"


def check_inputs(
    board: Board,
    display: str,
    inputs: MicrokitInputs,
    work_dir: Path,
    *,
    platform_name: str | None = None,
) -> CheckedInputs:
    """Verify every input against the board's pins; raise one UserError listing all problems.

    An SDK archive is unpacked under `work_dir` only after its sha256 matched the pin.
    """
    spec = _pins(board)
    found = Findings(display)
    found.collected.extend(missing_findings(board, display, inputs))
    add = found.add
    provenance: dict[str, str] = {}

    sdk_dir: Path | None = None
    sdk_version = ""
    if inputs.sdk is not None:
        sdk_dir, sdk_version = _check_sdk(
            spec, inputs.sdk, work_dir, platform_name or host_platform(), add, provenance
        )
    libvmm_dir = example = None
    if inputs.libvmm is not None:
        libvmm_dir, example = _check_libvmm(spec, inputs.libvmm, add, provenance)
    sddf_dir = None
    if inputs.sddf is not None:
        sddf_dir = _check_tree(
            "sddf", inputs.sddf, spec.sddf, "microkit.sddf.commit", "include/sddf", add, provenance
        )
    sdfgen_version = _check_sdfgen(spec, inputs.python, add, provenance)
    missing_tools = missing_host_tools()
    if missing_tools:
        packages = sorted({HOST_TOOLS[t] for t in missing_tools})
        add(
            "microkit",
            "upstream's make needs these host commands, not found on PATH: "
            + ", ".join(missing_tools),
            f"apt-get install {' '.join(packages)} (./bootstrap installs them)",
        )
    found.raise_any()
    assert sdk_dir and libvmm_dir and example and sddf_dir
    return CheckedInputs(
        sdk_dir,
        sdk_version,
        libvmm_dir,
        example,
        sddf_dir,
        inputs.python,
        sdfgen_version,
        provenance,
    )


def missing_host_tools(path: str | None = None) -> list[str]:
    """The commands of HOST_TOOLS that `path` (default: $PATH) does not have."""
    return [tool for tool in HOST_TOOLS if shutil.which(tool, path=path) is None]


def _check_sdk(
    spec: MicrokitSpec,
    given: InputPath,
    work_dir: Path,
    platform_name: str,
    add: AddFinding,
    provenance: dict[str, str],
) -> tuple[Path | None, str]:
    path = given.path
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        pinned = spec.sdk_archive_sha256(platform_name)
        key = f"microkit.sdk_sha256.{platform_name}"
        if pinned is None:
            add(
                key,
                f"no sha256 is pinned for the {platform_name} SDK archive, so {path.name} "
                f"({given.origin}) cannot be verified",
                "check the archive against upstream's release yourself, then record its "
                "sha256 under that key, or pass the extracted SDK directory instead",
            )
            return None, ""
        actual = file_sha256(path)
        if actual != pinned:
            add(
                key,
                f"{path} ({given.origin}) has sha256 {actual}, the board pins {pinned}",
                f"download microkit-sdk-{spec.sdk_version}-{platform_name}.tar.gz again",
            )
            return None, ""
        path = unpack_sdk(path, work_dir / f"sdk-{actual[:16]}")
        provenance["microkit_sdk"] = f"verified: archive sha256 {actual}"
    elif not path.is_dir():
        add(
            "microkit.sdk_version",
            f"Microkit SDK {path} ({given.origin}) does not exist",
            "give an extracted microkit-sdk directory or its .tar.gz",
        )
        return None, ""
    else:
        provenance["microkit_sdk"] = "unverified: a directory (only an archive has a pinned hash)"
    version = sdk_version(path)
    if version is None:
        add(
            "microkit.sdk_version",
            f"cannot tell the version of the Microkit SDK at {path} ({given.origin}): "
            "it has no VERSION file and is not named microkit-sdk-<version>",
            "use the SDK directory as released (microkit-sdk-2.0.1/)",
        )
        return None, ""
    problems = 0
    if version != spec.sdk_version:
        add(
            "microkit.sdk_version",
            f"the Microkit SDK at {path} ({given.origin}) is version {version}, the board "
            f"pins {spec.sdk_version}",
            f"use microkit-sdk-{spec.sdk_version} (libvmm's example is written for it), or "
            "change microkit.sdk_version after checking libvmm supports that SDK",
        )
        problems += 1
    if not (path / "bin" / "microkit").is_file():
        add("microkit.sdk_version", f"{path} has no bin/microkit: not a Microkit SDK", "")
        problems += 1
    board_dir = path / "board" / spec.board / spec.config
    if (path / "board").is_dir() and not board_dir.is_dir():
        known = sorted(p.name for p in (path / "board").iterdir() if p.is_dir())
        add(
            "microkit.board",
            f"the SDK at {path} has no board {spec.board!r} in config {spec.config!r}",
            f"boards in this SDK: {', '.join(known) or 'none'}",
        )
        problems += 1
    return (None if problems else path), version


def sdk_version(sdk: Path) -> str | None:
    """The SDK's version: its VERSION file, else the release directory name."""
    version_file = sdk / "VERSION"
    if version_file.is_file():
        text = version_file.read_text().strip()
        if text:
            return text
    m = re.fullmatch(r"microkit-sdk-(\d+\.\d+\.\d+(?:[-+.][\w.+-]*)?)", sdk.name)
    return m.group(1) if m else None


def _check_libvmm(
    spec: MicrokitSpec,
    given: InputPath,
    add: AddFinding,
    provenance: dict[str, str],
) -> tuple[Path | None, Path | None]:
    root = _check_tree("libvmm", given, spec.libvmm, "microkit.libvmm.commit", "", add, provenance)
    if root is None:
        return None, None
    example = root / spec.example
    if not (example / "Makefile").is_file():
        add(
            "microkit.libvmm.example",
            f"libvmm at {root} ({given.origin}) has no {spec.example}/Makefile",
            "the Ethernet driver VM example lives on libvmm's eth_uio_rebased_new_2025 "
            + (f"branch (commit {spec.libvmm.commit})" if spec.libvmm else "branch"),
        )
        return None, None
    return root, example


def _check_tree(
    name: str,
    given: InputPath,
    pin: Any,
    key: str,
    must_have: str,
    add: AddFinding,
    provenance: dict[str, str],
) -> Path | None:
    path = given.path
    if not path.is_dir():
        add(key, f"{name} directory {path} ({given.origin}) does not exist", "")
        return None
    if must_have and not (path / must_have).is_dir():
        add(key, f"{path} ({given.origin}) has no {must_have}/: not an {name} tree", "")
        return None
    head = git_head(path)
    if pin is None:
        provenance[name] = f"unverified: the board pins no {name} commit"
    elif head is None:
        provenance[name] = f"unverified: {path} is not a git checkout (pinned {pin.commit})"
    elif not head.startswith(pin.commit):
        add(
            key,
            f"{name} at {path} ({given.origin}) is at commit {head[:12]}, the board pins "
            f"{pin.commit}",
            f"git -C {path} checkout {pin.commit}, or change {key} after checking that "
            "commit works with the other pins",
        )
        return None
    else:
        provenance[name] = f"verified: git commit {head}"
    return path


# Run under the python make will use: what sdfgen it has, at which commit (pip's install
# record of a git install), and whether it has the keyword upstream's example passes.
_SDFGEN_PROBE = """
import importlib.metadata as m, inspect, json
out = {"version": None, "commit": None, "driver_vm": None, "error": None}
try:
    dist = m.distribution("sdfgen")
except m.PackageNotFoundError:
    dist = None
if dist is not None:
    out["version"] = dist.version
    record = json.loads(dist.read_text("direct_url.json") or "{}")
    out["commit"] = record.get("vcs_info", {}).get("commit_id")
    try:
        import sdfgen
        params = inspect.signature(sdfgen.Sddf.Net.__init__).parameters
        out["driver_vm"] = "driver_vm_system" in params
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def sdfgen_install_hint(spec: MicrokitSpec, python: str) -> str:
    """One line saying how to get the pinned sdfgen for `python`."""
    pin = spec.sdfgen
    source = f"git+{pin.repository}@{pin.commit}" if pin.repository else pin.commit
    return (
        f"{python} -m pip install 'sdfgen @ {source}' (it builds with Zig 0.15; "
        "docs/microkit.md, 'sdfgen')"
    )


def _check_sdfgen(
    spec: MicrokitSpec,
    python: str,
    add: AddFinding,
    provenance: dict[str, str],
) -> str:
    """The sdfgen upstream's meta.py will import when make runs `python`, against the pin.

    Returns its version, plus the commit when pip recorded one.
    """
    pin, key = spec.sdfgen, "microkit.sdfgen"
    hint = sdfgen_install_hint(spec, python)
    try:
        proc = subprocess.run(
            [python, "-c", _SDFGEN_PROBE], capture_output=True, text=True, check=False
        )
    except (FileNotFoundError, PermissionError):
        add(
            key,
            f"python {python!r} (runs upstream's meta.py) not found",
            f"set {PYTHON_ENV} or {CONFIG_SECTION}.python in invoke.yaml",
        )
        return ""
    if proc.returncode != 0:
        add(key, f"{python} cannot run netvm's sdfgen probe: {proc.stderr.strip()[-300:]}", "")
        return ""
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    version, commit = found["version"], found["commit"]
    if version is None:
        add(
            key,
            f"sdfgen is not installed for {python}, which runs upstream's meta.py",
            f"{hint}; or set {PYTHON_ENV} to a python that has it",
        )
        return ""
    described = f"{version} (commit {commit[:12]})" if commit else version
    if commit and not commit.startswith(pin.commit):
        add(key, f"{python} has sdfgen {described}, the board pins commit {pin.commit[:12]}", hint)
    elif version != pin.version:
        add(
            key,
            f"{python} has sdfgen {described}, the board pins {pin.version} at commit "
            f"{pin.commit[:12]}; sdfgen serialises the sDDF/libvmm config structs, so another "
            "version does not fit the pinned sDDF",
            hint,
        )
    elif found["error"]:
        add(key, f"sdfgen {described} does not import under {python}: {found['error']}", hint)
    elif not found["driver_vm"]:
        add(
            key,
            f"{python} has sdfgen {described} without driver-VM support (its Sddf.Net takes "
            "no driver_vm_system): a release, not the pinned branch commit "
            f"{pin.commit[:12]}",
            hint,
        )
    elif commit:
        provenance["sdfgen"] = f"verified: {python} has sdfgen {version}, git commit {commit}"
    else:
        provenance["sdfgen"] = (
            f"unverified: {python} has sdfgen {version} with driver-VM support, installed "
            f"from a local tree (pip recorded no commit; pinned {pin.commit[:12]})"
        )
    return described


# ---------------------------------------------------------------------------------------
# Running upstream's make


def make_command(
    board: Board, checked: CheckedInputs, guest: GuestArtifacts, work_dir: Path
) -> list[str]:
    """The upstream make invocation: every guest input substituted by an absolute path.

    Command-line variables override the example's own assignments and reach its
    sub-make in BUILD_DIR, which is why each is absolute.

    The guest's extras upstream would add are handed over empty: netvm's guest.dts
    already holds the driver-VM overlay (dtscat then only copies it), and netvm's
    initramfs already starts the driver. Its copy as NET_DRIVER_VM_INITRD_FINAL (see
    `stage_initrd`) is what goes into the image, so packrootfs, which stamps the time
    into every cpio entry, never runs and loader.img is reproducible.
    """
    spec = _pins(board)
    if spec.system is not None:
        return system_make_command(board, checked, guest, work_dir)
    return [
        "make",
        "-C",
        str(checked.example),
        f"MICROKIT_SDK={checked.sdk}",
        f"MICROKIT_BOARD={spec.board}",
        f"MICROKIT_CONFIG={spec.config}",
        f"BUILD_DIR={work_dir / 'build'}",
        f"LIBVMM={checked.libvmm}",
        f"SDDF={checked.sddf}",
        f"PYTHON={meta_python(board, checked.python)}",
        f"LINUX={guest.kernel_image.absolute()}",
        f"INITRD={guest.initramfs.absolute()}",
        f"NET_DRIVER_VM_INITRD_FINAL={staged_initrd(work_dir, guest)}",
        f"NET_DRIVER_VM_DTS={guest.guest_dts.absolute()}",
        "NET_DRIVER_VM_DTS_OVERLAY=",
        "NET_DRIVER_VM_USERLEVEL=",
        "NET_DRIVER_VM_USERLEVEL_INIT=",
    ]


def system_make_command(
    board: Board, checked: CheckedInputs, guest: GuestArtifacts, work_dir: Path
) -> list[str]:
    """The make invocation of netvm's own system make file (netvm.microkit.system), for a
    board upstream's example does not know. netvm's guest files go in as they are."""
    spec = _pins(board)
    files = system_files(work_dir)
    return [
        "make",
        "-f",
        str(files.makefile),
        "-C",
        str(work_dir / "build"),
        f"MICROKIT_SDK={checked.sdk}",
        f"MICROKIT_BOARD={spec.board}",
        f"MICROKIT_CONFIG={spec.config}",
        f"LIBVMM={checked.libvmm}",
        f"SDDF={checked.sddf}",
        f"EXAMPLE_DIR={checked.example}",
        f"PYTHON={meta_python(board, checked.python)} --board-entry {files.board_entry}",
        f"LINUX={guest.kernel_image.absolute()}",
        f"INITRD={guest.initramfs.absolute()}",
        f"GUEST_DTB={guest.guest_dtb.absolute()}",
        f"NETVM_INCLUDE={files.include_dir}",
    ]


def meta_python(board: Board, python: str) -> str:
    """make's PYTHON: `python` running upstream's meta.py through netvm's metaprogram.py,
    which gives the sDDF clients the board's MAC addresses (see that module)."""
    macs = ",".join(f"{c.name}={c.mac}" for c in board.net.clients)
    return f"{python} {METAPROGRAM} {macs}"


def staged_initrd(work_dir: Path, guest: GuestArtifacts) -> Path:
    return work_dir / "guest" / guest.initramfs.name


def stage_initrd(work_dir: Path, guest: GuestArtifacts) -> Path:
    """Copy netvm's initramfs to where make expects its packed initrd.

    The fresh copy is newer than its only prerequisite (INITRD, the same bytes), so
    make considers upstream's packrootfs rule done and packages this file unchanged.
    """
    staged = staged_initrd(work_dir, guest)
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(guest.initramfs, staged)  # a new mtime: now
    return staged


def build_loader_image(
    board: Board,
    display: str,
    checked: CheckedInputs,
    guest: GuestArtifacts,
    work_dir: Path,
    progress: Progress = silent,
    *,
    echo: Progress | None = None,
    label: str = "microkit",
) -> LoaderImage:
    """Run upstream's make, its whole output to ``build.log`` in `work_dir` (and to `echo`
    too, for --verbose) and a status line to `progress`; on failure raise a UserError
    quoting the end of the log."""
    (work_dir / "build").mkdir(parents=True, exist_ok=True)
    cmd = make_command(board, checked, guest, work_dir)
    if _pins(board).system is None:
        stage_initrd(work_dir, guest)
    log = work_dir / LOG_NAME
    tools = ToolLog(log, echo=echo)
    start = time.monotonic()
    env = dict(os.environ, MICROKIT_SDK=str(checked.sdk))
    with StepProgress(progress, label) as status:
        status.phase(f"make ({cmd[2]})")
        run = tools.stream(cmd, env=env)
    seconds = time.monotonic() - start
    loader = work_dir / "build" / "loader.img"
    if run.status != 0 or not loader.is_file():
        tail = run.tail
        what = f"exited with status {run.status}" if run.status else "did not produce loader.img"
        raise UserError(
            [
                Finding(
                    display,
                    "microkit",
                    f"make ({cmd[2]}) {what}; last lines of {log}:\n  " + "\n  ".join(tail),
                    "the full log is in that file; an objcopy 'section too small' error "
                    "means sdfgen and sDDF are from different releases",
                )
            ]
        )
    report = work_dir / "build" / "report.txt"
    return LoaderImage(loader, log, report if report.is_file() else None, tuple(cmd), seconds)


# ---------------------------------------------------------------------------------------
# The pipeline step


def run_step(
    board: Board,
    display: str,
    runner: StepRunner,
    inputs: MicrokitInputs | None,
    *,
    require_image: bool,
    root: Path | None = None,
    header: str = "",
    echo: Progress | None = None,
) -> None:
    """The `microkit` build step: `loader.img` from the guest artifacts, or a clear skip.
    make's output goes to ``build/<board>/microkit/build.log`` (and to `echo`, if given).

    Without the external inputs (or without a guest artifact) the step is skipped with a
    note saying what loader.img needs; `require_image` turns that into a UserError.
    Inputs that are given but do not match the board's pins are always an error.
    """
    inputs = inputs or MicrokitInputs(None, None, None, sys.executable)
    work_dir = runner.build_dir / "microkit"
    guest_names = {
        "kernel_image": "kernel Image",
        "initramfs": "initramfs",
        "dts": "guest DTS",
        "dtb": "guest DTB",
    }
    absent = [what for name, what in guest_names.items() if name not in runner.artifacts]
    failures: dict[str, Finding] = {}
    fetched: dict[str, str] = {}
    # Without the guest artifacts there is nothing to build, so nothing worth fetching.
    if inputs.missing and inputs.fetch and not absent:
        runner.progress(f"[microkit] fetching {', '.join(inputs.missing)} at the pins")
        outcome = fetch_missing(board, display, inputs)
        inputs, failures, fetched = outcome.inputs, outcome.failures, outcome.provenance
    if inputs.missing or absent:
        findings = missing_findings(board, display, inputs, failures)
        if absent:
            findings.append(
                Finding(
                    display,
                    "microkit",
                    f"loader.img needs the guest's {', '.join(absent)}, which this build "
                    "did not produce",
                    "run the kernel, rootfs and dtb steps first (without --skip)",
                )
            )
        note = (
            missing_note(inputs, failures)
            if inputs.missing
            else f"loader.img not built: the build produced no {', '.join(absent)}"
        )
        runner.skip("microkit", note)
        if require_image:
            raise UserError(findings)
        return
    start = time.monotonic()
    try:
        checked = check_inputs(board, display, inputs, work_dir)
    except UserError:
        runner.fail("microkit", time.monotonic() - start, "inputs do not match pins")
        raise
    if fetched:
        checked = replace(checked, provenance={**checked.provenance, **fetched})
    guest = GuestArtifacts(
        runner.artifacts["kernel_image"].path,
        runner.artifacts["initramfs"].path,
        runner.artifacts["dts"].path,
        runner.artifacts["dtb"].path,
    )
    own: tuple[Path, ...] = (METAPROGRAM,)
    if _pins(board).system is not None:
        root = root or Path(__file__).resolve().parents[2]  # the templates' checkout
        own += render_system(board, work_dir, root, header or "Generated by netvm").files
    step_inputs = {
        "command": make_command(board, checked, guest, work_dir),
        "guest": {n: runner.artifacts[n].sha256 for n in guest_names},
        "sdk_version": checked.sdk_version,
        "sdfgen": checked.sdfgen_version,
        "provenance": checked.provenance,
        "pins": repr(_pins(board)),
        # netvm's own part of the make: metaprogram.py, and the rendered system files
        "netvm_files": {p.name: file_sha256(p) for p in own},
    }

    def make_image() -> StepOutput:
        result = build_loader_image(
            board,
            display,
            checked,
            guest,
            work_dir,
            runner.progress,
            echo=echo,
            label=runner.label + "microkit",
        )
        details = {
            "log": str(result.log),
            "report": str(result.report) if result.report else None,
            "make_seconds": round(result.seconds, 1),
            "sdk_version": checked.sdk_version,
            "sdfgen_version": checked.sdfgen_version,
            "inputs": checked.provenance,
        }
        return StepOutput({"loader_img": result.loader_img}, details)

    runner.run("microkit", step_inputs, make_image)
