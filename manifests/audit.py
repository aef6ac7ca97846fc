"""The hash-chained, Ed25519-signed audit log (``audit.jsonl``) and its verifier.

Each line is the canonical JSON (sorted keys, no whitespace, ASCII) of one entry, then ``\\n``::

    {"action", "actor", "details", "prev_sha256", "seq", "signature", "signer", "time"}

``seq`` counts from 1; ``prev_sha256`` is the sha256 hex of the previous line's bytes (without
its newline; 64 zeros for line 1); ``signer`` is :func:`key_id` of an Ed25519 public key and
``signature`` the base64 Ed25519 signature over the canonical JSON of the entry without
``signature``. ``time`` is UTC ISO-8601 (the clock is injectable). ``details`` never holds keys,
shares, passphrases, pixels or source paths.

Trust model
    Two kinds of keys sign entries. (1) *Job signing keys*: one Ed25519 key per run of the job
    (the first ``faceveil run`` and every ``--resume``: one per key epoch, see
    :mod:`manifests.escrow`); each signs its own run's entries (job start or resume, job end).
    The first epoch's key is the job's long-lived key: it also signs every entry written later
    by whoever recovers the master keys (restore, reshare, rekey), and a rekey keeps it. Each
    private half is kept only sealed under its own epoch's master key inside ``escrow.json``
    (and in memory while its run runs), so nobody can sign as a run without M custodians or KMS
    access. Each public key is recorded in its epoch of ``escrow.json`` (``audit_key.public``)
    and in its run's first entry, and is bound into that epoch's sealed shares and KMS
    encryption context, so a swapped key makes every approval fail. (2) *Custodian keys*: each
    custodian signs their own approval entries with the Ed25519 key listed in ``escrow.json``.

    Entries signed by a job key that set up or change the escrow list keys that are trusted too
    (:func:`declared_keys`): the custodians' Ed25519 keys (``details.custodians[].ed25519``, or
    ``details.escrow.custodians`` in a run's first entry), and, in a rekey entry, which
    collapses every epoch into one, the retired epochs' job keys
    (``details.audit_keys[].ed25519``). This goes one level deep only (keys declared by the
    escrow's own job keys), and keeps verifiable the approvals of a custodian that a reshare
    removed and the entries of runs whose epoch a rekey retired.

    A verifier trusts exactly the keys it is given (``trusted_keys``). ``faceveil audit
    verify`` trusts the *union* of the job keys of every epoch in ``escrow.json`` (the key in
    ``job.json`` must be one of them, or a retired one) plus the declared keys, and prints every
    job key's id, to be compared with the ids published out of band when each run started. The
    union is weaker than the single job key it replaces: whoever can write ``escrow.json`` can
    add an epoch with a key of their own, as they could before replace the one key wholesale;
    both are detected only by that comparison, or by pinning every expected job key id with
    ``--job-key`` (repeatable; a job key of ``escrow.json`` that is not pinned fails).

Truncation
    A last line without a newline is reported as cut. Whole trailing lines removed cannot be
    seen from the log alone: writers return the new tail (``seq`` and sha256 of the last line),
    ``faceveil run`` records it in ``job.json`` (``audit.tail``), and a verifier given the
    expected tail reports a log that ends before it, or whose line at that ``seq`` differs.
    Entries appended after the recorded tail are accepted (restores happen after the job);
    every CLI command that appends prints the new tail, for whoever needs to check later that
    their entry is still there (``faceveil audit verify OUT --expect-tail SEQ:SHA256``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from manifests.errors import AuditError

GENESIS = "0" * 64
FIELDS = frozenset(
    {"seq", "time", "actor", "action", "details", "prev_sha256", "signer", "signature"}
)
_TAIL = re.compile(r"(\d+):([0-9a-f]{64})")


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public: bytes) -> str:
    """The signer id of a raw Ed25519 public key: ``ed25519:`` + 32 hex of its sha256."""
    return "ed25519:" + hashlib.sha256(public).hexdigest()[:32]


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class AuditTail:
    """Where a log ends: the last ``seq`` and the sha256 hex of that line."""

    seq: int
    sha256: str

    def __post_init__(self) -> None:
        if self.seq < 1 or not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError("an audit tail has seq >= 1 and a 64-hex sha256")

    def __str__(self) -> str:
        return f"{self.seq}:{self.sha256}"

    @classmethod
    def parse(cls, text: str) -> AuditTail:
        """Parse ``SEQ:SHA256``."""
        match = _TAIL.fullmatch(text.strip())
        if not match:
            raise ValueError("an audit tail is written SEQ:SHA256 (64 lowercase hex)")
        return cls(int(match.group(1)), match.group(2))


def tail_of(log: bytes) -> AuditTail | None:
    """The tail of a log's bytes (None when empty); refuses a log whose last line is cut."""
    if not log:
        return None
    if not log.endswith(b"\n"):
        raise AuditError(
            "the last line is cut (no final newline); not appending to it", log.count(b"\n") + 1
        )
    last = log[:-1].rsplit(b"\n", 1)[-1]
    try:
        seq = json.loads(last)["seq"]
    except (ValueError, KeyError, TypeError):
        raise AuditError("the last line is not an audit entry", log.count(b"\n")) from None
    return AuditTail(int(seq), hashlib.sha256(last).hexdigest())


class AuditWriter:
    """Builds signed entries that extend a log; one writer per signing key and actor."""

    def __init__(
        self, signing_key: Ed25519PrivateKey, actor: str, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._key = signing_key
        self.actor = actor
        self.public_key = signing_key.public_key().public_bytes_raw()
        self.signer = key_id(self.public_key)
        self._clock = clock

    def __repr__(self) -> str:
        return f"AuditWriter(actor={self.actor!r}, signer={self.signer!r})"

    def line(self, prev: AuditTail | None, action: str, details: Mapping) -> bytes:
        """The next line (with its newline) after ``prev`` (None for the first line)."""
        when = self._clock().astimezone(UTC).isoformat(timespec="milliseconds")
        entry = {
            "seq": prev.seq + 1 if prev else 1,
            "time": when.replace("+00:00", "Z"),
            "actor": self.actor,
            "action": action,
            "details": dict(details),
            "prev_sha256": prev.sha256 if prev else GENESIS,
            "signer": self.signer,
        }
        signature = self._key.sign(_canonical(entry))
        entry["signature"] = base64.b64encode(signature).decode("ascii")
        return _canonical(entry) + b"\n"

    def append(self, log: bytes, action: str, details: Mapping) -> tuple[bytes, AuditTail]:
        """``log`` extended by one entry, and the new tail."""
        line = self.line(tail_of(log), action, details)
        new_log = log + line
        return new_log, AuditTail(json.loads(line)["seq"], hashlib.sha256(line[:-1]).hexdigest())


def declared_keys(
    lines: bytes | Iterable[bytes | str], authority: bytes | Iterable[bytes]
) -> dict[str, bytes]:
    """Keys listed by entries signed by ``authority`` (one raw public key, or several).

    Collects custodian keys (``details.custodians[].ed25519``, and ``details.escrow.custodians``
    as in ``job.start``) and retired job signing keys (``details.audit_keys[].ed25519``), one
    level deep: keys declared by declared keys are not
    collected. This only collects keys; :func:`verify` still checks every entry.
    """
    authorities = [authority] if isinstance(authority, bytes | bytearray) else list(authority)
    authority_ids, keys = {key_id(bytes(a)) for a in authorities}, {}
    for raw in _split(lines):
        try:
            entry = json.loads(raw)
            if entry.get("signer") not in authority_ids:
                continue
            details = entry["details"]
            listed = [
                *details.get("custodians", []),
                *(details.get("escrow") or {}).get("custodians", []),
                *details.get("audit_keys", []),
            ]
            for item in listed:
                public = base64.b64decode(item["ed25519"], validate=True)
                if len(public) == 32:
                    keys[key_id(public)] = public
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return keys


def _split(lines: bytes | Iterable[bytes | str]) -> list[bytes]:
    if isinstance(lines, bytes | bytearray):
        parts = bytes(lines).split(b"\n")
        out = [p + b"\n" for p in parts[:-1]]
        return out + ([parts[-1]] if parts[-1] else [])
    return [ln.encode("utf-8") if isinstance(ln, str) else bytes(ln) for ln in lines]


def _check_line(n: int, raw: bytes, prev_sha: str, trusted: Mapping[str, bytes]) -> None:
    if not raw.endswith(b"\n"):
        raise AuditError("line is cut (no final newline): truncated log", n)
    body = raw[:-1]
    try:
        entry = json.loads(body)
    except ValueError:
        raise AuditError("not valid JSON", n) from None
    if not isinstance(entry, dict) or set(entry) != FIELDS:
        raise AuditError("not an audit entry (wrong fields)", n)
    if _canonical(entry) != body:
        raise AuditError("not in canonical form: the line was edited", n)
    if entry["seq"] != n:
        raise AuditError(
            f"seq {entry['seq']} where {n} was expected: a line was deleted, inserted or moved", n
        )
    if entry["prev_sha256"] != prev_sha:
        raise AuditError(
            "does not chain to the previous line: a line was edited, deleted or moved", n
        )
    public = trusted.get(entry["signer"]) if isinstance(entry["signer"], str) else None
    if public is None:
        raise AuditError("signed by a key that is not trusted", n)
    unsigned = {k: v for k, v in entry.items() if k != "signature"}
    try:
        signature = base64.b64decode(entry["signature"], validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(signature, _canonical(unsigned))
    except (InvalidSignature, ValueError, TypeError):
        raise AuditError(
            "bad signature: the entry was edited or signed by another key", n
        ) from None


def verify(
    lines: bytes | Iterable[bytes | str],
    trusted_keys: Mapping[str, bytes],
    expected_tail: AuditTail | None = None,
) -> AuditTail:
    """Check chain, order, canonical form and signatures; return the tail.

    ``lines`` is the whole log as bytes, or its lines each with their newline (as iterating a
    file yields them). ``trusted_keys`` maps signer id (:func:`key_id`) -> raw public key.
    Raises :class:`AuditError` naming the first bad line (1-based).
    """
    raw_lines = _split(lines)
    prev_sha = GENESIS
    for n, raw in enumerate(raw_lines, start=1):
        _check_line(n, raw, prev_sha, trusted_keys)
        prev_sha = hashlib.sha256(raw[:-1]).hexdigest()
    count = len(raw_lines)
    if count == 0:
        raise AuditError("the audit log is empty", 1)
    if expected_tail is not None:
        if count < expected_tail.seq:
            raise AuditError(
                f"the log ends at line {count} but its recorded tail is line "
                f"{expected_tail.seq}: trailing lines were removed",
                count + 1,
            )
        line = raw_lines[expected_tail.seq - 1][:-1]
        if hashlib.sha256(line).hexdigest() != expected_tail.sha256:
            raise AuditError("differs from the recorded tail", expected_tail.seq)
    return AuditTail(count, prev_sha)
