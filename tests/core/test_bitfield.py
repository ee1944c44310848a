import pytest
from hypothesis import given
from hypothesis import strategies as st

from kraken.core import Bitfield


def test_set_clear_count():
    b = Bitfield(10)
    assert b.count() == 0 and not b.complete()
    b.set(0)
    b.set(9)
    b.set(9)
    assert b.count() == 2
    assert b[0] and b[9] and not b[5]
    b.clear(0)
    assert b.count() == 1
    assert list(b.ones()) == [9]
    assert len(list(b.zeros())) == 9


def test_bit_order_is_msb_first():
    b = Bitfield(9, [0, 8])
    assert b.to_bytes() == bytes([0x80, 0x80])


def test_out_of_range():
    b = Bitfield(3)
    with pytest.raises(IndexError):
        b.set(3)
    with pytest.raises(IndexError):
        b[-1]


def test_from_bytes_rejects_wrong_length_and_spare_bits():
    with pytest.raises(ValueError):
        Bitfield.from_bytes(9, b"\x00")
    with pytest.raises(ValueError):
        Bitfield.from_bytes(9, bytes([0, 0x01]))


@given(st.integers(0, 200).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0))))))
def test_round_trip(case):
    n, ones = case
    ones = {i for i in ones if i < n}
    b = Bitfield(n, ones)
    again = Bitfield.from_bytes(n, b.to_bytes())
    assert again == b
    assert set(again.ones()) == ones
    assert again.count() == len(ones)
    assert again.complete() == (len(ones) == n)


def test_full():
    assert Bitfield.full(17).complete()
