"""`invoke flash --method sdcard`: an SD card (or card image) that boots the image via U-Boot.

Owns the card layout and the safety checks around writing a device. The card gets one
FAT partition starting at 1 MiB holding the image and a `boot.scr` made with `mkimage`
(U-Boot's distro boot runs it: load the image at the board's load address, `go`).

Only two ranges are written: the partition table entries of the MBR (bytes 446-511 of
sector 0) and the partition itself. Everything before 1 MiB other than those 66 bytes
is left as it was, because that is where an Odroid C4 card keeps its U-Boot (Hardkernel's
sd_fusing writes the first 444 bytes of sector 0 and sectors 1-2047).

Refused unless `force`: devices that are mounted (or have mounted partitions) and devices
that are not removable. The disk holding the running system is refused always. A
regular file is written as a card image: a missing (or empty) one is created, an existing
one only if it already is a card image (`card_image_kind`: an MBR partition table or a
FAT boot sector in sector 0), or with `force`; the check is repeated on the opened file
before it is grown or written. Every write is read back and compared; `dry_run` only
returns the plan.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from netvm.core.errors import Finding, UserError
from netvm.core.files import file_sha256
from netvm.target.tftp import PLAIN_NAME_TEXT, is_plain_name

SECTOR = 512
PART_START = 2048  # sectors: the partition starts at 1 MiB
PART_TYPE_FAT32_LBA = 0x0C
MIN_FAT_BYTES = 64 << 20  # FAT32 wants >= 65525 clusters; 64 MiB of 512-byte clusters
MAX_ADDRESS = (1 << 64) - 1
PAGE = 0x1000
NOT_AN_IMAGE = "not a card image (no MBR partition table or FAT boot sector in sector 0)"
TOOLS = {"mkimage": "u-boot-tools", "mkfs.vfat": "dosfstools", "mcopy": "mtools"}


@dataclass(frozen=True)
class CardPlan:
    device: Path
    kind: str  # "block device" or "image file"
    image: Path
    load_address: int
    fat_bytes: int
    boot_cmd: str  # boot.scr source

    @property
    def card_bytes(self) -> int:
        return PART_START * SECTOR + self.fat_bytes

    def describe(self) -> str:
        mib = 1 << 20
        lines = [
            f"device: {self.device} ({self.kind})",
            f"write: MBR partition entries (sector 0, bytes 446-511); bytes 0-445 and "
            f"sectors 1-{PART_START - 1} are kept (the board's U-Boot may live there)",
            f"write: partition 1, FAT32 'NETVM', {PART_START * SECTOR // mib} MiB to "
            f"{self.card_bytes // mib} MiB ({self.fat_bytes // mib} MiB)",
            f"  {self.image.name}: {self.image.stat().st_size} bytes, sha256 "
            f"{file_sha256(self.image)}",
            "  boot.scr (mkimage -A arm64 -T script) running:",
            *[f"    {line}" for line in self.boot_cmd.splitlines()],
            "verify: read back both ranges and compare; list the FAT with mdir",
        ]
        return "\n".join(lines)


def boot_script(image_name: str, load_address: int) -> str:
    """U-Boot script: distro boot sets devtype/devnum/distro_bootpart; default to mmc 0:1."""
    return (
        "# netvm: start the seL4 system image from this card's FAT partition\n"
        'if test -z "${devtype}"; then setenv devtype mmc; setenv devnum 0; '
        "setenv distro_bootpart 1; fi\n"
        f"load ${{devtype}} ${{devnum}}:${{distro_bootpart}} {load_address:#x} {image_name}\n"
        f"go {load_address:#x}\n"
    )


def plan_card(device: Path, image: Path, load_address: int) -> CardPlan:
    if not image.is_file():
        raise UserError([Finding(str(image), "", "image to write not found")])
    if not is_plain_name(image.name):
        raise UserError(
            [
                Finding(
                    str(image),
                    "",
                    f"the file name {image.name!r} is not a plain name ({PLAIN_NAME_TEXT})",
                    "boot.scr loads it by name: copy or link the file to a plain name such "
                    "as loader.img",
                )
            ]
        )
    if not 0 <= load_address <= MAX_ADDRESS or load_address % PAGE:
        raise UserError(
            f"load address {load_address:#x} is not a page-aligned address from 0 to "
            f"{MAX_ADDRESS:#x}",
            hint="e.g. 0x20000000",
        )
    if device.exists() and device.samefile(image):
        raise UserError([Finding(str(device), "", "is the image to write itself")])
    size = image.stat().st_size
    fat = max(MIN_FAT_BYTES, _round_up(size * 2 + (8 << 20), 1 << 20))
    kind = "block device" if _is_block(device) else "image file"
    return CardPlan(device, kind, image, load_address, fat, boot_script(image.name, load_address))


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _is_block(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# Safety


def card_image_kind(sector0: bytes) -> str | None:
    """What makes a file's first sector a card image's, or None.

    A FAT boot sector (a jump, a sane BIOS parameter block, 55 AA), or an MBR: 55 AA at
    510 and partition entries with a boot flag of 00 or 80, at least one in use, every
    entry in use starting after sector 0 and at least one sector long.
    """
    if len(sector0) < SECTOR or sector0[510:512] != b"\x55\xaa":
        return None
    if _is_fat_boot_sector(sector0):
        return "FAT boot sector"
    entries = [sector0[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    used = 0
    for entry in entries:
        if entry[0] not in (0x00, 0x80):
            return None
        if entry[4] == 0:  # partition type 0: an empty entry
            continue
        start = int.from_bytes(entry[8:12], "little")
        count = int.from_bytes(entry[12:16], "little")
        if start == 0 or count == 0:
            return None
        used += 1
    return "MBR partition table" if used else None


def _is_fat_boot_sector(sector0: bytes) -> bool:
    jump = sector0[0] == 0xE9 or (sector0[0] == 0xEB and sector0[2] == 0x90)
    bytes_per_sector = int.from_bytes(sector0[11:13], "little")
    per_cluster = sector0[13]
    reserved = int.from_bytes(sector0[14:16], "little")
    return (
        jump
        and bytes_per_sector in (512, 1024, 2048, 4096)
        and per_cluster in (1, 2, 4, 8, 16, 32, 64, 128)
        and reserved >= 1
        and sector0[16] in (1, 2)  # number of FATs
        and (sector0[21] == 0xF0 or sector0[21] >= 0xF8)  # media descriptor
    )


def _image_file_note(device: Path, sector0: bytes, size: int, *, force: bool) -> str:
    """The note for an existing regular file, or a UserError if it must not be written."""
    if size == 0:
        return "an empty file, written as a new card image file"
    if card_image_kind(sector0) is not None:
        return "an existing card image file"
    if force:
        return f"{NOT_AN_IMAGE}: overwritten anyway (--force)"
    raise UserError(
        [
            Finding(
                str(device),
                "",
                f"is an existing file that is {NOT_AN_IMAGE}; it would be overwritten",
                "check --device (a new path is created as a card image), or pass --force "
                "to overwrite this file",
            )
        ]
    )


def _read_sector0(device: Path) -> bytes:
    try:
        with device.open("rb") as f:
            return f.read(SECTOR)
    except OSError as exc:
        raise UserError([Finding(str(device), "", f"cannot be read: {exc.strerror}")]) from None


def check_device(
    device: Path,
    *,
    force: bool,
    sysfs: Path = Path("/sys"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> list[str]:
    """Refuse dangerous targets; return notes on what was checked (or overridden)."""
    if not device.exists():
        if device.parent.is_dir() and not str(device).startswith("/dev/"):
            return ["a new card image file"]
        raise UserError([Finding(str(device), "", "no such device")])
    st = device.stat()
    if stat.S_ISREG(st.st_mode):
        return [_image_file_note(device, _read_sector0(device), st.st_size, force=force)]
    if not stat.S_ISBLK(st.st_mode):
        raise UserError([Finding(str(device), "", "neither a block device nor a regular file")])
    node = sysfs / "dev" / "block" / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    real = node.resolve()
    if (real / "partition").exists():
        raise UserError(
            [
                Finding(
                    str(device),
                    "",
                    "is a partition",
                    f"give the whole card ({real.parent.name}), netvm writes the partition table",
                )
            ]
        )
    disks = _mounted_disks(sysfs, mountinfo)
    name = real.name
    if disks.get(name) == "/":
        raise UserError(
            [
                Finding(
                    str(device),
                    "",
                    "holds the running system (mounted at /); never written, even with --force",
                )
            ]
        )
    notes: list[str] = []
    refusals: list[Finding] = []
    if name in disks:
        why = f"is mounted (a filesystem on it is mounted at {disks[name]})"
        if force:
            notes.append(f"{why}: written anyway (--force)")
        else:
            refusals.append(Finding(str(device), "", why, "unmount it first, or pass --force"))
    removable = (real / "removable").read_text().strip() == "1" if real.exists() else False
    if not removable and (real / "device" / "type").is_file():
        removable = (real / "device" / "type").read_text().strip() == "SD"
    if not removable:
        why = "is not a removable device"
        if force:
            notes.append(f"{why}: written anyway (--force)")
        else:
            refusals.append(
                Finding(
                    str(device),
                    "",
                    why,
                    "check it is the SD card (lsblk -o NAME,RM,SIZE,MODEL), then pass --force",
                )
            )
    if refusals:
        raise UserError(refusals)
    return notes or ["removable and not mounted"]


def _mounted_disks(sysfs: Path, mountinfo: Path) -> dict[str, str]:
    """Whole-disk sysfs names with a mounted filesystem on them or their partitions."""
    out: dict[str, str] = {}
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        majmin, mount_point = fields[2], fields[4]
        if majmin.startswith("0:"):
            continue  # virtual filesystems (proc, tmpfs, overlay) have no disk
        node = (sysfs / "dev" / "block" / majmin).resolve()
        if not node.exists():
            continue
        disk = node.parent.name if (node / "partition").exists() else node.name
        if mount_point == "/" or disk not in out:
            out[disk] = mount_point
    return out


# ---------------------------------------------------------------------------------------
# Building and writing


def _require_tools() -> None:
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise UserError(
            f"missing tools: {', '.join(missing)}",
            hint="run ./bootstrap, or apt-get install u-boot-tools dosfstools mtools",
        )


def build_fat(plan: CardPlan, work: Path) -> bytes:
    """The partition's bytes: a FAT32 filesystem with the image and boot.scr."""
    _require_tools()
    work.mkdir(parents=True, exist_ok=True)
    cmd_file = work / "boot.cmd"
    cmd_file.write_text(plan.boot_cmd)
    scr = work / "boot.scr"
    fat = work / "fat.img"
    fat.unlink(missing_ok=True)
    steps = [
        ["mkimage", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n",
         "netvm boot", "-d", str(cmd_file), str(scr)],
        ["mkfs.vfat", "-F", "32", "-n", "NETVM", "-i", "4e45544d", "-C", str(fat),
         str(plan.fat_bytes // 1024)],
        ["mcopy", "-i", str(fat), str(plan.image), f"::{plan.image.name}"],
        ["mcopy", "-i", str(fat), str(scr), "::boot.scr"],
    ]  # fmt: skip
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UserError(f"{cmd[0]} failed: {(proc.stderr or proc.stdout).strip()}")
    return fat.read_bytes()


def partition_entries(fat_bytes: int) -> bytes:
    """MBR bytes 446-511: partition 1 (FAT32 LBA) at 1 MiB, three empty entries, 55 AA."""
    count = fat_bytes // SECTOR
    entry = (
        bytes([0x00, 0xFE, 0xFF, 0xFF, PART_TYPE_FAT32_LBA, 0xFE, 0xFF, 0xFF])
        + PART_START.to_bytes(4, "little")
        + count.to_bytes(4, "little")
    )
    return entry + bytes(48) + b"\x55\xaa"


@dataclass(frozen=True)
class CardResult:
    device: Path
    notes: tuple[str, ...]
    bytes_written: int
    listing: str  # `mdir` of the written partition

    def summary(self) -> str:
        return (
            f"{self.device}: wrote and verified {self.bytes_written} bytes "
            f"({'; '.join(self.notes)})\n{self.listing}"
        )


def write_card(
    plan: CardPlan,
    *,
    force: bool,
    sysfs: Path = Path("/sys"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> CardResult:
    notes = check_device(plan.device, force=force, sysfs=sysfs, mountinfo=mountinfo)
    with tempfile.TemporaryDirectory(prefix="netvm-card-") as tmp:
        fat = build_fat(plan, Path(tmp))
    table = partition_entries(len(fat))
    if plan.kind == "block device":
        size = _device_size(plan.device)
        if size < plan.card_bytes:
            raise UserError(
                [
                    Finding(
                        str(plan.device),
                        "",
                        f"is {size} bytes, the card layout needs {plan.card_bytes}",
                    )
                ]
            )
    writes = [(446, table), (PART_START * SECTOR, fat)]
    flags = os.O_RDWR | (os.O_CREAT if plan.kind == "image file" else 0)
    fd = os.open(plan.device, flags, 0o644)
    try:
        if plan.kind == "image file":
            # Again on the open file: the path may have changed since check_device.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UserError([Finding(str(plan.device), "", "is no longer a regular file")])
            _image_file_note(plan.device, os.pread(fd, SECTOR, 0), st.st_size, force=force)
            if st.st_size < plan.card_bytes:
                os.ftruncate(fd, plan.card_bytes)
        for offset, data in writes:
            _pwrite_all(fd, data, offset)
        os.fsync(fd)
        _drop_cache(fd)
        for offset, data in writes:
            back = os.pread(fd, len(data), offset)
            if back != data:
                raise UserError(
                    [
                        Finding(
                            str(plan.device),
                            "",
                            f"read-back of {len(data)} bytes at offset {offset} differs from "
                            "what was written",
                            "the card may be failing or write-protected",
                        )
                    ]
                )
    finally:
        os.close(fd)
    listing = subprocess.run(
        ["mdir", "-i", f"{plan.device}@@{PART_START * SECTOR}", "-b", "::"],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, MTOOLS_SKIP_CHECK="1"),
    )
    if listing.returncode != 0:
        raise UserError(f"{plan.device}: the written FAT cannot be read: {listing.stderr.strip()}")
    return CardResult(plan.device, tuple(notes), sum(len(d) for _, d in writes), listing.stdout)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view[: 8 << 20], offset)
        view = view[n:]
        offset += n


def _drop_cache(fd: int) -> None:
    """Make the read-back come from the device, not from the page cache."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _device_size(device: Path) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
