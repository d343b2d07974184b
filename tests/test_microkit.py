"""The Microkit handoff: pinned inputs, input resolution, checks, and the make command line.

The Microkit SDK, libvmm and sDDF cannot exist on this machine, so the upstream make
build is replaced by the stand-in Makefile under tests/fixtures/microkit/ (see its
README): it records what netvm passed and writes a loader.img made of the guest files.
The guest artifacts handed to the step are small placeholder files for the same reason
(the stand-in only concatenates them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from invoke import Config

from netvm.board import Board, GitPin, SdfgenPin, load_board
from netvm.builder.build import BuildOptions, build
from netvm.core.errors import USER_ERROR_EXIT, Finding, UserError
from netvm.core.pipeline import StepRunner
from netvm.core.workspace import Workspace
from netvm.microkit.checks import check_given_files
from netvm.microkit.handoff import (
    CheckedInputs,
    GuestArtifacts,
    MicrokitInputs,
    check_inputs,
    make_command,
    missing_host_tools,
    resolve_inputs,
    run_step,
)
from tests.harness import (
    C4_DISPLAY,
    MICROKIT_FIXTURES,
    ROOT,
    STANDIN_LIBVMM,
    STANDIN_PYTHON,
    STANDIN_SDK,
    copy_board,
    invoke_in_process,
    needs_real_toolchain,
    runner_with_guest,
    scratch_name,
    standin_sdk_archive,
    without_netvm_inputs,
)

LIBVMM_PIN = "ecd3666a836bb4d1094a64af81ef11b482302d73"
SDDF_PIN = "5febd61c5be1e719d3c51bddba63e258a433ac05"
SDFGEN_PIN = "9912db6275621f1691d2149ce6f063ca7bbb488e"


def inputs(**kw: object) -> MicrokitInputs:
    flags = {"microkit_sdk": str(STANDIN_SDK), "libvmm": str(STANDIN_LIBVMM), "sddf": None}
    flags.update({k: str(v) if v is not None else None for k, v in kw.items()})
    got = resolve_inputs(flags, None, {}, cwd=ROOT, config_dir=ROOT)
    return dataclasses.replace(got, python=STANDIN_PYTHON)


def record(runner: StepRunner) -> dict[str, str]:
    text = (runner.build_dir / "microkit" / "build" / "standin-record.txt").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


# --- pins ------------------------------------------------------------------------------


def test_odroidc4_pins_the_upstream_inputs(odroidc4: Board) -> None:
    mk = odroidc4.microkit
    assert mk is not None
    assert (mk.board, mk.config, mk.sdk_version) == ("odroidc4", "release", "2.0.1")
    assert mk.sdfgen == SdfgenPin("https://github.com/au-ts/microkit_sdf_gen", SDFGEN_PIN, "0.27.0")
    assert mk.libvmm == GitPin("https://github.com/au-ts/libvmm", LIBVMM_PIN)
    assert mk.sddf == GitPin("https://github.com/au-ts/sddf", SDDF_PIN)
    assert mk.example == "examples/eth_driver_vm"
    # No SDK archive hash is known: every platform is present and explicitly unknown.
    assert dict(mk.sdk_sha256) == dict.fromkeys(
        ("linux-x86-64", "linux-aarch64", "macos-x86-64", "macos-aarch64")
    )


def test_bad_pins_are_reported_with_their_keys(tmp_path: Path) -> None:
    edit = {f"commit: {LIBVMM_PIN}": "commit: main", "linux-x86-64: null": "linux-x86-64: abc"}
    board_file = copy_board(tmp_path, edit=edit)
    with pytest.raises(UserError) as err:
        load_board(str(board_file), ROOT)
    keys = [f.key for f in err.value.findings]
    assert keys == ["microkit.sdk_sha256.linux-x86-64", "microkit.libvmm.commit"]
    assert "never guess a hash" in err.value.findings[0].hint
    assert "got 'main'" in err.value.findings[1].message


# --- resolving the inputs --------------------------------------------------------------


def test_flags_beat_invoke_yaml_beat_environment(tmp_path: Path) -> None:
    env = {"NETVM_MICROKIT_SDK": "env-sdk", "NETVM_LIBVMM": "env-libvmm", "NETVM_SDDF": "/s"}
    config = {"microkit_sdk": "cfg-sdk", "libvmm": "cfg-libvmm"}
    got = resolve_inputs(
        {"microkit_sdk": "flag-sdk", "libvmm": None, "sddf": None},
        config,
        env,
        cwd=tmp_path / "cwd",
        config_dir=tmp_path / "cfg",
    )
    assert got.sdk is not None and got.libvmm is not None and got.sddf is not None
    assert (got.sdk.path, got.sdk.origin) == (tmp_path / "cwd" / "flag-sdk", "--microkit-sdk")
    assert (got.libvmm.path, got.libvmm.origin) == (
        tmp_path / "cfg" / "cfg-libvmm",
        "invoke.yaml netvm.libvmm",
    )
    assert (got.sddf.path, got.sddf.origin) == (Path("/s"), "$NETVM_SDDF")
    assert got.missing == ()


def test_invoke_config_section_is_read() -> None:
    config = Config(overrides={"netvm": {"sddf": "/opt/sddf", "python": "/opt/py"}})
    got = resolve_inputs({}, config.get("netvm"), {}, cwd=ROOT, config_dir=ROOT)
    assert got.sddf is not None and got.sddf.path == Path("/opt/sddf")
    assert got.python == "/opt/py"
    assert got.missing == ("microkit_sdk", "libvmm")


def test_sddf_defaults_to_libvmm_submodule() -> None:
    got = inputs()
    assert got.sddf is not None
    assert got.sddf.path == STANDIN_LIBVMM / "dep" / "sddf"
    assert got.sddf.origin == "--libvmm dep/sddf submodule"


# --- the build without inputs ----------------------------------------------------------


def test_build_without_inputs_skips_loader_with_a_note(odroidc4: Board, tmp_path: Path) -> None:
    options = BuildOptions(skip=frozenset({"kernel", "rootfs", "dtb"}))
    manifest = build(odroidc4, Workspace(ROOT, tmp_path), options)
    step = manifest["steps"][-1]
    assert step["name"] == "microkit" and step["status"] == "skipped"
    assert step["note"] == (
        "loader.img not built: no microkit-sdk, libvmm, sddf given (docs/microkit.md)"
    )
    assert manifest["artifacts"]["loader_img"] is None


def test_require_image_without_inputs_is_an_error(odroidc4: Board, tmp_path: Path) -> None:
    options = BuildOptions(skip=frozenset({"kernel", "rootfs", "dtb"}), require_image=True)
    with pytest.raises(UserError) as err:
        build(odroidc4, Workspace(ROOT, tmp_path), options)
    assert [f.key for f in err.value.findings] == [
        "microkit.sdk_version",
        "microkit.libvmm",
        "microkit.sddf",
        "microkit",
    ]
    assert str(err.value.findings[0]) == (
        "boards/odroidc4/board.yaml: microkit.sdk_version: loader.img needs the Microkit SDK "
        "and none was given (hint: pass --microkit-sdk DIR (an extracted microkit-sdk-2.0.1) "
        "or its .tar.gz, set $NETVM_MICROKIT_SDK, or set netvm.microkit_sdk in invoke.yaml)"
    )
    manifest = json.loads((tmp_path / "odroidc4" / "manifest.json").read_text())
    assert manifest["steps"][-1]["status"] == "skipped"


@pytest.fixture()
def scratch_board(tmp_path: Path, build_root: Path) -> Iterator[Path]:
    """A copy of the C4 board under another name, so the CLI writes its own build dir."""
    name = scratch_name("mktest", tmp_path)
    yield copy_board(tmp_path / "board", name=name)
    shutil.rmtree(build_root / name, ignore_errors=True)


def test_cli_build_exit_status_with_and_without_require_image(scratch_board: Path) -> None:
    base = [
        "build",
        "--board",
        str(scratch_board),
        "--skip",
        "kernel",
        "--skip",
        "rootfs",
        "--skip",
        "dtb",
    ]
    env = without_netvm_inputs()
    ok = invoke_in_process(*base, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "microkit  skipped" in ok.stdout
    # The skip is said once, in one short line; the build never touched the network.
    assert (ok.stdout + ok.stderr).count("loader.img not built") == 1
    (line,) = [ln for ln in ok.stdout.splitlines() if "loader.img not built" in ln]
    assert len(line) < 120 and "docs/microkit.md" in line
    assert "fetching" not in ok.stderr
    strict = invoke_in_process(*base, "--require-image", env=env)
    assert strict.returncode == USER_ERROR_EXIT
    assert "Traceback" not in strict.stderr
    assert "microkit.sdk_version: loader.img needs the Microkit SDK" in strict.stderr
    assert "4 errors" in strict.stderr


# --- checks against the pins -----------------------------------------------------------


def test_standin_inputs_pass_with_provenance(odroidc4: Board, tmp_path: Path) -> None:
    checked = check_inputs(odroidc4, C4_DISPLAY, inputs(), tmp_path)
    assert checked.sdk_version == "2.0.1"
    assert checked.sdfgen_version == f"0.27.0 (commit {SDFGEN_PIN[:12]})"
    assert checked.example == STANDIN_LIBVMM / "examples" / "eth_driver_vm"
    assert checked.provenance == {
        "microkit_sdk": "unverified: a directory (only an archive has a pinned hash)",
        "libvmm": f"unverified: {STANDIN_LIBVMM} is not a git checkout (pinned {LIBVMM_PIN})",
        "sddf": f"unverified: {STANDIN_LIBVMM / 'dep/sddf'} is not a git checkout "
        f"(pinned {SDDF_PIN})",
        "sdfgen": f"verified: {STANDIN_PYTHON} has sdfgen 0.27.0, git commit {SDFGEN_PIN}",
    }


def test_sdk_version_mismatch_is_explained(odroidc4: Board, tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    shutil.copytree(STANDIN_SDK, sdk)
    (sdk / "VERSION").write_text("2.2.0\n")
    with pytest.raises(UserError) as err:
        check_inputs(odroidc4, C4_DISPLAY, inputs(microkit_sdk=sdk), tmp_path / "work")
    assert err.value.render() == (
        f"error: boards/odroidc4/board.yaml: microkit.sdk_version: the Microkit SDK at {sdk} "
        "(--microkit-sdk) is version 2.2.0, the board pins 2.0.1 (hint: use "
        "microkit-sdk-2.0.1 (libvmm's example is written for it), or change "
        "microkit.sdk_version after checking libvmm supports that SDK)"
    )


def test_sdk_without_the_board_lists_its_boards(tmp_path: Path) -> None:
    sdk = tmp_path / "microkit-sdk-2.0.1"
    shutil.copytree(STANDIN_SDK, sdk)
    (sdk / "VERSION").unlink()  # the version then comes from the directory name
    shutil.rmtree(sdk / "board" / "odroidc4" / "release")
    board = load_board("odroidc4", ROOT)
    with pytest.raises(UserError) as err:
        check_inputs(board, C4_DISPLAY, inputs(microkit_sdk=sdk), tmp_path / "work")
    (finding,) = err.value.findings
    assert finding.key == "microkit.board"
    assert finding.message == f"the SDK at {sdk} has no board 'odroidc4' in config 'release'"
    assert finding.hint == "boards in this SDK: odroidc4"


def make_archive(tmp_path: Path) -> Path:
    return standin_sdk_archive(tmp_path / "microkit-sdk-2.0.1-linux-x86-64.tar.gz")


def check_archive(board: Board, archive: Path, work: Path) -> CheckedInputs:
    """check_inputs with the SDK given as `archive`, on linux-x86-64."""
    return check_inputs(
        board, C4_DISPLAY, inputs(microkit_sdk=archive), work, platform_name="linux-x86-64"
    )


def test_unpinned_sdk_archive_is_refused(odroidc4: Board, tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    with pytest.raises(UserError) as err:
        check_archive(odroidc4, archive, tmp_path / "work")
    (finding,) = err.value.findings
    assert finding.key == "microkit.sdk_sha256.linux-x86-64"
    assert "no sha256 is pinned for the linux-x86-64 SDK archive" in finding.message
    assert not (tmp_path / "work").exists()  # nothing unpacked from an unverified archive


def test_pinned_sdk_archive_is_verified_and_unpacked(odroidc4: Board, tmp_path: Path) -> None:
    import hashlib

    archive = make_archive(tmp_path)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    pinned = dataclasses.replace(
        odroidc4,
        microkit=dataclasses.replace(odroidc4.microkit, sdk_sha256=(("linux-x86-64", digest),)),
    )
    checked = check_archive(pinned, archive, tmp_path / "w")
    assert checked.sdk == tmp_path / "w" / f"sdk-{digest[:16]}" / "microkit-sdk-2.0.1"
    assert (checked.sdk / "bin" / "microkit").is_file()
    assert checked.provenance["microkit_sdk"] == f"verified: archive sha256 {digest}"
    wrong = dataclasses.replace(
        pinned,
        microkit=dataclasses.replace(pinned.microkit, sdk_sha256=(("linux-x86-64", "0" * 64),)),
    )
    with pytest.raises(UserError) as err:
        check_archive(wrong, archive, tmp_path / "w2")
    assert f"has sha256 {digest}, the board pins {'0' * 64}" in str(err.value)


def git_copy(src: Path, dest: Path) -> str:
    shutil.copytree(src, dest)
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "stand-in"], check=True)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_libvmm_commit_is_checked_against_the_pin(odroidc4: Board, tmp_path: Path) -> None:
    libvmm = tmp_path / "libvmm"
    head = git_copy(STANDIN_LIBVMM, libvmm)
    with pytest.raises(UserError) as err:
        check_inputs(odroidc4, C4_DISPLAY, inputs(libvmm=libvmm), tmp_path / "w")
    (finding,) = err.value.findings
    assert finding.key == "microkit.libvmm.commit"
    assert finding.message == (
        f"libvmm at {libvmm} (--libvmm) is at commit {head[:12]}, the board pins {LIBVMM_PIN}"
    )
    assert finding.hint.startswith(f"git -C {libvmm} checkout {LIBVMM_PIN}")
    pinned = dataclasses.replace(
        odroidc4, microkit=dataclasses.replace(odroidc4.microkit, libvmm=GitPin(None, head[:10]))
    )
    checked = check_inputs(pinned, C4_DISPLAY, inputs(libvmm=libvmm), tmp_path / "w")
    assert checked.provenance["libvmm"] == f"verified: git commit {head}"


def standin_sdfgen_copy(
    tmp_path: Path, *, version: str, commit: str | None, driver_vm: bool
) -> str:
    """A copy of the stand-in sdfgen with another version, install record or API."""
    root = tmp_path / "sdfgen-variant"
    shutil.copytree(MICROKIT_FIXTURES / "standin-sdfgen", root)
    info = root / "sdfgen-0.27.0.dist-info"
    meta = info / "METADATA"
    meta.write_text(meta.read_text().replace("Version: 0.27.0", f"Version: {version}"))
    record = info / "direct_url.json"
    if commit is None:  # installed from a local tree: pip records a directory, no commit
        record.write_text('{"url": "file:///src/microkit_sdf_gen", "dir_info": {}}\n')
    else:
        record.write_text(record.read_text().replace(SDFGEN_PIN, commit))
    if not driver_vm:
        init = root / "sdfgen" / "__init__.py"
        init.write_text(init.read_text().replace("driver_vm_system: Any = None", "vswitch=None"))
    return str(root / "python")


def sdfgen_finding(odroidc4: Board, tmp_path: Path, python: str, also: str = "") -> Finding:
    with pytest.raises(UserError) as err:
        check_inputs(odroidc4, C4_DISPLAY, dataclasses.replace(inputs(), python=python), tmp_path)
    (finding,) = err.value.findings
    assert finding.key == "microkit.sdfgen"
    # Every sdfgen problem says in one line how to get the pinned one.
    assert finding.hint == (
        f"{python} -m pip install 'sdfgen @ git+https://github.com/au-ts/microkit_sdf_gen@"
        f"{SDFGEN_PIN}' (it builds with Zig 0.15; docs/microkit.md, 'sdfgen')" + also
    )
    return finding


def test_sdfgen_missing(odroidc4: Board, tmp_path: Path) -> None:
    bare = shutil.which("python3", path="/usr/bin")
    assert bare is not None
    finding = sdfgen_finding(
        odroidc4, tmp_path, bare, also="; or set NETVM_MICROKIT_PYTHON to a python that has it"
    )
    assert finding.message == f"sdfgen is not installed for {bare}, which runs upstream's meta.py"


def test_sdfgen_at_another_commit(odroidc4: Board, tmp_path: Path) -> None:
    python = standin_sdfgen_copy(tmp_path, version="0.27.0", commit="f" * 40, driver_vm=True)
    finding = sdfgen_finding(odroidc4, tmp_path, python)
    assert finding.message == (
        f"{python} has sdfgen 0.27.0 (commit ffffffffffff), the board pins commit 9912db627562"
    )


def test_sdfgen_release_of_another_version(odroidc4: Board, tmp_path: Path) -> None:
    python = standin_sdfgen_copy(tmp_path, version="0.35.1", commit=None, driver_vm=False)
    finding = sdfgen_finding(odroidc4, tmp_path, python)
    assert finding.message.startswith(
        f"{python} has sdfgen 0.35.1, the board pins 0.27.0 at commit 9912db627562"
    )


def test_sdfgen_release_without_driver_vm_support(odroidc4: Board, tmp_path: Path) -> None:
    # The released 0.27.0 reports the same version as the branch: its API tells them apart.
    python = standin_sdfgen_copy(tmp_path, version="0.27.0", commit=None, driver_vm=False)
    finding = sdfgen_finding(odroidc4, tmp_path, python)
    assert finding.message == (
        f"{python} has sdfgen 0.27.0 without driver-VM support (its Sddf.Net takes no "
        "driver_vm_system): a release, not the pinned branch commit 9912db627562"
    )


def test_sdfgen_from_a_local_tree_is_accepted_unverified(odroidc4: Board, tmp_path: Path) -> None:
    python = standin_sdfgen_copy(tmp_path, version="0.27.0", commit=None, driver_vm=True)
    checked = check_inputs(
        odroidc4, C4_DISPLAY, dataclasses.replace(inputs(), python=python), tmp_path
    )
    assert checked.sdfgen_version == "0.27.0"
    assert checked.provenance["sdfgen"] == (
        f"unverified: {python} has sdfgen 0.27.0 with driver-VM support, installed from a "
        "local tree (pip recorded no commit; pinned 9912db627562)"
    )


def test_missing_host_tools_are_one_error(
    odroidc4: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PATH holding make, dtc and what the stand-in python needs: the LLVM tools and
    # shasum are missing.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "dtc", "python3", "dirname", "readlink"):
        found = sys.executable if tool == "python3" else shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    assert missing_host_tools(str(bin_dir)) == [
        "clang",
        "ld.lld",
        "llvm-ar",
        "llvm-ranlib",
        "llvm-objcopy",
        "shasum",
    ]
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(UserError) as err:
        check_inputs(odroidc4, C4_DISPLAY, inputs(), tmp_path)
    (tools,) = err.value.findings  # everything else passes
    assert tools.key == "microkit"
    assert tools.message == (
        "upstream's make needs these host commands, not found on PATH: clang, ld.lld, "
        "llvm-ar, llvm-ranlib, llvm-objcopy, shasum"
    )
    assert tools.hint == "apt-get install clang lld llvm perl (./bootstrap installs them)"


def test_all_problems_come_in_one_error(odroidc4: Board, tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    shutil.copytree(STANDIN_SDK, sdk)
    (sdk / "VERSION").write_text("1.4.1\n")
    bad = dataclasses.replace(inputs(microkit_sdk=sdk, libvmm=tmp_path / "nope"), sddf=None)
    with pytest.raises(UserError) as err:
        check_inputs(odroidc4, C4_DISPLAY, bad, tmp_path / "w")
    assert [f.key for f in err.value.findings] == [
        "microkit.sddf",
        "microkit.sdk_version",
        "microkit.libvmm.commit",
    ]


# --- running the (stand-in) upstream make ----------------------------------------------


def test_make_command_line_is_exact(odroidc4: Board, tmp_path: Path) -> None:
    checked = check_inputs(odroidc4, C4_DISPLAY, inputs(), tmp_path / "w")
    guest = GuestArtifacts(
        Path("/g/Image"), Path("/g/initramfs.cpio.gz"), Path("/g/guest.dts"), Path("/g/guest.dtb")
    )
    work = tmp_path / "mk"
    assert make_command(odroidc4, checked, guest, work) == [
        "make",
        "-C",
        str(STANDIN_LIBVMM / "examples" / "eth_driver_vm"),
        f"MICROKIT_SDK={STANDIN_SDK}",
        "MICROKIT_BOARD=odroidc4",
        "MICROKIT_CONFIG=release",
        f"BUILD_DIR={work}/build",
        f"LIBVMM={STANDIN_LIBVMM}",
        f"SDDF={STANDIN_LIBVMM}/dep/sddf",
        f"PYTHON={STANDIN_PYTHON} {ROOT}/netvm/microkit/metaprogram.py "
        "client0=02:00:00:00:00:10,client1=02:00:00:00:00:11",
        "LINUX=/g/Image",
        "INITRD=/g/initramfs.cpio.gz",
        f"NET_DRIVER_VM_INITRD_FINAL={work}/guest/initramfs.cpio.gz",
        "NET_DRIVER_VM_DTS=/g/guest.dts",
        "NET_DRIVER_VM_DTS_OVERLAY=",
        "NET_DRIVER_VM_USERLEVEL=",
        "NET_DRIVER_VM_USERLEVEL_INIT=",
    ]


def test_step_runs_make_and_records_loader_img(odroidc4: Board, tmp_path: Path) -> None:
    runner = runner_with_guest(tmp_path)
    run_step(odroidc4, C4_DISPLAY, runner, inputs(), require_image=True)
    rec = runner.records[-1]
    assert (rec.name, rec.status) == ("microkit", "built")
    loader = runner.artifacts["loader_img"]
    expected = b"".join(
        runner.artifacts[n].path.read_bytes() for n in ("kernel_image", "initramfs", "dts")
    )
    # The stand-in got exactly netvm's files: its time-stamping repack did not run.
    assert loader.path.read_bytes() == expected
    # meta.py's clients reached sdfgen with the board's MACs, not without any.
    clients = runner.build_dir / "microkit" / "build" / "standin-clients.txt"
    assert clients.read_text() == "client0=02:00:00:00:00:10\nclient1=02:00:00:00:00:11\n"
    seen = record(runner)
    guest_dir = tmp_path / "guest"
    assert seen["LINUX"] == f"{guest_dir}/kernel_image [command line]"
    assert seen["INITRD"] == f"{guest_dir}/initramfs [command line]"
    assert seen["NET_DRIVER_VM_DTS"] == f"{guest_dir}/dts [command line]"
    assert seen["MICROKIT_CONFIG"] == "release [command line]"
    for value in seen.values():  # every input reached the make as an absolute path
        assert value.endswith("[command line]")
    log = Path(rec.details["log"])
    assert log == runner.build_dir / "microkit" / "build.log"
    assert log.read_text().startswith("$ make -C ")
    assert rec.details["sdk_version"] == "2.0.1"

    run_step(odroidc4, C4_DISPLAY, runner, inputs(), require_image=True)
    assert runner.records[-1].status == "cached"


def test_loader_img_is_the_same_when_built_again(odroidc4: Board, tmp_path: Path) -> None:
    runner = runner_with_guest(tmp_path)
    images = []
    for _ in range(2):
        shutil.rmtree(runner.build_dir / "microkit", ignore_errors=True)
        run_step(odroidc4, C4_DISPLAY, runner, inputs(), require_image=True)
        assert runner.records[-1].status == "built"
        images.append(runner.artifacts["loader_img"])
    assert images[0].sha256 == images[1].sha256
    # The same stand-in make, left to pack the initrd itself, stamps the time each run.
    packed = []
    for i in range(2):
        work = tmp_path / f"upstream-packing-{i}"
        subprocess.run(
            ["make", "-s", "-C", str(STANDIN_LIBVMM / "examples" / "eth_driver_vm"),
             f"MICROKIT_SDK={STANDIN_SDK}", "MICROKIT_BOARD=odroidc4", f"BUILD_DIR={work}",
             f"PYTHON={STANDIN_PYTHON}", f"SDDF={STANDIN_LIBVMM}/dep/sddf",
             f"LINUX={runner.artifacts['kernel_image'].path}",
             f"INITRD={runner.artifacts['initramfs'].path}",
             f"NET_DRIVER_VM_DTS={runner.artifacts['dts'].path}",
             "NET_DRIVER_VM_USERLEVEL=", "NET_DRIVER_VM_USERLEVEL_INIT="],
            check=True, capture_output=True,
        )  # fmt: skip
        packed.append((work / "loader.img").read_bytes())
    assert packed[0] != packed[1]


def test_failing_make_reports_the_log_tail(
    odroidc4: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "1")
    runner = runner_with_guest(tmp_path)
    with pytest.raises(UserError) as err:
        run_step(odroidc4, C4_DISPLAY, runner, inputs(), require_image=False)
    (finding,) = err.value.findings
    assert finding.key == "microkit"
    assert "exited with status 2" in finding.message
    assert "stand-in: failing as asked (STANDIN_FAIL=1)" in finding.message
    assert runner.records[-1].status == "failed"
    assert "loader_img" not in runner.artifacts


def test_wrong_inputs_fail_the_step_even_without_require_image(
    odroidc4: Board, tmp_path: Path
) -> None:
    runner = runner_with_guest(tmp_path)
    with pytest.raises(UserError):
        run_step(
            odroidc4,
            C4_DISPLAY,
            runner,
            inputs(libvmm=tmp_path / "missing", sddf=STANDIN_LIBVMM / "dep" / "sddf"),
            require_image=False,
        )
    assert runner.records[-1].status == "failed"


def test_metaprogram_fills_only_missing_macs() -> None:
    from netvm.microkit.metaprogram import parse_macs, with_board_macs

    calls: list[tuple[str, str | None]] = []

    class Client:
        def __init__(self, name: str) -> None:
            self.name = name

    class Net:
        def add_client_with_copier(
            self, client: Client, copier: object = None, *, mac_addr: str | None = None
        ) -> None:
            calls.append((client.name, mac_addr))

    with_board_macs(Net, parse_macs("client0=02:00:00:00:00:10"))
    net = Net()
    net.add_client_with_copier(Client("client0"))  # as upstream's meta.py: no MAC
    net.add_client_with_copier(Client("client0"), mac_addr="02:aa:00:00:00:01")  # kept
    net.add_client_with_copier(Client("other"))  # not the board's: sdfgen picks one
    assert calls == [
        ("client0", "02:00:00:00:00:10"),
        ("client0", "02:aa:00:00:00:01"),
        ("other", None),
    ]


# --- the real toolchain ----------------------------------------------------------------

# The real Microkit SDK, libvmm, sDDF and driver-VM sdfgen (docs/microkit.md says how to
# build them); CI has none of them, so this test runs only where they are given.
REAL_TOOLCHAIN = ("NETVM_MICROKIT_SDK", "NETVM_LIBVMM", "NETVM_SDDF", "NETVM_MICROKIT_PYTHON")


@pytest.mark.slow
@needs_real_toolchain(REAL_TOOLCHAIN, "docs/microkit.md")
def test_real_toolchain_builds_the_same_loader_img_twice(odroidc4: Board, tmp_path: Path) -> None:
    given = resolve_inputs({}, None, os.environ, cwd=ROOT, config_dir=ROOT)
    options = BuildOptions(microkit=given, require_image=True)
    shas = []
    for _ in range(2):
        shutil.rmtree(tmp_path / "odroidc4" / "microkit", ignore_errors=True)
        manifest = build(odroidc4, Workspace(ROOT, tmp_path), options)
        step = manifest["steps"][-1]
        assert (step["name"], step["status"]) == ("microkit", "built")
        shas.append(manifest["artifacts"]["loader_img"]["sha256"])
        print(f"real toolchain: loader.img {shas[-1]} in {step['details']['make_seconds']} s")
    assert shas[0] == shas[1]
    out = tmp_path / "odroidc4"
    image = (out / "microkit" / "build" / "loader.img").read_bytes()
    # The guest goes in exactly as netvm built it: kernel, initramfs and DTB unchanged.
    for part in ("kernel/arch/arm64/boot/Image", "rootfs/rootfs.cpio.gz", "dtb/guest.dtb"):
        assert (out / part).read_bytes() in image, part
    # Upstream's make compiled netvm's guest DTS into the same DTB netvm's dtb step made.
    overlayed = out / "microkit" / "build" / "linux_overlayed.dtb"
    assert overlayed.read_bytes() == (out / "dtb" / "guest.dtb").read_bytes()
    report = check_given_files(
        odroidc4,
        dtb=out / "dtb" / "guest.dtb",
        system=out / "microkit" / "build" / "echo_server.system",
        dtb_display="guest.dtb",
        system_display="echo_server.system",
    )
    assert (report.vm, report.vmm, report.errors) == ("linux", "net_driver_vm", [])


def test_a_board_without_microkit_pins_has_no_handoff(tmp_path: Path) -> None:
    # The QEMU board's seL4 variant has pins; the board without it has none.
    qemu = dataclasses.replace(load_board("qemu_virt_aarch64", ROOT), sel4=None)
    assert qemu.microkit is None
    options = BuildOptions(skip=frozenset({"kernel", "rootfs", "dtb"}))
    manifest = build(qemu, Workspace(ROOT, tmp_path), options)
    assert [s["name"] for s in manifest["steps"]] == ["render", "kernel", "rootfs", "dtb"]
    assert "loader.img" not in json.dumps(manifest["steps"])
    with pytest.raises(UserError) as err:
        build(qemu, Workspace(ROOT, tmp_path), dataclasses.replace(options, require_image=True))
    assert err.value.findings[0].message == (
        "this board has no microkit section, so there is no loader.img to build"
    )
