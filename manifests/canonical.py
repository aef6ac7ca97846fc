"""The one canonical JSON encoding: what is hashed, signed, sealed as AAD, and published.

Sorted keys, no whitespace, ASCII only (non-ASCII characters as ``\\uXXXX``), UTF-8 bytes: the
same object always gives the same bytes, on every machine and in every module.
"""

from __future__ import annotations

import json


def canonical_json(obj: object) -> bytes:
    """The canonical bytes of ``obj``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
