"""Turning the NIC's offloads off with the ethtool ioctl, so no ethtool binary is needed.

Why: with GRO the kernel hands the raw socket merged super-frames larger than an sDDF
buffer, with GSO/TSO it expects to split what the driver sends, and with checksum
offload it may pass frames whose checksums are left to hardware that the clients never
see. The driver VM forwards frames exactly as they were on the wire, so all of them go
off. The init script does the same with ethtool where the rootfs has it.
"""

from __future__ import annotations

import _socket as socket  # not socket.py: see docs/driver.md, "Start-up"
import array
import errno
import fcntl
import struct

SIOCETHTOOL = 0x8946
# Legacy ethtool "set" commands (linux/ethtool.h); each takes struct ethtool_value
# {u32 cmd; u32 data}. Order: GRO/GSO/TSO before the checksums they depend on.
SET_COMMANDS = (
    ("gro", 0x2C),  # ETHTOOL_SGRO
    ("gso", 0x24),  # ETHTOOL_SGSO
    ("tso", 0x1F),  # ETHTOOL_STSO
    ("tx-checksum", 0x17),  # ETHTOOL_STXCSUM
    ("rx-checksum", 0x15),  # ETHTOOL_SRXCSUM
)
IFNAMSIZ = 16


def disable_offloads(sock: socket.socket, interface: str) -> dict[str, str]:
    """Turn each offload off; return feature -> "off" or why it could not be changed."""
    name = interface.encode()
    if not 0 < len(name) < IFNAMSIZ:
        raise ValueError(f"interface name {interface!r} is not 1-15 bytes")
    result: dict[str, str] = {}
    for feature, cmd in SET_COMMANDS:
        value = array.array("I", [cmd, 0])
        address, _ = value.buffer_info()
        # struct ifreq: the name, then ifr_data (a pointer to the ethtool_value) in the
        # 24-byte union; the kernel reads the value through that pointer.
        ifreq = struct.pack(f"{IFNAMSIZ}sQ16x", name, address)
        try:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
            result[feature] = "off"
        except OSError as exc:
            # A NIC without the feature (or that cannot turn it off) is not an error.
            result[feature] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return result
