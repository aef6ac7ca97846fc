"""The signed, hash-chained audit log: writer, verifier, and each kind of tampering."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from faceveil.jobs.auditlog import check_approval
from faceveil.manifests.audit import (
    GENESIS,
    AuditTail,
    AuditWriter,
    declared_keys,
    key_id,
    tail_of,
    verify,
    verify_log,
)
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.errors import AuditError
from faceveil.manifests.restore import _APPROVAL_LABEL

JOB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
CUSTODIAN_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


TRUSTED = {key_id(_pub(JOB_KEY)): _pub(JOB_KEY), key_id(_pub(CUSTODIAN_KEY)): _pub(CUSTODIAN_KEY)}


def _clock():
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    ticks = iter(range(1000))
    return lambda: start + timedelta(seconds=next(ticks))


@pytest.fixture
def log() -> tuple[bytes, AuditTail]:
    job = AuditWriter(JOB_KEY, "operator", clock=_clock())
    custodian = AuditWriter(CUSTODIAN_KEY, "custodian:alice", clock=_clock())
    data = b""
    data, _ = job.append(data, "job.start", {"job_id": "j1"})
    data, _ = job.append(data, "escrow.create", {"scheme": "shamir", "threshold": 2})
    data, _ = custodian.append(data, "restore.approve", {"request_id": "r1"})
    data, tail = job.append(data, "job.end", {"samples": 10})
    return data, tail


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def test_valid_log_verifies_and_is_deterministic_with_injected_time(log):
    data, tail = log
    assert (
        verify(data, TRUSTED)
        == tail
        == AuditTail(4, hashlib.sha256(_lines(data)[-1][:-1]).hexdigest())
    )
    assert verify(_lines(data), TRUSTED, expected_tail=tail) == tail
    first = json.loads(_lines(data)[0])
    assert first["seq"] == 1 and first["prev_sha256"] == GENESIS
    assert first["time"] == "2024-05-01T12:00:00.000Z" and first["signer"].startswith("ed25519:")
    job = AuditWriter(JOB_KEY, "operator", clock=_clock())
    assert job.line(None, "job.start", {"job_id": "j1"}) == _lines(data)[0]
    assert tail_of(data) == tail and tail_of(b"") is None


def _edit(line: bytes, **changes) -> bytes:
    entry = json.loads(line) | changes
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def test_edited_line_is_named(log):
    lines = _lines(log[0])
    lines[1] = _edit(lines[1], details={"scheme": "shamir", "threshold": 1})
    with pytest.raises(AuditError, match="bad signature") as err:
        verify(b"".join(lines), TRUSTED)
    assert err.value.line == 2


def test_reformatted_line_is_named(log):
    lines = _lines(log[0])
    lines[2] = json.dumps(json.loads(lines[2]), indent=1).replace("\n", " ").encode() + b"\n"
    with pytest.raises(AuditError, match="canonical") as err:
        verify(b"".join(lines), TRUSTED)
    assert err.value.line == 3


@pytest.mark.parametrize("drop", [0, 1, 2])
def test_deleted_line_is_named(log, drop):
    lines = _lines(log[0])
    del lines[drop]
    with pytest.raises(AuditError, match="deleted") as err:
        verify(b"".join(lines), TRUSTED)
    assert err.value.line == drop + 1


def test_reordered_lines_are_named(log):
    lines = _lines(log[0])
    lines[1], lines[2] = lines[2], lines[1]
    with pytest.raises(AuditError) as err:
        verify(b"".join(lines), TRUSTED)
    assert err.value.line == 2


def test_resequenced_and_resigned_by_an_untrusted_key(log):
    lines = _lines(log[0])
    forger = AuditWriter(Ed25519PrivateKey.generate(), "operator")
    prev = AuditTail(1, hashlib.sha256(lines[0][:-1]).hexdigest())
    lines[1] = forger.line(prev, "escrow.create", {"scheme": "none"})
    with pytest.raises(AuditError, match="not trusted") as err:
        verify(b"".join(lines), TRUSTED)
    assert err.value.line == 2


def test_signature_by_a_trusted_key_of_someone_else(log):
    lines = _lines(log[0])
    entry = json.loads(lines[2])
    entry["signer"] = key_id(_pub(JOB_KEY))
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with pytest.raises(AuditError, match="bad signature") as err:
        verify(b"".join(lines), TRUSTED)
    assert err.value.line == 3


def test_truncated_final_line_is_named(log):
    data = log[0]
    cut = data[:-30]
    with pytest.raises(AuditError, match="cut") as err:
        verify(cut, TRUSTED)
    assert err.value.line == 4
    with pytest.raises(AuditError, match="cut"):
        verify(data[:-1], TRUSTED)
    with pytest.raises(AuditError, match="cut"):
        tail_of(cut)


def test_removed_trailing_lines_need_the_recorded_tail(log):
    data, tail = log
    shortened = b"".join(_lines(data)[:2])
    assert verify(shortened, TRUSTED).seq == 2
    with pytest.raises(AuditError, match="trailing lines were removed") as err:
        verify(shortened, TRUSTED, expected_tail=tail)
    assert err.value.line == 3
    with pytest.raises(AuditError, match="empty"):
        verify(b"", TRUSTED)


def test_log_replaced_after_the_tail_is_detected(log):
    data, tail = log
    job = AuditWriter(JOB_KEY, "operator")
    rewritten, _ = job.append(b"".join(_lines(data)[:3]), "job.end", {"samples": 99})
    with pytest.raises(AuditError, match="recorded tail") as err:
        verify(rewritten, TRUSTED, expected_tail=tail)
    assert err.value.line == 4
    longer, _ = job.append(data, "restore.apply", {"request_id": "r1"})
    assert verify(longer, TRUSTED, expected_tail=tail).seq == 5


def test_garbage_lines(log):
    lines = _lines(log[0])
    for bad in (b"not json\n", b"[1, 2]\n", b'{"seq": 2}\n'):
        with pytest.raises(AuditError) as err:
            verify(b"".join([lines[0], bad, *lines[2:]]), TRUSTED)
        assert err.value.line == 2
    entry = json.loads(lines[0])
    entry["signature"] = base64.b64encode(b"x" * 10).decode()
    with pytest.raises(AuditError, match="bad signature"):
        verify(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n", TRUSTED)


def test_tail_text_round_trip():
    tail = AuditTail(3, "ab" * 32)
    assert AuditTail.parse(str(tail)) == tail
    for bad in ("3", "x:" + "ab" * 32, "0:" + "ab" * 32, "3:" + "AB" * 32):
        with pytest.raises(ValueError):
            AuditTail.parse(bad)


def test_custodian_keys_declared_by_the_job_key_are_trusted():
    newcomer = Ed25519PrivateKey.generate()
    declared = {
        "custodians": [{"name": "dave", "ed25519": base64.b64encode(_pub(newcomer)).decode()}]
    }
    data, _ = AuditWriter(JOB_KEY, "operator").append(b"", "escrow.reshare", declared)
    data, _ = AuditWriter(newcomer, "custodian:dave").append(data, "restore.approve", {})
    only_job = {key_id(_pub(JOB_KEY)): _pub(JOB_KEY)}
    with pytest.raises(AuditError, match="not trusted") as err:
        verify(data, only_job)
    assert err.value.line == 2
    assert verify(data, only_job | declared_keys(data, _pub(JOB_KEY))).seq == 2
    by_custodian, _ = AuditWriter(CUSTODIAN_KEY, "custodian:alice").append(b"", "x", declared)
    assert declared_keys(by_custodian, _pub(JOB_KEY)) == {}


def test_declared_keys_of_several_job_keys_one_level_deep():
    first, resumed, retired = (Ed25519PrivateKey.generate() for _ in range(3))
    newcomer, deeper = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()

    def b64(key):
        return base64.b64encode(_pub(key)).decode()

    data, _ = AuditWriter(first, "operator").append(
        b"",
        "job.start",
        {"escrow": {"custodians": [{"name": "alice", "ed25519": b64(CUSTODIAN_KEY)}]}},
    )
    data, _ = AuditWriter(resumed, "operator").append(
        data, "escrow.reshare", {"custodians": [{"name": "dave", "ed25519": b64(newcomer)}]}
    )
    data, _ = AuditWriter(first, "requester:bob").append(
        data, "escrow.rekey", {"audit_keys": [{"key_id": "x", "ed25519": b64(retired)}]}
    )
    data, _ = AuditWriter(retired, "operator").append(
        data, "escrow.reshare", {"custodians": [{"name": "eve", "ed25519": b64(deeper)}]}
    )
    declared = declared_keys(data, [_pub(first), _pub(resumed)])
    assert declared == {key_id(_pub(k)): _pub(k) for k in (CUSTODIAN_KEY, newcomer, retired)}
    roots = {key_id(_pub(k)): _pub(k) for k in (first, resumed)}
    assert verify(data, roots | declared).seq == 4
    with pytest.raises(AuditError, match="not trusted") as err:
        verify(data, roots)
    assert err.value.line == 4


# ---- signer roles (verify_log) ------------------------------------------------------------------

ALICE = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
BOB = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
REQUESTER = Ed25519PrivateKey.from_private_bytes(bytes(range(4, 36)))
REQUEST_ID = "ab" * 16
REQUEST_SHA = "cd" * 32
RESHARE_ID = "5e" * 16
RESHARE_SHA = "7a" * 32


def _b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(_pub(key)).decode()


def _custodian(name: str, key: Ed25519PrivateKey) -> dict:
    return {"name": name, "fingerprint": "fp-" + name, "ed25519": _b64(key)}


def _run_details(key: Ed25519PrivateKey, **extra) -> dict:
    return {"audit_public_key": _b64(key), "audit_key_id": key_id(_pub(key)), **extra}


def _approval(
    custodian: str, key: Ed25519PrivateKey, request_id=REQUEST_ID, request_sha=None
) -> dict:
    request_sha = request_sha or REQUEST_SHA
    statement = {"request_sha256": request_sha, "custodian": custodian, "sealed_shares": []}
    signature = key.sign(_APPROVAL_LABEL + canonical_json(statement))
    return {
        "request_id": request_id,
        "request_sha256": request_sha,
        "custodian": custodian,
        "custodian_key_id": key_id(_pub(key)),
        "statement": statement,
        "custodian_signature": base64.b64encode(signature).decode(),
    }


def _request(
    key: Ed25519PrivateKey = REQUESTER, request_id: str = REQUEST_ID, purpose: str = "restore"
) -> dict:
    sha = REQUEST_SHA if request_id == REQUEST_ID else RESHARE_SHA
    return {"request_id": request_id, "request_sha256": sha, "requester_key": _b64(key),
            "purpose": purpose}  # fmt: skip


def _w(key: Ed25519PrivateKey, actor: str) -> AuditWriter:
    return AuditWriter(key, actor, clock=_clock())


@pytest.fixture
def role_log() -> bytes:
    """A job with custodians alice and bob (2 of 2), a restore approved by both (alice signs her
    own entry, the requester records bob's signed statement), applied, then a reshare request
    approved by both and applied: bob alone from then on."""
    job, req = _w(JOB_KEY, "operator"), _w(REQUESTER, "requester:dpo")
    escrow = {"custodians": [_custodian("alice", ALICE), _custodian("bob", BOB)], "threshold": 2}
    data, _ = job.append(b"", "job.start", _run_details(JOB_KEY, job_id="j1", escrow=escrow))
    data, _ = job.append(data, "job.end", {"status": "complete"})
    data, _ = req.append(data, "restore.request", _request())
    data, _ = _w(ALICE, "custodian:alice").append(
        data, "restore.approve", _approval("alice", ALICE)
    )
    data, _ = req.append(data, "restore.approve", _approval("bob", BOB))
    data, _ = req.append(data, "restore.apply", {"request_id": REQUEST_ID})
    data, _ = req.append(data, "restore.request", _request(REQUESTER, RESHARE_ID, "reshare"))
    for name, key in (("alice", ALICE), ("bob", BOB)):
        approval = _approval(name, key, RESHARE_ID, RESHARE_SHA)
        data, _ = req.append(data, "restore.approve", approval)
    reshare = {"request_id": RESHARE_ID, "custodians": [_custodian("bob", BOB)], "threshold": 1}
    data, _ = req.append(data, "escrow.reshare", reshare)
    return data


def test_role_log_verifies(role_log):
    report = verify_log(role_log, approval_check=check_approval)
    assert report.tail.seq == 10
    assert report.job_keys == (key_id(_pub(JOB_KEY)),)
    assert (report.job_id, report.anchor) == ("j1", None)
    assert report.line_sha256[-1] == report.tail.sha256
    assert verify_log(role_log, [key_id(_pub(JOB_KEY))], check_approval).tail == report.tail


def _fails(data: bytes, line: int, match: str, pins=None) -> None:
    with pytest.raises(AuditError, match=match) as err:
        verify_log(data, pins, check_approval)
    assert err.value.line == line


def _first(role_log: bytes, n: int) -> bytes:
    return b"".join(_lines(role_log)[:n])


def test_custodian_key_cannot_sign_job_end(role_log):
    data, _ = _w(ALICE, "operator").append(_first(role_log, 4), "job.end", {"status": "x"})
    _fails(data, 5, "job.end must be signed by the running job's key.*custodian key of 'alice'")
    early, _ = _w(ALICE, "operator").append(_first(role_log, 1), "job.end", {"status": "x"})
    _fails(early, 2, "job.end must be signed by the running job's key")


def test_requester_key_cannot_sign_job_start(role_log):
    forged = _run_details(REQUESTER, job_id="j1")
    data, _ = _w(REQUESTER, "operator").append(_first(role_log, 3), "job.start", forged)
    _fails(data, 4, "declares a job key already known.*requester key of request")
    data, _ = _w(REQUESTER, "operator").append(_first(role_log, 3), "job.resume", forged)
    _fails(data, 4, "requester key of request")


def test_job_key_cannot_sign_after_its_job_end(role_log):
    for action in ("job.end", "job.manifests"):
        data, _ = _w(JOB_KEY, "operator").append(_first(role_log, 2), action, {})
        _fails(data, 3, "signs after its run ended")


def test_job_key_of_an_earlier_run_cannot_sign_after_a_resume(role_log):
    resumed = Ed25519PrivateKey.generate()
    data, _ = _w(resumed, "operator").append(
        _first(role_log, 1), "job.resume", _run_details(resumed)
    )
    data, _ = _w(resumed, "operator").append(data, "job.end", {})
    assert verify_log(data).job_keys == (key_id(_pub(JOB_KEY)), key_id(_pub(resumed)))
    data, _ = _w(JOB_KEY, "operator").append(_first(data, 2), "job.end", {})
    _fails(data, 3, "signs after its run ended")


def test_apply_must_be_signed_by_the_requester_of_its_request(role_log):
    other = Ed25519PrivateKey.generate()
    base = _first(role_log, 5)
    for key in (other, JOB_KEY, ALICE):
        data, _ = _w(key, "requester:dpo").append(base, "restore.apply", {"request_id": REQUEST_ID})
        _fails(data, 6, "must be signed by the requester key of its request")
    second, _ = _w(other, "requester:eve").append(
        base, "restore.request", _request(other, "ef" * 16)
    )
    data, _ = _w(other, "requester:eve").append(second, "restore.apply", {"request_id": REQUEST_ID})
    _fails(data, 7, "requester key of its request; signed by .*request efef")
    unknown, _ = _w(REQUESTER, "requester:dpo").append(
        base, "restore.apply", {"request_id": "0" * 32}
    )
    _fails(unknown, 6, "not recorded by an earlier restore.request")


def test_job_key_cannot_sign_escrow_or_restore_entries(role_log):
    """Row 7 of the review: a job key recovered in an earlier restore signs a forged entry."""
    base = _first(role_log, 6)
    for action in ("escrow.rekey", "escrow.reshare", "restore.failed"):
        data, _ = _w(JOB_KEY, "requester:dpo").append(base, action, {"request_id": REQUEST_ID})
        _fails(data, 7, f"{action} must be signed by the requester key of its request")
    data, _ = _w(JOB_KEY, "requester:x").append(
        base, "restore.request", _request(JOB_KEY, "12" * 16)
    )
    _fails(data, 7, "declares as a requester key .*job key")


def test_approvals_are_checked_against_the_policy_in_force(role_log):
    base = _first(role_log, 10)  # after the reshare: bob only
    data, _ = _w(ALICE, "custodian:alice").append(
        base, "restore.approve", _approval("alice", ALICE)
    )
    _fails(data, 11, "not in the escrow policy")
    data, _ = _w(BOB, "custodian:bob").append(base, "restore.approve", _approval("bob", BOB))
    assert verify_log(data, approval_check=check_approval).tail.seq == 11
    forged = _approval("bob", BOB) | {"custodian_signature": base64.b64encode(b"x" * 64).decode()}
    data, _ = _w(REQUESTER, "requester:dpo").append(base, "restore.approve", forged)
    _fails(data, 11, "bad custodian signature")
    data, _ = _w(ALICE, "custodian:alice").append(base, "restore.approve", _approval("bob", BOB))
    _fails(data, 11, "must be signed by the custodian .* or by the requester")
    with pytest.raises(AuditError, match="no checker") as err:
        verify_log(role_log)
    assert err.value.line == 4


def test_unknown_action_and_undeclared_signer_fail(role_log):
    data, _ = _w(JOB_KEY, "operator").append(_first(role_log, 1), "escrow.create", {})
    _fails(data, 2, "unknown action 'escrow.create'")
    stranger = Ed25519PrivateKey.generate()
    data, _ = _w(stranger, "operator").append(_first(role_log, 1), "job.end", {})
    _fails(data, 2, "a key no earlier entry declares")
    data, _ = _w(REQUESTER, "requester:dpo").append(b"", "restore.request", _request())
    _fails(data, 1, "begins with job.start")
    fresh = Ed25519PrivateKey.generate()
    data, _ = _w(fresh, "operator").append(b"", "job.resume", _run_details(fresh))
    _fails(data, 1, "begins with job.start")
    again = _run_details(fresh, escrow={"custodians": [_custodian("mallory", fresh)]})
    data, _ = _w(fresh, "operator").append(_first(role_log, 2), "job.start", again)
    _fails(data, 3, "begins with job.start, and only there")


def test_pinned_job_keys(role_log):
    wrong = "ed25519:" + "0" * 32
    _fails(role_log, 1, "is not pinned", pins=[wrong])
    with pytest.raises(AuditError, match=f"pinned job key {wrong} is not declared"):
        verify_log(role_log, [key_id(_pub(JOB_KEY)), wrong], check_approval)


def test_odd_start_details_fail_closed_without_a_crash():
    odd = _run_details(JOB_KEY, escrow="kms", audit_anchor=5)
    data, _ = _w(JOB_KEY, "operator").append(b"", "job.start", odd)
    _fails(data, 1, "audit_anchor is not a URL")
    data, _ = _w(JOB_KEY, "operator").append(b"", "job.start", _run_details(JOB_KEY, escrow="kms"))
    data, _ = _w(REQUESTER, "requester:dpo").append(data, "restore.request", _request())
    data, _ = _w(ALICE, "custodian:alice").append(
        data, "restore.approve", _approval("alice", ALICE)
    )
    _fails(data, 3, "not in the escrow policy")
    entry = json.loads(_lines(data)[0])
    entry["signer"] = ["not", "a", "string"]
    _fails(canonical_json(entry) + b"\n", 1, "are strings")
