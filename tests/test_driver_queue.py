"""Queue logic: u16 wrap, capacity checks, hostile indices, signal flags, and a model test."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from netvm_driver.devmem import DeviceMemory
from netvm_driver.queue import (
    Consumer,
    Producer,
    QueueConfigError,
    Ring,
    check_capacity,
    ring_length,
    with_len,
)


def ring(capacity: int = 8, tail: int = 0, head: int = 0) -> tuple[bytearray, Ring]:
    buf = bytearray(8 + 16 * capacity)
    buf[0:2] = tail.to_bytes(2, "little")
    buf[2:4] = head.to_bytes(2, "little")
    return buf, Ring(DeviceMemory("q", buf), capacity)


def test_length_wraps_at_u16() -> None:
    assert ring_length(5, 65534) == 7
    assert ring_length(0, 0) == 0
    assert ring_length(65535, 65535 - 512) == 512
    # The C "full" test goes wrong here; the masked form does not.
    assert ring_length(510, 65534) == 512


@pytest.mark.parametrize("capacity", [0, 3, 6, 1536, 0x10000])
def test_capacity_must_be_a_power_of_two_that_fits_u16(capacity: int) -> None:
    with pytest.raises(QueueConfigError, match="power of two"):
        check_capacity(capacity, 1 << 22, "tx_free")


def test_region_must_hold_all_descriptors() -> None:
    with pytest.raises(QueueConfigError, match="too small"):
        check_capacity(512, 0x2000, "rx_free")
    check_capacity(512, 0x3000, "rx_free")


def test_consumer_reports_a_tail_beyond_capacity_as_invalid() -> None:
    buf, r = ring(8, tail=10, head=0)
    c = Consumer(r)
    assert c.available() == -1
    buf[0:2] = (8).to_bytes(2, "little")
    assert c.available() == 8
    buf[0:2] = (65535).to_bytes(2, "little")  # "behind" the head
    assert c.available() == -1


def test_producer_reports_a_head_beyond_its_tail_as_invalid() -> None:
    buf, r = ring(8, tail=3, head=0)
    p = Producer(r)
    assert p.space() == 5
    buf[2:4] = (4).to_bytes(2, "little")  # the consumer claims one we never produced
    assert p.space() == -1


def test_producer_never_rereads_its_own_index() -> None:
    buf, r = ring(8, tail=2)
    p = Producer(r)
    buf[0:2] = (7).to_bytes(2, "little")  # a hostile peer rewrites our tail
    p.put(0, 0x1000, 60)
    p.commit(1)
    assert int.from_bytes(buf[0:2], "little") == 3
    assert r.mem.load_desc(8 + 16 * 2) == (0x1000, 60)


def test_signal_flag_protocol() -> None:
    buf, r = ring()
    assert r.signal_required()  # zero-initialised rings ask for a signal
    r.cancel_signal()
    assert buf[4:8] == (1).to_bytes(4, "little") and not r.signal_required()
    r.request_signal()
    assert buf[4:8] == bytes(4) and r.signal_required()


def test_with_len_keeps_reserved_bits() -> None:
    assert with_len(0x2A00_0000_0000_0000 | 0x1234, 60) == 0x2A00_0000_0000_0000 | 60


class QueueModel(RuleBasedStateMachine):
    """The producer and consumer ends against a plain deque, starting anywhere in u16."""

    @initialize(
        capacity=st.sampled_from([1, 2, 4, 8, 16]),
        start=st.integers(min_value=0, max_value=0xFFFF),
    )
    def setup(self, capacity: int, start: int) -> None:
        self.buf, self.ring = ring(capacity, tail=start, head=start)
        self.producer = Producer(self.ring)
        self.consumer = Consumer(self.ring)
        self.model: deque[tuple[int, int]] = deque()
        self.capacity = capacity
        self.counter = 0

    @rule(n=st.integers(min_value=1, max_value=20))
    def produce(self, n: int) -> None:
        n = min(n, self.producer.space())
        for k in range(n):
            self.counter += 1
            desc = (0x4000_0000 + self.counter * 2048, self.counter & 0x7FF)
            self.producer.put(k, *desc)
            self.model.append(desc)
        self.producer.commit(n)

    @precondition(lambda self: self.model)
    @rule(n=st.integers(min_value=1, max_value=20))
    def consume(self, n: int) -> None:
        n = min(n, self.consumer.available())
        got = [self.consumer.peek(k) for k in range(n)]
        self.consumer.advance(n)
        assert got == [self.model.popleft() for _ in range(n)]

    @invariant()
    def lengths_agree(self) -> None:
        if not hasattr(self, "model"):
            return
        assert self.consumer.available() == len(self.model)
        assert self.producer.space() == self.capacity - len(self.model)
        assert ring_length(self.ring.load_tail(), self.ring.load_head()) == len(self.model)


QueueModel.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_queue_against_model = QueueModel.TestCase


@given(
    start=st.integers(min_value=0, max_value=0xFFFF),
    jump=st.integers(min_value=9, max_value=0xFFFF),
)
def test_any_tail_jump_beyond_capacity_is_detected(start: int, jump: int) -> None:
    buf, r = ring(8, tail=start, head=start)
    c = Consumer(r)
    buf[0:2] = ((start + jump) & 0xFFFF).to_bytes(2, "little")
    assert c.available() == -1
