"""Shamir secret sharing over GF(2^8), byte by byte, for M-of-N escrow of the master key.

Each secret byte is the constant term of its own random polynomial of degree ``threshold - 1``
over GF(2^8) (the AES field, reduction polynomial ``x^8 + x^4 + x^3 + x + 1`` = 0x11B). Share
``i`` (x-coordinate ``i`` in 1..N) holds the polynomials' values at ``x = i``. Any ``threshold``
shares rebuild the secret by Lagrange interpolation at 0; fewer reveal nothing about it.

Coefficients come from :func:`secrets.token_bytes` unless a ``randbytes`` callable is injected
(tests): one call draws ``len(secret) * (threshold - 1)`` bytes, and the coefficient of ``x^k``
(k = 1..threshold-1) for secret byte ``b`` is byte ``b * (threshold - 1) + (k - 1)``.

A share serializes as one byte of x-coordinate followed by the value bytes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from faceveil.manifests.errors import ShareError

MAX_SHARES = 255
_POLY = 0x11B
_GENERATOR = 0x03


def _build_tables() -> tuple[list[int], list[int]]:
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        doubled = (value << 1) ^ (_POLY if value & 0x80 else 0)
        value = doubled ^ value  # multiply by the generator x + 1
    for power in range(255, 510):
        exp[power] = exp[power - 255]
    return exp, log


_EXP, _LOG = _build_tables()


def gf_mul(a: int, b: int) -> int:
    """Product of two field elements (0..255)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_div(a: int, b: int) -> int:
    """Quotient ``a / b`` of two field elements; ``b`` must be non-zero."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


@dataclass(frozen=True)
class Share:
    """One share: x-coordinate (1..255) and one value byte per secret byte (never shown)."""

    x: int
    y: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        """``x`` as one byte, then the value bytes."""
        return bytes([self.x]) + self.y

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        """Parse :meth:`to_bytes` output."""
        if len(raw) < 2 or not 1 <= raw[0] <= MAX_SHARES:
            raise ShareError("malformed share")
        return cls(raw[0], bytes(raw[1:]))


# Horner evaluation, highest degree first in ``coefficients``.
def _evaluate(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for c in coefficients:
        acc = gf_mul(acc, x) ^ c
    return acc


def split(
    secret: bytes, n: int, threshold: int, randbytes: Callable[[int], bytes] | None = None
) -> list[Share]:
    """Split ``secret`` into ``n`` shares, any ``threshold`` of which rebuild it."""
    if not secret:
        raise ValueError("cannot split an empty secret")
    if not 2 <= threshold <= n <= MAX_SHARES:
        raise ValueError(f"need 2 <= threshold <= n <= {MAX_SHARES}")
    degree = threshold - 1
    draw = randbytes if randbytes is not None else secrets.token_bytes
    random = draw(len(secret) * degree)
    if len(random) != len(secret) * degree:
        raise ValueError("randbytes returned the wrong number of bytes")
    values = [bytearray(len(secret)) for _ in range(n)]
    for b, byte in enumerate(secret):
        coefficients = random[b * degree : (b + 1) * degree]
        highest_first = [*reversed(coefficients), byte]
        for i in range(n):
            values[i][b] = _evaluate(highest_first, i + 1)
    return [Share(i + 1, bytes(values[i])) for i in range(n)]


def _check(shares: Sequence[Share]) -> None:
    if len(shares) < 2:
        raise ShareError("at least two shares are needed")
    xs = [s.x for s in shares]
    if any(not isinstance(x, int) or not 1 <= x <= MAX_SHARES for x in xs):
        raise ShareError("share x-coordinate out of range")
    if len(set(xs)) != len(xs):
        raise ShareError("duplicate share: the same x-coordinate was given twice")
    if len({len(s.y) for s in shares}) != 1 or not shares[0].y:
        raise ShareError("shares have different or zero lengths")


def combine(shares: Sequence[Share]) -> bytes:
    """Rebuild the secret by Lagrange interpolation at x = 0.

    With fewer shares than the threshold the result is an unrelated value; callers check the
    recovered secret (escrow keeps a key-check value for that).
    """
    _check(shares)
    xs = [s.x for s in shares]
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = gf_mul(num, xj)
                den = gf_mul(den, xi ^ xj)
        weights.append(gf_div(num, den))
    out = bytearray(len(shares[0].y))
    for weight, share in zip(weights, shares, strict=True):
        for b, value in enumerate(share.y):
            out[b] ^= gf_mul(weight, value)
    return bytes(out)
