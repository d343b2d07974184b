"""netvm.lock: resolving a board's inputs, writing the lock, and `--locked` drift.

The kernel source and the Debian packages are the real ones (Debian's linux-source-6.12,
apt's arm64 lists). The Microkit SDK is the stand-in under tests/fixtures/microkit/,
packed into an archive here, because no real SDK can exist on the test machines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from netvm.board import Board, load_board
from netvm.builder.lock import LockInputs, check_locked, drift, lock_path, resolve, write_lock
from netvm.core.errors import USER_ERROR_EXIT, UserError
from netvm.core.files import file_sha256
from netvm.core.workspace import cache_dir
from netvm.guest.kernelsrc import KernelSource
from netvm.microkit.handoff import host_platform, resolve_inputs
from tests.harness import (
    ROOT,
    STANDIN_SDK,
    CliResult,
    copy_board,
    invoke_in_process,
    scratch_name,
    standin_sdk_archive,
    without_netvm_inputs,
)


@pytest.fixture()
def board_copy(tmp_path: Path) -> Board:
    """The C4 board in a directory of its own, so its lock file is the test's."""
    board_file = copy_board(tmp_path / "board", name=scratch_name("locktest", tmp_path))
    return load_board(str(board_file), ROOT)


def sdk_archive(tmp_path: Path, marker: str) -> Path:
    """A microkit-sdk-2.0.1 archive of the stand-in SDK; `marker` makes its bytes differ."""
    tree = tmp_path / f"sdk-{marker}" / "microkit-sdk-2.0.1"
    shutil.copytree(STANDIN_SDK, tree)
    (tree / "marker").write_text(marker)
    return standin_sdk_archive(tmp_path / f"sdk-{marker}.tar.gz", tree)


def lock_inputs(kernel_src: KernelSource, sdk: Path | None = None) -> LockInputs:
    flags = {"microkit_sdk": str(sdk) if sdk else None}
    return LockInputs(
        kernel_src, resolve_inputs(flags, None, {}, cwd=ROOT, config_dir=ROOT), cache_dir()
    )


def test_lock_names_every_input_by_hash(board_copy: Board, kernel_src: KernelSource) -> None:
    content = resolve(board_copy, lock_inputs(kernel_src))
    tarball = Path("/usr/src/linux-source-6.12.tar.xz")
    assert content["kernel"] == {
        "provider": "debian",
        "version": "6.12.117",
        "origin": kernel_src.origin,
        "tarball_sha256": file_sha256(tarball),
    }
    packages = content["rootfs"]["packages"]
    assert sorted(packages) == sorted(
        ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
         "zlib1g", "libexpat1", "libffi8", "busybox"]
    )  # fmt: skip
    # Each version and hash is apt's own (its signed lists), not netvm's guess.
    shown = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", "libc6:arm64"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"Version: {packages['libc6']['version']}" in shown
    assert f"SHA256: {packages['libc6']['sha256']}" in shown
    mk = content["microkit"]
    assert mk["libvmm"]["commit"] == "ecd3666a836bb4d1094a64af81ef11b482302d73"
    assert mk["sddf"]["commit"] == "5febd61c5be1e719d3c51bddba63e258a433ac05"
    assert mk["sdfgen"] == {
        "repository": "https://github.com/au-ts/microkit_sdf_gen",
        "commit": "9912db6275621f1691d2149ce6f063ca7bbb488e",
        "version": "0.27.0",
    }
    assert mk["sdk"] == {"version": "2.0.1"}  # no SDK given: nothing to hash


def test_locked_build_passes_then_names_each_drift(
    board_copy: Board, kernel_src: KernelSource
) -> None:
    now = resolve(board_copy, lock_inputs(kernel_src))
    write_lock(board_copy, now)
    check_locked(board_copy, ROOT, lock_inputs(kernel_src))  # nothing differs

    path = lock_path(board_copy)
    locked = json.loads(path.read_text())
    locked["rootfs"]["packages"]["libc6"]["version"] = "2.36-9+deb12u1"
    locked["microkit"]["libvmm"]["commit"] = "0" * 40
    del locked["rootfs"]["packages"]["zlib1g"]
    path.write_text(json.dumps(locked))
    with pytest.raises(UserError) as err:
        check_locked(board_copy, ROOT, lock_inputs(kernel_src))
    *drifts, summary = err.value.findings
    assert [(f.key, f.message) for f in drifts] == [
        (
            "microkit.libvmm.commit",
            f"locked {'0' * 40!r}, now 'ecd3666a836bb4d1094a64af81ef11b482302d73'",
        ),
        (
            "rootfs.packages.libc6.version",
            f"locked '2.36-9+deb12u1', now {now['rootfs']['packages']['libc6']['version']!r}",
        ),
        ("rootfs.packages.zlib1g.architecture", "is 'arm64' now, not in the lock"),
        ("rootfs.packages.zlib1g.sha256", drifts[3].message),
        ("rootfs.packages.zlib1g.version", drifts[4].message),
    ]
    assert summary.message == "the build's inputs differ from the lock in 5 places"
    assert "`invoke lock --board locktest_" in summary.hint
    assert all(f.file.endswith("board/netvm.lock") for f in err.value.findings)


def test_sdk_archive_is_trusted_on_first_use(
    board_copy: Board, kernel_src: KernelSource, tmp_path: Path
) -> None:
    first = sdk_archive(tmp_path, "first")
    write_lock(board_copy, resolve(board_copy, lock_inputs(kernel_src, first)))
    sdk = json.loads(lock_path(board_copy).read_text())["microkit"]["sdk"]
    assert sdk == {"version": "2.0.1", "archive_sha256": {host_platform(): file_sha256(first)}}
    check_locked(board_copy, ROOT, lock_inputs(kernel_src, first))
    check_locked(board_copy, ROOT, lock_inputs(kernel_src))  # built without an SDK: not compared
    other = sdk_archive(tmp_path, "other")
    with pytest.raises(UserError) as err:
        check_locked(board_copy, ROOT, lock_inputs(kernel_src, other))
    assert err.value.findings[0].key == f"microkit.sdk.archive_sha256.{host_platform()}"
    assert err.value.findings[0].message == (
        f"locked {file_sha256(first)!r}, now {file_sha256(other)!r}"
    )


def test_sdk_directory_is_locked_by_its_contents(
    board_copy: Board, kernel_src: KernelSource, tmp_path: Path
) -> None:
    sdk = tmp_path / "microkit-sdk-2.0.1"
    shutil.copytree(STANDIN_SDK, sdk)
    write_lock(board_copy, resolve(board_copy, lock_inputs(kernel_src, sdk)))
    check_locked(board_copy, ROOT, lock_inputs(kernel_src, sdk))
    (sdk / "bin" / "microkit").write_text("#!/bin/sh\necho changed\n")
    with pytest.raises(UserError) as err:
        check_locked(board_copy, ROOT, lock_inputs(kernel_src, sdk))
    assert [f.key for f in err.value.findings][:1] == ["microkit.sdk.tree_sha256"]


def test_drift_of_plain_data() -> None:
    old = {"a": {"b": 1, "c": 2}, "microkit": {"sdk": {"version": "2.0.1", "tree_sha256": "x"}}}
    new = {"a": {"b": 1, "d": 3}, "microkit": {"sdk": {"version": "2.0.1"}}}
    assert [(f.key, f.message) for f in drift(old, new, "L")] == [
        ("a.c", "locked 2, gone now"),
        ("a.d", "is 3 now, not in the lock"),
    ]


def test_cli_lock_and_locked_build(board_copy: Board, build_root: Path) -> None:
    env = without_netvm_inputs()
    board = str(board_copy.file)
    skip = ["--skip", "kernel", "--skip", "rootfs", "--skip", "dtb", "--skip", "microkit"]

    def invoke(*args: str) -> CliResult:
        return invoke_in_process(*args, "--board", board, env=env)

    made = invoke("lock")
    assert made.returncode == 0, made.stderr
    assert "8 Debian packages" in made.stdout and "libvmm ecd3666a836b" in made.stdout
    ok = invoke("build", "--locked", *skip)
    assert ok.returncode == 0, ok.stderr
    # Moving a pin in the board file without re-locking is drift, caught before any step.
    text = board_copy.file.read_text()
    moved = "8567f12d35e887775b8481ffa69d4274ab81e3c9"  # the sdfgen 0.27.0 release commit
    board_copy.file.write_text(text.replace("9912db6275621f1691d2149ce6f063ca7bbb488e", moved))
    bad = invoke("build", "--locked", *skip)
    assert bad.returncode == USER_ERROR_EXIT
    assert "Traceback" not in bad.stderr
    assert (
        "netvm.lock: microkit.sdfgen.commit: locked '9912db6275621f1691d2149ce6f063ca7bbb488e', "
        f"now '{moved}'"
    ) in bad.stderr
    shutil.rmtree(build_root / board_copy.name, ignore_errors=True)
