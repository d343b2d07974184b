"""What a simulated sDDF client answers: ARP, ICMP echo and UDP echo (like sDDF's echo server).

Owns: parsing a received Ethernet frame and building the reply, with checksums checked on
the way in and computed on the way out. Pure functions of bytes; no I/O, no state.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass

ETH_HLEN = 14
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
IPPROTO_ICMP = 1
IPPROTO_UDP = 17
BROADCAST = b"\xff" * 6
MIN_FRAME = 60  # Ethernet minimum without FCS; replies are padded like a NIC would


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def ip_bytes(text: str) -> bytes:
    return ipaddress.IPv4Address(text.split("/")[0]).packed


def checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 internet checksum (network byte order result)."""
    if len(data) & 1:
        data += b"\0"
    total = initial + sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return ~total & 0xFFFF


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return sum(memoryview(src + dst + bytes((0, proto)) + length.to_bytes(2, "big")).cast("H"))


@dataclass(frozen=True)
class Reply:
    kind: str  # "arp", "icmp" or "udp"
    frame: bytes


@dataclass(frozen=True)
class Ignored:
    reason: str  # "not for us", "bad checksum", ...


def _pad(frame: bytes) -> bytes:
    return frame + bytes(MIN_FRAME - len(frame)) if len(frame) < MIN_FRAME else frame


def answer(frame: bytes, mac: bytes, ip: bytes, udp_port: int) -> Reply | Ignored:
    """The reply of a client with `mac`/`ip` to `frame`, or why there is none."""
    if len(frame) < ETH_HLEN:
        return Ignored("runt")
    dst, src = frame[0:6], frame[6:12]
    if dst not in (mac, BROADCAST):
        return Ignored("not for us")
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_P_ARP:
        return _arp(frame, mac, ip)
    if ethertype != ETH_P_IP or dst != mac:
        return Ignored("not for us")
    return _ipv4(frame, src, mac, ip, udp_port)


def _arp(frame: bytes, mac: bytes, ip: bytes) -> Reply | Ignored:
    arp = frame[ETH_HLEN : ETH_HLEN + 28]
    if len(arp) < 28 or arp[0:8] != b"\x00\x01\x08\x00\x06\x04\x00\x01":
        return Ignored("not an ARP request")
    sender_mac, sender_ip, target_ip = arp[8:14], arp[14:18], arp[24:28]
    if target_ip != ip:
        return Ignored("not for us")
    body = b"\x00\x01\x08\x00\x06\x04\x00\x02" + mac + ip + sender_mac + sender_ip
    return Reply("arp", _pad(sender_mac + mac + ETH_P_ARP.to_bytes(2, "big") + body))


def _ipv4(frame: bytes, peer_mac: bytes, mac: bytes, ip: bytes, udp_port: int) -> Reply | Ignored:
    hdr_start = ETH_HLEN
    if len(frame) < hdr_start + 20 or frame[hdr_start] >> 4 != 4:
        return Ignored("not IPv4")
    ihl = (frame[hdr_start] & 0x0F) * 4
    total = int.from_bytes(frame[hdr_start + 2 : hdr_start + 4], "big")
    if ihl < 20 or total < ihl or hdr_start + total > len(frame):
        return Ignored("malformed IPv4")
    header = frame[hdr_start : hdr_start + ihl]
    if checksum(header) != 0:
        return Ignored("bad checksum")
    if header[16:20] != ip:
        return Ignored("not for us")
    if int.from_bytes(header[6:8], "big") & 0x3FFF:
        return Ignored("fragment")  # the echo clients do not reassemble
    proto, src_ip = header[9], header[12:16]
    payload = frame[hdr_start + ihl : hdr_start + total]
    if proto == IPPROTO_ICMP:
        if len(payload) < 8 or payload[0] != 8:
            return Ignored("not an ICMP echo request")
        if checksum(payload) != 0:
            return Ignored("bad checksum")
        body = b"\x00\x00\x00\x00" + payload[4:]
        body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
        return Reply("icmp", _ip_frame(peer_mac, mac, ip, src_ip, IPPROTO_ICMP, body))
    if proto == IPPROTO_UDP:
        if len(payload) < 8:
            return Ignored("malformed UDP")
        sport, dport = payload[0:2], payload[2:4]
        udp_len = int.from_bytes(payload[4:6], "big")
        if int.from_bytes(dport, "big") != udp_port:
            return Ignored("not the echo port")
        if udp_len < 8 or udp_len > len(payload):
            return Ignored("malformed UDP")
        payload = payload[:udp_len]
        if payload[6:8] != b"\0\0" and checksum(
            payload, _pseudo(src_ip, ip, IPPROTO_UDP, udp_len)
        ) not in (0, 0xFFFF):
            return Ignored("bad checksum")
        body = dport + sport + udp_len.to_bytes(2, "big") + b"\0\0" + payload[8:]
        csum = checksum(body, _pseudo(ip, src_ip, IPPROTO_UDP, udp_len)) or 0xFFFF
        body = body[:6] + csum.to_bytes(2, "big") + body[8:]
        return Reply("udp", _ip_frame(peer_mac, mac, ip, src_ip, IPPROTO_UDP, body))
    return Ignored("unsupported protocol")


def _ip_frame(
    dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int, body: bytes
) -> bytes:
    total = 20 + len(body)
    header = (
        b"\x45\x00"
        + total.to_bytes(2, "big")
        + b"\x00\x00\x40\x00\x40"  # id 0, DF, TTL 64
        + bytes((proto,))
        + b"\x00\x00"
        + src
        + dst
    )
    header = header[:10] + checksum(header).to_bytes(2, "big") + header[12:]
    return _pad(dst_mac + src_mac + ETH_P_IP.to_bytes(2, "big") + header + body)
