"""Reading a user's base initramfs as the kernel does: archives made by GNU cpio with
hard links, concatenated archives, and malformed ones refused as the user's error."""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest

from netvm.core.errors import UserError
from netvm.guest import cpio
from netvm.guest.rootfs import build_initramfs

EPOCH = 1704067200
LINKED = b"linked contents\n" * 40
PYTHON = b"\x7fELF not really python\n"


def gnu_cpio(tree: Path) -> bytes:
    """`find . | cpio -o -H newc` of `tree` (uncompressed, padded to 512 bytes)."""
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    return subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        input="\n".join(names).encode() + b"\n",
        cwd=tree,
        capture_output=True,
        check=True,
    ).stdout


def gzip_n(raw: bytes) -> bytes:
    return subprocess.run(["gzip", "-9", "-n"], input=raw, capture_output=True, check=True).stdout


def make_tree(tree: Path) -> None:
    """A hard-linked pair and a set of three, a symlink, directories, an empty file."""
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "empty-dir").mkdir()
    python = tree / "usr/bin/python3.11"
    python.write_bytes(PYTHON)
    python.chmod(0o755)
    (tree / "usr/bin/python3").symlink_to("python3.11")
    (tree / "etc/data").write_bytes(LINKED)
    (tree / "etc/data").chmod(0o640)
    os.link(tree / "etc/data", tree / "etc/data-link")
    (tree / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (tree / "usr/bin/tool").chmod(0o755)
    os.link(tree / "usr/bin/tool", tree / "usr/bin/tool-a")
    os.link(tree / "usr/bin/tool", tree / "usr/bin/tool-b")
    (tree / "etc/empty").write_bytes(b"")
    (tree / "etc/empty").chmod(0o644)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    t.mkdir()
    make_tree(t)
    return t


def read_tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """path -> (kind, permission bits, contents or symlink target) of everything."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for p in root.rglob("*"):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", 0, os.readlink(p).encode())
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def as_tree(entries: list[cpio.Entry]) -> dict[str, tuple[str, int, bytes]]:
    return {
        e.path: (e.kind, 0 if e.kind == "symlink" else stat.S_IMODE(e.mode), e.data)
        for e in entries
    }


def test_gnu_cpio_hard_links_give_every_name_the_contents(tree: Path) -> None:
    raw = gnu_cpio(tree)
    # GNU cpio stores a link set's contents once, with its last name; the others are empty.
    assert raw.count(LINKED) == 1 and raw.count(b"echo tool") == 1
    entries = cpio.read_cpio_gz(gzip_n(raw))
    assert as_tree(entries) == read_tree(tree)
    by_path = {e.path: e for e in entries}
    assert by_path["etc/data"].data == by_path["etc/data-link"].data == LINKED
    assert by_path["etc/empty"].data == b"" and by_path["etc/empty"].kind == "file"
    assert by_path["usr/bin/python3"].data == b"python3.11"
    assert by_path["empty-dir"].kind == "dir"
    assert cpio.read_newc(raw) == entries


def extract(blob: bytes, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
        input=gzip.decompress(blob),
        cwd=dest,
        check=True,
    )
    return dest


def test_repacked_base_keeps_every_file_byte_for_byte(tree: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(gzip_n(gnu_cpio(tree)))
    overlay = tmp_path / "overlay"
    (overlay / "etc/netvm").mkdir(parents=True)
    (overlay / "etc/netvm/driver.json").write_text("{}\n")
    out = tmp_path / "out.cpio.gz"
    build_initramfs("cpio", overlay, out, cache=tmp_path, epoch=EPOCH, base_cpio=base)
    got = read_tree(extract(out.read_bytes(), tmp_path / "x"))
    want = read_tree(tree)
    assert {p: got[p] for p in want} == want
    assert got["etc/netvm/driver.json"][2] == b"{}\n"
    # Each name of a link set is a file of its own in the output, with the contents.
    raw = gzip.decompress(out.read_bytes())
    assert raw.count(LINKED) == 2 and raw.count(b"echo tool") == 3
    assert b"TRAILER!!!" in raw and raw.count(b"TRAILER!!!") == 1
    # The output is a function of the entries: the same base and overlay, the same bytes.
    again = tmp_path / "again.cpio.gz"
    build_initramfs("cpio", overlay, again, cache=tmp_path, epoch=EPOCH, base_cpio=base)
    assert again.read_bytes() == out.read_bytes()


def test_an_overlay_replacing_one_name_of_a_link_set_leaves_the_others(
    tree: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(gzip_n(gnu_cpio(tree)))
    overlay = tmp_path / "overlay"
    (overlay / "etc").mkdir(parents=True)
    (overlay / "etc/data-link").write_bytes(b"from the overlay\n")
    out = tmp_path / "out.cpio.gz"
    build_initramfs("cpio", overlay, out, cache=tmp_path, epoch=EPOCH, base_cpio=base)
    got = read_tree(extract(out.read_bytes(), tmp_path / "x"))
    assert got["etc/data-link"][2] == b"from the overlay\n"
    assert got["etc/data"][2] == LINKED


def second_tree(root: Path) -> Path:
    """A later archive: replaces etc/data (breaking nothing else) and adds a file."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/data").write_bytes(b"replaced\n")
    (root / "etc/data").chmod(0o600)
    (root / "etc/added").write_bytes(b"added\n")
    (root / "etc/added").chmod(0o644)
    return root


@pytest.mark.parametrize("layout", ["gzip members", "one gzip stream", "plain then gzip"])
def test_concatenated_archives_are_all_read(tree: Path, tmp_path: Path, layout: str) -> None:
    first = gnu_cpio(tree)
    second = gnu_cpio(second_tree(tmp_path / "second"))
    if layout == "gzip members":  # cat a.cpio.gz b.cpio.gz, NUL padding between
        blob = gzip_n(first) + b"\0" * 512 + gzip_n(second)
    elif layout == "one gzip stream":  # cat a.cpio b.cpio | gzip
        blob = gzip_n(first + second)
    else:  # an uncompressed early archive (microcode), then the gzip'd rootfs
        blob = first + gzip_n(second)
    got = as_tree(cpio.read_cpio_gz(blob))
    want = read_tree(tree)
    want["etc/data"] = ("file", 0o600, b"replaced\n")  # the later entry wins
    want["etc/added"] = ("file", 0o644, b"added\n")
    assert got == want
    # The other names of the replaced file's link set keep its contents.
    assert got["etc/data-link"][2] == LINKED


def valid_archive() -> bytes:
    return cpio.write_newc(
        [
            cpio.directory("bin"),
            cpio.regular("bin/python3", PYTHON, 0o755),
            cpio.symlink("init", "bin/python3"),
        ],
        EPOCH,
    )


def header_at(raw: bytes, index: int) -> int:
    pos = -1
    for _ in range(index + 1):
        pos = raw.index(cpio.NEWC_MAGIC, pos + 1)
    return pos


def patch_field(raw: bytes, index: int, field: int, text: bytes) -> bytes:
    at = header_at(raw, index) + 6 + 8 * field
    return raw[:at] + text + raw[at + 8 :]


def malformed() -> dict[str, bytes]:
    raw = valid_archive()
    gz = cpio.gzip_deterministic(raw)
    corrupt = bytearray(gz)
    corrupt[len(gz) // 2] ^= 0xFF
    return {
        "empty file": b"",
        "half a gzip file": gz[: len(gz) // 2],
        "a corrupted gzip byte": bytes(corrupt),
        "gzip'd junk": gzip.compress(b"this is not an archive"),
        "gzip'd empty": gzip.compress(b""),
        "truncated header": cpio.gzip_deterministic(raw[:50]),
        "truncated name": cpio.gzip_deterministic(raw[: header_at(raw, 1) + 112]),
        "truncated data": cpio.gzip_deterministic(raw[: header_at(raw, 2) - 8]),
        "no trailer": cpio.gzip_deterministic(raw[: raw.index(b"070701" + b"0" * 8)]),
        "bad magic": cpio.gzip_deterministic(b"070707" + raw[6:]),
        "not hex": cpio.gzip_deterministic(patch_field(raw, 1, 6, b"0000001G")),
        "signed field": cpio.gzip_deterministic(patch_field(raw, 1, 6, b"-0000001")),
        "name past the end": cpio.gzip_deterministic(patch_field(raw, 1, 11, b"7FFFFFFF")),
        "name size 0": cpio.gzip_deterministic(patch_field(raw, 1, 11, b"00000000")),
        "name without NUL": cpio.gzip_deterministic(patch_field(raw, 1, 11, b"00000005")),
        "data past the end": cpio.gzip_deterministic(patch_field(raw, 1, 6, b"7FFFFFFF")),
        "junk after the archive": cpio.gzip_deterministic(raw) + b"junk",
        "junk inside the gzip data": cpio.gzip_deterministic(raw + b"junk"),
        "xz": b"\xfd7zXZ\x00" + b"\0" * 32,
    }


@pytest.mark.parametrize("case", sorted(malformed()))
def test_a_malformed_base_is_the_users_error(tmp_path: Path, case: str) -> None:
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(malformed()[case])
    with pytest.raises(UserError) as err:
        build_initramfs(
            "cpio", tmp_path, tmp_path / "o.cpio.gz", cache=tmp_path, epoch=0, base_cpio=base
        )
    text = str(err.value)
    assert str(base) in text and "rootfs.base_cpio must be a newc cpio archive" in text
    if case == "xz":
        assert "xz-compressed" in text


def test_every_truncation_and_byte_flip_is_a_value_error(tree: Path) -> None:
    """No prefix or single-byte corruption of an archive ends in another exception."""
    raw = gnu_cpio(tree)
    trailer_end = raw.index(b"TRAILER!!!") + len(b"TRAILER!!!") + 1
    for n in range(len(raw)):
        try:
            cpio.read_newc(raw[:n])
        except ValueError:
            continue
        assert n >= trailer_end, n
    rng = random.Random(0)
    gz = gzip_n(raw)
    for _ in range(300):
        blob = bytearray(raw)
        at = rng.randrange(trailer_end)
        blob[at] = rng.randrange(256)
        with contextlib.suppress(ValueError):
            cpio.read_newc(bytes(blob))
        blob = bytearray(gz)
        blob[rng.randrange(len(gz))] ^= 1 << rng.randrange(8)
        with contextlib.suppress(ValueError):
            cpio.read_cpio_gz(bytes(blob))
