"""Kernel source providers: a pinned tarball over a real HTTP server, a local tree."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netvm.core.errors import UserError
from netvm.guest.kernelsrc import local_source, tarball_source
from tests.harness import ServedDirectory, closed_port

MAKEFILE = "VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 99\nEXTRAVERSION =\n"


@pytest.fixture()
def tarball(tmp_path: Path) -> tuple[Path, str]:
    tree = tmp_path / "linux-6.12.99"
    tree.mkdir()
    (tree / "Makefile").write_text(MAKEFILE)
    (tree / "Kconfig").write_text('mainmenu "test"\n')
    served = tmp_path / "www"
    served.mkdir()
    out = served / "linux-6.12.99.tar.xz"
    with tarfile.open(out, "w:xz") as tar:
        tar.add(tree, arcname=tree.name)
    return out, hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture()
def server(tarball: tuple[Path, str]) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on localhost serving the tarball; yields its URL and request log."""
    with ServedDirectory.serving(tarball[0].parent) as served:
        yield served.url(tarball[0].name), served.requests


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETVM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tarball_is_downloaded_once_verified_and_extracted(
    tarball: tuple[Path, str], server: tuple[str, list[str]], cache: Path
) -> None:
    url, requests = server
    src = tarball_source(url, tarball[1])
    assert (src.version, src.provider, src.origin) == ("6.12.99", "tarball", url)
    assert (src.path / "Makefile").read_text() == MAKEFILE
    assert src.path.is_relative_to(cache)
    again = tarball_source(url, tarball[1])
    assert again.path == src.path
    assert len(requests) == 1, "the second use comes from the cache"


def test_a_wrong_sha256_is_refused_and_nothing_is_kept(
    server: tuple[str, list[str]], cache: Path
) -> None:
    url, _ = server
    with pytest.raises(UserError) as err:
        tarball_source(url, "0" * 64)
    message = str(err.value)
    assert "does not match the pinned " + "0" * 64 in message
    assert not list((cache / "downloads").iterdir())


def test_offline_is_a_clear_error() -> None:
    with pytest.raises(UserError) as err:
        tarball_source(f"http://127.0.0.1:{closed_port()}/linux-6.12.99.tar.xz", "1" * 64)
    finding = err.value.findings[0]
    assert finding.message.startswith("cannot download kernel tarball http://127.0.0.1:")
    assert "place the file at" in finding.hint and "linux-6.12.99.tar.xz" in finding.hint


def test_a_tarball_placed_by_hand_is_used_offline(tarball: tuple[Path, str], cache: Path) -> None:
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / tarball[0].name).write_bytes(tarball[0].read_bytes())
    src = tarball_source(f"http://127.0.0.1:9/{tarball[0].name}", tarball[1])
    assert src.version == "6.12.99"


def test_local_tree_must_look_like_a_kernel(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a Linux kernel tree"):
        local_source(tmp_path)
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "Kconfig").write_text("")
    assert local_source(tmp_path).version == "6.12.99"
