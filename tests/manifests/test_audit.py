"""The signed, hash-chained audit log: writer, verifier, and each kind of tampering."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.audit import (
    GENESIS,
    AuditTail,
    AuditWriter,
    declared_keys,
    key_id,
    tail_of,
    verify,
)
from manifests.errors import AuditError

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
