"""The build container's set-up, without building it: where its packages come from, the
flags podman needs on a host, what a run mounts, and what its tag depends on.
(tests/test_container.py builds it and compares the bytes it produces.)"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from netvm.board import load_board
from netvm.container import aptsources
from netvm.container.image import ImageSpec, debian_packages, image_spec
from netvm.container.podman import Podman, host_flags
from netvm.container.run import ccache_dir, mounts_and_env, run_command
from netvm.core.errors import UserError
from netvm.core.workspace import Workspace
from tests.harness import ROOT

DEB822 = """\
Types: deb
# a comment inside a stanza
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://archive.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://other.example/apt
Suites: nodistro
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""


def sources_dir(tmp_path: Path, files: dict[str, str]) -> list[Path]:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return [tmp_path / "sources.list", d]


def test_host_deb822_entries_become_the_containers_sources(tmp_path: Path) -> None:
    paths = sources_dir(tmp_path, {"debian.sources": DEB822})
    got = aptsources.debian_sources(None, paths=paths)
    assert got == [
        aptsources.AptSource(
            "http://archive.example/debian", ("bookworm", "bookworm-updates"), ("main",)
        ),
        aptsources.AptSource(
            "http://security.example/debian-security", ("bookworm-security",), ("main",)
        ),
    ]
    assert aptsources.base_mirror(got) == "http://archive.example/debian"
    text = aptsources.render_sources(got)
    assert "URIs: http://security.example/debian-security\nSuites: bookworm-security\n" in text
    assert text.count(f"Signed-By: {aptsources.KEYRING}") == 2


def test_one_line_sources_are_read_too(tmp_path: Path) -> None:
    paths = sources_dir(tmp_path, {"x.list": "deb http://other.example/apt stable main\n"})
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n"
        "deb-src http://one.example/debian bookworm main\n"
    )
    got = aptsources.debian_sources(None, paths=paths)
    assert got == [aptsources.AptSource("http://one.example/debian", ("bookworm",), ("main",))]


def test_a_host_without_debian_sources_is_told_to_give_a_mirror(tmp_path: Path) -> None:
    paths = sources_dir(tmp_path, {"x.list": "deb http://other.example/ubuntu noble main\n"})
    with pytest.raises(UserError) as err:
        aptsources.debian_sources(None, paths=paths)
    text = err.value.render()
    assert "no Debian bookworm main entry" in text
    assert "--mirror URL" in text and "$NETVM_DEBIAN_MIRROR" in text


def test_a_given_mirror_replaces_the_hosts_sources(tmp_path: Path) -> None:
    paths = sources_dir(tmp_path, {"debian.sources": DEB822})
    got = aptsources.debian_sources(
        "http://m.example/debian/", "http://s.example/debian-security", paths=paths
    )
    assert [s.uri for s in got] == ["http://m.example/debian", "http://s.example/debian-security"]
    assert got[0].suites == ("bookworm", "bookworm-updates")
    with pytest.raises(UserError) as err:
        aptsources.debian_sources("m.example/debian", paths=paths)
    assert err.value.findings[0].key == "--mirror"
    assert "is not an archive URL" in err.value.render()


def test_cgroup_v1_hosts_get_cgroupfs_and_runc_and_limits_they_can_set(tmp_path: Path) -> None:
    hybrid = tmp_path / "cgroup"
    (hybrid / "unified").mkdir(parents=True)  # v2 beside v1: no cgroup.controllers at root
    pid_max = tmp_path / "pid_max"
    pid_max.write_text("100\n")
    flags = host_flags(hybrid, pid_max)
    assert flags.global_flags == ("--cgroup-manager=cgroupfs", "--runtime", "runc")
    nofile, nproc = flags.ulimits[1], flags.ulimits[3]
    assert nofile.startswith("nofile=") and nproc == "nproc=100:100"

    unified = tmp_path / "v2"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu memory pids\n")
    assert host_flags(unified, pid_max).global_flags == ()
    assert flags.command("run", "x") == ["podman", *flags.global_flags, "run", "x"]


def test_debian_packages_are_the_ones_bootstrap_installs() -> None:
    """One list for the host and the container: bootstrap reads the same file."""
    script = (
        "mapfile -t APT_PACKAGES < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "
        'requirements-debian.txt); printf "%s\\n" "${APT_PACKAGES[@]}"'
    )
    assert script.split(";")[0] in (ROOT / "bootstrap").read_text()
    from_bash = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert debian_packages(ROOT) == from_bash
    assert {"gcc-aarch64-linux-gnu", "linux-source-6.12", "device-tree-compiler"} <= set(from_bash)


def spec(tmp_path: Path) -> ImageSpec:
    board = load_board("odroidc4", ROOT)
    sources = sources_dir(tmp_path, {"debian.sources": DEB822})
    s = image_spec(Workspace.at(ROOT, tmp_path / "build"), board, None, None)
    return dataclasses.replace(s, sources=tuple(aptsources.debian_sources(None, paths=sources)))


def test_the_tag_names_the_version_and_changes_with_every_input(tmp_path: Path) -> None:
    s = spec(tmp_path)
    assert s.ref.startswith("localhost/netvm-build:0.1.0-")
    assert len(s.ref.rsplit("-", 1)[1]) == 12
    assert len(s.lock_sha256) == 64  # the board's netvm.lock
    changed = [
        dataclasses.replace(s, lock_sha256="0" * 64),
        dataclasses.replace(s, requirements=s.requirements + "x==1\n"),
        dataclasses.replace(s, packages=(*s.packages, "jq")),
        dataclasses.replace(s, template=s.template + "\n"),
        dataclasses.replace(
            s, sources=(aptsources.AptSource("http://m.example/debian", ("bookworm",), ("main",)),)
        ),
    ]
    refs = {s.ref, *(c.ref for c in changed)}
    assert len(refs) == 1 + len(changed)


def test_the_containerfile_installs_every_package_and_the_pinned_venv(tmp_path: Path) -> None:
    s = spec(tmp_path)
    text = s.containerfile(ROOT)
    assert f"FROM {s.base_ref}\n" in text
    install = next(line for line in text.splitlines() if "apt-get install" in line)
    assert install.split("--no-install-recommends ")[1].split(" \\")[0].split() == list(s.packages)
    assert "dpkg --add-architecture arm64" in text
    assert "pip install --no-index" in text
    assert f'netvm.lock-sha256="{s.lock_sha256}"' in text
    assert f'netvm.inputs-sha256="{s.inputs_sha256}"' in text


def test_a_run_mounts_checkout_caches_and_given_paths_at_their_own_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETVM_CACHE", str(tmp_path / "cache"))
    sdk = tmp_path / "sdk"
    sdk.mkdir()
    extra = tmp_path / "extra.txt"
    extra.write_text("x")
    ws = Workspace.at(ROOT, tmp_path / "out")
    env = {
        "CCACHE_DIR": str(tmp_path / "ccache"),
        "NETVM_BUILD_DIR": str(tmp_path / "out"),
        "NETVM_MICROKIT_SDK": str(sdk),
        "NETVM_BOARD_NOTE": "not a path",
        "CI": "true",
        "HOME": "/root",
    }
    mounts, out_env = mounts_and_env(ws, env, [str(extra)])
    by_path = {m.path: m.writable for m in mounts}
    assert by_path == {
        ROOT.resolve(): True,
        (tmp_path / "cache").resolve(): True,
        (tmp_path / "ccache").resolve(): True,
        (tmp_path / "out").resolve(): True,
        sdk.resolve(): False,
        extra.resolve(): False,
    }
    assert out_env["NETVM_CACHE"] == str((tmp_path / "cache").resolve())
    assert out_env["CCACHE_DIR"] == str((tmp_path / "ccache").resolve())
    assert out_env["NETVM_MICROKIT_SDK"] == str(sdk)
    assert out_env["NETVM_BOARD_NOTE"] == "not a path" and out_env["CI"] == "true"
    assert "HOME" not in out_env

    podman = Podman(("--runtime", "runc"), ("--ulimit", "nofile=10:10"), ())
    cmd = run_command(ws, podman, "img:1", ["invoke", "build"], env, extra_mounts=[str(extra)])
    assert cmd[:4] == ["podman", "--runtime", "runc", "run"]
    assert cmd[-3:] == ["img:1", "invoke", "build"]
    assert f"{ROOT.resolve()}:{ROOT.resolve()}:rw" in cmd
    assert f"{extra.resolve()}:{extra.resolve()}:ro" in cmd
    assert cmd[cmd.index("-w") + 1] == str(ROOT.resolve())
    assert "--ulimit" in cmd and "nofile=10:10" in cmd
    # The build records the container it ran in (the manifest, the SBOM).
    assert "NETVM_BUILD_CONTAINER=img:1" in cmd


def test_a_missing_mount_is_a_user_error_naming_it(tmp_path: Path) -> None:
    ws = Workspace.at(ROOT, tmp_path / "out")
    with pytest.raises(UserError) as err:
        mounts_and_env(ws, {"CCACHE_DIR": str(tmp_path / "c")}, [str(tmp_path / "nope")])
    finding = err.value.findings[0]
    assert finding.key == "--mount[0]" and "no such file or directory" in finding.message


def test_ccache_dir_follows_ccache_own_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ccache_dir({"CCACHE_DIR": "/x"}) == Path("/x")
    assert ccache_dir({}) == tmp_path / ".cache" / "ccache"
    assert ccache_dir({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/ccache")
    (tmp_path / ".ccache").mkdir()
    assert ccache_dir({}) == tmp_path / ".ccache"


def test_the_command_after_the_double_dash_keeps_its_quoting() -> None:
    from tasks import _remainder_words

    argv = ["invoke", "container.run", "--", "sh", "-c", "echo hi; exit 3"]
    # invoke hands the task the words joined by spaces: the quoting is gone.
    assert _remainder_words("sh -c echo hi; exit 3", argv) == ["sh", "-c", "echo hi; exit 3"]
    # run in-process with another argv: the remainder is split as a shell would.
    assert _remainder_words("sh -c 'echo hi'", ["pytest"]) == ["sh", "-c", "echo hi"]
