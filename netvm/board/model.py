"""The board model: one typed description of a driver-VM board, in frozen dataclasses.

Owns the types, the fixed limits they obey (page size, UIO limits, sDDF buffer size)
and small derived facts (region sizes, a board's UIO regions). Everything the toolkit
renders comes from a `Board`. Must not: read files (`netvm.board.reader` builds a
`Board` from YAML) or check geometry (`netvm.board.layout`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
PAGE_SIZE = 0x1000
NET_BUFFER_SIZE = 2048  # sDDF NET_BUFFER_SIZE
UIO_OF_ID_ARG = "uio_pdrv_genirq.of_id=generic-uio"
MAX_UIO_MAPS = 5  # Linux MAX_UIO_MAPS
MAX_UIO_NAME = 31  # sdfgen: names live in char[32]
MAX_UIO_DEVICES = 15  # sdfgen: MAX_LINUX_UIO_REGIONS (16) is already an error

# The UIO devices of the sDDF/libvmm contract (docs/contract.md), in upstream's DT order.
# The VMM looks them up by these exact names, so every board has all of them; a board
# may add devices of its own (e.g. a doorbell under QEMU).
UIO_NAMES: tuple[str, ...] = (
    "data_passing",
    "rx_free",
    "tx_free",
    "rx_active",
    "tx_active",
    "rx_fault",
    "tx_fault",
    "rx_irq",
    "tx_irq",
    "rx_data",
    "tx_data",
)
QUEUE_UIOS = ("rx_free", "tx_free", "rx_active", "tx_active")
IRQ_UIOS = ("rx_irq", "tx_irq")
FAULT_UIOS = ("rx_fault", "tx_fault")


def round_up_to_page(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def queue_region_size(capacity: int) -> int:
    """Bytes of a UIO window holding an sDDF net queue: 8-byte header + 16 B/descriptor."""
    return round_up_to_page(8 + 16 * capacity)


@dataclass(frozen=True)
class Region:
    paddr: int
    size: int

    @property
    def end(self) -> int:
        return self.paddr + self.size

    def overlaps(self, other: Region) -> bool:
        return self.paddr < other.end and other.paddr < self.end

    def __str__(self) -> str:
        return f"{self.paddr:#x}-{self.end:#x}"


@dataclass(frozen=True)
class DebianKernelSource:
    package: str  # Debian's linux-source-X.Y (offline default)


@dataclass(frozen=True)
class TarballKernelSource:
    url: str  # a kernel.org-style tarball, downloaded once into the cache
    sha256: str


@dataclass(frozen=True)
class LocalKernelSource:
    path: Path  # a kernel tree on this machine


# Where the kernel tree comes from: one variant per provider, each with its own fields.
KernelSourceSpec = DebianKernelSource | TarballKernelSource | LocalKernelSource


@dataclass(frozen=True)
class KernelSpec:
    source: KernelSourceSpec
    fragments: tuple[Path, ...]  # absolute; the common fragment is added by the renderer
    allow_mismatch: frozenset[str]


@dataclass(frozen=True)
class DisabledNode:
    path: str
    reason: str


@dataclass(frozen=True)
class ConsoleNode:
    node: str  # node name in the guest DT, e.g. "virtio-console@100000"
    region: Region
    irq: int  # GIC SPI number


@dataclass(frozen=True)
class QemuBaseSpec:
    """QEMU's own device tree as the base: dumped with the machine options of the boot.

    netvm.target.qemu starts the guest with exactly these options, so the dumped tree and the
    machine the guest runs on describe the same hardware.
    """

    machine: str  # -M, e.g. "virt,gic-version=2"
    cpu: str
    memory: int  # bytes; equals guest.ram.size
    smp: int = 1
    extra_args: tuple[str, ...] = ()  # more QEMU options that shape the machine
    # How many virtio-mmio transports the boot plugs devices into (the highest ones); the
    # guest DTB drops the rest. netvm's simulation boot: console and NIC.
    virtio_transports: int = 2


@dataclass(frozen=True)
class DeviceTreeSpec:
    base: str | None  # path inside the kernel tree; None when base_qemu is given
    disable: tuple[DisabledNode, ...]
    delete: tuple[str, ...]
    console: ConsoleNode
    base_qemu: QemuBaseSpec | None = None


@dataclass(frozen=True)
class InitrdSpec:
    end: int  # the window ends here; sdfgen places the DTB at this address
    headroom: int  # spare bytes in the window beyond the real initramfs


@dataclass(frozen=True)
class GuestSpec:
    ram: Region
    cma_mib: int
    bootargs: str
    initrd: InitrdSpec
    dtb_max_size: int
    # A no-map reserved-memory range of guest RAM that holds UIO windows (QEMU: the
    # sDDF regions must be RAM that QEMU backs, and Linux must not allocate them).
    carveout: Region | None = None


@dataclass(frozen=True)
class Client:
    name: str
    tx_buffers: int
    mac: str
    ipv4: str


@dataclass(frozen=True)
class NetSpec:
    interface: str
    rx_buffers: int
    clients: tuple[Client, ...]

    @property
    def tx_buffers(self) -> int:
        """Capacity of the driver's TX queues: virt_tx multiplexes every client into them."""
        return sum(c.tx_buffers for c in self.clients)


@dataclass(frozen=True)
class UioDevice:
    name: str
    maps: tuple[Region, ...]
    irq: int | None  # GIC SPI number


@dataclass(frozen=True)
class Passthrough:
    name: str
    path: str
    regions: tuple[Region, ...]
    irqs: tuple[int, ...]


# Host platforms Microkit SDK archives are published for: microkit-sdk-<v>-<platform>.tar.gz
MICROKIT_HOST_PLATFORMS = ("linux-x86-64", "linux-aarch64", "macos-x86-64", "macos-aarch64")


@dataclass(frozen=True)
class GitPin:
    """A source tree pinned to a commit (a full hash or an unambiguous prefix of one)."""

    repository: str | None
    commit: str


@dataclass(frozen=True)
class SdfgenPin:
    """The system-description generator upstream's meta.py imports, pinned by commit.

    `version` is what the installed package reports (importlib.metadata): an unreleased
    branch build reports the release it branched from, so the commit is what identifies
    it, read from the install record pip keeps for a git install.
    """

    repository: str | None
    commit: str
    version: str


@dataclass(frozen=True)
class MicrokitSystem:
    """The seL4 system netvm supplies for a board upstream's example has no entry for.

    Upstream's system program (the example's meta.py) and VMM are generic; what is
    board-specific is this: the native device-tree nodes of the devices the system drives
    (paths as sdfgen's DeviceTree.node takes them, in sDDF's DTS for the board), the sDDF
    driver directories for them, the CPU to compile for, and where physical memory ends.
    netvm renders its own make file and board entry from it (netvm.microkit.system).
    """

    cpu: str  # -mcpu for the seL4 components, e.g. cortex-a53
    paddr_top: int  # sdfgen's SystemDescription paddr_top
    serial: str  # native DT node of the seL4 serial driver's UART
    serial_driver: str  # sDDF drivers/serial/<dir>
    timer: str
    timer_driver: str  # sDDF drivers/timer/<dir>
    ethernet: str  # native DT node of the NIC passed through to the driver VM
    passthrough: tuple[str, ...] = ()  # more native nodes handed to the driver VM
    passthrough_irqs: int = 1  # IRQs the VMM passes through (the NIC's, and passthrough's)


@dataclass(frozen=True)
class MicrokitSpec:
    """The pinned inputs of the seL4 image build (netvm.microkit.handoff checks them before make).

    `sdk_sha256` maps each host platform to the sha256 of its SDK archive; None means
    the hash is not known to netvm, so the user must supply and verify that archive.
    A missing `libvmm`/`sddf` pin likewise leaves the tree unverified.
    """

    board: str
    config: str
    sdk_version: str
    sdfgen: SdfgenPin
    sdk_sha256: tuple[tuple[str, str | None], ...] = ()
    libvmm: GitPin | None = None
    example: str = "examples/eth_driver_vm"  # inside libvmm: the Makefile netvm drives
    sddf: GitPin | None = None
    # None: upstream's example make builds the image (it knows the board); else netvm
    # builds it with its own make file from upstream's generic parts (netvm.microkit.system).
    system: MicrokitSystem | None = None

    def sdk_archive_sha256(self, platform: str) -> str | None:
        return dict(self.sdk_sha256).get(platform)


ROOTFS_PROVIDERS = ("debian", "cpio", "buildroot")
# rootfs.compression -> the initramfs file the rootfs step writes
INITRAMFS_NAMES = {"gzip": "rootfs.cpio.gz", "none": "rootfs.cpio"}
ROOTFS_COMPRESSIONS = tuple(INITRAMFS_NAMES)


@dataclass(frozen=True)
class RootfsSpec:
    """Where the guest's python3 base comes from (the overlay is always netvm's own).

    debian: arm64 packages unpacked by netvm (offline default); cpio: a user's base
    rootfs.cpio.gz with python3 (e.g. Buildroot output) that gets the overlay added;
    buildroot: netvm exports an external tree the user builds with their own Buildroot.
    """

    provider: str
    base_cpio: Path | None = None  # provider cpio
    python_modules: tuple[str, ...] = ()  # stdlib modules imported lazily, kept besides
    # what importing the driver pulls in
    compression: str = "gzip"  # of the initramfs: gzip, or none (rootfs.cpio)

    @property
    def initramfs_name(self) -> str:
        return INITRAMFS_NAMES[self.compression]


@dataclass(frozen=True)
class SimSpec:
    peer_address: str  # CIDR, e.g. 10.0.0.1/24
    udp_echo_port: int


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    file: Path
    schema_version: int
    arch: str
    cross_compile: str
    kernel: KernelSpec
    devicetree: DeviceTreeSpec
    guest: GuestSpec
    net: NetSpec
    uio: tuple[UioDevice, ...]  # in device-tree order; UIO_NAMES plus any board extras
    passthrough: tuple[Passthrough, ...]
    # None: no seL4 image build for this board (no upstream system to hand the guest to).
    microkit: MicrokitSpec | None
    flash_load_address: int
    sim: SimSpec
    rootfs: RootfsSpec = RootfsSpec("debian")
    # The guest as the board's seL4 system runs it, when that differs from this one (QEMU:
    # netvm's simulation boot vs the whole seL4 system): the board with the `sel4:`
    # section's keys in place of its own. Built beside this guest, booted by `run --sel4`.
    sel4: Board | None = None
    variant: str = ""  # "sel4" for the Board held in `sel4`
    # How findings name `file`: relative to the repository when inside it (the reader's).
    display_file: str = ""

    @property
    def dir(self) -> Path:
        return self.file.parent

    def uio_device(self, name: str) -> UioDevice:
        for dev in self.uio:
            if dev.name == name:
                return dev
        raise KeyError(name)

    def queue_capacity(self, name: str) -> int:
        """Ring capacity of a queue UIO: RX rings carry rx_buffers, TX rings all clients'."""
        return self.net.rx_buffers if name.startswith("rx_") else self.net.tx_buffers


def iter_uio_regions(board: Board) -> Iterator[tuple[str, Region]]:
    for dev in board.uio:
        for i, reg in enumerate(dev.maps):
            yield (dev.name if len(dev.maps) == 1 else f"{dev.name}.maps[{i}]"), reg
