"""The hash-chained, Ed25519-signed audit log (``audit.jsonl``) and its verifier.

Each line is the canonical JSON (sorted keys, no whitespace, ASCII) of one entry, then ``\\n``::

    {"action", "actor", "details", "prev_sha256", "seq", "signature", "signer", "time"}

``seq`` counts from 1; ``prev_sha256`` is the sha256 hex of the previous line's bytes (without
its newline; 64 zeros for line 1); ``signer`` is :func:`key_id` of an Ed25519 public key and
``signature`` the base64 Ed25519 signature over the canonical JSON of the entry without
``signature``. ``time`` is UTC ISO-8601 (the clock is injectable). ``details`` never holds keys,
shares, passphrases, pixels or source paths.

Trust model
    The log declares its own keys, each of exactly one kind, and each kind signs only its own
    actions (:func:`verify_log`; anything else fails, naming the line and why):

    - *job key* (``job.start``, ``job.resume``, ``job.end``, ``job.manifests``): one Ed25519 key
      made in memory per run (the first ``faceveil run`` and each ``--resume``) and destroyed at
      run end, never escrowed. The run's first entry declares it (``details.audit_public_key``
      b64 raw, ``details.audit_key_id``) and is signed by it: ``job.start`` as line 1 and only
      there, ``job.resume`` for a resumed run. A job key signs only after its declaring entry
      and no more after its run's ``job.end`` or after a later run was declared.
    - *custodian key* (``restore.approve``): declared by the escrow policy in ``job.start``
      (``details.escrow.custodians[] = {name, fingerprint, ed25519}``), replaced by the new
      policy of each ``escrow.reshare``/``escrow.rekey`` entry that lists
      ``details.custodians[]``. An approval names ``details.request_id`` of a recorded
      request, ``details.custodian_key_id`` of a custodian of the policy in force, and embeds
      the custodian's signed statement (``details.statement``,
      ``details.custodian_signature``), which the caller's ``approval_check`` verifies against
      that custodian's key. The entry is signed by the custodian or by the requester key of the
      request it names.
    - *requester key* (``restore.request``, ``restore.apply``, ``restore.failed``,
      ``escrow.reshare``, ``escrow.rekey``): a ``restore.request`` declares its requester key
      (``details.requester_key`` b64 raw, ``details.request_id`` 32 hex,
      ``details.request_sha256``) and is signed by it; the other actions name
      ``details.request_id`` and are signed by that request's requester key.

    Nothing outside the log is a trust root: not ``escrow.json`` (unsigned, writable by
    whoever holds OUT) nor ``job.json``. The self-declared job keys are trusted through the ids
    published when each run started (``faceveil run`` prints them), which a verifier pins
    (``pinned_job_keys``, ``faceveil audit verify --job-key``): every job key the log declares
    must be pinned and every pinned key declared; and through the anchor below, which a
    replaced log does not match.

Truncation
    A last line without a newline is reported as cut. Whole trailing lines removed cannot be
    seen from the log alone. ``faceveil run --audit-anchor URL`` records the anchor in the
    signed ``job.start`` (``details.audit_anchor``), and every append also writes the new tail
    there as a new object (:mod:`jobs.auditlog`); ``faceveil audit verify`` then fails on a
    log that is behind its anchor, differs from it, or has lines it does not anchor. Without
    an anchor it says that truncation after the last line cannot be detected. :func:`verify`
    (with ``expected_tail``) is the low-level check of chain and signatures against given
    keys only; it knows nothing of roles.
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

from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.errors import AuditError

GENESIS = "0" * 64
FIELDS = frozenset(
    {"seq", "time", "actor", "action", "details", "prev_sha256", "signer", "signature"}
)
_TAIL = re.compile(r"(\d+):([0-9a-f]{64})")


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
        signature = self._key.sign(canonical_json(entry))
        entry["signature"] = base64.b64encode(signature).decode("ascii")
        return canonical_json(entry) + b"\n"

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
    collected. This only collects keys; :func:`verify` still checks every entry. The trust
    model of :func:`verify_log` (what ``faceveil audit verify`` uses) does not use it.
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


def _parse_line(n: int, raw: bytes, prev_sha: str) -> dict:
    """One line's entry, checked for form, order and chaining (not yet for its signature)."""
    if not raw.endswith(b"\n"):
        raise AuditError("line is cut (no final newline): truncated log", n)
    body = raw[:-1]
    try:
        entry = json.loads(body)
    except ValueError:
        raise AuditError("not valid JSON", n) from None
    if not isinstance(entry, dict) or set(entry) != FIELDS:
        raise AuditError("not an audit entry (wrong fields)", n)
    if not all(isinstance(entry[k], str) for k in ("action", "signer", "signature")):
        raise AuditError("not an audit entry (action, signer and signature are strings)", n)
    if canonical_json(entry) != body:
        raise AuditError("not in canonical form: the line was edited", n)
    if entry["seq"] != n:
        raise AuditError(
            f"seq {entry['seq']} where {n} was expected: a line was deleted, inserted or moved", n
        )
    if entry["prev_sha256"] != prev_sha:
        raise AuditError(
            "does not chain to the previous line: a line was edited, deleted or moved", n
        )
    return entry


def _check_signature(n: int, entry: dict, public: bytes) -> None:
    unsigned = {k: v for k, v in entry.items() if k != "signature"}
    try:
        signature = base64.b64decode(entry["signature"], validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(signature, canonical_json(unsigned))
    except (InvalidSignature, ValueError, TypeError):
        raise AuditError(
            "bad signature: the entry was edited or signed by another key", n
        ) from None


def _check_line(n: int, raw: bytes, prev_sha: str, trusted: Mapping[str, bytes]) -> None:
    entry = _parse_line(n, raw, prev_sha)
    public = trusted.get(entry["signer"]) if isinstance(entry["signer"], str) else None
    if public is None:
        raise AuditError("signed by a key that is not trusted", n)
    _check_signature(n, entry, public)


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


JOB_ACTIONS = frozenset({"job.start", "job.resume", "job.end", "job.manifests"})
CUSTODIAN_ACTIONS = frozenset({"restore.approve"})
REQUESTER_ACTIONS = frozenset(
    {"restore.request", "restore.apply", "restore.failed", "escrow.reshare", "escrow.rekey"}
)
# What each requester action needs its request to have asked for (restore.failed: any).
ACTION_PURPOSES = {"restore.apply": "restore", "escrow.reshare": "reshare", "escrow.rekey": "rekey"}
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

ApprovalCheck = Callable[[Mapping, bytes], None]
"""Checks a ``restore.approve`` entry's ``details`` against the custodian's raw Ed25519 public
key (the custodian's signed statement); raises :class:`AuditError` when it does not hold."""


@dataclass(frozen=True)
class LogReport:
    """What :func:`verify_log` found in a log that verifies.

    ``line_sha256[i]`` is the sha256 hex of line ``i + 1`` (without its newline); ``job_keys``
    the job key ids the runs declared, in order; ``job_id`` and ``anchor`` are what the signed
    ``job.start`` entry records (``details.job_id``, ``details.audit_anchor``), or None.
    """

    tail: AuditTail
    line_sha256: tuple[str, ...]
    entries: tuple[dict, ...]
    job_keys: tuple[str, ...]
    job_id: str | None
    anchor: str | None


def _b64_key(n: int, value: object, what: str) -> bytes:
    try:
        public = base64.b64decode(value, validate=True)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise AuditError(f"{what} is not base64", n) from None
    if len(public) != 32:
        raise AuditError(f"{what} is not a raw Ed25519 public key (32 bytes)", n)
    return public


def _field(n: int, details: Mapping, name: str, pattern: re.Pattern) -> str:
    value = details.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise AuditError(f"details.{name} is missing or malformed", n)
    return value


class _Roles:
    """The keys a log declares so far, each of one kind, and what each may sign next."""

    def __init__(self, pins: frozenset[str] | None, approval_check: ApprovalCheck | None):
        self.pins, self.approval_check = pins, approval_check
        self.publics: dict[str, bytes] = {}
        self.labels: dict[str, str] = {}  # key id -> "job"/"custodian"/"requester" + who
        self.kinds: dict[str, str] = {}
        self.job_keys: list[str] = []
        self.live_job: str | None = None
        self.custodians: dict[str, str] = {}  # the policy in force: key id -> name
        self.threshold = 0  # approvals the policy in force needs (0: a KMS policy)
        self.requests: dict[str, tuple[str, str]] = {}  # request id -> (key id, request sha)
        self.purposes: dict[str, str] = {}  # request id -> what the request asks for
        self.approved: dict[str, set[str]] = {}  # request id -> custodian key ids recorded
        self.job_id: str | None = None
        self.anchor: str | None = None

    def describe(self, kid: object) -> str:
        if kid not in self.kinds:
            return f"{kid}, a key no earlier entry declares"
        return f"{kid}, {self.labels[kid]}"  # type: ignore[index]

    def _declare(self, n: int, kid: str, public: bytes, kind: str, label: str) -> None:
        if self.kinds.get(kid, kind) != kind:
            raise AuditError(f"declares as a {kind} key {self.describe(kid)}", n)
        self.publics[kid], self.kinds[kid], self.labels[kid] = public, kind, label

    def signer_key(self, n: int, entry: dict) -> bytes:
        """The public key that must have signed ``entry`` under the role rules."""
        action, details = entry["action"], entry["details"]
        if not isinstance(details, dict):
            raise AuditError("details is not an object", n)
        if action in ("job.start", "job.resume"):
            return self._run_key(n, entry)
        if n == 1:
            raise AuditError("the log begins with job.start, and only there", n)
        if action in JOB_ACTIONS:
            return self._expect(n, entry, self.live_job, "the running job's key")
        if action == "restore.request":
            return self._request_key(n, entry)
        if action in CUSTODIAN_ACTIONS:
            return self._approver_key(n, entry)
        if action in REQUESTER_ACTIONS:
            kid, _ = self._request(n, details)
            public = self._expect(n, entry, kid, "the requester key of its request")
            self._check_authorized(n, action, details["request_id"])
            return public
        raise AuditError(f"unknown action {action!r}", n)

    def _expect(self, n: int, entry: dict, kid: str | None, who: str) -> bytes:
        signer = entry["signer"]
        if kid is None or signer != kid:
            if self.kinds.get(signer) == "job" and entry["action"] in JOB_ACTIONS:
                why = "a job key signs after its run ended (job.end or a later run)"
                raise AuditError(f"{entry['action']}: {why}: signed by {self.describe(signer)}", n)
            raise AuditError(
                f"{entry['action']} must be signed by {who}; signed by {self.describe(signer)}", n
            )
        return self.publics[kid]

    def _run_key(self, n: int, entry: dict) -> bytes:
        action, details, signer = entry["action"], entry["details"], entry["signer"]
        if signer in self.kinds:
            raise AuditError(
                f"{action} declares a job key already known: {self.describe(signer)}", n
            )
        if (action == "job.start") != (n == 1):
            raise AuditError("the log begins with job.start, and only there", n)
        public = _b64_key(n, details.get("audit_public_key"), "details.audit_public_key")
        kid = key_id(public)
        if details.get("audit_key_id") != kid or signer != kid:
            raise AuditError(f"{action} must be signed by the job key it declares ({kid})", n)
        if self.pins is not None and kid not in self.pins:
            raise AuditError(f"the job key {kid} is not pinned (--job-key)", n)
        if action == "job.resume" and details.get("audit_anchor", self.anchor) != self.anchor:
            raise AuditError("a resumed run names another audit anchor than job.start", n)
        return public

    def _request(self, n: int, details: Mapping) -> tuple[str, str]:
        rid = _field(n, details, "request_id", _REQUEST_ID)
        if rid not in self.requests:
            raise AuditError(f"request {rid} is not recorded by an earlier restore.request", n)
        return self.requests[rid]

    def _check_authorized(self, n: int, action: str, rid: str) -> None:
        """An apply, reshare or rekey must act on a request of that purpose which M custodians
        of the policy in force approved (their approvals recorded earlier in the log)."""
        wanted = ACTION_PURPOSES.get(action)
        if wanted is None:
            return
        if self.purposes.get(rid) != wanted:
            raise AuditError(
                f"{action} acts on request {rid}, which asked for {self.purposes.get(rid)!r}, "
                f"not {wanted!r}",
                n,
            )
        got = len(self.approved.get(rid, set()) & set(self.custodians))
        if got < self.threshold:
            raise AuditError(
                f"{action} acts on request {rid} with {got} recorded approval(s) of the "
                f"custodians in force; the policy needs {self.threshold}",
                n,
            )

    def _request_key(self, n: int, entry: dict) -> bytes:
        details = entry["details"]
        rid = _field(n, details, "request_id", _REQUEST_ID)
        _field(n, details, "request_sha256", _SHA256)
        if rid in self.requests:
            raise AuditError(f"request {rid} is already recorded", n)
        if details.get("purpose") not in set(ACTION_PURPOSES.values()):
            raise AuditError("details.purpose is missing or unknown", n)
        public = _b64_key(n, details.get("requester_key"), "details.requester_key")
        if entry["signer"] != key_id(public):
            why = f"signed by {self.describe(entry['signer'])}"
            raise AuditError(f"restore.request must be signed by the key it declares; {why}", n)
        if self.kinds.get(key_id(public), "requester") != "requester":
            raise AuditError(f"declares as a requester key {self.describe(key_id(public))}", n)
        return public

    def _approver_key(self, n: int, entry: dict) -> bytes:
        details, signer = entry["details"], entry["signer"]
        requester, request_sha = self._request(n, details)
        custodian = details.get("custodian_key_id")
        if custodian not in self.custodians:
            raise AuditError(
                f"the approval's custodian key {custodian} is not in the escrow policy", n
            )
        if details.get("request_sha256") != request_sha:
            raise AuditError("the approval names another request than its request_id's", n)
        if signer not in (custodian, requester):
            raise AuditError(
                f"restore.approve must be signed by the custodian {custodian} or by the "
                f"requester key of its request; signed by {self.describe(signer)}",
                n,
            )
        return self.publics[signer]

    def record(self, n: int, entry: dict) -> None:
        """Take in what a verified ``entry`` declares or ends."""
        action, details, signer = entry["action"], entry["details"], entry["signer"]
        if action in ("job.start", "job.resume"):
            public = _b64_key(n, details["audit_public_key"], "details.audit_public_key")
            self._declare(n, signer, public, "job", f"the job key of the run declared at line {n}")
            self.job_keys.append(signer)
            self.live_job = signer
        if action == "job.start":
            self.job_id, self.anchor = details.get("job_id"), details.get("audit_anchor")
            if not isinstance(self.anchor, str | None):
                raise AuditError("details.audit_anchor is not a URL", n)
            escrow = details.get("escrow")
            self._set_policy(n, escrow if isinstance(escrow, dict) else {})
        elif action == "job.end":
            self.live_job = None
        elif action == "restore.request":
            public = _b64_key(n, details["requester_key"], "details.requester_key")
            label = f"the requester key of request {details['request_id']}"
            self._declare(n, signer, public, "requester", label)
            self.requests[details["request_id"]] = (signer, details["request_sha256"])
            self.purposes[details["request_id"]] = details["purpose"]
        elif action == "restore.approve":
            self._check_approval(n, details)
            approved = self.approved.setdefault(details["request_id"], set())
            approved.add(details["custodian_key_id"])
        elif action in ("escrow.reshare", "escrow.rekey"):
            self._set_policy(n, details)

    def _set_policy(self, n: int, policy: Mapping) -> None:
        """The policy in force from now: custodians (none for KMS) and threshold."""
        threshold = policy.get("threshold", 0) if policy.get("custodians") else 0
        if policy.get("custodians") and (type(threshold) is not int or threshold < 1):
            raise AuditError("the policy names custodians but no threshold of approvals", n)
        self._set_custodians(n, policy.get("custodians", []))
        self.threshold = threshold

    def _set_custodians(self, n: int, listed: object) -> None:
        if not isinstance(listed, list):
            raise AuditError("the custodian list is not a list", n)
        policy = {}
        for item in listed:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise AuditError("a custodian without a name", n)
            public = _b64_key(n, item.get("ed25519"), f"custodian {item['name']!r}'s key")
            self._declare(n, key_id(public), public, "custodian",
                          f"the custodian key of {item['name']!r}")  # fmt: skip
            policy[key_id(public)] = item["name"]
        self.custodians = policy

    def _check_approval(self, n: int, details: Mapping) -> None:
        if self.approval_check is None:
            raise AuditError("no checker for the custodian's signed statement was given", n)
        try:
            self.approval_check(details, self.publics[details["custodian_key_id"]])
        except AuditError as exc:
            raise AuditError(str(exc), n) from None


def verify_log(
    lines: bytes | Iterable[bytes | str],
    pinned_job_keys: Iterable[str] | None = None,
    approval_check: ApprovalCheck | None = None,
) -> LogReport:
    """Verify a log on its own: chain, order, canonical form, signatures and signer roles.

    Every key is declared by the log itself (see the module's trust model): each run's job key
    by its run's first entry, custodian keys by ``job.start``'s escrow policy and later
    ``escrow.reshare``/``escrow.rekey`` entries, requester keys by their ``restore.request``.
    ``pinned_job_keys`` (when given, even empty): every job key the log declares must be one
    of them, and each of them must be declared. ``approval_check`` checks each approval's
    custodian statement; without one, a log with approvals fails. Raises :class:`AuditError`
    naming the first bad line and why.
    """
    pins = None if pinned_job_keys is None else frozenset(pinned_job_keys)
    roles, prev_sha = _Roles(pins, approval_check), GENESIS
    hashes, entries = [], []
    for n, raw in enumerate(_split(lines), start=1):
        entry = _parse_line(n, raw, prev_sha)
        _check_signature(n, entry, roles.signer_key(n, entry))
        roles.record(n, entry)
        prev_sha = hashlib.sha256(raw[:-1]).hexdigest()
        hashes.append(prev_sha)
        entries.append(entry)
    if not entries:
        raise AuditError("the audit log is empty", 1)
    missing = sorted((pins or set()) - set(roles.job_keys))
    if missing:
        raise AuditError(
            f"the pinned job key {missing[0]} is not declared in the log (cut or replaced)"
        )
    tail = AuditTail(len(entries), prev_sha)
    return LogReport(tail, tuple(hashes), tuple(entries), tuple(roles.job_keys),
                     roles.job_id, roles.anchor)  # fmt: skip
