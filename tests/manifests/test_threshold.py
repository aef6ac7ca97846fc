"""Threshold wrapping on edwards25519's prime-order subgroup: pinned known answers, checks
against libsodium and plain integer arithmetic, and properties over random M-of-N policies."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as na

from faceveil.manifests import threshold as t
from faceveil.manifests.threshold import ThresholdError

L = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19
LABEL = b"faceveil-kat/label"
DATA_KEY = bytes(range(32))

# Computed once from the code, then pinned: a change of the construction breaks every escrow.
KAT_PUBLIC = "50c0e22dd8bb4f28cfa077f9c2491b42adae6d0ad7025600afc7aa4c0930ff82"
KAT_PUBLIC_SHARES = (
    "8b830da20e55a8109cea25c3a4e59e6a9119ccce168ef906c04a52366326e3a4",
    "ed47056161b83dcf695e39d6552ad78d9ac36ae369d8d052e7dd2b014964f37a",
    "92eac443ec8bfa691e2d519a22989125f0e26eec8e64fdabd7978c706592aaa9",
)
KAT_SHARES = (
    "01af553a1e0562216ccdb21fa6d94e2ae70690c95437afafdd304a8ea422e3ff02",
    "024ba4ed889f986fbbbcb8c1bdb3b4056706f854aaf00357e846a8ab891536130e",
    "03fa1eab961f6cabb2d5216c32af2002d20560e0ffa958fef25c06c96e08892609",
)
KAT_WRAP = (
    "01097a8cb343fd6b88c3a6928e236b8cea1d6a2b8807645e9275169ff5fd9ab2b7eaae909e6ee8280fb8f1ca"
    "6edb63c052f878e8738c190b1eae731890622070f6f7ab8aa2678688a93342a3066b504977bc31fc47d04cd6"
    "7c3de7e22a0a702d0529a06f8e16537e407f0471fc1869373b2b9cb87bedaa0ad2cb7e16cd8139cc0c1dfa78"
    "af6b12e86ba17206619bb9ec9389ff54664bc649ce1ca94fbab1def65dbae9ef06c432c8d6ded190f095d7e5"
    "c680cdfd672f25e9867d326967"
)
KAT_PARTIAL = (
    "018ebbeddf9d1740a1b99559ef3ad1d28e389678f3c155ec971a17216a5ab1f8b85564fc5c54ea4f6a86c024"
    "b062af19062f7375fb4e27e7c49cf90cfae1ae1f0a86e40af5353bc824451276c47554c426f5868a328dfb70"
    "4034ac4f27d6d3f405"
)
KAT_SECOND_GENERATOR = "65ea0e5b77dc64eb7a4f53db9f51a1767ea253469a547f4220196ae9d813b761"
RFC8032_BASE_POINT = "5866666666666666666666666666666666666666666666666666666666666666"


def stream(seed: bytes):
    """A deterministic ``randbytes``: SHA-256(seed | counter) blocks, consumed in order."""
    state = {"counter": 0, "buf": b""}

    def randbytes(n: int) -> bytes:
        while len(state["buf"]) < n:
            block = seed + state["counter"].to_bytes(8, "big")
            state["buf"] += hashlib.sha256(block).digest()
            state["counter"] += 1
        out, state["buf"] = state["buf"][:n], state["buf"][n:]
        return out

    return randbytes


def _le(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


# ---- known answers ----------------------------------------------------------------------------


def test_known_answer_key_split_wrap_and_partial():
    key = t.split_new_key(3, 2, stream(b"faceveil-kat/key"))
    assert key.public.hex() == KAT_PUBLIC
    assert tuple(p.hex() for p in key.public_shares) == KAT_PUBLIC_SHARES
    assert tuple(s.to_bytes().hex() for s in key.shares) == KAT_SHARES
    wrapped = t.wrap(key.public, LABEL, DATA_KEY, stream(b"faceveil-kat/wrap"))
    assert wrapped.to_bytes().hex() == KAT_WRAP
    partial = t.partial_decrypt(key.shares[0], wrapped, LABEL, stream(b"faceveil-kat/partial"))
    assert partial.to_bytes().hex() == KAT_PARTIAL
    assert t.SECOND_GENERATOR.hex() == KAT_SECOND_GENERATOR


def test_pinned_vectors_open_from_bytes_alone():
    """The pinned wrap opens with the pinned shares, without our key generation."""
    shares = [t.ScalarShare.from_bytes(bytes.fromhex(h)) for h in KAT_SHARES]
    public = bytes.fromhex(KAT_PUBLIC)
    wrapped = t.WrappedKey.from_bytes(bytes.fromhex(KAT_WRAP))
    partial = t.Partial.from_bytes(bytes.fromhex(KAT_PARTIAL))
    assert t.verify_partial(bytes.fromhex(KAT_PUBLIC_SHARES[0]), wrapped, LABEL, partial)
    for pair in itertools.combinations(shares, 2):
        partials = [t.partial_decrypt(s, wrapped, LABEL) for s in pair]
        assert t.unwrap(public, wrapped, LABEL, t.combine_partials(partials, 2)) == DATA_KEY
    shared = t.combine_partials([partial, t.partial_decrypt(shares[1], wrapped, LABEL)], 2)
    assert t.unwrap(public, wrapped, LABEL, shared) == DATA_KEY
    with pytest.raises(ThresholdError):
        t.unwrap(public, wrapped, b"another label", shared)


def test_base_point_is_rfc8032_and_group_law_matches_libsodium():
    assert t.BASE_POINT.hex() == RFC8032_BASE_POINT
    g = bytes.fromhex(RFC8032_BASE_POINT)
    two = (2).to_bytes(32, "little")
    assert na.crypto_scalarmult_ed25519_base_noclamp(two) == na.crypto_core_ed25519_add(g, g)
    assert t.base_mult(two) == na.crypto_core_ed25519_add(g, g)
    assert t.add(g, g) == na.crypto_core_ed25519_add(g, g)
    assert t.mult(two, g) == na.crypto_core_ed25519_add(g, g)
    # The group order: L*G is the identity, which libsodium's noclamp multiplication refuses.
    with pytest.raises(ThresholdError):
        t.base_mult(t.scalar_from_int(L))
    assert t.scalar_from_int(L + 5) == (5).to_bytes(32, "little")


def test_shares_are_the_documented_polynomial_in_plain_integers():
    """Independent of libsodium: the key and a_1 are the first two 64-byte draws mod L and
    share i is ``x + a_1 * i mod L``; the public key is x*G."""
    draw = stream(b"faceveil-kat/key")
    x, a1 = _le(draw(64)) % L, _le(draw(64)) % L
    for i, share in enumerate(KAT_SHARES, start=1):
        raw = bytes.fromhex(share)
        assert raw[0] == i and _le(raw[1:]) == (x + a1 * i) % L
    assert na.crypto_scalarmult_ed25519_base_noclamp(x.to_bytes(32, "little")).hex() == KAT_PUBLIC
    key = t.split_new_key(3, 2, stream(b"faceveil-kat/key"))
    assert {f.name for f in dataclasses.fields(key)} == {"public", "public_shares", "shares"}
    assert x.to_bytes(32, "little") not in pickle.dumps(key)  # the secret is not kept


def test_lagrange_matches_plain_integer_arithmetic():
    for indices in ([1, 2], [1, 3], [2, 5, 7], [1, 2, 3, 4, 255]):
        coefficients = t.lagrange(indices)
        for i in indices:
            num = den = 1
            for j in indices:
                if j != i:
                    num, den = num * -j, den * (i - j)
            assert _le(coefficients[i]) == num * pow(den, -1, L) % L


# ---- properties over random policies ----------------------------------------------------------


@st.composite
def policies(draw) -> tuple[int, int]:
    n = draw(st.integers(2, 7))
    return n, draw(st.integers(2, n))


@settings(max_examples=15, deadline=None)
@given(policies(), st.binary(min_size=32, max_size=32), st.binary(min_size=1, max_size=40))
def test_every_m_subset_opens_and_no_m_minus_one_subset_does(policy, data_key, label):
    n, m = policy
    key = t.split_new_key(n, m)
    t.check_public_shares(key.public, key.public_shares, m)
    wrapped = t.wrap(key.public, label, data_key)
    partials = [t.partial_decrypt(s, wrapped, label) for s in key.shares]
    for partial, public_share in zip(partials, key.public_shares, strict=True):
        assert t.verify_partial(public_share, wrapped, label, partial)
    for subset in itertools.combinations(partials, m):
        assert t.unwrap(key.public, wrapped, label, t.combine_partials(subset, m)) == data_key
    for subset in itertools.combinations(partials, m - 1):
        with pytest.raises(ThresholdError):
            t.combine_partials(subset, m)
        with pytest.raises(ThresholdError):
            t.unwrap(key.public, wrapped, label, t.combine_partials(subset, m - 1))


@settings(max_examples=10, deadline=None)
@given(policies())
def test_public_shares_check_refuses_a_swap_or_another_key(policy):
    n, m = policy
    key = t.split_new_key(n, m)
    t.check_public_shares(key.public, key.public_shares, m)
    swapped = list(key.public_shares)
    swapped[0], swapped[-1] = swapped[-1], swapped[0]
    with pytest.raises(ThresholdError):
        t.check_public_shares(key.public, swapped, m)
    other = t.split_new_key(n, m)
    with pytest.raises(ThresholdError):
        t.check_public_shares(other.public, key.public_shares, m)
    with pytest.raises(ThresholdError):
        t.check_public_shares(key.public, key.public_shares, n + 1)
    with pytest.raises(ThresholdError):
        t.check_public_shares(key.public, key.public_shares, 1)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 255), min_size=1, max_size=8, unique=True), st.integers(0, 0))
def test_lagrange_coefficients_sum_to_one(indices, x):
    coefficients = t.lagrange(indices, x)
    total = bytes(32)
    for c in coefficients.values():
        total = t.scalar_add(total, c)
    assert total == t.scalar_from_int(1)
    point = t.base_mult(t.scalar_from_int(1234567))
    assert t.interpolate(dict.fromkeys(indices, point)) == point


def test_lagrange_and_interpolate_refuse_bad_indices():
    for indices, x in (([1, 1], 0), ([0, 2], 0), ([1, 256], 0), ([1, 2], 2)):
        with pytest.raises(ThresholdError):
            t.lagrange(indices, x)
    with pytest.raises(ThresholdError):
        t.interpolate({})


# ---- labels, partials, tampering ---------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    key = t.split_new_key(3, 2)
    wrapped = t.wrap(key.public, b"label A", DATA_KEY)
    partials = [t.partial_decrypt(s, wrapped, b"label A") for s in key.shares]
    return key, wrapped, partials


def test_a_wrap_is_bound_to_its_label(setup):
    key, wrapped, partials = setup
    wrapped.check_label(b"label A")
    with pytest.raises(ThresholdError, match="not made for this label"):
        wrapped.check_label(b"label B")
    with pytest.raises(ThresholdError):
        t.partial_decrypt(key.shares[0], wrapped, b"label B")
    shared = t.combine_partials(partials[:2], 2)
    assert t.unwrap(key.public, wrapped, b"label A", shared) == DATA_KEY
    with pytest.raises(ThresholdError, match="did not open"):
        t.unwrap(key.public, wrapped, b"label B", shared)
    for partial, public_share in zip(partials, key.public_shares, strict=True):
        assert not t.verify_partial(public_share, wrapped, b"label B", partial)


def test_a_wrap_cannot_be_relabelled_by_swapping_u_and_v(setup):
    key, wrapped, _ = setup
    other = t.wrap(key.public, b"label B", DATA_KEY)
    mixed = t.WrappedKey(other.u, other.v, other.proof, wrapped.sealed)
    mixed.check_label(b"label B")  # its proof is other's, so it passes the label check...
    partials = [t.partial_decrypt(s, mixed, b"label B") for s in key.shares[:2]]
    with pytest.raises(ThresholdError):  # ...but the partials do not open wrapped's key
        t.unwrap(key.public, mixed, b"label B", t.combine_partials(partials, 2))
    with pytest.raises(ThresholdError):
        t.WrappedKey(other.u, wrapped.v, wrapped.proof, wrapped.sealed).check_label(b"label A")


def test_a_partial_verifies_only_against_its_own_public_share(setup):
    key, wrapped, partials = setup
    for i, j in itertools.permutations(range(3), 2):
        assert t.verify_partial(key.public_shares[i], wrapped, b"label A", partials[i])
        assert not t.verify_partial(key.public_shares[j], wrapped, b"label A", partials[i])
    other_wrap = t.wrap(key.public, b"label A", DATA_KEY)
    assert not t.verify_partial(key.public_shares[0], other_wrap, b"label A", partials[0])


def test_a_tampered_partial_fails(setup):
    key, wrapped, partials = setup
    raw = partials[0].to_bytes()
    for position in range(1, len(raw)):
        for bit in (0x01, 0x80):
            if (position, bit) == (len(raw) - 1, 0x80):
                continue  # z's top bit: test_dleq_proof_refuses_a_non_canonical_response
            flipped = bytearray(raw)
            flipped[position] ^= bit
            try:
                tampered = t.Partial.from_bytes(bytes(flipped))
            except ThresholdError:
                continue
            assert not t.verify_partial(key.public_shares[0], wrapped, b"label A", tampered)
    shifted = t.Partial(1, t.add(partials[0].d, t.BASE_POINT), partials[0].proof)
    assert not t.verify_partial(key.public_shares[0], wrapped, b"label A", shifted)
    with pytest.raises(ThresholdError):
        t.unwrap(key.public, wrapped, b"label A", t.combine_partials([shifted, partials[1]], 2))
    assert not t.verify_partial(
        key.public_shares[0], wrapped, b"label A", t.Partial(1, partials[0].d, b"short")
    )


def test_a_tampered_wrap_fails(setup):
    key, wrapped, partials = setup
    shared = t.combine_partials(partials[1:], 2)
    raw = wrapped.to_bytes()
    for position in (129, 140, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[position] ^= 1
        with pytest.raises(ThresholdError, match="did not open"):
            t.unwrap(key.public, t.WrappedKey.from_bytes(bytes(flipped)), b"label A", shared)
    for position in (65, 100, 128):
        flipped = bytearray(raw)
        flipped[position] ^= 1
        with pytest.raises(ThresholdError):
            t.WrappedKey.from_bytes(bytes(flipped)).check_label(b"label A")
    for bad in (raw[:-1], raw + b"\x00", b"\x02" + raw[1:], b""):
        with pytest.raises(ThresholdError, match="unknown layout"):
            t.WrappedKey.from_bytes(bad)


def test_combine_refuses_duplicates_and_too_few(setup):
    _, _, partials = setup
    with pytest.raises(ThresholdError, match="two partials from one custodian"):
        t.combine_partials([partials[0], partials[0]], 2)
    with pytest.raises(ThresholdError, match="2 are needed"):
        t.combine_partials(partials[:1], 2)


def test_dleq_proof_is_bound_to_context_and_witness():
    w, other = t.scalar_from_int(77), t.scalar_from_int(78)
    b2 = t.SECOND_GENERATOR
    p1, p2 = t.base_mult(w), t.mult(w, b2)
    proof = t.prove_dleq(w, t.BASE_POINT, b2, b"ctx")
    assert t.verify_dleq((t.BASE_POINT, b2), (p1, p2), proof, b"ctx")
    assert not t.verify_dleq((t.BASE_POINT, b2), (p1, p2), proof, b"other ctx")
    assert not t.verify_dleq((t.BASE_POINT, b2), (p1, t.mult(other, b2)), proof, b"ctx")
    forged = t.prove_dleq(other, t.BASE_POINT, b2, b"ctx")
    assert not t.verify_dleq((t.BASE_POINT, b2), (p1, p2), forged, b"ctx")
    assert not t.verify_dleq((t.BASE_POINT, b2), (p1, p2), proof[:63], b"ctx")


def test_dleq_proof_refuses_a_non_canonical_response(setup):
    key, wrapped, partials = setup
    c, z = partials[0].proof[:32], _le(partials[0].proof[32:])
    for bad_z in (z + L, z | 1 << 255):
        variant = t.Partial(1, partials[0].d, c + bad_z.to_bytes(32, "little"))
        assert variant.to_bytes() != partials[0].to_bytes()
        assert not t.verify_partial(key.public_shares[0], wrapped, b"label A", variant)
    c, z = wrapped.proof[:32], _le(wrapped.proof[32:])
    relabelled = t.WrappedKey(
        wrapped.u, wrapped.v, c + (z + L).to_bytes(32, "little"), wrapped.sealed
    )
    with pytest.raises(ThresholdError):
        relabelled.check_label(b"label A")


# ---- points and scalars from outside -----------------------------------------------------------

INVALID_POINTS = {
    "all zero (small order)": bytes(32),
    "identity": b"\x01" + bytes(31),
    "identity, non-canonical y = p + 1": (P + 1).to_bytes(32, "little"),
    "non-canonical y = p": P.to_bytes(32, "little"),
    "identity with the sign bit set": b"\x01" + bytes(30) + b"\x80",
    "order 2": (P - 1).to_bytes(32, "little"),
    "not on the curve (y = 2)": (2).to_bytes(32, "little"),
    "G plus a point of order 2 (mixed order)": na.crypto_core_ed25519_add(
        bytes.fromhex(RFC8032_BASE_POINT), (P - 1).to_bytes(32, "little")
    ),
    "31 bytes": bytes.fromhex(RFC8032_BASE_POINT)[:31],
}


@pytest.mark.parametrize("name", sorted(INVALID_POINTS))
def test_invalid_points_are_refused(name, setup):
    key, wrapped, partials = setup
    bad = INVALID_POINTS[name]
    with pytest.raises(ThresholdError, match="not a valid group element"):
        t.check_point(bad, "test point")
    with pytest.raises(ThresholdError):
        t.mult(t.scalar_from_int(3), bad)
    with pytest.raises(ThresholdError):
        t.wrap(bad, b"label", DATA_KEY)
    if len(bad) == 32:
        raw = wrapped.to_bytes()
        with pytest.raises(ThresholdError):
            t.WrappedKey.from_bytes(raw[:1] + bad + raw[33:])
        with pytest.raises(ThresholdError):
            t.WrappedKey.from_bytes(raw[:33] + bad + raw[65:])
        with pytest.raises(ThresholdError):
            t.Partial.from_bytes(bytes([1]) + bad + partials[0].proof)
        with pytest.raises(ThresholdError):
            t.check_public_shares(key.public, (bad, *key.public_shares[1:]), 2)
    assert t.check_point(t.BASE_POINT, "G") == t.BASE_POINT


def test_scalar_shares_are_validated_and_redacted():
    for index, value in ((0, bytes(32)), (256, bytes(32)), (1, bytes(31)), (1, b"\xff" * 32)):
        with pytest.raises(ThresholdError):
            t.ScalarShare(index, value)
    with pytest.raises(ThresholdError):
        t.ScalarShare.from_bytes(b"\x01" * 32)
    share = t.split_new_key(2, 2).shares[0]
    assert share.value.hex() not in repr(share) and "value" not in repr(share)
    assert t.ScalarShare.from_bytes(share.to_bytes()) == share
    with pytest.raises(ThresholdError):
        t.split_scalar(t.scalar_from_int(5), 3, 1)
    with pytest.raises(ThresholdError):
        t.split_scalar(t.scalar_from_int(5), 2, 3)
    with pytest.raises(ValueError):
        t.wrap(t.BASE_POINT, b"label", bytes(31))
    with pytest.raises(ValueError, match="number of bytes"):
        t.split_new_key(2, 2, lambda n: bytes(n - 1))
