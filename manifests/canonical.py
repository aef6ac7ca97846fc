"""The one canonical JSON encoding: what is hashed, signed, sealed as AAD, and published.

Sorted keys, no whitespace, ASCII only (non-ASCII characters as ``\\uXXXX``), UTF-8 bytes: the
same object always gives the same bytes, on every machine and in every module.
"""

from __future__ import annotations

import json


def canonical_json(obj: object) -> bytes:
    """The canonical bytes of ``obj``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def file_json(obj: object) -> bytes:
    """The bytes of a JSON file written for people as well as programs (``escrow.json``,
    ``req.json``, approvals): one-space indent, a newline at the end."""
    return json.dumps(obj, indent=1).encode() + b"\n"


class JsonFile:
    """``dumps()`` for a document class whose ``to_json()`` is its file's content."""

    def to_json(self) -> dict:
        raise NotImplementedError

    def dumps(self) -> bytes:
        """The file's bytes (:func:`file_json` of :meth:`to_json`)."""
        return file_json(self.to_json())
