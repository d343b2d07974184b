"""Software IPv4/UDP/TCP checksums for TX frames (``--fill-tx-checksums``, off by default).

Why: recent sDDF marks the Odroid C4 as having checksum offload, so lwIP clients leave
checksums to "hardware", but a raw packet socket sends frames as they are. With this
option the driver fills them in. Owns only byte arithmetic on a private copy of a frame;
never touches shared memory.
"""

from __future__ import annotations

import sys

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 ones'-complement sum, folded and complemented."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    # The ones'-complement sum is byte-order independent (RFC 1071 §2B): sum native-order
    # words (fast) and swap the folded result to network order on little-endian hosts.
    total = initial + sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return ~total & 0xFFFF


def _pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    pseudo = src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
    return sum(memoryview(pseudo).cast("H"))


def fill_checksums(frame: bytearray | memoryview) -> bool:
    """Fill the IPv4 header checksum and the UDP/TCP checksum in place.

    `frame` is a private copy, or a byte view of a TX ring slot (the ring data path).

    Returns True if the frame was IPv4 (and so was touched). Fragments past the first
    carry no L4 header, and a first fragment's L4 checksum covers data not in this
    frame, so only the IP header is filled for fragments.
    """
    off = ETH_HLEN
    if len(frame) < off + 20:
        return False
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_P_8021Q:
        off += 4
        ethertype = int.from_bytes(frame[16:18], "big")
    if ethertype != ETH_P_IP or len(frame) < off + 20 or frame[off] >> 4 != 4:
        return False
    ihl = (frame[off] & 0x0F) * 4
    total_len = int.from_bytes(frame[off + 2 : off + 4], "big")
    if ihl < 20 or total_len < ihl or off + total_len > len(frame):
        return False
    frame[off + 10 : off + 12] = b"\0\0"
    frame[off + 10 : off + 12] = internet_checksum(frame[off : off + ihl]).to_bytes(2, "big")
    flags_frag = int.from_bytes(frame[off + 6 : off + 8], "big")
    if flags_frag & 0x3FFF:  # MF set or a fragment offset: not a whole datagram
        return True
    proto = frame[off + 9]
    l4 = off + ihl
    l4_len = total_len - ihl
    if proto == IPPROTO_UDP and l4_len >= 8:
        pos = l4 + 6
    elif proto == IPPROTO_TCP and l4_len >= 20:
        pos = l4 + 16
    else:
        return True
    frame[pos : pos + 2] = b"\0\0"
    src, dst = bytes(frame[off + 12 : off + 16]), bytes(frame[off + 16 : off + 20])
    csum = internet_checksum(frame[l4 : l4 + l4_len], _pseudo_sum(src, dst, proto, l4_len))
    if proto == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF  # 0 means "no checksum" in UDP over IPv4
    frame[pos : pos + 2] = csum.to_bytes(2, "big")
    return True
