"""Fetching the pinned Microkit inputs: git clones at a commit, the SDK archive over HTTP.

The real upstream hosts are out of reach here, so the "repository" is a tiny git repo
made in a temporary directory (reached by a file:// URL) and the SDK archive is served
by `http.server` on 127.0.0.1; the board file keeps the real URLs and the tests pin
these local copies on a board changed in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netvm.board import Board, GitPin, MicrokitSpec
from netvm.core.errors import UserError
from netvm.core.files import COMPLETE_STAMP
from netvm.microkit.fetch import fetch_git, fetch_sdk
from netvm.microkit.handoff import fetch_missing, resolve_inputs, run_step
from tests.harness import (
    C4_DISPLAY,
    STANDIN_LIBVMM,
    STANDIN_PYTHON,
    STANDIN_SDK,
    ServedDirectory,
    closed_port,
    runner_with_guest,
    standin_sdk_archive,
)

PLATFORM = "linux-x86-64"
HINT = "pass --libvmm DIR"


def git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, content: Path | None = None) -> tuple[str, str]:
    """A repo with two commits; returns (first, second). `content` seeds the first."""
    if content is not None:
        shutil.copytree(content, path)
    else:
        path.mkdir()
    git(path, "init", "-q")
    (path / "PINNED").write_text("first\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "first")
    first = git(path, "rev-parse", "HEAD")
    (path / "PINNED").write_text("second\n")
    git(path, "commit", "-qam", "second")
    return first, git(path, "rev-parse", "HEAD")


# --- git ---------------------------------------------------------------------------------


def test_clone_checks_out_the_pinned_commit_and_reuses_the_cache(tmp_path: Path) -> None:
    repo = tmp_path / "upstream"
    first, second = make_repo(repo)
    cache = tmp_path / "cache"
    pin = GitPin(f"file://{repo}", first[:8])  # abbreviated, like the board's pins
    got = fetch_git("libvmm", pin, "microkit.libvmm", C4_DISPLAY, HINT, cache=cache)
    assert got.finding is None and got.path == cache / f"libvmm-{first[:8]}"
    assert git(got.path, "rev-parse", "HEAD") == first != second
    assert (got.path / "PINNED").read_text() == "first\n"  # not the branch tip
    assert got.provenance == f"verified: fetched file://{repo} at git commit {first}"
    # Reuse: with the repository gone, the cached clone still serves (no network needed).
    shutil.rmtree(repo)
    again = fetch_git("libvmm", pin, "microkit.libvmm", C4_DISPLAY, HINT, cache=cache)
    assert again == got
    assert [p.name for p in cache.iterdir()] == [f"libvmm-{first[:8]}"]  # no leftovers


def test_a_commit_the_repository_lacks_is_a_finding(tmp_path: Path) -> None:
    repo = tmp_path / "upstream"
    make_repo(repo)
    cache = tmp_path / "cache"
    pin = GitPin(str(repo), "deadbeef")
    got = fetch_git("sddf", pin, "microkit.sddf", C4_DISPLAY, HINT, cache=cache)
    assert got.path is None and got.finding is not None
    assert str(got.finding) == (
        f"{C4_DISPLAY}: microkit.sddf: {repo} has no commit deadbeef (or the prefix is "
        f"ambiguous) (hint: {HINT})"
    )
    assert list(cache.iterdir()) == []  # the failed clone is not left to look cached


def test_a_stale_cached_clone_is_replaced(tmp_path: Path) -> None:
    repo = tmp_path / "upstream"
    first, second = make_repo(repo)
    cache = tmp_path / "cache"
    pin = GitPin(str(repo), first)
    got = fetch_git("libvmm", pin, "k", C4_DISPLAY, HINT, cache=cache)
    assert got.path is not None
    git(got.path, "checkout", "-q", second)  # someone moved the cached tree
    again = fetch_git("libvmm", pin, "k", C4_DISPLAY, HINT, cache=cache)
    assert again.path is not None and git(again.path, "rev-parse", "HEAD") == first


def test_unreachable_repository_says_what_and_how(tmp_path: Path) -> None:
    port = closed_port()
    pin = GitPin(f"http://127.0.0.1:{port}/libvmm", "ecd3666a")
    got = fetch_git("libvmm", pin, "microkit.libvmm", C4_DISPLAY, HINT, cache=tmp_path)
    assert got.finding is not None
    assert got.finding.message.startswith(
        f"cannot clone libvmm from http://127.0.0.1:{port}/libvmm: "
    )
    assert "Failed to connect" in got.finding.message or "refused" in got.finding.message
    assert got.finding.hint == HINT


def test_only_the_needed_submodule_is_initialised(tmp_path: Path) -> None:
    sddf = tmp_path / "sddf-up"
    sddf_first, _ = make_repo(sddf)
    other = tmp_path / "other-up"
    make_repo(other)
    libvmm = tmp_path / "libvmm-up"
    make_repo(libvmm)
    for url, where in ((sddf, "dep/sddf"), (other, "dep/other")):
        git(libvmm, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(url), where)
    git(libvmm / "dep" / "sddf", "checkout", "-q", sddf_first)
    git(libvmm, "commit", "-qam", "submodules")
    head = git(libvmm, "rev-parse", "HEAD")
    pin = GitPin(str(libvmm), head)
    # Local submodule URLs need file transport allowed (git >= 2.38.1 refuses it by default).
    env_git = tmp_path / "gitconfig"
    env_git.write_text('[protocol "file"]\n\tallow = always\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GIT_CONFIG_GLOBAL", str(env_git))
        got = fetch_git(
            "libvmm", pin, "k", C4_DISPLAY, HINT, cache=tmp_path / "c", submodules=("dep/sddf",)
        )
    assert got.path is not None, got.finding
    assert git(got.path / "dep" / "sddf", "rev-parse", "HEAD") == sddf_first
    assert list((got.path / "dep" / "other").iterdir()) == []  # not initialised


# --- the SDK archive ---------------------------------------------------------------------


class Served(ServedDirectory):
    """SDK archives on http://127.0.0.1:PORT/VERSION/, as upstream publishes them."""

    def template(self) -> str:
        return self.url("{version}/microkit-sdk-{version}-{platform}.tar.gz")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Served, str]]:
    archive = standin_sdk_archive(
        tmp_path / "www" / "2.0.1" / f"microkit-sdk-2.0.1-{PLATFORM}.tar.gz"
    )
    server = Served(tmp_path / "www")
    yield server, hashlib.sha256(archive.read_bytes()).hexdigest()
    server.close()


def spec_with(odroidc4: Board, sha: str | None) -> MicrokitSpec:
    return dataclasses.replace(odroidc4.microkit, sdk_sha256=((PLATFORM, sha),))


def test_sdk_is_downloaded_verified_unpacked_once(
    odroidc4: Board, tmp_path: Path, served: tuple[Served, str]
) -> None:
    server, sha = served
    cache = tmp_path / "cache"
    spec = spec_with(odroidc4, sha)
    got = fetch_sdk(spec, PLATFORM, C4_DISPLAY, "h", cache=cache, url_template=server.template())
    assert got.finding is None and got.path == cache / f"sdk-{sha[:16]}" / "microkit-sdk-2.0.1"
    assert (got.path / "bin" / "microkit").is_file()
    assert got.provenance.endswith(f"archive sha256 {sha}")
    assert len(server.requests) == 1
    marker = got.path.parent / COMPLETE_STAMP
    stamp = marker.stat().st_mtime_ns
    server.close()  # the cache must serve the second call on its own
    again = fetch_sdk(spec, PLATFORM, C4_DISPLAY, "h", cache=cache, url_template=server.template())
    assert again == got and marker.stat().st_mtime_ns == stamp  # not unpacked again


def test_sdk_with_the_wrong_hash_is_discarded(
    odroidc4: Board, tmp_path: Path, served: tuple[Served, str]
) -> None:
    server, sha = served
    cache = tmp_path / "cache"
    got = fetch_sdk(
        spec_with(odroidc4, "0" * 64),
        PLATFORM,
        C4_DISPLAY,
        "h",
        cache=cache,
        url_template=server.template(),
    )
    assert got.path is None and got.finding is not None
    assert got.finding.key == f"microkit.sdk_sha256.{PLATFORM}"
    assert f"has sha256 {sha}, the board pins {'0' * 64}" in got.finding.message
    assert list(cache.iterdir()) == []  # nothing kept, nothing unpacked


def test_sdk_without_a_pinned_hash_is_never_downloaded(
    odroidc4: Board, tmp_path: Path, served: tuple[Served, str]
) -> None:
    server, _ = served
    got = fetch_sdk(
        odroidc4.microkit,  # the real board: every platform's hash is null
        PLATFORM,
        C4_DISPLAY,
        "pass --microkit-sdk DIR",
        cache=tmp_path,
        url_template=server.template(),
    )
    assert got.finding is not None and got.path is None
    assert got.finding.message == (
        "the Microkit SDK was not given and cannot be fetched: no sha256 is pinned for "
        f"microkit-sdk-2.0.1-{PLATFORM}.tar.gz, so a download could not be verified"
    )
    assert got.finding.hint.endswith("; pass --microkit-sdk DIR")
    assert server.requests == []


def test_unreachable_sdk_host_is_a_clear_finding(odroidc4: Board, tmp_path: Path) -> None:
    port = closed_port()
    got = fetch_sdk(
        spec_with(odroidc4, "0" * 64),
        PLATFORM,
        C4_DISPLAY,
        "h",
        cache=tmp_path,
        url_template=f"http://127.0.0.1:{port}/{{version}}/sdk-{{platform}}.tar.gz",
    )
    assert got.finding is not None
    assert got.finding.message.startswith(
        f"cannot download the Microkit SDK from http://127.0.0.1:{port}/2.0.1/"
        f"sdk-{PLATFORM}.tar.gz: "
    )
    assert "refused" in got.finding.message
    assert not list(tmp_path.glob("*.part"))


# --- the build step fetching what was not given -----------------------------------------


def test_build_step_fetches_all_three_and_builds(
    odroidc4: Board, tmp_path: Path, served: tuple[Served, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, sha = served
    libvmm_up, sddf_up = tmp_path / "libvmm-up", tmp_path / "sddf-up"
    libvmm_first, _ = make_repo(libvmm_up, STANDIN_LIBVMM)
    sddf_first, _ = make_repo(sddf_up, STANDIN_LIBVMM / "dep" / "sddf")
    board = dataclasses.replace(
        odroidc4,
        microkit=dataclasses.replace(
            spec_with(odroidc4, sha),
            libvmm=GitPin(f"file://{libvmm_up}", libvmm_first[:8]),
            sddf=GitPin(f"file://{sddf_up}", sddf_first[:8]),
        ),
    )
    monkeypatch.setenv("NETVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("netvm.microkit.handoff.host_platform", lambda: PLATFORM)
    env = {"NETVM_MICROKIT_SDK_URL": server.template()}
    given = resolve_inputs({}, None, env, cwd=tmp_path, config_dir=tmp_path, fetch=True)
    given = dataclasses.replace(given, python=STANDIN_PYTHON)
    runner = runner_with_guest(tmp_path)
    run_step(board, C4_DISPLAY, runner, given, require_image=True)
    rec = runner.records[-1]
    assert (rec.name, rec.status) == ("microkit", "built")
    assert runner.artifacts["loader_img"].path.is_file()
    cache = tmp_path / "cache" / "microkit"
    assert rec.details["inputs"]["libvmm"] == (
        f"verified: fetched file://{libvmm_up} at git commit {libvmm_first}"
    )
    assert rec.details["inputs"]["sddf"].endswith(f"git commit {sddf_first}")
    assert rec.details["inputs"]["microkit_sdk"].endswith(f"archive sha256 {sha}")
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".tar.gz")) == [
        f"libvmm-{libvmm_first[:8]}",
        f"sddf-{sddf_first[:8]}",
        f"sdk-{sha[:16]}",
    ]
    # A second build reuses the cache (server gone) and make is not run again.
    server.close()
    run_step(board, C4_DISPLAY, runner, given, require_image=True)
    assert runner.records[-1].status == "cached"


def test_offline_build_names_each_missing_input_and_how(
    odroidc4: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    board = dataclasses.replace(
        odroidc4,
        microkit=dataclasses.replace(
            spec_with(odroidc4, "0" * 64),
            libvmm=GitPin(f"http://127.0.0.1:{port}/libvmm", "ecd3666a"),
            sddf=GitPin(f"http://127.0.0.1:{port}/sddf", "5febd61c"),
        ),
    )
    monkeypatch.setenv("NETVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("netvm.microkit.handoff.host_platform", lambda: PLATFORM)
    env = {"NETVM_MICROKIT_SDK_URL": f"http://127.0.0.1:{port}/{{version}}/{{platform}}.tgz"}
    given = resolve_inputs({}, None, env, cwd=tmp_path, config_dir=tmp_path, fetch=True)
    runner = runner_with_guest(tmp_path)
    run_step(board, C4_DISPLAY, runner, given, require_image=False)
    rec = runner.records[-1]
    assert rec.status == "skipped"  # exit 0 without --require-image, with the reasons
    # One short line; --require-image gives every reason in full.
    assert rec.note == (
        "loader.img not built: fetching microkit-sdk, libvmm, sddf failed "
        "(--require-image says why)"
    )
    with pytest.raises(UserError) as err:
        run_step(board, C4_DISPLAY, runner_with_guest(tmp_path / "b"), given, require_image=True)
    assert [f.key for f in err.value.findings] == [
        f"microkit.sdk_sha256.{PLATFORM}",
        "microkit.libvmm",
        "microkit.sddf",
    ]
    by_key = {f.key.split(".")[1]: f for f in err.value.findings}
    assert by_key["libvmm"].hint.startswith("pass --libvmm DIR (a libvmm checkout at ecd3666a)")
    assert "set $NETVM_SDDF" in by_key["sddf"].hint
    assert "cannot download the Microkit SDK" in str(err.value)


def test_fetch_missing_leaves_given_inputs_alone(odroidc4: Board, tmp_path: Path) -> None:
    given = resolve_inputs(
        {"microkit_sdk": str(STANDIN_SDK), "libvmm": "x", "sddf": "y"},
        None,
        {},
        cwd=tmp_path,
        config_dir=tmp_path,
        fetch=True,
    )
    outcome = fetch_missing(odroidc4, C4_DISPLAY, given, cache=tmp_path / "c")
    assert outcome.inputs == given and outcome.failures == {}
    assert not (tmp_path / "c").exists()  # nothing fetched, nothing touched
