"""Opaque error families of the key-handling library; messages never carry secret material.

Every message names *what* failed (a row's sample id, a custodian's name, an audit line number)
and never the bytes involved: no key, share, passphrase, nonce-plus-ciphertext or pixel data.
"""

from __future__ import annotations


class KeyLibraryError(Exception):
    """Base class of every error raised on purpose by :mod:`manifests`."""


class DecryptionError(KeyLibraryError):
    """A sealed value did not open: wrong key, wrong context or tampered bytes, all alike."""


class ManifestError(KeyLibraryError):
    """A key manifest that is not a valid faceveil key manifest (schema or content)."""


class ShareError(KeyLibraryError):
    """Shamir shares that cannot be combined (too few, duplicated, inconsistent)."""


class CustodianKeyError(KeyLibraryError):
    """A custodian or requester key file that cannot be used: wrong passphrase or damaged file."""


class EscrowError(KeyLibraryError):
    """An escrow policy that is invalid, or a recovered master key that does not match it."""


class RestoreError(KeyLibraryError):
    """A restore request or approval that is not acceptable for the operation asked for."""


class AuditError(KeyLibraryError):
    """An audit log that does not verify; ``line`` is the first bad line (1-based), if known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"audit line {line}: {message}" if line is not None else message)
        self.line = line
