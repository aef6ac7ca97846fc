"""Shamir sharing over GF(2^8): properties, secrecy below threshold, and a reference check."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceveil.manifests import shamir
from faceveil.manifests.errors import ShareError


def ref_mul(a: int, b: int) -> int:
    """Carry-less multiplication reduced mod x^8 + x^4 + x^3 + x + 1, bit by bit."""
    product = 0
    for bit in range(8):
        if b >> bit & 1:
            product ^= a << bit
    for bit in range(14, 7, -1):
        if product >> bit & 1:
            product ^= 0x11B << (bit - 8)
    return product


def ref_eval(coefficients: list[int], x: int) -> int:
    """sum_k c_k * x^k with powers built by repeated multiplication (lowest degree first)."""
    total, power = 0, 1
    for c in coefficients:
        total ^= ref_mul(c, power)
        power = ref_mul(power, x)
    return total


def test_field_tables_match_reference_multiplication():
    for a in range(256):
        for b in range(256):
            assert shamir.gf_mul(a, b) == ref_mul(a, b)
    for a in range(256):
        for b in range(1, 256):
            assert ref_mul(shamir.gf_div(a, b), b) == a
    with pytest.raises(ZeroDivisionError):
        shamir.gf_div(1, 0)


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=1, max_size=40), n=st.integers(2, 7), data=st.data())
def test_every_threshold_subset_reconstructs(secret, n, data):
    threshold = data.draw(st.integers(2, n))
    shares = shamir.split(secret, n, threshold)
    assert [s.x for s in shares] == list(range(1, n + 1))
    for size in range(threshold, n + 1):
        for subset in itertools.combinations(shares, size):
            assert shamir.combine(list(subset)) == secret
    order = data.draw(st.permutations(shares))
    assert shamir.combine(order[:threshold]) == secret


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=16, max_size=40), n=st.integers(3, 7), data=st.data())
def test_fewer_than_threshold_shares_do_not_give_the_secret(secret, n, data):
    threshold = data.draw(st.integers(3, n))
    shares = shamir.split(secret, n, threshold)
    for subset in itertools.combinations(shares, threshold - 1):
        assert shamir.combine(list(subset)) != secret  # 2^-128 chance of a false failure


@pytest.mark.parametrize("threshold", [2, 3])
def test_below_threshold_shares_are_independent_of_the_secret(threshold):
    """Over all coefficient choices, the M-1 shares are distributed alike for any secret."""

    def distribution(secret: int) -> Counter:
        # One byte position per coefficient choice: the whole enumeration in a single split.
        choices = list(itertools.product(range(256), repeat=threshold - 1))
        stream = bytes(c for choice in choices for c in choice)
        shares = shamir.split(
            bytes([secret]) * len(choices), threshold, threshold, randbytes=lambda _n: stream
        )
        return Counter(zip(*(s.y for s in shares[: threshold - 1]), strict=True))

    first = distribution(0x00)
    assert set(first.values()) == {1} and len(first) == 256 ** (threshold - 1)
    assert distribution(0xA7) == first


@settings(max_examples=30, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=24),
    n=st.integers(2, 9),
    data=st.data(),
    seed=st.integers(0, 2**32),
)
def test_shares_match_reference_polynomial_evaluation(secret, n, data, seed):
    threshold = data.draw(st.integers(2, n))
    shares = shamir.split(secret, n, threshold, randbytes=random.Random(seed).randbytes)
    stream = random.Random(seed).randbytes(len(secret) * (threshold - 1))
    degree = threshold - 1
    for b, byte in enumerate(secret):
        coefficients = [byte, *stream[b * degree : (b + 1) * degree]]
        for share in shares:
            assert share.y[b] == ref_eval(coefficients, share.x)


def test_seeded_rng_is_reproducible():
    a = shamir.split(b"secret", 5, 3, randbytes=random.Random(7).randbytes)
    b = shamir.split(b"secret", 5, 3, randbytes=random.Random(7).randbytes)
    assert a == b and shamir.split(b"secret", 5, 3) != a


def test_duplicate_share_is_rejected_not_counted_twice():
    shares = shamir.split(b"0123456789abcdef", 5, 3)
    with pytest.raises(ShareError, match="duplicate"):
        shamir.combine([shares[0], shares[1], shares[1]])
    forged = shamir.Share(shares[1].x, bytes(16))
    with pytest.raises(ShareError, match="duplicate"):
        shamir.combine([shares[0], shares[1], forged])


def test_parameter_and_share_validation():
    for n, m in ((1, 1), (3, 1), (2, 3), (256, 2)):
        with pytest.raises(ValueError):
            shamir.split(b"s", n, m)
    with pytest.raises(ValueError):
        shamir.split(b"", 3, 2)
    shares = shamir.split(b"secret", 255, 2)
    assert shamir.combine([shares[0], shares[254]]) == b"secret"
    with pytest.raises(ShareError):
        shamir.combine(shares[:1])
    with pytest.raises(ShareError):
        shamir.combine([shares[0], shamir.Share(2, b"xy")])
    with pytest.raises(ShareError):
        shamir.combine([shares[0], shamir.Share(0, b"secret")])


def test_share_serialization_and_redaction():
    share = shamir.split(b"top secret value", 3, 2)[2]
    assert shamir.Share.from_bytes(share.to_bytes()) == share
    assert share.y.hex() not in repr(share) and "x=3" in repr(share)
    for raw in (b"", b"\x01", b"\x00abc"):
        with pytest.raises(ShareError):
            shamir.Share.from_bytes(raw)
