"""The build container for real: `container.build` makes it from Debian's archive, and
a build inside it gives the same bytes as the same build on this host.

Marked `container` and deselected by default: it needs root, podman, debootstrap and
the Debian archive, and takes 10-20 minutes cold (docs/ci.md). Run it with
``.venv/bin/pytest -m container``. When selected on a host that cannot run it, it fails
saying what is missing rather than skipping.

The Microkit step runs with the stand-in SDK, libvmm and sdfgen of tests/fixtures/
microkit (fakes: the real SDK cannot be fetched here), so loader.img is compared too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from netvm.board import load_board
from netvm.container import podman
from netvm.container.image import build_image, image_spec
from netvm.container.run import run_in_container
from netvm.core.workspace import Workspace
from tests.harness import INVOKE, ROOT, STANDIN_LIBVMM, STANDIN_PYTHON, STANDIN_SDK

pytestmark = pytest.mark.container

ARTIFACTS = ("kernel_image", "kernel_config", "dtb", "initramfs", "loader_img")


def standin_env(build_root: Path) -> dict[str, str]:
    return {
        "NETVM_BUILD_DIR": str(build_root),
        "NETVM_MICROKIT_SDK": str(STANDIN_SDK),
        "NETVM_LIBVMM": str(STANDIN_LIBVMM),
        "NETVM_MICROKIT_PYTHON": STANDIN_PYTHON,
    }


def artifacts(build_root: Path) -> dict[str, Any]:
    manifest = json.loads((build_root / "odroidc4" / "manifest.json").read_text())
    return {k: (v or {}).get("sha256") for k, v in manifest["artifacts"].items()}


def test_the_container_builds_the_same_bytes_as_this_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = [t for t in ("podman", "debootstrap") if shutil.which(t) is None]
    assert not missing, f"{', '.join(missing)} missing: run ./bootstrap --container"
    assert os.geteuid() == 0, "container.build needs root (debootstrap)"

    ws = Workspace.at(ROOT, tmp_path / "records")
    spec = image_spec(
        ws,
        load_board("odroidc4", ROOT),
        os.environ.get("NETVM_DEBIAN_MIRROR"),
        os.environ.get("NETVM_DEBIAN_SECURITY_MIRROR"),
    )
    tool = podman.detect()
    image = build_image(ws, spec, tool, progress=print)
    installed = {line.split("\t")[0] for line in image.packages_file.read_text().splitlines()}
    assert set(spec.packages) <= installed
    record = json.loads(image.record_file.read_text())
    assert record["ref"] == spec.ref and record["lock_sha256"] == spec.lock_sha256

    host_root = tmp_path / "host"
    host = subprocess.run(
        [INVOKE, "build", "--board", "odroidc4", "--require-image"],
        cwd=ROOT,
        env={**os.environ, **standin_env(host_root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert host.returncode == 0, host.stderr[-3000:]

    timings: dict[str, float] = {}
    built: dict[str, dict[str, Any]] = {}
    for name in ("container", "container-again"):
        root = tmp_path / name
        for key, value in standin_env(root).items():
            monkeypatch.setenv(key, value)
        start = time.monotonic()
        code = run_in_container(
            Workspace.at(ROOT, root),
            tool,
            spec.ref,
            ["invoke", "build", "--board", "odroidc4", "--require-image"],
        )
        timings[name] = time.monotonic() - start
        assert code == 0
        built[name] = artifacts(root)
    print(f"container builds (cold build dir, warm caches): {timings}")

    expected = artifacts(host_root)
    for name in ARTIFACTS:
        assert expected[name], f"the host build made no {name}"
    assert built["container"] == expected
    assert built["container-again"] == expected
