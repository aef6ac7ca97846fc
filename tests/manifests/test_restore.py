"""Scoped release: a signed request names samples, M custodians send proven partial
decryptions of exactly those samples' wrapped keys, and nothing else can be opened with them."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from faceveil.manifests import request as request_module
from faceveil.manifests import restore, threshold
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.custodian import CustodianPrivate, open_sealed, seal_to
from faceveil.manifests.envelope import Payload, PayloadKind
from faceveil.manifests.errors import (
    CustodianKeyError,
    DecryptionError,
    KeyLibraryError,
    RestoreError,
)
from faceveil.manifests.escrow import (
    SHARE_CONTEXT,
    Escrow,
    KmsPolicy,
    ReshareTarget,
    ShamirPolicy,
    add_epoch,
    create_escrow,
)
from faceveil.manifests.jobkeys import epoch_sealing
from faceveil.manifests.keymanifest import SampleToSeal, ShardSealer, load_key_manifest
from faceveil.manifests.request import (
    RequestSpec,
    RestoreRequest,
    SampleRef,
    create_request,
    load_request_key,
)
from faceveil.manifests.restore import (
    Approval,
    approve,
    assemble_reshare,
    check_statement,
    recover_data_keys,
)
from faceveil.manifests.sealing import RowName, open_row, row_aad
from faceveil.manifests.signed import ApprovedRequest
from tests.manifests.conftest import FAST_KDF

PASSPHRASE = "requester passphrase 123"
SHARD = "shard-000000"
ANON = hashlib.sha256(b"anonymized").hexdigest()
KEYS = ("k1", "k2", "k3")


def _face(key: str) -> bytes:
    return b"\x89PNG\r\n\x1a\n face of " + key.encode()


def _source(key: str) -> str:
    return f"s3://raw/people/Person_{key}.jpg"


@pytest.fixture
def escrow(custodians) -> Escrow:
    return create_escrow("job-1", ShamirPolicy(2, tuple(c.public() for c in custodians)))


def _seal_shard(escrow: Escrow, escrow_id: str, shard: str = SHARD, keys=KEYS):
    sealer = ShardSealer(epoch_sealing(escrow, escrow_id).shard_keys(shard), shard)
    for key in keys:
        sample = SampleToSeal(key, _source(key), ANON)
        sealer.seal_face(sample, 0, (1, 2, 11, 12), _face(key))
        sealer.seal_sample(sample)
    return load_key_manifest(sealer.manifest_bytes())


@pytest.fixture
def manifest(escrow):
    """The key manifest of a 3-sample shard, as it is published."""
    return _seal_shard(escrow, escrow.escrow_ids[0])


def _refs(manifest, keys, shard: str = SHARD) -> list[SampleRef]:
    wraps = {r.sample_id: r.wrapped_key for r in manifest.rows if r.face == -1}
    return [SampleRef(shard, k, manifest.escrow_id, wraps[k]) for k in keys]


def _request(escrow, samples, purpose="restore", **kw):
    spec = RequestSpec(purpose, tuple(samples), "court order 42", "bob", **kw)
    request, key_file = create_request(escrow, spec, PASSPHRASE, params=FAST_KDF)
    request = RestoreRequest.loads(request.dumps())
    return request, load_request_key(request, key_file, PASSPHRASE), key_file


def _approvals(request, custodians):
    return [Approval.loads(approve(request, c).dumps()) for c in custodians]


def _open_face(manifest, data_key, key, shard=SHARD) -> Payload:
    (row,) = [r for r in manifest.rows if r.sample_id == key and r.face == 0]
    aad = row_aad("job-1", shard, RowName(key, 0, row.bbox), ANON)
    return Payload.from_bytes(open_row(data_key, aad, row.nonce, row.ciphertext, key))


def _resign(request: RestoreRequest, keys, **changes) -> RestoreRequest:
    """``request`` changed and signed again by its own requester key (a dishonest requester)."""
    unsigned = replace(request, **changes, signature=b"")
    signature = keys.ed25519.sign(
        request_module._REQUEST_LABEL + canonical_json(unsigned.unsigned_doc())
    )
    return replace(unsigned, signature=signature)


def _forged_approval(request, custodian, partials: bytes) -> Approval:
    """A custodian-signed approval carrying ``partials`` (a faulty or dishonest custodian)."""
    honest = approve(request, custodian)
    fp = custodian.public().fingerprint
    sealed = seal_to(
        request.ephemeral_x25519, partials, restore.PARTIALS_CONTEXT,
        restore._partials_aad(request, fp),
    )  # fmt: skip
    unsigned = replace(honest, sealed_partials=sealed, signature=b"")
    return replace(unsigned, signature=custodian.sign(unsigned.signing_bytes()))


# ---- the request -------------------------------------------------------------------------------


def test_request_round_trips_and_an_edit_breaks_its_signature(escrow, manifest):
    request, _, _ = _request(escrow, _refs(manifest, ["k1"]))
    assert RestoreRequest.loads(request.dumps()) == request
    doc = json.loads(request.dumps())
    assert [s["key"] for s in doc["samples"]] == ["k1"] and doc["purpose"] == "restore"
    for edit in (
        {"reason": "curiosity"},
        {"expires": "2999-01-01T00:00:00Z"},
        {"samples": [doc["samples"][0] | {"key": "k2"}]},
        {"requester_ed25519": doc["ephemeral_x25519"]},
    ):
        changed = doc | edit
        with pytest.raises(RestoreError, match="signature does not verify"):
            RestoreRequest.loads(json.dumps(changed))
    stranger = _request(escrow, _refs(manifest, ["k1"]))[0]
    with pytest.raises(RestoreError, match="signature does not verify"):
        RestoreRequest.loads(
            json.dumps(doc | {"signature": json.loads(stranger.dumps())["signature"]})
        )


@pytest.mark.parametrize(
    "request_id",
    ["x/../../tmp/victim", "../" + "a" * 29, "A" * 32, "a" * 31, "a" * 33, 12345, None],
)
def test_request_id_must_be_32_lowercase_hex(escrow, manifest, request_id):
    request, keys, _ = _request(escrow, _refs(manifest, ["k1"]))
    doc = json.loads(request.dumps()) | {"request_id": request_id}
    with pytest.raises(RestoreError, match="request_id"):
        RestoreRequest.loads(json.dumps(doc))
    if isinstance(request_id, str):
        with pytest.raises(RestoreError, match="request_id"):
            _resign(request, keys, request_id=request_id)


def test_request_shape_is_checked(escrow, manifest, custodians):
    refs = _refs(manifest, ["k1", "k2"])
    new_policy = ShamirPolicy(2, tuple(c.public() for c in custodians[1:]))
    for purpose, samples, kw in (
        ("bogus", refs, {}),
        ("restore", [], {}),
        ("restore", refs, {"new_policy": new_policy}),
        ("reshare", [], {}),
        ("reshare", [], {"new_policy": KmsPolicy("arn:aws:kms:us-east-1:123456789012:key/x")}),
        ("restore", [refs[0], refs[0]], {}),
        ("restore", [refs[0], replace(refs[1], sample_id="k1")], {}),
        ("restore", [replace(refs[0], escrow_id="f" * 32)], {}),
    ):
        with pytest.raises(KeyLibraryError):
            spec = RequestSpec(purpose, tuple(samples), "r", "bob", **kw)
            create_request(escrow, spec, PASSPHRASE, params=FAST_KDF)
    for bad in ({"shard": "../shard-000000"}, {"sample_id": "k/1"}, {"sample_id": ""}):
        with pytest.raises(RestoreError, match="malformed"):
            replace(refs[0], **bad)
    with pytest.raises(ValueError):
        create_request(escrow, RequestSpec("restore", tuple(refs), " ", "bob"), PASSPHRASE)


def test_expiry_and_purpose_are_enforced(escrow, manifest, custodians):
    request, keys, _ = _request(escrow, _refs(manifest, ["k1"]))
    approvals = _approvals(request, custodians[:2])
    later = datetime.now(UTC) + timedelta(days=8)
    with pytest.raises(RestoreError, match="expired"):
        recover_data_keys(escrow, ApprovedRequest(request, keys, approvals), "restore", now=later)
    with pytest.raises(RestoreError, match="expired"):
        approve(request, custodians[2], clock=lambda: later)
    with pytest.raises(RestoreError, match="not 'rekey'"):
        recover_data_keys(escrow, ApprovedRequest(request, keys, approvals), "rekey")
    with pytest.raises(RestoreError, match="not 'reshare'"):
        assemble_reshare(escrow, request, approvals)
    assert recover_data_keys(escrow, ApprovedRequest(request, keys, approvals), "restore")


def test_request_key_file_is_bound_to_its_request(escrow, manifest, custodians):
    request, _, key_file = _request(escrow, _refs(manifest, ["k1"]))
    with pytest.raises(CustodianKeyError, match="wrong passphrase"):
        load_request_key(request, key_file, "a wrong passphrase")
    other, other_keys, other_file = _request(escrow, _refs(manifest, ["k1"]))
    with pytest.raises(RestoreError, match="another request"):
        load_request_key(request, other_file, PASSPHRASE)
    approvals = _approvals(request, custodians[:2])
    with pytest.raises(RestoreError, match="does not open with this request's key"):
        recover_data_keys(escrow, ApprovedRequest(request, other_keys, approvals), "restore")


# ---- release of exactly the listed samples -----------------------------------------------------


def test_approvals_release_exactly_the_listed_samples(escrow, manifest, custodians):
    request, keys, _ = _request(escrow, _refs(manifest, ["k1", "k3"]))
    for approvers in (custodians[:2], custodians[1:], custodians[::-2], custodians):
        released = recover_data_keys(
            escrow, ApprovedRequest(request, keys, _approvals(request, approvers)), "restore"
        )
        assert set(released) == {(SHARD, "k1"), (SHARD, "k3")}
        for key in ("k1", "k3"):
            payload = _open_face(manifest, released[(SHARD, key)], key)
            assert payload.kind is PayloadKind.FACE_PNG and payload.data == _face(key)
            assert payload.source_uri == _source(key)
        with pytest.raises(DecryptionError):
            _open_face(manifest, released[(SHARD, "k1")], "k2")


def test_the_one_sample_attack_gets_one_sample(escrow, manifest, custodians):
    """Everything the requester of ONE sample holds (request, request keys, 2-of-3 approvals,
    escrow, manifest) opens that sample and no other."""
    request, keys, _ = _request(escrow, _refs(manifest, ["k1"]))
    approvals = _approvals(request, custodians[:2])
    released = recover_data_keys(escrow, ApprovedRequest(request, keys, approvals), "restore")
    assert list(released) == [(SHARD, "k1")]
    assert _open_face(manifest, released[(SHARD, "k1")], "k1").data == _face("k1")
    for key in ("k2", "k3"):
        with pytest.raises(DecryptionError):
            _open_face(manifest, released[(SHARD, "k1")], key)

    epoch = escrow.epochs[0]
    partials = [restore._open_partials(request, keys, ap) for ap in approvals]
    assert [len(p) for p in partials] == [1, 1]
    shares = [epoch.open_share(c) for c in custodians]
    for ap, plain in zip(approvals, partials, strict=True):
        raw = b"".join(p.to_bytes() for p in plain)
        assert all(s.value not in raw for s in shares)  # partials, never a share
        assert all(s.value not in ap.dumps() for s in shares)
    combined = threshold.combine_partials([p[0] for p in partials], 2)
    (k1_ref,) = _refs(manifest, ["k1"])
    k1_wrap = threshold.WrappedKey.from_bytes(k1_ref.wrapped)
    assert threshold.unwrap(epoch.public_key, k1_wrap, epoch.label(SHARD, "k1"), combined)
    for other in _refs(manifest, ["k2", "k3"]):
        wrapped = threshold.WrappedKey.from_bytes(other.wrapped)
        for label in (epoch.label(SHARD, other.sample_id), epoch.label(SHARD, "k1")):
            with pytest.raises(threshold.ThresholdError):
                threshold.unwrap(epoch.public_key, wrapped, label, combined)
        for (p,), ap in zip(partials, approvals, strict=True):
            index = escrow.policy.index_of(ap.fingerprint)
            assert not threshold.verify_partial(
                epoch.public_shares[index - 1], wrapped, epoch.label(SHARD, other.sample_id), p
            )
    # Asking for k2 under k1's name (B's wrap in A's entry) is refused by every custodian.
    forged = [SampleRef(SHARD, "k1", epoch.escrow_id, _refs(manifest, ["k2"])[0].wrapped)]
    forged_request, _, _ = _request(escrow, forged)
    for c in custodians:
        with pytest.raises(RestoreError, match="not made for that sample"):
            approve(forged_request, c)


def test_a_wrap_carried_to_another_shard_or_epoch_is_refused(escrow, custodians):
    both = add_epoch(escrow)
    first, second = both.escrow_ids
    m1 = _seal_shard(both, first, "shard-000000", ("k1",))
    m2 = _seal_shard(both, second, "shard-000001", ("k9",))
    (k1,) = _refs(m1, ["k1"])
    for forged in (
        replace(k1, shard="shard-000001"),
        replace(k1, escrow_id=second),
        replace(k1, wrapped=_refs(m2, ["k9"], "shard-000001")[0].wrapped),
    ):
        request, _, _ = _request(both, [forged])
        with pytest.raises(RestoreError, match="not made for that sample"):
            approve(request, custodians[0])
    # A flipped ciphertext byte keeps the label proof: custodians approve, the key does not open.
    flipped = replace(k1, wrapped=k1.wrapped[:-1] + bytes([k1.wrapped[-1] ^ 1]))
    request, keys, _ = _request(both, [flipped])
    approvals = _approvals(request, custodians[:2])
    with pytest.raises(RestoreError, match="'k1': its data key did not open"):
        recover_data_keys(both, ApprovedRequest(request, keys, approvals), "restore")
    request, keys, _ = _request(both, [k1, *_refs(m2, ["k9"], "shard-000001")])
    released = recover_data_keys(
        both, ApprovedRequest(request, keys, _approvals(request, custodians[1:])), "restore"
    )
    assert set(released) == {("shard-000000", "k1"), ("shard-000001", "k9")}


def test_a_bad_partial_is_named(escrow, manifest, custodians):
    request, keys, _ = _request(escrow, _refs(manifest, ["k1", "k2"]))
    alice, bob = custodians[:2]
    good = _approvals(request, [alice, bob])
    honest = restore._open_partials(request, keys, good[1])
    shifted = threshold.Partial(
        2, threshold.add(honest[1].d, threshold.BASE_POINT), honest[1].proof
    )
    stolen = restore._open_partials(request, keys, good[0])  # alice's, index 1
    for partials, sample in (
        (honest[0].to_bytes() + shifted.to_bytes(), "k2"),
        (stolen[0].to_bytes() + honest[1].to_bytes(), "k1"),
        (honest[1].to_bytes() + honest[0].to_bytes(), "k1"),
    ):
        bad = _forged_approval(request, bob, partials)
        with pytest.raises(RestoreError, match=f"custodian 'bob' sent a bad partial .* '{sample}'"):
            recover_data_keys(escrow, ApprovedRequest(request, keys, [good[0], bad]), "restore")
    short = _forged_approval(request, bob, honest[0].to_bytes())
    with pytest.raises(RestoreError, match="'bob' does not cover"):
        recover_data_keys(escrow, ApprovedRequest(request, keys, [good[0], short]), "restore")


def test_approvals_for_another_request_are_refused(escrow, manifest, custodians):
    request, keys, _ = _request(escrow, _refs(manifest, ["k1"]))
    other, _, _ = _request(escrow, _refs(manifest, ["k2"]))
    mixed = _approvals(request, custodians[:1]) + _approvals(other, custodians[1:2])
    with pytest.raises(RestoreError, match="approval 2 .* for another request"):
        recover_data_keys(escrow, ApprovedRequest(request, keys, mixed), "restore")
    # Relabelling the other request's approval breaks its custodian signature.
    relabelled = replace(mixed[1], request_id=request.request_id, request_sha256=request.sha256())
    with pytest.raises(RestoreError, match="approval 2 .* bad signature"):
        recover_data_keys(escrow, ApprovedRequest(request, keys, [mixed[0], relabelled]), "restore")


def test_duplicate_approvals_count_once_and_fewer_than_m_fail(escrow, manifest, custodians):
    request, keys, _ = _request(escrow, _refs(manifest, ["k1"]))
    (first,) = _approvals(request, custodians[:1])
    again = approve(request, custodians[0])
    for pair in ([first, first], [first, again]):
        with pytest.raises(RestoreError, match="counts once"):
            recover_data_keys(escrow, ApprovedRequest(request, keys, pair), "restore")
    with pytest.raises(RestoreError, match="1 valid approval.*needs 2"):
        recover_data_keys(escrow, ApprovedRequest(request, keys, [first]), "restore")
    with pytest.raises(RestoreError, match="0 valid approval"):
        recover_data_keys(escrow, ApprovedRequest(request, keys, []), "restore")


def test_bad_signature_and_outsider_are_refused(escrow, manifest, custodians):
    request, keys, _ = _request(escrow, _refs(manifest, ["k1"]))
    good = _approvals(request, custodians[:2])
    doc = json.loads(good[1].dumps()) | {"time": "2000-01-01T00:00:00Z"}
    with pytest.raises(RestoreError, match="approval 2 .* bad signature"):
        recover_data_keys(
            escrow,
            ApprovedRequest(request, keys, [good[0], Approval.loads(json.dumps(doc))]),
            "restore",
        )
    mallory = CustodianPrivate.generate("mallory")
    with pytest.raises(KeyLibraryError, match="no custodian"):
        approve(request, mallory)
    doc = json.loads(good[1].dumps()) | {
        "custodian": "mallory",
        "fingerprint": mallory.public().fingerprint,
    }
    with pytest.raises(RestoreError, match="not a custodian"):
        recover_data_keys(
            escrow,
            ApprovedRequest(request, keys, [good[0], Approval.loads(json.dumps(doc))]),
            "restore",
        )
    for bad in (b"{}", b"not json", json.dumps(doc | {"format": "x"}).encode()):
        with pytest.raises(RestoreError, match="invalid approval"):
            Approval.loads(bad)


def test_a_request_made_before_the_escrow_changed_is_refused(escrow, manifest, custodians):
    request, keys, _ = _request(escrow, _refs(manifest, ["k1"]))
    approvals = _approvals(request, custodians[:2])
    later = add_epoch(escrow)
    with pytest.raises(RestoreError, match="another escrow"):
        recover_data_keys(later, ApprovedRequest(request, keys, approvals), "restore")


def test_a_forged_escrow_copy_is_refused_against_the_real_escrow(escrow, manifest, custodians):
    """A requester can sign any escrow copy; custodians approve against the copy, but the
    release compares it with the job's escrow.json."""
    request, keys, _ = _request(escrow, _refs(manifest, ["k1"]))
    doc = json.loads(escrow.dumps())
    doc["epochs"][0]["shares"][2]["parts"][0]["sealed"] = base64.b64encode(b"\x01" * 80).decode()
    forged = _resign(request, keys, escrow=Escrow.loads(json.dumps(doc)))
    approvals = [approve(forged, c) for c in custodians[:2]]
    with pytest.raises(RestoreError, match="forged or altered request"):
        recover_data_keys(escrow, ApprovedRequest(forged, keys, approvals), "restore")


def test_kms_escrows_take_no_custodian_approvals(custodians):
    kms = create_escrow("job-k", KmsPolicy("arn:aws:kms:us-east-1:123456789012:key/x"))
    request, _, _ = _request(kms, [SampleRef(SHARD, "k1", kms.escrow_ids[0])])
    with pytest.raises(RestoreError, match="Shamir escrows only"):
        approve(request, custodians[0])


def test_a_rekey_releases_every_listed_sample_across_epochs(escrow, custodians):
    both = add_epoch(escrow)
    m1 = _seal_shard(both, both.escrow_ids[0], "shard-000000", ("k1", "k2"))
    m2 = _seal_shard(both, both.escrow_ids[1], "shard-000001", ("k3",))
    refs = _refs(m1, ["k1", "k2"]) + _refs(m2, ["k3"], "shard-000001")
    new_policy = KmsPolicy("arn:aws:kms:us-east-1:123456789012:key/new")
    request, keys, _ = _request(both, refs, "rekey", new_policy=new_policy)
    released = recover_data_keys(
        both, ApprovedRequest(request, keys, _approvals(request, custodians[:2])), "rekey"
    )
    assert set(released) == {("shard-000000", "k1"), ("shard-000000", "k2"), ("shard-000001", "k3")}
    assert _open_face(m2, released[("shard-000001", "k3")], "k3", "shard-000001").data == _face(
        "k3"
    )


# ---- reshare approvals -------------------------------------------------------------------------


def test_reshare_parts_are_sealed_only_to_the_named_new_custodians(escrow, custodians, newcomer):
    named = [custodians[1], custodians[2], newcomer]
    policy = ShamirPolicy(2, tuple(c.public() for c in named))
    request, _, _ = _request(escrow, [], "reshare", new_policy=policy)
    approvals = _approvals(request, custodians[:2])
    epoch = escrow.epochs[0]
    for ap, source in zip(approvals, (1, 2), strict=True):
        assert ap.sealed_partials == b"" and len(ap.reshare) == 1
        (block,) = ap.reshare
        assert block.escrow_id == epoch.escrow_id and len(block.sealed_parts) == 3
        for j, c in enumerate(named):
            target = ReshareTarget(
                "job-1", epoch.escrow_id, epoch.public_key, policy, request.sha256()
            )
            aad = target.part_aad(c.public().fingerprint, source)
            part = threshold.ScalarShare.from_bytes(
                open_sealed(c.x25519, block.sealed_parts[j], SHARE_CONTEXT, aad)
            )
            assert part.index == j + 1 and part.public() == block.public_parts[j]
            for k, other in enumerate(named):
                if k != j:
                    with pytest.raises(DecryptionError):
                        open_sealed(other.x25519, block.sealed_parts[j], SHARE_CONTEXT, aad)
            with pytest.raises(DecryptionError):
                open_sealed(custodians[0].x25519, block.sealed_parts[j], SHARE_CONTEXT, aad)
    new = assemble_reshare(escrow, request, approvals)
    assert new.policy == policy and new.epochs[0].public_key == epoch.public_key


def test_a_reshare_approval_cannot_be_retargeted(escrow, custodians, newcomer):
    policy = ShamirPolicy(2, tuple(c.public() for c in (custodians[1], newcomer)))
    request, _, _ = _request(escrow, [], "reshare", new_policy=policy)
    approvals = _approvals(request, custodians[:2])
    mallory = CustodianPrivate.generate("mallory")
    evil = ShamirPolicy(2, tuple(c.public() for c in (custodians[1], mallory)))
    other, _, _ = _request(escrow, [], "reshare", new_policy=evil)
    with pytest.raises(RestoreError, match="for another request"):
        assemble_reshare(escrow, other, approvals)
    relabelled = [
        replace(a, request_id=other.request_id, request_sha256=other.sha256()) for a in approvals
    ]
    with pytest.raises(RestoreError, match="bad signature"):
        assemble_reshare(escrow, other, relabelled)
    # Even with the parts carried over by hand, the AAD names the request and the recipient.
    reshared = assemble_reshare(escrow, request, approvals)
    doc = json.loads(reshared.dumps())
    doc["custodians"][1] = {k: v for k, v in mallory.public().to_json().items() if k != "format"}
    doc["epochs"][0]["shares"][1]["fingerprint"] = mallory.public().fingerprint
    with pytest.raises(KeyLibraryError):
        Escrow.loads(json.dumps(doc)).epochs[0].open_share(mallory)


def test_a_reshare_contribution_must_resplit_the_custodians_share(escrow, custodians, newcomer):
    policy = ShamirPolicy(2, tuple(c.public() for c in (custodians[1], newcomer)))
    request, _, _ = _request(escrow, [], "reshare", new_policy=policy)
    honest = _approvals(request, custodians[:2])
    block = honest[1].reshare[0]
    fake = threshold.split_scalar(threshold.scalar_from_int(99), 2, 2)
    bad_block = replace(block, public_parts=tuple(p.public() for p in fake))
    unsigned = replace(honest[1], reshare=(bad_block,), signature=b"")
    bad = replace(unsigned, signature=custodians[1].sign(unsigned.signing_bytes()))
    with pytest.raises(RestoreError, match="'bob' does not re-split"):
        assemble_reshare(escrow, request, [honest[0], bad])
    unsigned = replace(honest[1], reshare=(), signature=b"")
    empty = replace(unsigned, signature=custodians[1].sign(unsigned.signing_bytes()))
    with pytest.raises(RestoreError, match="'bob' does not reshare epoch"):
        assemble_reshare(escrow, request, [honest[0], empty])


# ---- statements and secrecy --------------------------------------------------------------------


def test_approval_statement_verifies_without_the_partials(escrow, manifest, custodians):
    request, _, _ = _request(escrow, _refs(manifest, ["k1"]))
    (approval,) = _approvals(request, custodians[:1])
    statement = approval.statement()
    assert statement["sealed_partials"] == hashlib.sha256(approval.sealed_partials).hexdigest()
    assert statement["samples_sha256"] == request.samples_sha256()
    check_statement(statement, approval.signature, custodians[0].public().ed25519)
    with pytest.raises(RestoreError, match="does not verify"):
        check_statement(
            statement | {"custodian": "bob"}, approval.signature, custodians[0].public().ed25519
        )
    with pytest.raises(RestoreError, match="does not verify"):
        check_statement(statement, approval.signature, custodians[1].public().ed25519)


def _forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    ]


def test_nothing_secret_reaches_logs_errors_or_reprs(escrow, manifest, custodians, caplog):
    caplog.set_level(logging.DEBUG)
    request, keys, key_file = _request(escrow, _refs(manifest, ["k1"]))
    approvals = _approvals(request, custodians[:2])
    released = recover_data_keys(escrow, ApprovedRequest(request, keys, approvals), "restore")
    errors = []
    for attempt in (
        lambda: recover_data_keys(escrow, ApprovedRequest(request, keys, approvals[:1]), "restore"),
        lambda: load_request_key(request, key_file, "a wrong passphrase"),
        lambda: _open_face(manifest, released[(SHARD, "k1")], "k2"),
        lambda: recover_data_keys(
            escrow,
            ApprovedRequest(
                request,
                keys,
                [
                    approvals[0],
                    _forged_approval(request, custodians[1], approvals[0].sealed_partials),
                ],
            ),
            "restore",
        ),  # fmt: skip
    ):
        with pytest.raises(KeyLibraryError) as err:
            attempt()
        errors.append(f"{err.value!r} {err.value}")
    shares = [escrow.epochs[0].open_share(c) for c in custodians]
    secrets_ = [*released.values(), PASSPHRASE.encode(), _face("k1"), _source("k1").encode()]
    secrets_ += [keys.x25519.private_bytes_raw(), keys.ed25519.private_bytes_raw()]
    secrets_ += [s.value for s in shares] + [c.x25519.private_bytes_raw() for c in custodians]
    text = "\n".join(
        [r.getMessage() for r in caplog.records]
        + errors
        + [repr(shares), repr(custodians), repr(approvals), repr(request), repr(keys)]
    )
    assert caplog.records, "the workflow should log something"
    for secret in secrets_:
        for form in _forms(secret):
            assert form not in text
