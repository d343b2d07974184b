"""The simulated clients' replies (ARP, ICMP echo, UDP echo) and the simulation layout."""

from __future__ import annotations

from netvm.board import Board
from netvm.sim.frames import Ignored, Reply, answer, checksum, ip_bytes, mac_bytes
from netvm.sim.layout import sim_layout
from tests.harness import ROOT

MAC = mac_bytes("02:00:00:00:00:10")
IP = ip_bytes("10.0.0.2")
PEER_MAC = bytes.fromhex("0a0b0c0d0e0f")
PEER_IP = ip_bytes("10.0.0.1")


def ipv4(proto: int, body: bytes, dst: bytes = IP) -> bytes:
    hdr = b"\x45\x00" + (20 + len(body)).to_bytes(2, "big") + b"\x12\x34\x40\x00\x40"
    hdr += bytes([proto]) + b"\0\0" + PEER_IP + dst
    hdr = hdr[:10] + checksum(hdr).to_bytes(2, "big") + hdr[12:]
    return MAC + PEER_MAC + b"\x08\x00" + hdr + body


def test_arp_request_for_our_address_gets_a_reply() -> None:
    req = b"\xff" * 6 + PEER_MAC + b"\x08\x06" + bytes.fromhex("0001080006040001")
    req += PEER_MAC + PEER_IP + bytes(6) + IP
    got = answer(req, MAC, IP, 1235)
    assert isinstance(got, Reply) and got.kind == "arp"
    f = got.frame
    assert f[0:6] == PEER_MAC and f[6:12] == MAC and f[12:14] == b"\x08\x06"
    assert f[20:22] == b"\x00\x02" and f[22:28] == MAC and f[28:32] == IP
    assert f[32:38] == PEER_MAC and f[38:42] == PEER_IP and len(f) == 60
    other = req[:-4] + ip_bytes("10.0.0.3")
    assert answer(other, MAC, IP, 1235) == Ignored("not for us")


def test_icmp_echo_reply_keeps_id_seq_and_data() -> None:
    body = b"\x08\x00\x00\x00\xbe\xef\x00\x07" + bytes(range(56))
    body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
    got = answer(ipv4(1, body), MAC, IP, 1235)
    assert isinstance(got, Reply) and got.kind == "icmp"
    ip, icmp = got.frame[14:34], got.frame[34:]
    assert checksum(ip) == 0 and ip[12:16] == IP and ip[16:20] == PEER_IP
    assert icmp[0] == 0 and icmp[4:] == body[4:] and checksum(icmp) == 0


def test_udp_echo_swaps_ports_and_returns_the_payload() -> None:
    payload = b"x" * 1472
    udp = (40000).to_bytes(2, "big") + (1235).to_bytes(2, "big") + (8 + 1472).to_bytes(2, "big")
    udp += b"\0\0" + payload  # checksum 0: "not computed" is legal for UDP over IPv4
    got = answer(ipv4(17, udp), MAC, IP, 1235)
    assert isinstance(got, Reply) and got.kind == "udp" and len(got.frame) == 1514
    out = got.frame[34:]
    assert out[0:2] == (1235).to_bytes(2, "big") and out[2:4] == (40000).to_bytes(2, "big")
    assert out[8:] == payload
    pseudo = sum(memoryview(IP + PEER_IP + b"\0\x11" + (1480).to_bytes(2, "big")).cast("H"))
    assert checksum(out, pseudo) == 0


def test_wrong_port_bad_checksum_and_other_macs_are_ignored() -> None:
    udp = (1).to_bytes(2, "big") + (9999).to_bytes(2, "big") + (9).to_bytes(2, "big") + b"\0\0a"
    assert answer(ipv4(17, udp), MAC, IP, 1235) == Ignored("not the echo port")
    bad = bytearray(ipv4(17, udp))
    bad[24] ^= 0xFF  # IP header checksum
    assert answer(bytes(bad), MAC, IP, 1235) == Ignored("bad checksum")
    elsewhere = b"\x02\x99" + ipv4(17, udp)[2:]
    assert answer(elsewhere, MAC, IP, 1235) == Ignored("not for us")


def test_layout_follows_the_board(odroidc4: Board) -> None:
    lay = sim_layout(odroidc4, ROOT)
    assert (lay.rx_capacity, lay.tx_capacity) == (512, 1024)
    assert [c.ipv4 for c in lay.clients] == ["10.0.0.2", "10.0.0.3"]
    assert lay.sizes["tx_data"] == 0x200000 and lay.sizes["rx_free"] == 0x3000
    c0, c1 = lay.clients
    assert (c0.tx_map_offset, c1.tx_map_offset) == (0, 0x100000)
    # Client io regions do not overlap and are not contiguous (no fixed stride to rely on).
    assert c1.tx_io_base + c1.tx_region_size < c0.tx_io_base
    assert len(set(lay.rx_buffer_ios())) == 512
