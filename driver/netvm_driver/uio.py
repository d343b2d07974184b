"""Finding and opening the UIO devices by name (docs/contract.md, Linux drivers/uio).

Owns: the sysfs scan, name matching, mmap of UIO maps and opening of IRQ fds. Must not
read or write the mapped memory (devmem.py does).

Upstream's C driver opens /dev/uio0..10 by number, which breaks as soon as another
generic-uio node shifts the probe order. Here each device is matched by the name the
device tree gives it: the second ``compatible`` string (``generic-uio\\0<name>``), or
``linux,uio-name``, or the sysfs ``name`` file (the node name unless ``linux,uio-name``
is set); failing those, by the address of its first map. A missing or ambiguous device
fails with a message listing everything that was found.
"""

from __future__ import annotations

import mmap
import os

from .abi import PAGE_SIZE
from .records import Record

SYS_CLASS_UIO = "/sys/class/uio"


class UioError(RuntimeError):
    pass


class UioInfo(Record):
    node: str  # "uio3"
    names: tuple[str, ...]  # every name the device answers to, most specific first
    maps: tuple[tuple[int, int], ...]  # (addr, size) of map0, map1, ...

    def describe(self) -> str:
        maps = ", ".join(f"map{i} {a:#x}+{s:#x}" for i, (a, s) in enumerate(self.maps))
        return f"{self.node}: names {'/'.join(self.names) or '-'}; {maps or 'no maps'}"


# os.path, not pathlib: pathlib pulls in urllib.parse and ipaddress, which cost the guest
# initramfs space and python start-up time for nothing the driver uses.


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _names(dev: str) -> tuple[str, ...]:
    names: list[str] = []
    of_node = os.path.join(dev, "device", "of_node")
    compat = _read(os.path.join(of_node, "compatible"))
    if compat:
        strings = [s.decode(errors="replace") for s in compat.rstrip(b"\0").split(b"\0")]
        if len(strings) == 2 and strings[0] == "generic-uio":
            names.append(strings[1])
    uio_name = _read(os.path.join(of_node, "linux,uio-name"))
    if uio_name:
        names.append(uio_name.rstrip(b"\0").decode(errors="replace"))
    name = _read(os.path.join(dev, "name"))
    if name:
        names.append(name.decode(errors="replace").strip())
    return tuple(dict.fromkeys(n for n in names if n))


def _maps(dev: str) -> tuple[tuple[int, int], ...]:
    maps: list[tuple[int, int]] = []
    for i in range(5):  # Linux UIO allows at most 5 maps per device
        addr = _read(os.path.join(dev, "maps", f"map{i}", "addr"))
        size = _read(os.path.join(dev, "maps", f"map{i}", "size"))
        if addr is None or size is None:
            break
        maps.append((int(addr.strip(), 16), int(size.strip(), 16)))
    return tuple(maps)


def scan(sys_root: str = SYS_CLASS_UIO) -> list[UioInfo]:
    if not os.path.isdir(sys_root):
        return []
    found = []
    for node in sorted(os.listdir(sys_root), key=lambda n: (len(n), n)):
        if node.startswith("uio"):
            dev = os.path.join(sys_root, node)
            found.append(UioInfo(node, _names(dev), _maps(dev)))
    return found


def match(wanted: dict[str, int], found: list[UioInfo]) -> dict[str, UioInfo]:
    """Map each wanted name (-> expected map0 address) to its device, or raise UioError."""
    result: dict[str, UioInfo] = {}
    problems: list[str] = []
    for name, paddr in wanted.items():
        by_name = [d for d in found if name in d.names]
        if len(by_name) > 1:
            nodes = ", ".join(d.node for d in by_name)
            problems.append(f"'{name}' is claimed by more than one device ({nodes})")
            continue
        if not by_name:
            by_name = [d for d in found if d.maps and d.maps[0][0] == paddr]
        if len(by_name) != 1:
            problems.append(f"no UIO device named '{name}' (or with map0 at {paddr:#x})")
            continue
        result[name] = by_name[0]
    if problems:
        listing = "\n".join(f"  {d.describe()}" for d in found) or "  (no UIO devices at all)"
        raise UioError(
            "; ".join(problems) + f"\nfound under {SYS_CLASS_UIO}:\n{listing}\n"
            "hint: is the guest booted with uio_pdrv_genirq.of_id=generic-uio and the "
            "netvm overlay?"
        )
    return result


def map_device(
    info: UioInfo, size: int, *, writable: bool, dev_root: str = "/dev", map_index: int = 0
) -> mmap.mmap:
    """mmap map `map_index` of the device (UIO selects map N with offset N × page size)."""
    if map_index >= len(info.maps):
        raise UioError(f"{info.node} has no map{map_index}")
    if info.maps[map_index][1] < size:
        raise UioError(
            f"{info.node}: map{map_index} is {info.maps[map_index][1]:#x} bytes, "
            f"the configuration needs {size:#x}"
        )
    fd = os.open(f"{dev_root}/{info.node}", os.O_RDWR if writable else os.O_RDONLY)
    try:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, prot, offset=map_index * PAGE_SIZE)
    finally:
        os.close(fd)  # the mapping keeps its own reference


def open_irq(path: str) -> int:
    """An IRQ fd, non-blocking: a read after a spurious wake-up returns EAGAIN."""
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
