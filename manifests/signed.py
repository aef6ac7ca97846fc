"""What the restore workflow's files share in both escrow formats: a request's identity, bytes,
parsing and scope check, a custodian's signed approval (its statement, file bytes and sha256),
and the requester key file."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from faceveil.manifests.audit import utc_now
from faceveil.manifests.canonical import JsonFile, canonical_json, file_json
from faceveil.manifests.custodian import (
    CustodianPublic,
    ScryptParams,
    b64d,
    b64e,
    passphrase_open,
    passphrase_seal,
)
from faceveil.manifests.errors import CustodianKeyError, EscrowError, RestoreError

REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def iso_time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class RequestFile(JsonFile):
    """The file side of a request dataclass that defines ``to_json()`` (its ``req.json``
    document), ``FORMAT`` and the fields ``request_id``, ``job_id``, ``revision``, ``purpose``,
    ``expires`` and ``escrow`` (the escrow copy, with ``to_json()``)."""

    FORMAT: ClassVar[str]
    request_id: str
    job_id: str
    revision: str

    def head(self) -> dict:
        """The fields a ``req.json`` document starts with, in both formats."""
        return {
            "format": self.FORMAT,
            "request_id": self.request_id,
            "job_id": self.job_id,
            "revision": self.revision,
        }

    def sha256(self) -> str:
        """The request's identity: sha256 hex of its canonical JSON."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    @classmethod
    def _from_file(cls, data: bytes | str, fields: Callable[[dict], dict]) -> Any:
        """Parse a ``req.json`` of ``FORMAT`` (``fields`` decodes the format's own fields of the
        document); RestoreError if malformed."""
        try:
            doc = json.loads(data)
            if doc.pop("format") != cls.FORMAT:
                version = cls.FORMAT.rsplit("/", 1)[-1]
                raise ValueError(f"not a faceveil restore request of format {version}")
            request_id = doc["request_id"]
            if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
                raise ValueError("request_id must be 32 lowercase hex characters")
            return cls(**fields(doc))
        except (ValueError, KeyError, TypeError, AttributeError, EscrowError) as exc:
            raise RestoreError(f"invalid restore request: {exc}") from None

    def check_scope(self, escrow: Any, purpose: str, now: datetime | None = None) -> None:
        """RestoreError unless this request is for ``escrow``'s job and revision, its escrow
        copy is ``escrow`` exactly (same policy and sealed shares), it is for ``purpose``, and
        it has not expired at ``now``."""
        if (self.job_id, self.revision) != (escrow.job_id, escrow.revision):
            raise RestoreError(STALE_REQUEST)
        if canonical_json(self.escrow.to_json()) != canonical_json(escrow.to_json()):
            raise RestoreError(
                "the request's copy of escrow.json differs from the job's escrow.json (same "
                "revision, other policy or shares): a forged or altered request"
            )
        if self.purpose != purpose:
            raise RestoreError(f"the request is for {self.purpose!r}, not {purpose!r}")
        if (now or utc_now()) > parse_time(self.expires):
            raise RestoreError(f"the request expired at {self.expires}")


@dataclass(frozen=True)
class RequestSpec:
    """What a request asks for: its purpose, its samples (as the request's format names them),
    why and by whom, and for how long it stays valid."""

    purpose: str
    samples: Any
    reason: str
    requester: str
    valid_for: timedelta = field(default=timedelta(days=7), kw_only=True)


def new_request_fields(escrow: Any, spec: RequestSpec, now: datetime) -> dict[str, str]:
    """The fields every new request of ``escrow`` fills the same way: a fresh ``request_id``,
    the escrow's ``job_id`` and ``revision``, ``spec``'s ``reason`` and ``requester``, and
    ``created`` (``now``) and ``expires`` (``spec.valid_for`` later); ValueError without a
    reason or a requester."""
    if not spec.reason.strip() or not spec.requester.strip():
        raise ValueError("a request needs a reason and a requester")
    return {
        "request_id": secrets.token_hex(16),
        "job_id": escrow.job_id,
        "revision": escrow.revision,
        "reason": spec.reason,
        "requester": spec.requester,
        "created": iso_time(now),
        "expires": iso_time(now + spec.valid_for),
    }


STALE_REQUEST = (
    "the request was made for another job or another escrow (or the escrow changed since: a new "
    "key epoch, a reshare or a rekey); make a new request"
)


class SignedApproval:
    """The file side of an approval dataclass that defines ``signed_doc()`` (every field but the
    signature), ``statement()`` (what the custodian signs), a ``signature`` field and
    ``LABEL``, the bytes the signed statement starts with."""

    LABEL: ClassVar[bytes]
    FORMAT: ClassVar[str]

    @classmethod
    def _from_file(cls, data: bytes | str, fields: Callable[[dict], dict]) -> Any:
        """Parse an ``.approval`` file of ``FORMAT`` (``fields`` decodes the format's own
        fields of the document); RestoreError if malformed."""
        try:
            doc = json.loads(data)
            if doc.pop("format") != cls.FORMAT:
                raise ValueError(f"not a faceveil approval ({cls.FORMAT})")
            doc = fields(doc)
            doc["signature"] = b64d(doc["signature"], "signature", 64)
            return cls(**doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RestoreError(f"invalid approval: {exc}") from None

    def signing_bytes(self) -> bytes:
        """The bytes the custodian's Ed25519 signature covers."""
        return self.LABEL + canonical_json(self.statement())

    def sha256(self) -> str:
        """sha256 hex of the approval file's bytes (how audit entries name it)."""
        return hashlib.sha256(self.dumps()).hexdigest()

    def dumps(self) -> bytes:
        """The ``.approval`` file bytes."""
        return file_json(self.signed_doc() | {"signature": b64e(self.signature)})


def verify_signed(
    approvals: Sequence[Any],
    expected: Mapping[str, object],
    custodian_of: Callable[[str], CustodianPublic],
    threshold: int,
    check: Callable[[int, CustodianPublic, Any], None] | None = None,
) -> None:
    """RestoreError unless every approval has the ``expected`` field values (is of this request),
    comes from a custodian (``custodian_of`` a fingerprint, EscrowError if none) who signed it,
    passes ``check(i, custodian, approval)``, and at least ``threshold`` distinct custodians
    approved (each counts once)."""
    seen: set[str] = set()
    for i, ap in enumerate(approvals, start=1):
        if any(getattr(ap, name) != value for name, value in expected.items()):
            raise RestoreError(f"approval {i} (by {ap.custodian!r}) is for another request")
        try:
            custodian = custodian_of(ap.fingerprint)
        except EscrowError:
            raise RestoreError(
                f"approval {i} is from {ap.custodian!r}, who is not a custodian of this escrow"
            ) from None
        try:
            Ed25519PublicKey.from_public_bytes(custodian.ed25519).verify(
                ap.signature, ap.signing_bytes()
            )
        except InvalidSignature:
            raise RestoreError(
                f"approval {i} (by {custodian.name!r}) has a bad signature"
            ) from None
        if check is not None:
            check(i, custodian, ap)
        if ap.fingerprint in seen:
            raise RestoreError(
                f"approval {i} duplicates the approval of {custodian.name!r}: each custodian "
                "counts once"
            )
        seen.add(ap.fingerprint)
    if len(seen) < threshold:
        raise RestoreError(
            f"{len(seen)} valid approval(s) from distinct custodians; this escrow needs {threshold}"
        )


R = TypeVar("R")
K = TypeVar("K")


@dataclass(frozen=True)
class ApprovedRequest(Generic[R, K]):
    """What applying a request takes: the request, the requester's private keys to it (from
    the requester key file) and the custodians' approvals."""

    request: R
    keys: K = field(repr=False)
    approvals: Sequence[Any]


class _Request(Protocol):
    request_id: str

    def sha256(self) -> str: ...


def request_key_file(
    key_format: str,
    request: _Request,
    secret: bytes,
    passphrase: str,
    params: ScryptParams | None = None,
) -> bytes:
    """The requester key file of ``request``: ``secret`` sealed under ``passphrase`` (write it
    with mode 0600)."""
    header = {
        "format": key_format,
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
    }
    return json.dumps(passphrase_seal(header, secret, passphrase, params), indent=1).encode()


def open_request_key_file(
    key_format: str, request: _Request, key_file: bytes, passphrase: str
) -> bytes:
    """The secret in ``request``'s key file; RestoreError for another request's file."""
    try:
        doc = json.loads(key_file)
    except ValueError:
        raise CustodianKeyError("the requester key file is not JSON") from None
    if not isinstance(doc, dict) or doc.get("request_sha256") != request.sha256():
        raise RestoreError("the requester key file belongs to another request")
    return passphrase_open(doc, passphrase, key_format)
