"""The guest initramfs: archive format, the Debian base, providers, init functions."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from netvm.board import Board
from netvm.core.errors import UserError
from netvm.core.files import COMPLETE_STAMP
from netvm.core.workspace import cache_dir
from netvm.guest import cpio, rootfs
from netvm.guest.buildroot import defconfig_name, export_external_tree
from netvm.guest.render import render_all
from netvm.guest.rootfs import InitramfsResult, build_initramfs
from tests.harness import DRIVER_DIR, ROOT

EPOCH = 1704067200
MiB = 1024 * 1024
FUNCTIONS = ROOT / "rootfs_overlay/usr/lib/netvm/init-functions.sh"


def test_newc_archive_is_what_cpio_reads(tmp_path: Path) -> None:
    entries = [
        cpio.regular("etc/b.txt", b"hello\n"),
        cpio.directory("etc"),
        cpio.regular("bin/tool", b"\x7fELF", 0o755),
        cpio.directory("bin"),
        cpio.symlink("init", "bin/tool"),
        cpio.char_device("dev/console", 5, 1),
        cpio.directory("dev"),
    ]
    blob = cpio.write_newc(entries, EPOCH)
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=blob, capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    # Sorted by path, owned by root, one mtime, right types and modes.
    assert [ln.split()[-1] if "->" not in ln else ln.split()[-3] for ln in lines] == [
        "bin",
        "bin/tool",
        "dev",
        "dev/console",
        "etc",
        "etc/b.txt",
        "init",
    ]
    assert all(" root " in ln for ln in lines)
    assert lines[1].startswith("-rwxr-xr-x") and lines[5].startswith("-rw-r--r--")
    assert lines[3].startswith("crw-------") and lines[6].startswith("lrwxrwxrwx")
    assert "init -> bin/tool" in lines[6]
    assert cpio.write_newc(reversed(entries), EPOCH) == blob  # order-independent
    again = {e.path: e for e in cpio.read_newc(blob)}
    assert again["etc/b.txt"].data == b"hello\n" and again["dev/console"].rdev == (5, 1)
    assert cpio.gzip_deterministic(blob) == cpio.gzip_deterministic(blob)
    assert gzip.decompress(cpio.gzip_deterministic(blob)) == blob


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        cpio.write_newc([cpio.directory("a"), cpio.directory("a")], EPOCH)


@pytest.fixture(scope="module")
def overlay(odroidc4: Board, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("render")
    return render_all(odroidc4, out, ROOT).rootfs_overlay


@pytest.fixture(scope="module")
def initramfs(overlay: Path, tmp_path_factory: pytest.TempPathFactory) -> InitramfsResult:
    out = tmp_path_factory.mktemp("rootfs") / "rootfs.cpio.gz"
    return build_initramfs("debian", overlay, out, cache=cache_dir(), epoch=EPOCH)


@pytest.fixture(scope="module")
def guest_root(initramfs: InitramfsResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guest")
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
        input=gzip.decompress(initramfs.path.read_bytes()),
        cwd=root,
        check=True,
    )
    return root


def guest(root: Path, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run an arm64 program of the guest rootfs under qemu-user, the rootfs as its /."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "usr/lib/netvm")}
    return subprocess.run(
        ["qemu-aarch64-static", "-L", str(root), str(root / argv[0]), *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,  # type: ignore[call-overload]
    )


def test_initramfs_size_and_report(initramfs: InitramfsResult) -> None:
    report = initramfs.report()
    print(json.dumps({k: v for k, v in report.items() if k != "largest"}))
    assert initramfs.compressed_bytes == initramfs.path.stat().st_size
    assert initramfs.compressed_bytes <= 5 * MiB
    assert report["uncompressed_bytes"] > report["compressed_bytes"]
    assert report["largest"][0]["path"] == "usr/bin/python3.11"
    assert set(report["packages"]) >= {"python3.11-minimal", "libc6", "busybox"}


def test_the_guest_python_runs_the_driver(guest_root: Path) -> None:
    entry = guest_root / "usr/lib/netvm/netvm_driver"
    modules = sorted(p.stem for p in entry.glob("*.pyc") if p.stem != "__main__")
    assert modules, "the driver package is in the image"
    script = "import importlib, sys\n" + "".join(
        f"importlib.import_module('netvm_driver.{m}')\n" for m in modules
    )
    script += "print(sys.version_info[:2], sys.flags.optimize)"
    proc = guest(guest_root, "usr/bin/python3", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(3, 11) 0"
    help_ = guest(guest_root, "usr/bin/python3", "-m", "netvm_driver", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "--interface" in help_.stdout
    # The driver goes as bytecode compiled at build time (the guest python's magic was
    # checked), with the same modules as its sources.
    sources = sorted(p.stem for p in (DRIVER_DIR / "netvm_driver").glob("*.py"))
    assert sorted(p.stem for p in entry.glob("*.pyc")) == sources
    assert not list(entry.glob("*.py"))


def test_every_entry_has_its_directory_in_the_archive(initramfs: InitramfsResult) -> None:
    """The kernel's unpacker does not create parents (cpio -i on the host would)."""
    entries = {e.path: e for e in cpio.read_cpio_gz(initramfs.path.read_bytes())}
    for path in entries:
        parent = str(Path(path).parent)
        assert parent == "." or entries[parent].kind == "dir", path


def test_the_build_leaves_the_overlay_untouched(overlay: Path, initramfs: InitramfsResult) -> None:
    # The import probe runs the driver from the overlay: bytecode written there would
    # land in the image with host mtimes and change the overlay's digest every build.
    assert not list(overlay.rglob("__pycache__"))


def test_package_resolution_and_unpacking_are_reused(
    initramfs: InitramfsResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = rootfs.resolved_packages(rootfs.DEBIAN_PACKAGES, tmp_path)

    def no_apt(names: object) -> None:
        raise AssertionError("apt-cache asked again although its lists did not change")

    monkeypatch.setattr(rootfs, "resolve_packages", no_apt)
    assert rootfs.resolved_packages(rootfs.DEBIAN_PACKAGES, tmp_path) == first
    debs = rootfs.fetch_packages(first, cache_dir() / "debs")
    base = rootfs.unpacked_base(first, debs, tmp_path)
    assert (base / rootfs.PYTHON).is_file() and (base / COMPLETE_STAMP).is_file()
    marker = base / "marker"
    marker.write_text("same directory")
    assert rootfs.unpacked_base(first, debs, tmp_path) == base and marker.is_file()


def test_the_stdlib_is_pruned_and_sourceless(guest_root: Path) -> None:
    stdlib = guest_root / "usr/lib/python3.11"
    assert not list(stdlib.rglob("*.py")), "bytecode only"
    assert (stdlib / "os.pyc").is_file()  # python's prefix landmark
    assert (stdlib / "lib-dynload").is_dir()
    assert not (stdlib / "email").exists() and not (stdlib / "tkinter").exists()
    assert (guest_root / "init").readlink() == Path("sbin/netvm-init")


def test_the_initramfs_is_reproducible(
    overlay: Path, initramfs: InitramfsResult, tmp_path: Path
) -> None:
    again = build_initramfs(
        "debian", overlay, tmp_path / "b.cpio.gz", cache=cache_dir(), epoch=EPOCH
    )
    digest = hashlib.sha256(initramfs.path.read_bytes()).hexdigest()
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == digest


def test_cpio_provider_adds_the_overlay_to_a_users_base(
    initramfs: InitramfsResult, tmp_path: Path
) -> None:
    # A user's base: the Debian one without netvm's files (stands in for Buildroot output).
    base_entries = [
        e
        for e in cpio.read_cpio_gz(initramfs.path.read_bytes())
        if not e.path.startswith(("usr/lib/netvm", "etc/netvm", "sbin/netvm-init", "init"))
    ]
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(cpio.gzip_deterministic(cpio.write_newc(base_entries, 0)))
    overlay = tmp_path / "overlay"
    (overlay / "etc/netvm").mkdir(parents=True)
    (overlay / "etc/netvm/driver.json").write_text("{}\n")
    (overlay / "usr/lib/netvm/netvm_driver").mkdir(parents=True)
    (overlay / "usr/lib/netvm/netvm_driver/__init__.py").write_text("")
    result = build_initramfs(
        "cpio", overlay, tmp_path / "out.cpio.gz", cache=tmp_path, epoch=EPOCH, base_cpio=base
    )
    paths = {e.path for e in cpio.read_cpio_gz(result.path.read_bytes())}
    assert {"etc/netvm/driver.json", "usr/bin/python3.11", "init"} <= paths
    # A user's python may be another version: sources stay, bytecode only in __pycache__.
    assert "usr/lib/netvm/netvm_driver/__init__.py" in paths
    assert "usr/lib/netvm/netvm_driver/__pycache__/__init__.cpython-311.pyc" in paths


def test_cpio_provider_rejects_a_base_without_python(tmp_path: Path) -> None:
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(cpio.gzip_deterministic(cpio.write_newc([cpio.directory("bin")], 0)))
    with pytest.raises(UserError, match="no usr/bin/python3"):
        build_initramfs(
            "cpio", tmp_path, tmp_path / "o.gz", cache=tmp_path, epoch=0, base_cpio=base
        )
    base.write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not gzip-compressed"):
        build_initramfs(
            "cpio", tmp_path, tmp_path / "o.gz", cache=tmp_path, epoch=0, base_cpio=base
        )


def test_buildroot_external_tree(odroidc4: Board, overlay: Path, tmp_path: Path) -> None:
    tree = export_external_tree(odroidc4, overlay, tmp_path / "br", ROOT)
    desc = (tree / "external.desc").read_text()
    assert desc.startswith("name: NETVM\n")
    assert (tree / "external.mk").is_file() and (tree / "Config.in").is_file()
    defconfig = (tree / "configs" / defconfig_name(odroidc4)).read_text().splitlines()
    assert "BR2_aarch64=y" in defconfig and "BR2_PACKAGE_PYTHON3=y" in defconfig
    assert "BR2_TARGET_ROOTFS_CPIO_GZIP=y" in defconfig
    overlay_line = next(ln for ln in defconfig if ln.startswith("BR2_ROOTFS_OVERLAY="))
    rel = overlay_line.split("=", 1)[1].strip('"').replace("$(BR2_EXTERNAL_NETVM_PATH)/", "")
    assert (tree / rel / "sbin/netvm-init").is_file()
    assert (tree / rel / "usr/lib/netvm/netvm_driver/__init__.py").is_file()
    assert (tree / rel / "etc/netvm/driver.json").is_file()
    script_line = next(ln for ln in defconfig if ln.startswith("BR2_ROOTFS_POST_BUILD_SCRIPT="))
    script = tree / script_line.split("=", 1)[1].strip('"').replace(
        "$(BR2_EXTERNAL_NETVM_PATH)/", ""
    )
    assert os.access(script, os.X_OK)
    # The post-build script makes netvm-init the system's init, as Buildroot's /init expects.
    target = tmp_path / "target"
    (target / "sbin").mkdir(parents=True)
    subprocess.run([str(script), str(target)], check=True)
    assert (target / "sbin/init").readlink() == Path("netvm-init")


# ---------------------------------------------------------------------------------------
# /init's functions, run by the guest's own busybox sh under qemu-user


def busybox_sh(root: Path, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    functions = root / "usr/lib/netvm/init-functions.sh"
    return subprocess.run(
        ["qemu-aarch64-static", "-L", str(root), str(root / "bin/busybox"), "sh", "-c",
         f". {functions}\n{script}"],
        # The guest busybox interprets the script; without binfmt_misc its applet links
        # cannot be exec()ed here, so external commands (sleep, cat, date) are the host's.
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def test_wait_for_carrier_returns_when_the_link_comes_up(guest_root: Path, tmp_path: Path) -> None:
    net = tmp_path / "net" / "eth0"
    net.mkdir(parents=True)
    (net / "carrier").write_text("0\n")
    proc = subprocess.Popen(
        ["qemu-aarch64-static", "-L", str(guest_root), str(guest_root / "bin/busybox"), "sh", "-c",
         f". {guest_root}/usr/lib/netvm/init-functions.sh; wait_for_carrier eth0 10; echo rc=$?"],
        env={"PATH": "/usr/bin:/bin", "NETVM_SYSFS_NET": str(tmp_path / "net")},
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    time.sleep(0.5)
    assert proc.poll() is None, "still waiting while there is no carrier"
    up = time.monotonic()
    (net / "carrier").write_text("1\n")
    out, _ = proc.communicate(timeout=10)
    assert out.strip() == "rc=0"
    print(f"carrier seen after {time.monotonic() - up:.2f} s")


def test_wait_for_carrier_times_out(guest_root: Path, tmp_path: Path) -> None:
    start = time.monotonic()
    proc = busybox_sh(
        guest_root, "wait_for_carrier eth9 1; echo rc=$?", {"NETVM_SYSFS_NET": str(tmp_path)}
    )
    assert proc.stdout.strip() == "rc=1"
    assert time.monotonic() - start >= 1.0


def test_supervise_restarts_with_back_off(guest_root: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = busybox_sh(
        guest_root,
        f"supervise sh -c 'echo run >> {runs}; exit 3'",
        {"NETVM_RESTART_DELAYS": "0.1 0.3", "NETVM_SUPERVISE_MAX": "4"},
    )
    assert proc.returncode == 0, proc.stderr
    assert runs.read_text().count("run") == 4
    log = proc.stderr.splitlines()
    assert re.fullmatch(
        r"netvm-init: sh exited with status 3 after [01]s; restart 1 in 0.1s", log[0]
    )
    # The last delay repeats once the list is used up.
    assert [ln.rsplit(" ", 1)[1] for ln in log] == ["0.1s", "0.3s", "0.3s", "0.3s"]


def test_is_mounted_reads_proc_mounts(guest_root: Path) -> None:
    proc = busybox_sh(
        guest_root, "is_mounted /proc && echo proc; is_mounted /no/such || echo none", {}
    )
    assert proc.stdout.split() == ["proc", "none"]


def test_init_script_is_valid_shell() -> None:
    subprocess.run(["sh", "-n", str(ROOT / "rootfs_overlay/sbin/netvm-init")], check=True)
    subprocess.run(["sh", "-n", str(FUNCTIONS)], check=True)
    assert os.access(ROOT / "rootfs_overlay/sbin/netvm-init", os.X_OK)
    assert shutil.which("qemu-aarch64-static")


def test_the_guests_own_python_compiles_the_bytecode(
    initramfs: InitramfsResult, tmp_path: Path
) -> None:
    """guest_compile runs the Debian base's arm64 python (under qemu-user) on the
    sources: its pycs load as code of the guest path, hash-based and unchecked (no
    mtime, no host path); a source it cannot compile is a user error naming what failed."""
    import marshal

    packages = rootfs.resolved_packages(rootfs.DEBIAN_PACKAGES, cache_dir())
    debs = rootfs.fetch_packages(packages, cache_dir() / "debs")
    guest_root = rootfs.unpacked_base(packages, debs, cache_dir())

    good = tmp_path / "m.py"
    good.write_text('"""doc"""\nX = (1, "a")\n\ndef f():\n    return X\n')
    got = rootfs.guest_compile(guest_root, {"usr/lib/netvm/m.py": (good, 0)})
    pyc = got["usr/lib/netvm/m.py"]
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, not checked
    code = marshal.loads(pyc[16:])
    assert code.co_filename == "/usr/lib/netvm/m.py"
    assert "doc" in code.co_consts
    stripped = rootfs.guest_compile(guest_root, {"usr/lib/netvm/m.py": (good, 2)})
    assert "doc" not in marshal.loads(stripped["usr/lib/netvm/m.py"][16:]).co_consts

    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    with pytest.raises(UserError) as err:
        rootfs.guest_compile(guest_root, {"usr/lib/netvm/bad.py": (bad, 0)})
    assert "could not byte-compile" in err.value.render()
    assert "SyntaxError" in err.value.render()
