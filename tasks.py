"""netvm tasks: a thin invoke layer over the `netvm` package.

Each task parses its flags, calls one library function and prints the result. User
errors (`netvm.core.errors.UserError`) are printed without a traceback and exit with 2.

`task` is netvm's (`netvm.core.cli`): no invented short flags, the defaults shown in
`--help`, a repeatable flag needs its value, and invoke's `--dry` is refused. Each help
text starts with the kind of value its flag takes (BOARD, PATH, DURATION, ...).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Collection, Context, Exit

from netvm.board import load_board
from netvm.board.scaffold import new_board
from netvm.builder import lock as lock_lib
from netvm.builder.build import BuildOptions, build, kernel_source, lock_inputs
from netvm.container.image import ImageSpec, image_spec
from netvm.core.cli import task
from netvm.core.cliargs import parse_int, parse_seconds
from netvm.core.errors import INTERRUPT_EXIT, USER_ERROR_EXIT, Finding, Interrupted, UserError
from netvm.core.progress import Console
from netvm.core.workspace import Workspace, display_path
from netvm.guest import kernel as kernel_lib
from netvm.guest.drivercheck import check_driver_rules
from netvm.guest.render import render_all
from netvm.guest.toolchain import toolchain_findings
from netvm.microkit import checks as sdfcheck
from netvm.microkit.handoff import resolve_inputs
from netvm.target import flash as flash_lib

ROOT = Path(__file__).resolve().parent
F = TypeVar("F", bound=Callable[..., Any])

BOARD_HELP = "BOARD: a board name under boards/ (e.g. odroidc4) or the path to a board.yaml"
KERNEL_SRC_HELP = "DIR: use this local kernel tree instead of the board's kernel source"
DURATION = "DURATION (90, 15s, 5m, 1h)"
MICROKIT_SDK_HELP = (
    "PATH: the Microkit SDK directory or .tar.gz archive (default: invoke.yaml"
    " netvm.microkit_sdk, else $NETVM_MICROKIT_SDK)"
)
LIBVMM_HELP = (
    "DIR: a libvmm checkout with the eth_driver_vm example (default: netvm.libvmm, else"
    " $NETVM_LIBVMM)"
)
SDDF_HELP = "DIR: an sDDF checkout (default: netvm.sddf, $NETVM_SDDF, else libvmm's dep/sddf)"


def user_errors(fn: F) -> F:
    """Turn a UserError into its findings on stderr and exit status 2, and an interrupt
    into one line saying what it stopped, exit status 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise Exit(exc.render(), code=USER_ERROR_EXIT) from None
        except Interrupted as exc:
            raise Exit(str(exc), code=INTERRUPT_EXIT) from None

    return wrapper  # type: ignore[return-value]


def _workspace() -> Workspace:
    """This checkout, building into build/ (or $NETVM_BUILD_DIR)."""
    return Workspace.at(ROOT)


def _write_json(dest: str, doc: Any) -> None:
    """`--json PATH` in every task: the document to PATH, or to stdout for "-"."""
    text = json.dumps(doc, indent=2) + "\n"
    if dest == "-":
        sys.stdout.write(text)
    else:
        Path(dest).write_text(text)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@task(help={"board": BOARD_HELP})
@user_errors
def render(c: Context, board: str = "odroidc4") -> None:
    """Render kernel fragments, overlay DTS, driver config and rootfs overlay."""
    b = load_board(board, ROOT)
    ws = _workspace()
    out = ws.build_dir(b) / "render"
    result = render_all(b, out, ROOT)
    print(
        f"rendered {len(result.files)} files under {ws.display(out)} "
        f"({len(result.changed)} changed)"
    )


@task(
    name="build",
    help={
        "board": BOARD_HELP,
        "force": "re-run every step even if its inputs are unchanged, and regenerate a"
        " hand-edited kernel .config (see kernel.savefragment)",
        "kernel-src": KERNEL_SRC_HELP,
        "json": "FILE: also write the manifest as JSON to this file (- : on stdout, no summary)",
        "verbose": "also print every tool's output (it always goes to build/B/STEP/build.log)",
        "skip": "STEP (repeatable): do not run this step: kernel, rootfs, dtb or microkit",
        "require-image": "fail (exit 2) when loader.img cannot be built, e.g. inputs missing",
        "microkit-sdk": MICROKIT_SDK_HELP,
        "libvmm": LIBVMM_HELP,
        "sddf": SDDF_HELP,
        "locked": "fail before building if any input differs from boards/B/netvm.lock",
        "fetch": "fetch inputs given nowhere at the board's pins into the cache (else only"
        " given paths are used; invoke.yaml netvm.microkit.fetch: true makes it the default)",
    },
    iterable=["skip"],
)
@user_errors
def build_(
    c: Context,
    board: str = "odroidc4",
    force: bool = False,
    kernel_src: str | None = None,
    json_: str | None = None,
    skip: list[str] | None = None,
    require_image: bool = False,
    microkit_sdk: str | None = None,
    libvmm: str | None = None,
    sddf: str | None = None,
    fetch: bool = False,
    locked: bool = False,
    verbose: bool = False,
) -> None:
    """Build the guest (render, kernel, rootfs, DTB, Microkit image) and write the manifest."""
    b = load_board(board, ROOT)
    options = BuildOptions(
        force=force,
        kernel_src=Path(kernel_src) if kernel_src else None,
        skip=frozenset(skip or ()),
        microkit=resolve_inputs(
            {"microkit_sdk": microkit_sdk, "libvmm": libvmm, "sddf": sddf},
            c.config.get("netvm"),
            os.environ,
            cwd=Path.cwd(),
            config_dir=ROOT,
            fetch=fetch,
        ),
        require_image=require_image,
        locked=locked,
        verbose=verbose,
    )
    ws = _workspace()
    manifest = build(b, ws, options, progress=Console(sys.stderr))
    if json_:
        _write_json(json_, manifest)
        if json_ == "-":
            return
    for step in manifest["steps"]:
        note = f"  {step['note']}" if step.get("note") else ""
        print(f"{step['name']:<9} {step['status']:<8} {step['seconds']:7.2f} s{note}")
    print(f"manifest: {ws.display(ws.build_dir(b) / 'manifest.json')}")


@task(
    help={
        "board": BOARD_HELP,
        "system": "FILE: the Microkit .system file to check (default: the one the microkit"
        " step wrote)",
        "dtb": "FILE: the guest DTB to check (default: build/B/dtb/guest.dtb)",
        "vm": "NAME: the driver VM's <virtual_machine> name, if the file has several",
        "strict": "treat warnings (enabled DT nodes nothing maps) as errors",
        "verbose": "list every warning (default: one line per kind of warning)",
    }
)
@user_errors
def check(
    c: Context,
    board: str = "odroidc4",
    system: str | None = None,
    dtb: str | None = None,
    vm: str | None = None,
    strict: bool = False,
    verbose: bool = False,
) -> None:
    """Cross-check the guest DTB against the Microkit system description (UIO, RAM, devices)."""
    b = load_board(board, ROOT)
    report = sdfcheck.check_files(
        b,
        _workspace(),
        system=Path(system) if system else None,
        dtb=Path(dtb) if dtb else None,
        vm_name=vm,
        strict=strict,
    )
    print(sdfcheck.format_report(report, verbose=verbose))


@task(
    help={
        "board": BOARD_HELP,
        "method": "METHOD: tftp (serve over the network, drive U-Boot on --serial) or sdcard",
        "serial": "DEVICE: the U-Boot console, a tty such as /dev/ttyUSB0 or unix:PATH (a QEMU"
        " socket) (default: none; a QEMU board then boots U-Boot under QEMU itself)",
        "baud": "RATE: the serial baud rate",
        "image": "FILE: the file to flash (default: the build's loader.img)",
        "load-address": "ADDRESS: the load/start address (default: the board's flash.load_address)",
        "server-ip": "IP: this machine's IP as the board sees it (default: the default route's)",
        "bind": "IP: the address the TFTP server listens on",
        "port": "PORT: the UDP port of the TFTP server (U-Boot always asks port 69)",
        "ip": "IP: a static IP for the board (default: dhcp)",
        "netmask": "NETMASK: the netmask with --ip",
        "gateway": "IP: the gateway with --ip, if the server is on another subnet",
        "success": "REGEX: on the console, means the boot worked (default: the driver's"
        " event-loop line; its start-up line on a QEMU board)",
        "timeout": f"{DURATION}: how long to wait for --success after the boot command",
        "device": "PATH: the SD card block device (whole disk) or a card image file, for"
        " --method sdcard",
        "force": "write a device that is mounted or not removable",
        "dry-run": "print the plan and write or send nothing",
        "log": "FILE: the console log (default: build/B/flash/console.log)",
    }
)
@user_errors
def flash(
    c: Context,
    board: str = "odroidc4",
    method: str = "tftp",
    serial: str | None = None,
    baud: str = "115200",
    image: str | None = None,
    load_address: str | None = None,
    server_ip: str | None = None,
    bind: str = "0.0.0.0",
    port: str = "69",
    ip: str | None = None,
    netmask: str = "255.255.255.0",
    gateway: str | None = None,
    success: str | None = None,
    timeout: str = f"{flash_lib.DEFAULT_TIMEOUT:g}",
    device: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    log: str | None = None,
) -> None:
    """Put the built image on a board: over TFTP through U-Boot, or onto an SD card."""
    b = load_board(board, ROOT)
    options = flash_lib.FlashOptions(
        method=method,
        serial=serial,
        baud=baud,
        image=Path(image) if image else None,
        load_address=load_address,
        server_ip=server_ip,
        bind=bind,
        port=port,
        ip=ip,
        netmask=netmask,
        gateway=gateway,
        success=success,
        timeout=timeout,
        device=Path(device) if device else None,
        force=force,
        dry_run=dry_run,
        log=Path(log) if log else None,
    )
    print(flash_lib.flash_board(b, _workspace(), options))


@task(help={"board": BOARD_HELP})
@user_errors
def validate(c: Context, board: str = "odroidc4") -> None:
    """Check a board file (schema, layout, driver rules) and this machine's build tools.

    Every finding is reported: the schema and layout, the guest driver's own rules, and
    whether the cross compiler, make and dtc the build needs are installed."""
    b = load_board(board, ROOT)
    findings: list[Finding] = []
    for guest in (b, b.sel4):
        if guest is not None:
            try:
                check_driver_rules(guest, ROOT)
            except UserError as exc:
                findings += exc.findings
    findings += toolchain_findings(b)
    if findings:
        raise UserError(findings)
    print(f"{b.file.relative_to(ROOT) if ROOT in b.file.parents else b.file}: ok")


@task(help={"board": BOARD_HELP, "kernel-src": KERNEL_SRC_HELP})
@user_errors
def menuconfig(c: Context, board: str = "odroidc4", kernel_src: str | None = None) -> None:
    """Edit the built guest kernel's .config interactively; then run kernel.diffconfig."""
    b = load_board(board, ROOT)
    src = kernel_source(b, Path(kernel_src) if kernel_src else None)
    kdir = _workspace().build_dir(b) / "kernel"
    kernel_lib.menuconfig(src.path, kdir, arch=b.arch, cross_compile=b.cross_compile)


@task(help={"board": BOARD_HELP})
@user_errors
def diffconfig(c: Context, board: str = "odroidc4") -> None:
    """Print what a hand-edited kernel .config changed, as a fragment to paste."""
    b = load_board(board, ROOT)
    print(kernel_lib.diffconfig(_workspace().build_dir(b) / "kernel"), end="")


@task(
    help={
        "board": BOARD_HELP,
        "to": "FILE: the fragment to merge into (default: the board's first kernel.fragments"
        " file, or a new boards/B/kernel.config)",
        "kernel-src": KERNEL_SRC_HELP,
    }
)
@user_errors
def savefragment(
    c: Context, board: str = "odroidc4", to: str | None = None, kernel_src: str | None = None
) -> None:
    """Write what a hand edit (kernel.menuconfig) changed into the board's kernel fragment."""
    b = load_board(board, ROOT)
    src = kernel_source(b, Path(kernel_src) if kernel_src else None)
    kdir = _workspace().build_dir(b) / "kernel"
    fragments = b.kernel.fragments
    target = Path(to).resolve() if to else (fragments[0] if fragments else b.dir / "kernel.config")
    saved = kernel_lib.save_fragment(
        src.path,
        kdir,
        target,
        kernel_version=src.version,
        arch=b.arch,
        cross_compile=b.cross_compile,
    )
    print(kernel_lib.saved_report(saved, b, ROOT))


@task(
    name="new",
    help={
        "name": "NAME: the new board's name (lowercase letters, digits, _): boards/NAME/",
        "from": "BOARD: the board to copy (a name under boards/ or the path to a board.yaml)",
    },
)
@user_errors
def board_new(c: Context, name: str, from_: str = "odroidc4") -> None:
    """Create boards/NAME/ from an existing board, with its name set (docs/board.md)."""
    b = new_board(ROOT, name, from_)
    print(f"created {display_path(b.file, ROOT)}; `invoke validate --board {b.name}` checks it")


board_ns = Collection("board")
board_ns.add_task(board_new)

kernel_ns = Collection("kernel")
kernel_ns.add_task(menuconfig)
kernel_ns.add_task(diffconfig)
kernel_ns.add_task(savefragment)

ns = Collection()
ns.add_collection(kernel_ns)
ns.add_collection(board_ns)
ns.add_task(render)
ns.add_task(build_, name="build")
ns.add_task(validate)
ns.add_task(check)
ns.add_task(flash)


@task(
    help={
        "board": "BOARD: remove this board's build directory (build/B, or under"
        " $NETVM_BUILD_DIR); a name whose board file is gone works too",
        "all": "remove every netvm build directory in the build root instead",
        "cache": "with --all: also remove the download cache (kernel sources, packages,"
        " Microkit inputs; ~/.cache/netvm or $NETVM_CACHE)",
        "dry-run": "say what would be removed and remove nothing",
    }
)
@user_errors
def clean(
    c: Context,
    board: str = "odroidc4",
    all_: bool = False,
    cache: bool = False,
    dry_run: bool = False,
) -> None:
    """Remove a board's build directory, or all of them (--all); never outside the build root."""
    from netvm.builder.clean import clean as clean_lib

    ws = _workspace()
    result = clean_lib(ws, board=board, all_boards=all_, cache=cache, dry_run=dry_run)
    print(result.summary(ws))


@task(
    help={
        "board": BOARD_HELP,
        "kernel-src": KERNEL_SRC_HELP,
        "skip": "STEP (repeatable): a step the next build leaves out, as build --skip",
        "microkit-sdk": MICROKIT_SDK_HELP,
        "libvmm": LIBVMM_HELP,
        "sddf": SDDF_HELP,
        "json": "FILE: write the report as JSON to this file (- : on stdout, no text)",
    },
    iterable=["skip"],
)
@user_errors
def info(
    c: Context,
    board: str = "odroidc4",
    kernel_src: str | None = None,
    skip: list[str] | None = None,
    microkit_sdk: str | None = None,
    libvmm: str | None = None,
    sddf: str | None = None,
    json_: str | None = None,
) -> None:
    """Show a board's resolved inputs and, per step, whether the next build reuses it."""
    from netvm.builder.info import board_info, format_info

    b = load_board(board, ROOT)
    options = BuildOptions(
        kernel_src=Path(kernel_src) if kernel_src else None,
        skip=frozenset(skip or ()),
        microkit=resolve_inputs(
            {"microkit_sdk": microkit_sdk, "libvmm": libvmm, "sddf": sddf},
            c.config.get("netvm"),
            os.environ,
            cwd=Path.cwd(),
            config_dir=ROOT,
        ),
    )
    doc = board_info(b, _workspace(), options)
    if json_:
        _write_json(json_, doc)
        if json_ == "-":
            return
    print(format_info(doc))


@task(help={"json": "FILE: also write the findings as JSON to this file (- : on stdout)"})
@user_errors
def doctor(c: Context, json_: str | None = None) -> None:
    """Check this host for what each task needs: tools, packages, root, port 69, QEMU."""
    from netvm.target.doctor import run_doctor

    report = run_doctor(ROOT)
    if json_:
        _write_json(json_, report.as_dict())
    if json_ != "-":
        print(report.summary())
    if not report.ok:
        raise Exit(code=USER_ERROR_EXIT)


ns.add_task(clean)
ns.add_task(info)
ns.add_task(doctor)


@task(
    help={
        "board": BOARD_HELP,
        "duration": f"{DURATION}: how long to run (default: until Ctrl-C)",
        "stats-json": "FILE: write driver and simulator counters and the conservation check here",
        "driver-cmd": "COMMAND: run this driver command instead of netvm_driver (see docs/sim.md)",
    }
)
@user_errors
def sim(
    c: Context,
    board: str = "odroidc4",
    duration: str | None = None,
    stats_json: str | None = None,
    driver_cmd: str | None = None,
) -> None:
    """Run the driver on this host against a simulated VMM, clients and a veth peer (root)."""
    from netvm.sim import SimOptions, run_sim

    options = SimOptions(
        duration=parse_seconds("--duration", duration) if duration else None,
        stats_json=Path(stats_json) if stats_json else None,
        driver_cmd=driver_cmd,
    )
    result = run_sim(load_board(board, ROOT), options, ROOT, progress=_progress)
    print(result.summary())
    if not result.ok:
        raise Exit(code=1)


ns.add_task(sim)


@task(
    help={
        "board": BOARD_HELP + " whose base device tree is QEMU's own",
        "check": "non-interactive: boot, wait for the driver, ping + UDP echo, power off, report"
        " (with --sel4: leases, ping, UDP and TCP echo through both clients, driver stop)",
        "no-vmm": "boot without the simulated VMM and peer namespace (no root needed; the "
        "driver then finds no data-passing page)",
        "sel4": "boot the whole seL4 system (loader.img from invoke build with the Microkit"
        " inputs) instead of netvm's simulation; Ctrl-A X quits",
        "boot-timeout": f"{DURATION}: from QEMU start to the driver's event loop (default:"
        " 60s; with --sel4 also to the first echo, default: 240s)",
        "json": "FILE: also write the --check report as JSON to this file (- for stdout)",
    }
)
@user_errors
def run(
    c: Context,
    board: str = "qemu_virt_aarch64",
    check: bool = False,
    no_vmm: bool = False,
    sel4: bool = False,
    boot_timeout: str | None = None,
    json_: str | None = None,
) -> None:
    """Boot the guest under QEMU: with netvm's simulated VMM, or (--sel4) the whole seL4 system."""
    from netvm.target import qemu, sel4_run

    timeout = parse_seconds("--boot-timeout", boot_timeout or ("240" if sel4 else "60"))
    b = load_board(board, ROOT)
    interactive: Callable[..., int]
    checked: Callable[..., qemu.QemuReport | sel4_run.Sel4Report]
    if sel4:
        if no_vmm:
            raise UserError("--no-vmm is for the simulation", hint="drop it with --sel4")
        options: Any = sel4_run.Sel4Options(boot_timeout=timeout)
        interactive, checked = sel4_run.run_sel4_interactive, sel4_run.run_sel4_check
    else:
        options = qemu.RunOptions(check=check, vmm=not no_vmm, boot_timeout=timeout)
        interactive, checked = qemu.run_qemu_interactive, qemu.run_qemu_check
    if not check:
        code = interactive(b, _workspace(), options, progress=_progress)
        if code:
            raise Exit(code=code)
        return
    report = checked(b, _workspace(), options, progress=_progress)
    print(report.summary())
    if json_:
        _write_json(json_, report.as_dict())
    if not report.ok:
        raise Exit(code=1)


ns.add_task(run)


@task(
    help={
        "board": BOARD_HELP,
        "kernel-src": KERNEL_SRC_HELP,
        "microkit-sdk": "PATH: the Microkit SDK archive (or directory) whose hash to record:"
        " every later --locked build must be given the same",
    }
)
@user_errors
def lock(
    c: Context,
    board: str = "odroidc4",
    kernel_src: str | None = None,
    microkit_sdk: str | None = None,
) -> None:
    """Write boards/B/netvm.lock: the resolved commits, hashes and package versions."""
    b = load_board(board, ROOT)
    options = BuildOptions(
        kernel_src=Path(kernel_src) if kernel_src else None,
        microkit=resolve_inputs(
            {"microkit_sdk": microkit_sdk},
            c.config.get("netvm"),
            os.environ,
            cwd=Path.cwd(),
            config_dir=ROOT,
        ),
    )
    content = lock_lib.resolve(b, lock_inputs(b, options))
    path = lock_lib.write_lock(b, content)
    print(f"wrote {display_path(path, ROOT)}: {lock_lib.summary(content)}")


ns.add_task(lock)


@task(
    help={
        "board": BOARD_HELP,
        "quick": "one short round and fewer frames under callgrind, instead of 5 full rounds",
        "json": "FILE: write every measurement, the medians, ratios and targets here",
        "rounds": "NUMBER: rounds of measurements (default: 5; with --quick: 1)",
        "no-callgrind": "skip the instructions per frame of both drivers under valgrind's"
        " callgrind",
        "callgrind-frames": "NUMBER: frames per test under callgrind (default 4096; --quick 1024)",
        "soak": "DURATION (e.g. 600, 10m): also hold full-duplex line rate through the driver"
        " this long; report loss, buffer conservation and RSS growth (the target is 10m)",
        "build-figures": "also time a no-op `invoke build` and a driver-only change rebuild",
        "driver-arg": "OPTION (repeatable): an extra option for netvm_driver under test, e.g."
        " --driver-arg=--batch=64",
    },
    iterable=["driver_arg"],
)
@user_errors
def bench(
    c: Context,
    board: str = "odroidc4",
    quick: bool = False,
    json: str | None = None,
    rounds: str | None = None,
    build_figures: bool = False,
    driver_arg: list[str] | None = None,
    no_callgrind: bool = False,
    callgrind_frames: str | None = None,
    soak: str | None = None,
) -> None:
    """Driver vs a C baseline: CPU, instructions, line rate, echo, latency (root, 2 CPUs)."""
    from netvm.bench.harness import BenchOptions, report, run_bench

    kw: dict[str, Any] = {
        "board": board,
        "json_path": Path(json) if json else None,
        "build_figures": build_figures,
        "driver_args": tuple(driver_arg or ()),
    }
    if rounds is not None:
        kw["rounds"] = parse_int("--rounds", rounds, 1, 1000)
    if callgrind_frames is not None:
        kw["callgrind_frames"] = parse_int("--callgrind-frames", callgrind_frames, 64, 10**6)
    if no_callgrind:
        kw["callgrind_frames"] = 0
    if soak is not None:
        kw["soak"] = parse_seconds("--soak", soak)
    opts = BenchOptions.quick_options(**kw) if quick else BenchOptions(**kw)
    doc = run_bench(opts, ROOT, progress=_progress)
    print(report(doc))


ns.add_task(bench)


@task(
    help={
        "board": BOARD_HELP,
        "out": "FILE: write the document here (default: build/B/sbom.spdx.json)",
    }
)
@user_errors
def sbom(c: Context, board: str = "odroidc4", out: str | None = None) -> None:
    """Write an SPDX 2.3 SBOM of the guest as last built (docs/sbom.md)."""
    from netvm.builder.sbom import write_sbom

    result = write_sbom(load_board(board, ROOT), _workspace(), Path(out) if out else None)
    print(f"wrote {display_path(result.path, ROOT)}: {result.summary()}")


ns.add_task(sbom)


MIRROR_HELP = (
    "URL: the Debian archive to build the container from (default: $NETVM_DEBIAN_MIRROR,"
    " else this host's apt sources)"
)
SECURITY_MIRROR_HELP = (
    "URL: the Debian security archive, with --mirror (default: $NETVM_DEBIAN_SECURITY_MIRROR)"
)


def _container_spec(board: str, mirror: str | None, security_mirror: str | None) -> ImageSpec:
    """The image the flags (or $NETVM_DEBIAN_MIRROR, ...) and the board's lock describe."""
    return image_spec(
        _workspace(),
        load_board(board, ROOT),
        mirror or os.environ.get("NETVM_DEBIAN_MIRROR"),
        security_mirror or os.environ.get("NETVM_DEBIAN_SECURITY_MIRROR"),
    )


@task(
    name="build",
    help={
        "board": BOARD_HELP + " (its netvm.lock is part of the image's tag)",
        "mirror": MIRROR_HELP,
        "security-mirror": SECURITY_MIRROR_HELP,
        "force": "rebuild the image even when its tag exists",
        "json": "FILE: write the image's record (tag, ID, inputs) here (- : on stdout)",
    },
)
@user_errors
def container_build(
    c: Context,
    board: str = "odroidc4",
    mirror: str | None = None,
    security_mirror: str | None = None,
    force: bool = False,
    json_: str | None = None,
) -> None:
    """Build netvm's build environment as an OCI image from Debian's archive and PyPI alone."""
    from netvm.container import podman
    from netvm.container.image import build_image

    spec = _container_spec(board, mirror, security_mirror)
    ws = _workspace()
    result = build_image(ws, spec, podman.detect(), force=force, progress=_progress)
    if json_:
        _write_json(json_, json.loads(result.record_file.read_text()))
    state = "built" if result.built else "exists (inputs unchanged)"
    print(
        f"{result.ref} {state} in {result.seconds:.0f} s; packages: "
        f"{ws.display(result.packages_file)}, record: {ws.display(result.record_file)}"
    )


def _remainder_words(remainder: str, argv: list[str]) -> list[str]:
    """The words after `--`, as the shell gave them. invoke keeps them only joined by
    spaces (`sh -c 'echo hi'` would come back as four words), so they are taken from
    the process's own argv when that is where the remainder came from; shell-split
    otherwise (a task run in-process with an argv of its own)."""
    if "--" in argv:
        words = argv[argv.index("--") + 1 :]
        if " ".join(words) == remainder:
            return words
    return shlex.split(remainder)


@task(
    name="run",
    help={
        "board": BOARD_HELP + " (selects the image by its lock, as container.build tags it)",
        "mirror": MIRROR_HELP,
        "security-mirror": SECURITY_MIRROR_HELP,
        "mount": "PATH (repeatable): also mount this host path, read-only, at the same path",
    },
    iterable=["mount"],
)
@user_errors
def container_run(
    c: Context,
    board: str = "odroidc4",
    mirror: str | None = None,
    security_mirror: str | None = None,
    mount: list[str] | None = None,
) -> None:
    """Run the command after -- in the build container, with the checkout and caches mounted."""
    from netvm.container import podman
    from netvm.container.run import run_in_container

    spec = _container_spec(board, mirror, security_mirror)
    code = run_in_container(
        _workspace(),
        podman.detect(),
        spec.ref,
        _remainder_words(c.remainder, sys.argv),
        extra_mounts=tuple(mount or ()),
    )
    if code:
        raise Exit(code=code)


container_ns = Collection("container")
container_ns.add_task(container_build)
container_ns.add_task(container_run)
ns.add_collection(container_ns)
