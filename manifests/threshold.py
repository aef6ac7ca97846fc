"""Threshold key wrapping: a data key wrapped to an escrow public key, opened by M-of-N partials.

Every operation on group elements and scalars is a libsodium call through PyNaCl; this module
only composes them. Nothing here does field or curve arithmetic of its own.

Group
    The prime-order subgroup of edwards25519 (order ``L = 2^252 +
    27742317777372353535851937790883648493``), points as 32-byte encodings, scalars as 32-byte
    little-endian integers reduced mod ``L`` (``crypto_core_ed25519_scalar_*``). PyNaCl binds
    no ristretto255 functions, so the group is the subgroup itself: every point read from outside
    passes ``crypto_core_ed25519_is_valid_point`` (canonical, on the curve, in the prime-order
    subgroup, not of small order), and libsodium's ``crypto_scalarmult_ed25519_noclamp`` refuses
    any other input or an identity result. ``G`` is the standard base point; ``H`` is a second
    generator nobody knows the logarithm of:
    ``crypto_core_ed25519_from_uniform(SHA-256("faceveil/threshold/H/v1"))``.

Escrow key (one per key epoch)
    ``x`` random, ``X = x*G``. ``x`` is split with Shamir's scheme over the integers mod ``L``:
    ``f(z) = x + a_1 z + ... + a_{M-1} z^{M-1}``, custodian ``i`` (1..N) gets the scalar ``f(i)``
    and everyone may know its *public share* ``X_i = f(i)*G``. ``x`` itself is never returned.

Wrapping a data key under a label (TDH1 of Shoup and Gennaro, with hashed ElGamal)
    ``r`` random; ``U = r*G``; ``V = r*H``; a proof ``pi`` that ``log_G U = log_H V`` whose
    challenge covers the label; ``S = r*X``; ``k = HKDF-SHA256(S, salt=U|X, info=INFO|label)``;
    ``sealed = nonce | AES-256-GCM(k, nonce, data_key, aad=label)``. The label names what the key
    opens (job, key epoch, shard, sample), so a custodian who approves a label can check that the
    wrap in front of them was made for that label: a wrap cannot be relabelled without ``r``.
    Layout of :meth:`WrappedKey.to_bytes`: ``0x01 | U (32) | V (32) | pi (64) | sealed``.

Partial decryption (custodian ``i``)
    After checking ``pi`` for the label it approves: ``D_i = f(i)*U`` and a proof that
    ``log_G X_i = log_U D_i``. Any ``M`` valid partials give ``S = sum(lambda_i * D_i)``
    (Lagrange coefficients at 0 of their indices); ``M - 1`` give nothing.

Proofs (Chaum-Pedersen, Fiat-Shamir)
    For bases ``B1, B2`` and ``P1 = w*B1, P2 = w*B2``: ``t`` random, ``A1 = t*B1, A2 = t*B2``,
    ``c = reduce(SHA-512(DOMAIN | B1 | P1 | B2 | P2 | A1 | A2 | context))``, ``z = t + c*w``;
    the proof is ``c | z`` and verifies when ``z*B1 = A1 + c*P1`` and ``z*B2 = A2 + c*P2``.

Randomness comes from :func:`secrets.token_bytes` unless a ``randbytes(n)`` callable is
injected (known-answer tests): each scalar is ``reduce(randbytes(64))``, each nonce
``randbytes(12)``, drawn in the order the functions document.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as na
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError

from faceveil.manifests.errors import KeyLibraryError

RandBytes = Callable[[int], bytes]

POINT_SIZE = 32
SCALAR_SIZE = 32
PROOF_SIZE = 64
KEY_SIZE = 32
NONCE_SIZE = 12
MAX_SHARES = 255
WRAP_VERSION = b"\x01"
_WRAP_INFO = b"faceveil/threshold-wrap/v1|"
_LABEL_PROOF = b"faceveil/threshold/label-proof/v1|"
_PARTIAL_PROOF = b"faceveil/threshold/partial-proof/v1|"
_DLEQ_DOMAIN = b"faceveil/threshold/dleq/v1|"


class ThresholdError(KeyLibraryError):
    """A wrap, share, partial or proof that is malformed or does not verify."""


def _scalar_random(randbytes: RandBytes | None) -> bytes:
    raw = (randbytes or secrets.token_bytes)(64)
    if len(raw) != 64:
        raise ValueError("randbytes must return the number of bytes asked for")
    return na.crypto_core_ed25519_scalar_reduce(raw)


def _is_reduced(scalar: bytes) -> bool:
    return na.crypto_core_ed25519_scalar_reduce(scalar + bytes(32)) == scalar


def scalar_from_int(value: int) -> bytes:
    """The scalar ``value mod L`` (``value`` >= 0, below 2^256)."""
    return na.crypto_core_ed25519_scalar_reduce(value.to_bytes(64, "little"))


def base_mult(scalar: bytes) -> bytes:
    """``scalar * G``."""
    try:
        return na.crypto_scalarmult_ed25519_base_noclamp(scalar)
    except (CryptoError, NaclRuntimeError, ValueError, TypeError):
        raise ThresholdError("a scalar of zero or of the wrong size") from None


def mult(scalar: bytes, point: bytes) -> bytes:
    """``scalar * point``; ThresholdError for a point outside the group or an identity result."""
    try:
        return na.crypto_scalarmult_ed25519_noclamp(scalar, point)
    except (CryptoError, NaclRuntimeError, ValueError, TypeError):
        raise ThresholdError("a point outside the prime-order group, or a zero scalar") from None


def add(p: bytes, q: bytes) -> bytes:
    """``p + q``."""
    try:
        return na.crypto_core_ed25519_add(p, q)
    except (CryptoError, NaclRuntimeError, ValueError, TypeError):
        raise ThresholdError("a point outside the group") from None


def check_point(point: bytes, what: str) -> bytes:
    """``point`` if it is a valid element of the prime-order group, else ThresholdError."""
    if (
        not isinstance(point, bytes)
        or len(point) != POINT_SIZE
        or not na.crypto_core_ed25519_is_valid_point(point)
    ):
        raise ThresholdError(f"{what} is not a valid group element")
    return point


BASE_POINT = na.crypto_scalarmult_ed25519_base_noclamp(scalar_from_int(1))
SECOND_GENERATOR = na.crypto_core_ed25519_from_uniform(
    hashlib.sha256(b"faceveil/threshold/H/v1").digest()
)


# ---- proofs of equal discrete logarithms ------------------------------------------------------


def _challenge(points: Sequence[bytes], context: bytes) -> bytes:
    digest = hashlib.sha512(_DLEQ_DOMAIN + b"".join(points) + context).digest()
    return na.crypto_core_ed25519_scalar_reduce(digest)


def prove_dleq(
    w: bytes, b1: bytes, b2: bytes, context: bytes, randbytes: RandBytes | None = None
) -> bytes:
    """A proof (64 bytes) that ``w*b1`` and ``w*b2`` share the logarithm ``w``; draws 1 scalar."""
    t = _scalar_random(randbytes)
    p1, p2 = mult(w, b1), mult(w, b2)
    c = _challenge((b1, p1, b2, p2, mult(t, b1), mult(t, b2)), context)
    z = na.crypto_core_ed25519_scalar_add(t, na.crypto_core_ed25519_scalar_mul(c, w))
    return c + z


def verify_dleq(
    bases: tuple[bytes, bytes], points: tuple[bytes, bytes], proof: bytes, context: bytes
) -> bool:
    """Whether ``proof`` shows ``log_b1 p1 == log_b2 p2`` for ``bases = (b1, b2)`` and
    ``points = (p1, p2)`` (all points already checked)."""
    (b1, b2), (p1, p2) = bases, points
    if not isinstance(proof, bytes) or len(proof) != PROOF_SIZE:
        return False
    c, z = proof[:32], proof[32:]
    if not (_is_reduced(c) and _is_reduced(z)):
        return False  # one encoding per proof: scalars at or above L are refused
    try:
        # A = z*B - c*P, computed as z*B + (L - c)*P.
        neg_c = na.crypto_core_ed25519_scalar_negate(c)
        a1 = add(mult(z, b1), mult(neg_c, p1))
        a2 = add(mult(z, b2), mult(neg_c, p2))
    except ThresholdError:
        return False
    return secrets.compare_digest(_challenge((b1, p1, b2, p2, a1, a2), context), c)


# ---- the escrow key and its shares -------------------------------------------------------------


@dataclass(frozen=True)
class ScalarShare:
    """Custodian ``index``'s share ``f(index)`` of an escrow key; never shown by ``repr``."""

    index: int
    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_SHARES:
            raise ThresholdError("a share's index is 1..255")
        if not isinstance(self.value, bytes) or len(self.value) != SCALAR_SIZE:
            raise ThresholdError("a share is a 32-byte scalar")
        if not _is_reduced(self.value):
            raise ThresholdError("a share is not a reduced scalar")

    def public(self) -> bytes:
        """``X_i = f(i)*G``."""
        return base_mult(self.value)

    def to_bytes(self) -> bytes:
        """``index (1 byte) | scalar (32)``."""
        return bytes([self.index]) + self.value

    @classmethod
    def from_bytes(cls, raw: bytes) -> ScalarShare:
        """Parse :meth:`to_bytes`."""
        if len(raw) != 1 + SCALAR_SIZE:
            raise ThresholdError("a share is 33 bytes")
        return cls(raw[0], bytes(raw[1:]))


@dataclass(frozen=True)
class SharedKey:
    """A freshly split escrow key: its public key, public shares and the custodians' shares.

    The secret scalar itself is not kept; give each share to its custodian and drop this object.
    """

    public: bytes
    public_shares: tuple[bytes, ...]
    shares: tuple[ScalarShare, ...] = field(repr=False)


def _eval(coefficients: Sequence[bytes], z: int) -> bytes:
    # Horner's rule with libsodium's scalar operations.
    zs = scalar_from_int(z)
    acc = bytes(SCALAR_SIZE)
    for coefficient in reversed(coefficients):
        acc = na.crypto_core_ed25519_scalar_add(
            na.crypto_core_ed25519_scalar_mul(acc, zs), coefficient
        )
    return acc


def scalar_add(a: bytes, b: bytes) -> bytes:
    """``a + b`` mod L."""
    return na.crypto_core_ed25519_scalar_add(a, b)


def scalar_mul(a: bytes, b: bytes) -> bytes:
    """``a * b`` mod L."""
    return na.crypto_core_ed25519_scalar_mul(a, b)


def split_scalar(
    value: bytes, n: int, m: int, randbytes: RandBytes | None = None
) -> tuple[ScalarShare, ...]:
    """``value`` split ``m``-of-``n`` (shares at 1..n); draws ``m - 1`` scalars."""
    if not 2 <= m <= n <= MAX_SHARES:
        raise ThresholdError(f"need 2 <= threshold ({m}) <= shares ({n}) <= {MAX_SHARES}")
    coefficients = [value, *(_scalar_random(randbytes) for _ in range(m - 1))]
    return tuple(ScalarShare(i, _eval(coefficients, i)) for i in range(1, n + 1))


def split_new_key(n: int, m: int, randbytes: RandBytes | None = None) -> SharedKey:
    """A new escrow key split ``m``-of-``n``; draws ``m`` scalars (key, then ``a_1..a_{m-1}``)."""
    secret = _scalar_random(randbytes)
    shares = split_scalar(secret, n, m, randbytes)
    return SharedKey(base_mult(secret), tuple(s.public() for s in shares), shares)


def lagrange(indices: Sequence[int], x: int = 0) -> dict[int, bytes]:
    """Lagrange coefficients ``prod_{j != i} (x - j) / (i - j)`` mod L of distinct indices
    1..255, for interpolating at ``x`` (0: the shared key)."""
    if len(set(indices)) != len(indices) or any(not 1 <= i <= MAX_SHARES for i in indices):
        raise ThresholdError("share indices must be distinct and in 1..255")
    if x in indices:
        raise ThresholdError("cannot interpolate at one of the given indices")
    xs, out = scalar_from_int(x), {}
    for i in indices:
        num, den = scalar_from_int(1), scalar_from_int(1)
        for j in indices:
            if j != i:
                js = scalar_from_int(j)
                num = na.crypto_core_ed25519_scalar_mul(
                    num, na.crypto_core_ed25519_scalar_sub(xs, js)
                )
                diff = na.crypto_core_ed25519_scalar_sub(scalar_from_int(i), js)
                den = na.crypto_core_ed25519_scalar_mul(den, diff)
        out[i] = na.crypto_core_ed25519_scalar_mul(num, na.crypto_core_ed25519_scalar_invert(den))
    return out


def interpolate(points: Mapping[int, bytes], x: int = 0) -> bytes:
    """``sum(lambda_i * P_i)``: the group value at ``x`` of the polynomial through ``points``."""
    if not points:
        raise ThresholdError("nothing to combine")
    coefficients = lagrange(list(points), x)
    terms = [mult(coefficients[i], point) for i, point in points.items()]
    total = terms[0]
    for term in terms[1:]:
        total = add(total, term)
    return total


def check_public_shares(public: bytes, public_shares: Sequence[bytes], m: int) -> None:
    """ThresholdError unless the public shares lie on one polynomial of degree ``m - 1`` whose
    value at 0 is ``public``: any ``m`` of them interpolate to the same key."""
    for n, point in enumerate((public, *public_shares)):
        check_point(point, f"public share {n}" if n else "the escrow public key")
    if not 2 <= m <= len(public_shares):
        raise ThresholdError("the threshold does not fit the number of public shares")
    first = {i: public_shares[i - 1] for i in range(1, m + 1)}
    if interpolate(first) != public:
        raise ThresholdError("the public shares do not interpolate to the escrow public key")
    for i in range(m + 1, len(public_shares) + 1):
        if interpolate(first, i) != public_shares[i - 1]:
            raise ThresholdError(f"public share {i} is not on the sharing polynomial")


# ---- wrapping and opening a data key -----------------------------------------------------------


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped to an escrow public key under a label (see the module docstring)."""

    u: bytes
    v: bytes
    proof: bytes
    sealed: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        """``0x01 | U | V | proof | nonce | ciphertext``."""
        return WRAP_VERSION + self.u + self.v + self.proof + self.sealed

    @classmethod
    def from_bytes(cls, raw: bytes) -> WrappedKey:
        """Parse :meth:`to_bytes`, checking both points; ThresholdError if malformed."""
        size = 1 + 2 * POINT_SIZE + PROOF_SIZE + NONCE_SIZE + KEY_SIZE + 16
        if not isinstance(raw, bytes) or len(raw) != size or raw[:1] != WRAP_VERSION:
            raise ThresholdError("a wrapped key has an unknown layout")
        u, v = raw[1:33], raw[33:65]
        check_point(u, "a wrapped key's U")
        check_point(v, "a wrapped key's V")
        return cls(u, v, raw[65:129], raw[129:])

    def check_label(self, label: bytes) -> None:
        """ThresholdError unless this wrap was made for ``label`` (its proof verifies)."""
        if not verify_dleq(
            (BASE_POINT, SECOND_GENERATOR), (self.u, self.v), self.proof, _LABEL_PROOF + label
        ):
            raise ThresholdError("the wrapped key was not made for this label")


def _wrap_key(shared: bytes, u: bytes, public: bytes, label: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=KEY_SIZE, salt=u + public, info=_WRAP_INFO + label
    )
    return hkdf.derive(shared)


def wrap(
    public: bytes, label: bytes, data_key: bytes, randbytes: RandBytes | None = None
) -> WrappedKey:
    """``data_key`` (32 bytes) wrapped to ``public`` under ``label``.

    Draws, in order: ``r`` (a scalar), the label proof's scalar, the 12-byte nonce.
    """
    check_point(public, "the escrow public key")
    if not isinstance(data_key, bytes) or len(data_key) != KEY_SIZE:
        raise ValueError(f"a data key is {KEY_SIZE} bytes")
    r = _scalar_random(randbytes)
    u, v = base_mult(r), mult(r, SECOND_GENERATOR)
    proof = prove_dleq(r, BASE_POINT, SECOND_GENERATOR, _LABEL_PROOF + label, randbytes)
    nonce = (randbytes or secrets.token_bytes)(NONCE_SIZE)
    key = _wrap_key(mult(r, public), u, public, label)
    return WrappedKey(u, v, proof, nonce + AESGCM(key).encrypt(nonce, data_key, label))


def unwrap(public: bytes, wrapped: WrappedKey, label: bytes, shared: bytes) -> bytes:
    """The data key, given ``shared = x*U`` (from :func:`combine_partials`); ThresholdError if it
    does not open (wrong label, too few or wrong partials, tampered wrap)."""
    key = _wrap_key(shared, wrapped.u, public, label)
    nonce, body = wrapped.sealed[:NONCE_SIZE], wrapped.sealed[NONCE_SIZE:]
    try:
        return AESGCM(key).decrypt(nonce, body, label)
    except InvalidTag:
        raise ThresholdError("the wrapped key did not open") from None


@dataclass(frozen=True)
class Partial:
    """Custodian ``index``'s partial decryption ``D_i = f(i)*U`` of one wrapped key, with proof."""

    index: int
    d: bytes
    proof: bytes

    def to_bytes(self) -> bytes:
        """``index (1) | D (32) | proof (64)``."""
        return bytes([self.index]) + self.d + self.proof

    @classmethod
    def from_bytes(cls, raw: bytes) -> Partial:
        """Parse :meth:`to_bytes`, checking ``D``."""
        if not isinstance(raw, bytes) or len(raw) != 1 + POINT_SIZE + PROOF_SIZE:
            raise ThresholdError("a partial decryption has an unknown layout")
        return cls(raw[0], check_point(raw[1:33], "a partial decryption"), raw[33:])


def partial_decrypt(
    share: ScalarShare, wrapped: WrappedKey, label: bytes, randbytes: RandBytes | None = None
) -> Partial:
    """The custodian's partial for ``wrapped`` once its label proof checks; draws 1 scalar."""
    wrapped.check_label(label)
    d = mult(share.value, wrapped.u)
    context = _PARTIAL_PROOF + label
    return Partial(
        share.index, d, prove_dleq(share.value, BASE_POINT, wrapped.u, context, randbytes)
    )


def verify_partial(
    public_share: bytes, wrapped: WrappedKey, label: bytes, partial: Partial
) -> bool:
    """Whether ``partial`` is ``f(i)*U`` for the custodian whose public share is given."""
    context = _PARTIAL_PROOF + label
    return verify_dleq((BASE_POINT, wrapped.u), (public_share, partial.d), partial.proof, context)


def combine_partials(partials: Sequence[Partial], threshold: int) -> bytes:
    """``x*U`` from ``threshold`` partials of distinct custodians (the first ``threshold``)."""
    chosen = {p.index: p.d for p in partials}
    if len(chosen) != len(partials):
        raise ThresholdError("two partials from one custodian")
    if len(chosen) < threshold:
        raise ThresholdError(f"{len(chosen)} partials given; {threshold} are needed")
    return interpolate(dict(list(chosen.items())[:threshold]))
