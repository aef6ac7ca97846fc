"""Escrow format 3: public keys and sealed share parts per key epoch, every tampering refused,
KMS shard keys against a real moto server, and reshares that never rebuild the key."""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle

import boto3
import pytest

from faceveil.manifests import threshold
from faceveil.manifests.custodian import CustodianPrivate, b64d, b64e, seal_to
from faceveil.manifests.errors import DecryptionError, EscrowError, RestoreError
from faceveil.manifests.escrow import (
    SHARE_CONTEXT,
    Epoch,
    Escrow,
    KmsPolicy,
    SealedPart,
    ShamirPolicy,
    ShardRef,
    add_epoch,
    create_escrow,
    escrow_format,
    kms_open_shard_key,
    kms_shard_key,
    make_kms_client,
    new_epoch,
    policy_from_json,
    sample_label,
)
from faceveil.manifests.request import RequestSpec, SampleRef, create_request, load_request_key
from faceveil.manifests.restore import approve, assemble_reshare, recover_data_keys
from faceveil.manifests.sealing import EpochSealing
from faceveil.manifests.signed import ApprovedRequest
from tests.manifests.conftest import FAST_KDF as FAST

PASSPHRASE = "requester passphrase 123"
L = 2**252 + 27742317777372353535851937790883648493


def stream(seed: bytes):
    """A deterministic ``randbytes``: SHA-256(seed | counter) blocks, consumed in order."""
    state = {"counter": 0, "buf": b""}

    def randbytes(n: int) -> bytes:
        while len(state["buf"]) < n:
            state["buf"] += hashlib.sha256(seed + state["counter"].to_bytes(8, "big")).digest()
            state["counter"] += 1
        out, state["buf"] = state["buf"][:n], state["buf"][n:]
        return out

    return randbytes


@pytest.fixture
def policy(custodians) -> ShamirPolicy:
    return ShamirPolicy(2, tuple(c.public() for c in custodians))


@pytest.fixture
def escrow(policy) -> Escrow:
    return create_escrow("job-1", policy)


def _doc(escrow: Escrow) -> dict:
    return json.loads(escrow.dumps())


def test_round_trip_holds_public_values_only(escrow, custodians):
    text = escrow.dumps().decode()
    assert Escrow.loads(text) == escrow
    doc = json.loads(text)
    assert doc["format"] == "faceveil-escrow/3" and doc["scheme"] == "shamir"
    assert doc["threshold"] == 2 and [c["name"] for c in doc["custodians"]] == [
        "alice",
        "bob",
        "carol",
    ]
    (epoch,) = doc["epochs"]
    assert len(epoch["public_shares"]) == 3 and len(epoch["shares"]) == 3
    assert escrow_format(text) == "faceveil-escrow/3"
    shares = [escrow.epochs[0].open_share(c) for c in custodians]
    for share in shares:
        for form in (share.value.hex(), b64e(share.value), b64e(share.to_bytes())):
            assert form not in text


def test_each_custodian_opens_a_share_matching_its_public_share(escrow, custodians):
    (epoch,) = escrow.epochs
    shares = [epoch.open_share(c) for c in custodians]
    assert [s.index for s in shares] == [1, 2, 3]
    assert [s.public() for s in shares] == list(epoch.public_shares)
    assert len({s.value for s in shares}) == 3
    for pair in ((0, 1), (0, 2), (1, 2)):
        points = {shares[i].index: shares[i].public() for i in pair}
        assert threshold.interpolate(points) == epoch.public_key
    assert threshold.interpolate({1: shares[0].public()}) != epoch.public_key
    label = epoch.label("shard-000000", "k1")
    wrapped = threshold.wrap(epoch.public_key, label, b"\x07" * 32)
    partials = [threshold.partial_decrypt(s, wrapped, label) for s in shares[1:]]
    shared = threshold.combine_partials(partials, 2)
    assert threshold.unwrap(epoch.public_key, wrapped, label, shared) == b"\x07" * 32


def test_an_outsider_has_no_share(escrow):
    with pytest.raises(EscrowError, match="no custodian"):
        escrow.epochs[0].open_share(CustodianPrivate.generate("mallory"))


def test_a_tampered_sealed_part_does_not_open(escrow, custodians):
    doc = _doc(escrow)
    part = doc["epochs"][0]["shares"][0]["parts"][0]
    sealed = bytearray(b64d(part["sealed"], "sealed"))
    sealed[-1] ^= 1
    part["sealed"] = b64e(bytes(sealed))
    tampered = Escrow.loads(json.dumps(doc))
    with pytest.raises(DecryptionError):
        tampered.epochs[0].open_share(custodians[0])
    assert tampered.epochs[0].open_share(custodians[1]).index == 2
    doc = _doc(escrow)
    shares = doc["epochs"][0]["shares"]
    shares[0]["parts"], shares[1]["parts"] = shares[1]["parts"], shares[0]["parts"]
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).epochs[0].open_share(custodians[0])


def test_a_well_sealed_wrong_scalar_is_refused_against_the_public_share(escrow, custodians):
    """Whoever writes escrow.json can seal any scalar to a custodian with the right AAD: the
    share is still checked against its public share."""
    epoch = escrow.epochs[0]
    alice = custodians[0].public()
    wrong = threshold.ScalarShare(1, threshold.scalar_from_int(42)).to_bytes()
    part = SealedPart(
        0, seal_to(alice.x25519, wrong, SHARE_CONTEXT, epoch.part_aad(alice.fingerprint, 0))
    )
    forged = Epoch(
        epoch.job_id,
        epoch.escrow_id,
        epoch.policy,
        epoch.public_key,
        epoch.public_shares,
        ((part,), *epoch.shares[1:]),
    )
    with pytest.raises(EscrowError, match="does not match its public share"):
        forged.open_share(custodians[0])


def test_a_swapped_public_share_or_key_fails_loading(escrow):
    doc = _doc(escrow)
    shares = doc["epochs"][0]["public_shares"]
    shares[0], shares[2] = shares[2], shares[0]
    with pytest.raises(EscrowError, match="invalid escrow.json"):
        Escrow.loads(json.dumps(doc))
    doc = _doc(escrow)
    doc["epochs"][0]["public_key"] = doc["epochs"][0]["public_shares"][0]
    with pytest.raises(EscrowError, match="do not interpolate"):
        Escrow.loads(json.dumps(doc))
    doc = _doc(escrow)
    doc["epochs"][0]["public_shares"][1] = b64e(b"\x01" + bytes(31))
    with pytest.raises(EscrowError, match="not a valid group element"):
        Escrow.loads(json.dumps(doc))


def test_an_epoch_moved_to_another_job_does_not_open(escrow, policy, custodians):
    other = create_escrow("job-2", policy)
    doc = _doc(other)
    doc["epochs"] = _doc(escrow)["epochs"]
    moved = Escrow.loads(json.dumps(doc))
    assert moved.job_id == "job-2"
    for c in custodians:
        with pytest.raises(DecryptionError):
            moved.epochs[0].open_share(c)


def test_reordered_custodians_fail_loading_or_opening(escrow, custodians):
    doc = _doc(escrow)
    doc["custodians"] = doc["custodians"][::-1]
    with pytest.raises(EscrowError, match="do not match the custodian list"):
        Escrow.loads(json.dumps(doc))
    doc["epochs"][0]["shares"] = doc["epochs"][0]["shares"][::-1]
    reordered = Escrow.loads(json.dumps(doc))  # public shares still on one polynomial
    for c in custodians:
        with pytest.raises(DecryptionError):
            reordered.epochs[0].open_share(c)


def test_a_changed_threshold_does_not_open(escrow, custodians):
    doc = _doc(escrow)
    doc["threshold"] = 3  # three points of a line also lie on a degree-2 polynomial: it loads
    raised = Escrow.loads(json.dumps(doc))
    with pytest.raises(DecryptionError):
        raised.epochs[0].open_share(custodians[0])
    three = create_escrow("job-1", ShamirPolicy(3, tuple(c.public() for c in custodians)))
    doc = _doc(three)
    doc["threshold"] = 2
    with pytest.raises(EscrowError, match="do not interpolate"):
        Escrow.loads(json.dumps(doc))


def test_policy_and_document_validation(escrow, custodians):
    pubs = tuple(c.public() for c in custodians)
    for m, chosen in ((1, pubs), (4, pubs), (1, pubs[:1]), (2, (pubs[0], pubs[0]))):
        with pytest.raises(EscrowError):
            ShamirPolicy(m, chosen)
    same_name = CustodianPrivate.generate("alice").public()
    with pytest.raises(EscrowError, match="distinct"):
        ShamirPolicy(2, (pubs[0], same_name))
    good = _doc(escrow)
    for bad in (
        b"{}",
        b"not json",
        json.dumps(good | {"format": "faceveil-escrow/2"}).encode(),
        json.dumps(good | {"epochs": []}).encode(),
        json.dumps(good | {"epochs": good["epochs"] * 2}).encode(),
        json.dumps(good | {"revision": "r1"}).encode(),
        json.dumps(good | {"job_id": ""}).encode(),
        json.dumps(good | {"scheme": "rot13"}).encode(),
        json.dumps(good | {"epochs": [good["epochs"][0] | {"escrow_id": "../x"}]}).encode(),
    ):
        with pytest.raises(EscrowError, match="invalid escrow.json"):
            Escrow.loads(bad)
    with pytest.raises(EscrowError):
        policy_from_json({"scheme": "shamir", "threshold": 2})
    with pytest.raises(EscrowError, match="not a faceveil escrow"):
        escrow_format(b"[]")


def test_a_new_epoch_has_its_own_key_under_the_same_policy(escrow, custodians):
    both = add_epoch(escrow)
    first, second = both.epochs
    assert first == escrow.epochs[0] and both.revision != escrow.revision
    assert second.public_key != first.public_key and second.escrow_id != first.escrow_id
    assert Escrow.loads(both.dumps()) == both
    assert [second.open_share(c).public() for c in custodians] == list(second.public_shares)
    assert both.epoch(second.escrow_id) == second
    with pytest.raises(EscrowError, match="no key epoch"):
        both.epoch("0" * 32)
    foreign = new_epoch("job-2", escrow.policy)
    with pytest.raises(EscrowError, match="belong to the job"):
        Escrow("job-1", escrow.revision, escrow.policy, (first, foreign))
    with pytest.raises(EscrowError, match="same escrow_id"):
        Escrow("job-1", escrow.revision, escrow.policy, (first, first))
    doc = _doc(both)
    doc["epochs"][1]["shares"] = doc["epochs"][0]["shares"]
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).epochs[1].open_share(custodians[0])


# ---- KMS against a real moto server ------------------------------------------------------------


@pytest.fixture
def kms(moto_endpoint, aws_env):
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    arn = client.create_key(Description="faceveil test")["KeyMetadata"]["Arn"]
    return client, KmsPolicy(arn)


def test_kms_epoch_round_trip(kms):
    _, policy = kms
    escrow = add_epoch(create_escrow("job-k", policy))
    loaded = Escrow.loads(escrow.dumps())
    assert loaded == escrow and loaded.scheme == "kms" and len(loaded.epochs) == 2
    doc = json.loads(escrow.dumps())
    assert doc["key_arn"] == policy.key_arn
    assert all(set(e) == {"escrow_id"} for e in doc["epochs"])
    with pytest.raises(EscrowError, match="not a Shamir escrow"):
        loaded.epochs[0].open_share(CustodianPrivate.generate("alice"))


def test_kms_shard_keys_are_bound_to_their_shard(kms):
    client, policy = kms
    eid = "ab" * 16
    plain, blob = kms_shard_key(client, policy, ShardRef("job-k", eid, "shard-000001"))
    assert len(plain) == 32 and plain not in blob
    assert kms_open_shard_key(client, policy, ShardRef("job-k", eid, "shard-000001"), blob) == plain
    other, _ = kms_shard_key(client, policy, ShardRef("job-k", eid, "shard-000001"))
    assert other != plain
    for job, escrow_id, shard in (
        ("job-k", eid, "shard-000002"),
        ("job-x", eid, "shard-000001"),
        ("job-k", "cd" * 16, "shard-000001"),
    ):
        with pytest.raises(EscrowError, match="KMS decrypt failed"):
            kms_open_shard_key(client, policy, ShardRef(job, escrow_id, shard), blob)
    with pytest.raises(EscrowError, match="KMS decrypt failed"):
        kms_open_shard_key(client, policy, ShardRef("job-k", eid, "shard-000001"), blob[:-1] + b"x")
    with pytest.raises(ValueError, match="shard-NNNNNN"):
        kms_shard_key(client, policy, ShardRef("job-k", eid, "../shard-000001"))


def test_kms_sealing_opens_per_sample_keys(kms):
    client, policy = kms
    escrow = create_escrow("job-k", policy)
    sealing = EpochSealing("job-k", escrow.escrow_ids[0], "kms", key_arn=policy.key_arn)
    keys = sealing.shard_keys("shard-000003", kms=client)
    k1, wrapped = keys.sample("k1")
    assert wrapped is None and k1 != keys.sample("k2")[0] and k1 == keys.sample("k1")[0]
    shard_key = kms_open_shard_key(
        client, policy, ShardRef("job-k", escrow.escrow_ids[0], "shard-000003"), keys.kms_blob
    )
    assert shard_key == keys.shard_key


def test_kms_arn_validation():
    for bad in ("not-an-arn", "arn:aws:kms:us-east-1:123:key/x", "arn:aws:s3:::bucket"):
        with pytest.raises(EscrowError, match="ARN"):
            KmsPolicy(bad)
        with pytest.raises(EscrowError, match="ARN"):
            make_kms_client(bad)
    KmsPolicy("arn:aws:kms:eu-west-1:123456789012:alias/faceveil")
    assert policy_from_json(
        {"scheme": "kms", "key_arn": "arn:aws:kms:eu-west-1:123456789012:key/a"}
    ).key_arn.endswith("key/a")


# ---- reshare: new custodians, same public key, the key never rebuilt ---------------------------


def _restore(escrow, samples, approvers):
    spec = RequestSpec("restore", tuple(samples), "audit 7", "bob")
    request, key_file = create_request(escrow, spec, PASSPHRASE, params=FAST)
    keys = load_request_key(request, key_file, PASSPHRASE)
    approvals = [approve(request, c) for c in approvers]
    return recover_data_keys(escrow, ApprovedRequest(request, keys, approvals), "restore")


@pytest.mark.parametrize(("m", "members"), [(2, (1, 2, 3)), (3, (0, 1, 2, 3))])
def test_reshare_moves_every_epoch_to_new_custodians(escrow, custodians, newcomer, m, members):
    everyone = [*custodians, newcomer]
    new_custodians = [everyone[i] for i in members]
    removed = [c for c in custodians if c not in new_custodians]
    old = add_epoch(escrow)
    sealed = {}
    for n, epoch in enumerate(old.epochs):
        sealing = EpochSealing("job-1", epoch.escrow_id, "shamir", public_key=epoch.public_key)
        data_key, wrapped = sealing.shard_keys("shard-000000").sample(f"k{n}")
        sealed[epoch.escrow_id] = (f"k{n}", data_key, wrapped)
    new_policy = ShamirPolicy(m, tuple(c.public() for c in new_custodians))
    spec = RequestSpec("reshare", (), "custodians change", "bob", new_policy=new_policy)
    request, _ = create_request(old, spec, PASSPHRASE, params=FAST)
    approvals = [approve(request, c) for c in custodians[:2]]
    new = assemble_reshare(old, request, approvals)
    assert new.escrow_ids == old.escrow_ids and new.policy == new_policy
    assert new.revision != old.revision and Escrow.loads(new.dumps()) == new
    for before, after in zip(old.epochs, new.epochs, strict=True):
        assert after.public_key == before.public_key
        shares = [after.open_share(c) for c in new_custodians]
        assert [s.public() for s in shares] == list(after.public_shares)
        for subset in itertools.combinations(shares, m):
            assert threshold.interpolate({s.index: s.public() for s in subset}) == after.public_key
        for subset in itertools.combinations(shares, m - 1):
            assert threshold.interpolate({s.index: s.public() for s in subset}) != after.public_key
        assert all(p.source in (1, 2) for parts in after.shares for p in parts)
        for gone in removed:
            with pytest.raises(EscrowError, match="no custodian"):
                after.open_share(gone)
    # The key was never rebuilt, yet the new custodians open what was sealed before the reshare.
    refs = [SampleRef("shard-000000", k, eid, w) for eid, (k, _, w) in sealed.items()]
    released = _restore(new, refs, new_custodians[-m:])
    assert released == {("shard-000000", k): dk for k, dk, _ in sealed.values()}
    with pytest.raises(RestoreError, match=f"needs {m}"):
        _restore(new, refs, new_custodians[-(m - 1) :])
    for gone in removed:
        with pytest.raises(EscrowError, match="no custodian"):
            _restore(new, refs, [gone, *new_custodians[-m:]])


def test_the_escrow_secret_is_in_no_output(policy, custodians):
    """With injected randomness the test knows the escrow secret x (the first draw): it is in
    no returned object, no escrow.json, and no share equals it."""
    draw = stream(b"escrow-secret")
    x = (int.from_bytes(draw(64), "little") % L).to_bytes(32, "little")
    epoch = new_epoch("job-1", policy, randbytes=stream(b"escrow-secret"))
    assert threshold.base_mult(x) == epoch.public_key  # x is indeed this epoch's secret
    escrow = Escrow("job-1", "ab" * 16, policy, (epoch,))
    blobs = [pickle.dumps(epoch), escrow.dumps(), repr(escrow).encode()]
    for form in (x, x.hex().encode(), b64e(x).encode()):
        assert all(form not in blob for blob in blobs)
    assert all(epoch.open_share(c).value != x for c in custodians)


def test_a_reshared_part_does_not_open_in_another_epoch_or_after_tampering(
    escrow, custodians, newcomer
):
    old = add_epoch(escrow)
    new_policy = ShamirPolicy(2, tuple(c.public() for c in (custodians[1], newcomer)))
    spec = RequestSpec("reshare", (), "rotate", "bob", new_policy=new_policy)
    request, _ = create_request(old, spec, PASSPHRASE, params=FAST)
    new = assemble_reshare(old, request, [approve(request, c) for c in custodians[1:]])
    doc = json.loads(new.dumps())
    doc["epochs"][0]["shares"], doc["epochs"][1]["shares"] = (
        doc["epochs"][1]["shares"],
        doc["epochs"][0]["shares"],
    )
    swapped = Escrow.loads(json.dumps(doc))
    with pytest.raises(DecryptionError):
        swapped.epochs[0].open_share(newcomer)
    doc = json.loads(new.dumps())
    doc["epochs"][0]["reshare_request"] = "0" * 64
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).epochs[0].open_share(newcomer)
    doc = json.loads(new.dumps())
    parts = doc["epochs"][0]["shares"][1]["parts"]
    parts[0]["source"], parts[1]["source"] = parts[1]["source"], parts[0]["source"]
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).epochs[0].open_share(newcomer)


def test_sample_label_names_job_epoch_shard_and_sample():
    base = sample_label("job-1", "ab" * 16, "shard-000000", "k1")
    assert json.loads(base) == {
        "v": "faceveil-sample-label/1",
        "job_id": "job-1",
        "escrow_id": "ab" * 16,
        "shard": "shard-000000",
        "key": "k1",
    }
    others = {
        sample_label("job-2", "ab" * 16, "shard-000000", "k1"),
        sample_label("job-1", "cd" * 16, "shard-000000", "k1"),
        sample_label("job-1", "ab" * 16, "shard-000001", "k1"),
        sample_label("job-1", "ab" * 16, "shard-000000", "k2"),
    }
    assert len(others) == 4 and base not in others
