"""Device-memory discipline: aligned single loads/stores, aligned padded copies, bounds."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netvm_driver.devmem import (
    COPY_ALIGN,
    DeviceMemory,
    DeviceMemoryError,
    FaultDoorbell,
    padded_window,
)

REGION = 4 * 2048


def mem(fill: int = 0xAA) -> tuple[bytearray, DeviceMemory]:
    buf = bytearray([fill]) * REGION
    return buf, DeviceMemory("test", buf)


def test_index_and_flag_stores_are_single_naturally_aligned_accesses() -> None:
    buf, m = mem(0)
    m.store16(2, 0xBEEF)
    m.store32(4, 1)
    m.store64(8, 0x1122334455667788)
    assert buf[:16] == bytes.fromhex("0000efbe010000008877665544332211")
    assert (m.load16(2), m.load32(4), m.load64(8)) == (0xBEEF, 1, 0x1122334455667788)
    for bad in ((m.store16, 1), (m.store32, 2), (m.store64, 4), (m.store16, -2)):
        with pytest.raises(DeviceMemoryError):
            bad[0](bad[1], 0)
    for load, off in ((m.load16, 3), (m.load32, 6), (m.load64, 12)):
        with pytest.raises(DeviceMemoryError):
            load(off)


def test_accesses_outside_the_region_raise_instead_of_writing() -> None:
    buf, m = mem(0)
    with pytest.raises(IndexError):
        m.store16(REGION, 1)
    with pytest.raises(IndexError):
        m.store_desc(REGION + 8, 1, 2)
    with pytest.raises(DeviceMemoryError):
        m.copy_frame_in(REGION - 64, memoryview(bytes(128)), 128)
    assert buf == bytearray(REGION)


def test_descriptors_move_as_two_aligned_words() -> None:
    buf, m = mem(0)
    m.store_desc(24, 0x5FEFF800, 0x0300_0000_0000_05EA)
    assert m.load_desc(24) == (0x5FEFF800, 0x0300_0000_0000_05EA)
    assert buf[24:40] == (0x5FEFF800).to_bytes(8, "little") + (0x0300_0000_0000_05EA).to_bytes(
        8, "little"
    )
    with pytest.raises(DeviceMemoryError):
        m.load_desc(16)  # descriptors sit at 8 + 16·i


@given(
    offset=st.integers(min_value=0, max_value=REGION - 1),
    length=st.integers(min_value=0, max_value=2048),
)
def test_every_user_copy_window_is_aligned_padded_and_inside_its_buffer(
    offset: int, length: int
) -> None:
    buffer_start = offset // 2048 * 2048
    try:
        start, end = padded_window(offset, length, REGION)
    except DeviceMemoryError:
        # Refused exactly when the padded copy would leave the buffer.
        assert -(-(offset + length) // COPY_ALIGN) * COPY_ALIGN > buffer_start + 2048
        return
    assert start % COPY_ALIGN == 0 and end % COPY_ALIGN == 0
    assert start <= offset and offset + length <= end
    assert end - start < length + 2 * COPY_ALIGN
    assert buffer_start <= start and end <= buffer_start + 2048 and end <= REGION


@given(
    slot=st.integers(min_value=0, max_value=3),
    skew=st.integers(min_value=0, max_value=127).map(lambda x: x * 16),
    data=st.binary(min_size=0, max_size=1800),
)
def test_one_frame_in_pads_with_zeros_and_out_reads_back_exactly(
    slot: int, skew: int, data: bytes
) -> None:
    buf, m = mem(0xAA)
    off = slot * 2048 + skew
    if skew + len(data) > 2048:
        with pytest.raises(DeviceMemoryError):
            m.copy_frame_in(off, memoryview(data), len(data))
        assert buf == bytearray([0xAA]) * REGION
        return
    m.copy_frame_in(off, memoryview(data), len(data))
    end = off + -(-len(data) // 16) * 16
    assert buf[off : off + len(data)] == data
    assert buf[off + len(data) : end] == bytes(end - off - len(data))  # padding is zeros
    assert buf[:off] == bytearray([0xAA]) * off and buf[end:] == bytearray([0xAA]) * (REGION - end)
    out = memoryview(bytearray(2048))
    assert m.copy_frame_out(off, out, len(data)) == 0
    assert out[: len(data)] == data


@given(src=st.integers(min_value=0, max_value=REGION - 1), n=st.integers(0, 2048))
def test_one_frame_out_reads_the_aligned_window_around_it(src: int, n: int) -> None:
    buf = bytearray(bytes(range(256)) * (REGION // 256))
    m = DeviceMemory("t", buf)
    out = memoryview(bytearray(2048))
    start, end = src & ~15, -(-(src + n) // 16) * 16
    if end > (src // 2048 + 1) * 2048:
        with pytest.raises(DeviceMemoryError):
            m.copy_frame_out(src, out, n)
        return
    skew = m.copy_frame_out(src, out, n)
    assert skew == src - start and out[: end - start] == buf[start:end]
    assert out[skew : skew + n] == buf[src : src + n]


def test_one_frame_in_refuses_an_unaligned_destination() -> None:
    buf, m = mem()
    with pytest.raises(DeviceMemoryError):
        m.copy_frame_in(8, memoryview(b"x"), 1)
    assert buf == bytearray([0xAA]) * REGION


def test_no_view_of_a_map_is_handed_out() -> None:
    # Every public accessor, each covered by an alignment test here or in
    # test_driver_ring.py. A new one must be added here knowingly: a method returning a
    # view of the map would let the kernel (or memcpy) touch it unaligned.
    public = {n for n in dir(DeviceMemory) if not n.startswith("_")}
    assert public == {
        "cell16", "cell32", "copy_buffer_head_out", "copy_buffer_heads_out", "copy_frame_in",
        "copy_frame_out",
        "copy_frames_out", "copy_into_buffers", "load16", "load32",
        "load64", "load_desc", "load_descs", "load_words", "name", "size", "store16",
        "store32", "store64", "store_desc", "store_descs",
    }  # fmt: skip


def test_cells_are_single_aligned_words_checked_once() -> None:
    buf, m = mem(0)
    load, store = m.cell16(2)
    store(0xBEEF)
    assert buf[2:4] == (0xBEEF).to_bytes(2, sys.byteorder) and load() == 0xBEEF
    load32, store32 = m.cell32(4)
    store32(0x01020304)
    assert load32() == 0x01020304 and buf[:2] == b"\0\0" and buf[8:12] == bytes(4)
    with pytest.raises(ValueError):
        store(0x10000)  # does not fit 16 bits: refused, nothing written
    assert load() == 0xBEEF
    for bad in (m.cell16, m.cell32):
        for offset in (1, -2, REGION, REGION - 1):
            with pytest.raises(DeviceMemoryError):
                bad(offset)
    with pytest.raises(DeviceMemoryError):
        m.cell32(2)


def test_word_reads_are_aligned_and_bounded() -> None:
    buf, m = mem(0)
    buf[:16] = bytes(range(16))
    assert m.load_words(0, 16) == bytes(range(16))
    for off, n in ((4, 8), (0, 12), (REGION - 8, 16)):
        with pytest.raises(DeviceMemoryError):
            m.load_words(off, n)


def test_doorbell_is_one_byte_store_and_nothing_else() -> None:
    page = bytearray([0x5A]) * 4096
    FaultDoorbell(page).ring()
    assert page[0] == 0 and page[1:] == bytearray([0x5A]) * 4095
