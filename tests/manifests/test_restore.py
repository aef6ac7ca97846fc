"""The request -> approve -> apply workflow over every key epoch, every way it must refuse, and
that nothing leaks."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.audit import AuditWriter, verify
from manifests.custodian import CustodianPrivate, ScryptParams
from manifests.envelope import Envelope, MasterKey
from manifests.errors import CustodianKeyError, DecryptionError, KeyLibraryError, RestoreError
from manifests.escrow import add_epoch, create_shamir_escrow, rekey
from manifests.keymanifest import ShardSealer, open_row, read_key_manifest
from manifests.restore import (
    Approval,
    RestoreRequest,
    approve,
    check_statement,
    create_request,
    load_request_key,
    recover_masters,
)

FAST = ScryptParams(n=2**15)  # the floor: about 30 ms
PASSPHRASE = "requester passphrase 123"
FACE_PNG = b"\x89PNG\r\n\x1a\n original face pixels \x00\x01\x02"
SOURCE = "s3://raw/people/Jane_Doe_0001.jpg"
ANON = hashlib.sha256(b"anonymized").hexdigest()


@pytest.fixture
def job(custodians):
    master = MasterKey.generate()
    escrow = create_shamir_escrow(
        master, "job-1", [c.public() for c in custodians], 2, Ed25519PrivateKey.generate()
    )
    return master, escrow


@pytest.fixture
def resumed(job):
    """A job resumed once: two key epochs, and both master keys by escrow id."""
    master1, escrow = job
    master2 = MasterKey.generate()
    both = add_epoch(escrow, master2, Ed25519PrivateKey.generate())
    return dict(zip(both.escrow_ids, (master1, master2), strict=True)), both


def recover_master(escrow, request, key, approvals, purpose, now=None):
    """The master key of a one-epoch escrow."""
    (master,) = recover_masters(escrow, request, key, approvals, purpose, now).values()
    return master


def _request(escrow, purpose="restore", samples=("k1",), **kw):
    request, key_file = create_request(
        escrow,
        purpose,
        list(samples) if samples else None,
        "court order 42",
        "bob",
        PASSPHRASE,
        params=FAST,
        **kw,
    )
    request = RestoreRequest.loads(request.dumps())
    return request, load_request_key(request, key_file, PASSPHRASE), key_file


def _approvals(escrow, request, custodians):
    return [Approval.loads(approve(escrow, request, c).dumps()) for c in custodians]


def test_two_of_three_approvals_recover_the_key(job, custodians):
    master, escrow = job
    request, key, _ = _request(escrow)
    approvals = _approvals(escrow, request, custodians[1:])
    assert recover_master(escrow, request, key, approvals, "restore") == master
    assert recover_master(escrow, request, key, approvals[::-1], "restore") == master


def test_m_minus_one_approvals_are_refused(job, custodians):
    _, escrow = job
    request, key, _ = _request(escrow)
    with pytest.raises(RestoreError, match="needs 2"):
        recover_master(escrow, request, key, _approvals(escrow, request, custodians[:1]), "restore")


def test_duplicated_approval_counts_once(job, custodians):
    _, escrow = job
    request, key, _ = _request(escrow)
    approval = _approvals(escrow, request, custodians[:1])[0]
    again = approve(escrow, request, custodians[0])
    for pair in ([approval, approval], [approval, again]):
        with pytest.raises(RestoreError, match="counts once"):
            recover_master(escrow, request, key, pair, "restore")


def test_approval_for_another_request_is_refused(job, custodians):
    _, escrow = job
    request, key, _ = _request(escrow)
    other, _, _ = _request(escrow, samples=("k2",))
    mixed = _approvals(escrow, request, custodians[:1]) + _approvals(escrow, other, custodians[1:2])
    with pytest.raises(RestoreError, match="approval 2 .* for another request"):
        recover_master(escrow, request, key, mixed, "restore")


def test_bad_signature_and_outsider_are_refused(job, custodians):
    _, escrow = job
    request, key, _ = _request(escrow)
    good = _approvals(escrow, request, custodians[:2])
    doc = json.loads(good[1].dumps())
    doc["time"] = "2000-01-01T00:00:00Z"
    with pytest.raises(RestoreError, match="approval 2 .* bad signature"):
        recover_master(escrow, request, key, [good[0], Approval.loads(json.dumps(doc))], "restore")
    outsider = CustodianPrivate.generate("mallory")
    doc = json.loads(good[1].dumps()) | {
        "custodian": "mallory",
        "fingerprint": outsider.public().fingerprint,
    }
    with pytest.raises(RestoreError, match="not a custodian"):
        recover_master(escrow, request, key, [good[0], Approval.loads(json.dumps(doc))], "restore")


def test_wrong_request_key_passphrase_or_file(job, custodians):
    _, escrow = job
    request, _, key_file = _request(escrow)
    with pytest.raises(CustodianKeyError, match="wrong passphrase"):
        load_request_key(request, key_file, "guess")
    other, _, other_file = _request(escrow)
    with pytest.raises(RestoreError, match="another request"):
        load_request_key(request, other_file, PASSPHRASE)
    _, other_key, _ = _request(escrow)
    with pytest.raises(RestoreError, match="does not open"):
        recover_master(
            escrow, request, other_key, _approvals(escrow, request, custodians[:2]), "restore"
        )


def test_purpose_expiry_and_other_escrow(job, custodians):
    master, escrow = job
    request, key, _ = _request(escrow)
    approvals = _approvals(escrow, request, custodians[:2])
    with pytest.raises(RestoreError, match="not 'rekey'"):
        recover_master(escrow, request, key, approvals, "rekey")
    later = datetime.now(UTC) + timedelta(days=8)
    with pytest.raises(RestoreError, match="expired"):
        recover_master(escrow, request, key, approvals, "restore", now=later)
    _, new_escrow = rekey(escrow, {escrow.escrow_ids[0]: master})
    with pytest.raises(RestoreError, match="another job or another escrow"):
        recover_master(new_escrow, request, key, approvals, "restore")


def test_rekeyed_manifests_do_not_open_with_the_old_shares(job, custodians):
    master, escrow = job
    new_master, new_escrow = rekey(escrow, {escrow.escrow_ids[0]: master})
    sealer = ShardSealer(Envelope(new_master, "job-1"), "shard-000000")
    row = sealer.seal_face("k1", 0, (0, 0, 4, 4), FACE_PNG, SOURCE, ANON)
    request, key, _ = _request(escrow)
    old_master = recover_master(
        escrow, request, key, _approvals(escrow, request, custodians[:2]), "restore"
    )
    with pytest.raises(DecryptionError):
        open_row(Envelope(old_master, "job-1"), "shard-000000", row, ANON)


def _forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    ]


def test_nothing_secret_reaches_logs_or_errors(job, custodians, caplog):
    caplog.set_level(logging.DEBUG)
    master, escrow = job
    sealer = ShardSealer(Envelope(master, "job-1"), "shard-000000")
    sealer.seal_face("k1", 0, (0, 0, 4, 4), FACE_PNG, SOURCE, ANON)
    sealer.seal_sample("k1", SOURCE, ANON)
    request, key, key_file = _request(escrow)
    approvals = _approvals(escrow, request, custodians[:2])
    recovered = recover_master(escrow, request, key, approvals, "restore")
    rows = read_key_manifest(sealer.manifest_bytes())
    payloads = [open_row(Envelope(recovered, "job-1"), "shard-000000", r, ANON) for r in rows]
    writer = AuditWriter(escrow.epochs[0].audit_signing_key(recovered), "requester:bob")
    audit_log, _ = writer.append(b"", "restore.apply", {"request_id": request.request_id})
    verify(audit_log, escrow.signers())
    errors = []
    for attempt in (
        lambda: recover_master(escrow, request, key, approvals[:1], "restore"),
        lambda: load_request_key(request, key_file, "wrong"),
        lambda: open_row(Envelope(MasterKey.generate(), "job-1"), "shard-000000", rows[0], ANON),
        lambda: escrow.epochs[0].recover([escrow.epochs[0].open_share(custodians[0])] * 2),
    ):
        with pytest.raises(KeyLibraryError) as err:
            attempt()
        errors.append(f"{err.value!r} {err.value}")
    shares = [escrow.epochs[0].open_share(c) for c in custodians]
    secrets_ = [
        master.reveal(),
        PASSPHRASE.encode(),
        FACE_PNG,
        SOURCE.encode(),
        key.private_bytes_raw(),
        escrow.epochs[0].audit_signing_key(master).private_bytes_raw(),
    ]
    secrets_ += [s.y for s in shares] + [s.to_bytes() for s in shares]
    secrets_ += [c.x25519.private_bytes_raw() for c in custodians]
    secrets_ += [c.ed25519.private_bytes_raw() for c in custodians]
    text = "\n".join(
        [r.getMessage() for r in caplog.records]
        + errors
        + [repr(p) for p in payloads]
        + [repr(master), repr(shares), repr(custodians), repr(approvals)]
    )
    assert caplog.records, "the workflow should log something"
    for secret in secrets_:
        for form in _forms(secret):
            assert form not in text


def test_one_request_recovers_every_epoch(resumed, custodians):
    masters, escrow = resumed
    request, key, _ = _request(escrow, samples=("k1", "k2"))
    assert request.epochs == escrow.escrow_ids and request.revision == escrow.revision
    approvals = _approvals(escrow, request, custodians[::2])
    assert all(list(a.sealed_shares) == list(escrow.escrow_ids) for a in approvals)
    assert recover_masters(escrow, request, key, approvals, "restore") == masters
    assert recover_masters(escrow, request, key, approvals[::-1], "restore") == masters


def _resign(approval: Approval, custodian: CustodianPrivate, **changes) -> Approval:
    unsigned = Approval(**{**approval.__dict__, **changes, "signature": b""})
    signature = custodian.sign(unsigned.signing_bytes())
    return Approval.loads(Approval(**{**unsigned.__dict__, "signature": signature}).dumps())


def test_approval_missing_an_epoch_is_refused(resumed, custodians):
    _, escrow = resumed
    request, key, _ = _request(escrow)
    good = _approvals(escrow, request, custodians[:2])
    first, second = escrow.escrow_ids
    partial = _resign(good[1], custodians[1], sealed_shares={first: good[1].sealed_shares[first]})
    with pytest.raises(
        RestoreError,
        match=f"approval 2 .* no share for key epoch {second} "
        r"\(2 of 2\)",
    ):
        recover_masters(escrow, request, key, [good[0], partial], "restore")
    extra = _resign(good[1], custodians[1], sealed_shares={**good[1].sealed_shares, "f" * 32: b"x"})
    with pytest.raises(RestoreError, match="does not cover"):
        recover_masters(escrow, request, key, [good[0], extra], "restore")
    unsigned = Approval(**{**good[1].__dict__, "sealed_shares": {first: b"x"}})
    with pytest.raises(RestoreError, match="bad signature"):
        recover_masters(escrow, request, key, [good[0], unsigned], "restore")


def test_shares_are_bound_to_their_epoch(resumed, custodians):
    _, escrow = resumed
    request, key, _ = _request(escrow)
    good = _approvals(escrow, request, custodians[:2])
    first, second = escrow.escrow_ids
    swapped = {first: good[1].sealed_shares[second], second: good[1].sealed_shares[first]}
    with pytest.raises(RestoreError, match="approval 2 .* key epoch .* does not open"):
        recover_masters(
            escrow,
            request,
            key,
            [good[0], _resign(good[1], custodians[1], sealed_shares=swapped)],
            "restore",
        )


def test_request_made_before_a_new_epoch_is_refused(job, custodians):
    _, escrow = job
    request, key, _ = _request(escrow)
    approvals = _approvals(escrow, request, custodians[:2])
    later = add_epoch(escrow, MasterKey.generate(), Ed25519PrivateKey.generate())
    with pytest.raises(RestoreError, match="another escrow .* new key epoch"):
        recover_masters(later, request, key, approvals, "restore")
    with pytest.raises(RestoreError, match="another escrow"):
        approve(later, request, custodians[2])


def test_request_carries_the_escrow_for_offline_approval(resumed, custodians):
    masters, escrow = resumed
    request, key, _ = _request(escrow)
    assert request.escrow == escrow
    assert json.loads(request.dumps())["escrow"] == json.loads(escrow.dumps())
    approvals = [approve(request.escrow, request, c) for c in custodians[1:]]
    assert recover_masters(escrow, request, key, approvals, "restore") == masters


def test_forged_escrow_copy_is_refused(job, custodians):
    """A request whose escrow copy differs from escrow.json (same job, revision and epochs)
    can be approved offline, but its approvals are refused against the real escrow."""
    _, escrow = job
    request, key, _ = _request(escrow)
    doc = json.loads(request.dumps())
    doc["escrow"]["epochs"][0]["audit_key"]["sealed"] = base64.b64encode(b"x" * 60).decode()
    forged = RestoreRequest.loads(json.dumps(doc))
    approvals = [approve(forged.escrow, forged, c) for c in custodians[:2]]
    with pytest.raises(RestoreError, match="forged or altered request"):
        recover_masters(escrow, forged, key, approvals, "restore")
    with pytest.raises(RestoreError, match="forged or altered request"):
        approve(escrow, forged, custodians[2])
    doc["escrow"]["revision"] = "0" * 32
    with pytest.raises(RestoreError, match="escrow copy"):
        RestoreRequest.loads(json.dumps(doc))


def test_approval_statement_verifies_without_the_shares(job, custodians):
    _, escrow = job
    request, _, _ = _request(escrow)
    (approval,) = _approvals(escrow, request, custodians[:1])
    statement = approval.statement()
    assert all(set(s) == {"escrow_id", "sha256"} for s in statement["sealed_shares"])
    check_statement(statement, approval.signature, custodians[0].public().ed25519)
    with pytest.raises(RestoreError, match="does not verify"):
        check_statement(
            statement | {"custodian": "bob"}, approval.signature, custodians[0].public().ed25519
        )
    with pytest.raises(RestoreError, match="does not verify"):
        check_statement(statement, approval.signature, custodians[1].public().ed25519)
