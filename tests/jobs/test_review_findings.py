"""One test per finding of the escrow security review, each on a real job output (``faceveil
run`` on the bundled public-domain photos, 2-of-3 custodians) and each failing closed with one
clear error. Named after the review's rows; what the pre-redesign code did is in each docstring.

Row 4 (a copy of the inputs under OUT/shards) is covered by
``tests/jobs/test_run_local.py::test_no_original_bytes_anywhere_in_output`` and the workflow
tests' ``shards/`` checks; row 9 (a custodian key signing ``job.end``) by
``tests/jobs/test_auditlog.py`` and ``tests/manifests/test_audit.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from faceveil.anon_core import demo_data
from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.auditlog import append, verify_tree
from faceveil.jobs.restore import read_escrow, sample_refs, signed_commitments
from faceveil.jobs.storage import Location
from faceveil.manifests import threshold
from faceveil.manifests.audit import AuditWriter
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    ScryptParams,
    b64e,
    passphrase_open,
    passphrase_seal,
)
from faceveil.manifests.errors import KeyLibraryError
from faceveil.manifests.escrow import Escrow, ShamirPolicy, new_epoch
from faceveil.manifests.request import RestoreRequest
from faceveil.manifests.restore import (
    Approval,
    _open_partials,
    recover_data_keys,
)
from faceveil.manifests.restore_v2 import REQUEST_KEY_FORMAT as V2_KEY
from faceveil.manifests.signed import ApprovedRequest
from tests.jobs.escrow_world import (
    CUSTODIANS,
    PASSPHRASES,
    World,
    actions,
    cli,
    make_world,
    pick,
    request_keys,
    resign,
)

LEGACY = Path(__file__).parents[1] / "data" / "legacy_v2"


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local) -> World:
    return make_world(tmp_path_factory.mktemp("review"))


def _files(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*")}


# ---- row 1: approvals of a one-sample request open that sample only ---------------------------


@pytest.fixture(scope="module")
def one_sample(world):
    """A request for the PNG sample only, approved by alice and bob, applied."""
    req, _ = world.request("--key", pick(world.out, "png"))
    approvals = [world.approve(req, "alice"), world.approve(req, "bob")]
    dest = world.root / "row1-restored"
    result = world.apply(req, approvals, dest)
    assert result.rc == 0, result.err
    return req, approvals, dest


def test_row1_approved_one_sample_request_opens_no_other_sample_library(world, one_sample):
    """Old code: each approval carried the custodian's share of the job's master key, so two
    approvals of any request opened every sample. Now: with req.json, the request key and its
    passphrase, both approvals and the whole OUT tree, exactly one data key comes out, and the
    decrypted partials unwrap no other sample's key."""
    req, approval_paths, _ = one_sample
    out = Location(str(world.out))
    escrow = read_escrow(out)
    request, keys = request_keys(req)
    approvals = [Approval.loads(p.read_bytes()) for p in approval_paths]
    data_keys = recover_data_keys(escrow, ApprovedRequest(request, keys, approvals), "restore")
    (wanted,) = request.samples
    assert list(data_keys) == [(wanted.shard, wanted.sample_id)]
    partials = [_open_partials(request, keys, ap) for ap in approvals]
    assert [len(p) for p in partials] == [1, 1]
    shared = threshold.combine_partials([p[0] for p in partials], 2)
    commitments = signed_commitments(verify_tree(out).report.entries)
    others = [
        r for r in sample_refs(out, escrow, None, commitments) if r.sample_id != wanted.sample_id
    ]
    assert len(others) == len(world.photos) - 1
    for other in others:
        epoch = escrow.epoch(other.escrow_id)
        for label in (
            epoch.label(other.shard, other.sample_id),
            epoch.label(wanted.shard, wanted.sample_id),
        ):
            with pytest.raises(threshold.ThresholdError):
                threshold.unwrap(
                    epoch.public_key, threshold.WrappedKey.from_bytes(other.wrapped), label, shared
                )


def test_row1_approved_one_sample_request_opens_no_other_sample_cli(world, one_sample):
    """Through the CLI: apply wrote one file; another request (made anew, or the approved one
    re-signed by its requester to list another sample) with the old approvals is refused."""
    req, approvals, dest = one_sample
    (key,) = json.loads((dest / "restored.json").read_text())
    assert sorted(p.name for p in dest.iterdir()) == [f"{key}.png", "restored.json"]
    request = RestoreRequest.loads(req.read_bytes())
    other = pick(world.out, "jpg")
    again, _ = world.request("--key", other)
    refused = world.root / "row1-refused"
    assert "is for another request" in world.apply(again, approvals, refused).one_error()
    assert not refused.exists()
    (ref,) = sample_refs(
        Location(str(world.out)),
        read_escrow(Location(str(world.out))),
        [other],
        signed_commitments(verify_tree(str(world.out)).report.entries),
    )
    forged = resign(req, samples=[ref.to_json()])
    assert RestoreRequest.loads(forged.read_bytes()).request_id == request.request_id
    assert "is for another request" in world.apply(forged, approvals, refused).one_error()
    assert not refused.exists()


# ---- row 3: a swapped escrow.json on resume ----------------------------------------------------


def test_row3_resume_refuses_escrow_json_swapped_to_attacker_custodians(world):
    """Old code: a resume took escrow.json's custodians as they were, so whoever could write
    OUT had the next epoch sealed to keys of their choosing. Now refused, escrow.json kept."""
    out = world.copy("out-row3")
    escrow = Escrow.loads((out / "escrow.json").read_bytes())
    policy = _mallory_policy(world)
    swapped = Escrow(escrow.job_id, escrow.revision, policy, (new_epoch(escrow.job_id, policy),))
    (out / "escrow.json").write_bytes(swapped.dumps())
    (out / "_done/shard-000001.json").unlink()
    custodians = [world.pub(c) for c in CUSTODIANS]
    result = world.run(out, "--resume", "--custodians", *custodians, "--threshold", 2)
    assert result.rc != 0
    assert "policy differs from the policy the job's signed log records" in result.err
    assert (out / "escrow.json").read_bytes() == swapped.dumps()
    assert not (out / "_done/shard-000001.json").exists()


def _mallory_policy(w: World) -> ShamirPolicy:
    return ShamirPolicy(2, tuple(CustodianPublic.load(w.pub(m)) for m in ("mallory1", "mallory2")))


def _forged_policy_entry(request: RestoreRequest, policy: ShamirPolicy) -> dict:
    """``escrow.rekey`` details that move the logged policy to ``policy``."""
    return {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "purpose": "rekey",
        "policy": policy.to_json(),
        "custodians": [
            {"name": c.name, "fingerprint": c.fingerprint, "ed25519": b64e(c.ed25519)}
            for c in policy.custodians
        ],
    }


def test_row3_resume_refuses_attacker_policy_logged_by_a_forged_rekey(world, one_sample):
    """Row 3 again, by someone who also made a restore request: they append an escrow.rekey
    naming their own request (signed by its key) that moves the logged policy to mallory, then
    swap escrow.json to mallory's custodians. A resume must still refuse."""
    out = world.copy("out-row3-forged-rekey")
    req, _, _ = one_sample
    request, keys = request_keys(req)
    policy = _mallory_policy(world)
    writer = AuditWriter(keys.ed25519, "requester:dpo-on-duty")
    append(str(out), writer, "escrow.rekey", _forged_policy_entry(request, policy))
    escrow = Escrow.loads((out / "escrow.json").read_bytes())
    swapped = Escrow(escrow.job_id, escrow.revision, policy, (new_epoch(escrow.job_id, policy),))
    (out / "escrow.json").write_bytes(swapped.dumps())
    (out / "_done/shard-000001.json").unlink()
    result = world.run(out, "--resume")
    assert result.rc != 0, "the resume sealed shard-000001 to mallory's custodians"
    assert (out / "escrow.json").read_bytes() == swapped.dumps()


# ---- row 5: altered key manifests --------------------------------------------------------------


@pytest.fixture(scope="module")
def all_approved(world):
    req, _ = world.request("--all")
    return req, [world.approve(req, "alice"), world.approve(req, "bob")]


def _tamper(manifest: Path, how: str) -> None:
    table = pq.read_table(manifest)
    rows = table.to_pylist()
    face = next(i for i, r in enumerate(rows) if r["face"] >= 0)
    if how == "bbox shifted":
        x1, y1, x2, y2 = rows[face]["bbox"]
        rows[face]["bbox"] = [x1 + 3, y1, x2 + 3, y2]
    elif how == "face row deleted":
        del rows[face]
    else:
        rows = []
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)


@pytest.mark.parametrize("how", ["bbox shifted", "face row deleted", "manifest emptied"])
def test_row5_altered_key_manifest_restores_nothing(world, all_approved, how):
    """Old code: a re-boxed face, a dropped row or an emptied manifest restored what was left
    and "succeeded". Now the manifest must be the row list the job signed."""
    req, approvals = all_approved
    out = world.copy(f"out-row5-{how.replace(' ', '-')}")
    shard = next(
        p.stem for p in sorted((out / "keys").glob("*.parquet")) if _has_faces(p)
    )  # fmt: skip
    _tamper(out / "keys" / f"{shard}.parquet", how)
    dest = world.root / f"row5-{how.replace(' ', '-')}"
    applied = actions(out).count("restore.apply")
    error = world.apply(req, approvals, dest, out=out).one_error()
    if how == "bbox shifted":  # the row list is the same; the box is bound in each row's AAD
        assert f"of '{shard}' did not decrypt" in error and "re-boxed" in error
    else:
        assert f"keys/{shard}.parquet differs from the row list the job signed" in error
        assert "dropped, added, moved or altered" in error
    assert not dest.exists()
    assert actions(out)[-1] == "restore.failed"
    assert actions(out).count("restore.apply") == applied


def _has_faces(manifest: Path) -> bool:
    return any(r["face"] >= 0 for r in pq.read_table(manifest).to_pylist())


# ---- row 6: a reshare goes to the request's custodians only ------------------------------------


def test_row6_reshare_goes_only_to_the_custodians_the_request_names(world):
    """Old code: approvals of a reshare request let the command line name any custodians (the
    rebuilt master key went wherever it was told). Now the request's policy is the only one."""
    w = world
    out = w.copy("out-row6")
    new = [w.pub("alice"), w.pub("bob"), w.pub("dave")]
    req, _ = w.request("--purpose", "reshare", "--custodians", *new, "--threshold", 2, out=out)
    approvals = [w.approve(req, "alice"), w.approve(req, "bob")]
    before = (out / "escrow.json").read_bytes()
    mallory = ["--custodians", w.pub("mallory1"), w.pub("mallory2"), "--threshold", 2]
    error = w.escrow("reshare", out, req, approvals, *mallory).one_error()
    assert "approvals authorize only what their request names" in error
    assert (out / "escrow.json").read_bytes() == before
    assert "escrow.reshare" not in actions(out)
    result = w.escrow("reshare", out, req, approvals)
    assert result.rc == 0, result.err
    escrow = Escrow.loads((out / "escrow.json").read_bytes())
    assert [c.name for c in escrow.policy.custodians] == ["alice", "bob", "dave"]
    for who in ("mallory1", "mallory2"):
        private = CustodianPrivate.load(w.key(who), PASSPHRASES[who])
        for epoch in escrow.epochs:
            with pytest.raises(KeyLibraryError):
                epoch.open_share(private)
    req, _ = w.request("--all", out=out)
    assert "no custodian with fingerprint" in w.approve_result(req, "mallory1").one_error()
    assert not req.with_suffix(".mallory1.approval").exists()


# ---- rows 7 and 13: after a rekey --------------------------------------------------------------


@pytest.fixture(scope="module")
def rekeyed(world):
    """A copy of the output, restored once (request R1), then rekeyed under umask 022."""
    w = world
    out = w.copy("out-rekeyed")
    r1, _ = w.request("--key", pick(out, "png"), out=out)
    result = w.apply(r1, [w.approve(r1, "alice"), w.approve(r1, "bob")], w.root / "r1", out=out)
    assert result.rc == 0, result.err
    req, _ = w.request("--purpose", "rekey", out=out)
    approvals = [w.approve(req, "bob"), w.approve(req, "carol")]
    old = os.umask(0o022)
    try:
        result = w.escrow("rekey", out, req, approvals)
    finally:
        os.umask(old)
    assert result.rc == 0, result.err
    return out, r1, req


def _forge(w: World, out: Path, req: Path, action: str, details: dict) -> str:
    """Append ``action`` signed by ``req``'s requester key; the verify error (or "")."""
    good = (out / "audit.jsonl").read_bytes()
    _, keys = request_keys(req)
    append(str(out), AuditWriter(keys.ed25519, "requester:dpo-on-duty"), action, details)
    try:
        result = cli("audit", "verify", out, "-q")
        return result.one_error() if result.rc else ""
    finally:
        (out / "audit.jsonl").write_bytes(good)


def test_row7_forged_job_end_signed_by_an_earlier_requester_key_fails_verify(world, rekeyed):
    """Old code: every restore recovered the job's audit signing key (escrowed with the master
    key), so any later entry, job.end included, could be signed with it and verified."""
    out, r1, _ = rekeyed
    request = RestoreRequest.loads(r1.read_bytes())
    error = _forge(world, out, r1, "job.end", {"request_id": request.request_id, "samples": 4})
    assert "job.end must be signed by the running job's key" in error


def _rekey_details(w: World, out: Path, request: RestoreRequest) -> dict:
    last = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()][-1]
    assert last["action"] == "escrow.rekey"
    mallory = [CustodianPublic.load(w.pub(m)) for m in ("mallory1", "mallory2")]
    return last["details"] | {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "policy": ShamirPolicy(2, tuple(mallory)).to_json(),
        "custodians": [
            {"name": c.name, "fingerprint": c.fingerprint, "ed25519": b64e(c.ed25519)}
            for c in mallory
        ],
    }


def test_row7_forged_rekey_signed_by_another_requests_key_fails_verify(world, rekeyed):
    """An escrow.rekey naming the real rekey request but signed by R1's requester key."""
    out, r1, req = rekeyed
    details = _rekey_details(world, out, RestoreRequest.loads(req.read_bytes()))
    error = _forge(world, out, r1, "escrow.rekey", details)
    assert "escrow.rekey must be signed by the requester key of its request" in error


def test_row7_forged_rekey_of_an_earlier_restore_request_fails_verify(world, rekeyed):
    """An escrow.rekey that names R1 (a restore request) and is signed by R1's own key: it
    moves the logged policy to mallory and commits manifests nobody approved."""
    out, r1, _ = rekeyed
    details = _rekey_details(world, out, RestoreRequest.loads(r1.read_bytes()))
    assert _forge(world, out, r1, "escrow.rekey", details)


def test_row13_rekeyed_escrow_and_manifests_are_private(rekeyed):
    """Old code wrote the re-sealed files 0644 under umask 022."""
    out, _, _ = rekeyed
    for path in [out / "escrow.json", *sorted((out / "keys").glob("*.parquet"))]:
        assert path.stat().st_mode & 0o777 == 0o600, path


# ---- row 10: a request_id that is a path -------------------------------------------------------


def test_row10_request_id_with_a_path_is_refused(world, tmp_path):
    """Old code put request_id into file names (key file, staging folder). Now approve and
    apply refuse it, edited (signature then fails too) or properly re-signed."""
    w = world
    req, _ = w.request("--key", pick(w.out, "png"))
    evil = "x/../../../../tmp/victim"
    edited = req.with_name("edited.json")
    edited.write_text(json.dumps(json.loads(req.read_text()) | {"request_id": evil}))
    shutil.copy(req.with_suffix(".key"), edited.with_suffix(".key"))
    resigned = resign(req, request_id=evil)
    before = _files(w.root)
    victims = set(Path("/tmp").glob("victim*"))
    for forged in (edited, resigned):
        error = w.approve_result(forged, "alice").one_error()
        assert "request_id must be 32 lowercase hex characters" in error
        dest = tmp_path / f"dest-{forged.stem}"
        error = w.apply(forged, [w.approve(req, "alice"), w.approve(req, "bob")], dest).one_error()
        assert "request_id must be 32 lowercase hex characters" in error
        assert not dest.exists()
    new = _files(w.root) - before
    assert {p.name for p in new} <= {f"{req.stem}.alice.approval", f"{req.stem}.bob.approval"}
    assert set(Path("/tmp").glob("victim*")) == victims


# ---- escrow format 2 outputs -------------------------------------------------------------------


def test_legacy_v2_output_restores_with_a_warning(tmp_path):
    """The committed format-2 output: request (warns), two approvals, apply restores both PNGs
    byte-exact (their sha256 is the inputs'), with the warning on stderr."""
    root = _legacy_copy(tmp_path)
    out, work = root / "tree", root / "work"
    argv = ["restore", "request", out, "--all", "--reason", "legacy audit", "--kdf-work", 15]
    argv += ["--out", work / "req.json", "--key-out", work / "req.key", "--requester", "dpo"]
    result = cli(*argv, "--passphrase-file", root / "keys/alice.pass")
    assert result.rc == 0, result.err
    assert "earlier master-key escrow" in result.err
    approvals = []
    for who in ("alice", "carol"):
        argv = ["restore", "approve", work / "req.json", "--identity", root / f"keys/{who}.key"]
        argv += ["--yes", "--out", work / f"{who}.approval"]
        result = cli(*argv, "--passphrase-file", root / f"keys/{who}.pass")
        assert result.rc == 0, result.err
        approvals.append(work / f"{who}.approval")
    dest = tmp_path / "restored"
    argv = ["restore", "apply", out, work / "req.json", *approvals, "--dest", dest]
    argv += ["--request-key", work / "req.key"]
    result = cli(*argv, "--passphrase-file", root / "keys/alice.pass")
    assert result.rc == 0, result.err
    assert "warning: this output uses the earlier master-key escrow" in result.err
    index = json.loads((dest / "restored.json").read_text())
    expected = json.loads((LEGACY / "originals.sha256.json").read_text())
    assert sorted(Path(uri).name for uri in index.values()) == sorted(expected)
    for key, uri in index.items():
        original = _legacy_input(Path(uri).name)
        assert hashlib.sha256(original).hexdigest() == expected[Path(uri).name]["file_sha256"]
        (restored,) = dest.glob(f"{key}.*")
        restored_rgb = decode_image(restored.read_bytes()).rgb
        assert np.array_equal(restored_rgb, decode_image(original).rgb), uri


def _legacy_input(name: str) -> bytes:
    """The fixture's input ``name``, made again as its README says (a bicubic resize of the
    bundled photo, saved as PNG with the photo's metadata): its sha256 is the recorded one.
    A restore gives back the pixels (faces pasted into the anonymized image, re-encoded), not
    the file's metadata (obama.jpg's ICC profile and dpi), so pixels are what is compared."""
    source, width = {"obama.png": ("obama.jpg", 300), "two_people.png": ("two_people.jpg", 400)}[
        name
    ]
    photo = Image.open(demo_data.path(source))
    size = (width, int(width * photo.height / photo.width))
    buf = io.BytesIO()
    photo.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def test_row10_legacy_request_id_with_a_path_is_refused(tmp_path):
    """Row 10 on the format-2 path: the requester edits request_id (format-2 requests are
    unsigned) and re-seals their key file to it; custodians and apply must refuse it."""
    root = _legacy_copy(tmp_path)
    out, work = root / "tree", root / "work"
    passphrase = (root / "keys/alice.pass").read_text().strip()
    argv = ["restore", "request", out, "--all", "--reason", "legacy audit", "--kdf-work", 15]
    argv += ["--out", work / "req.json", "--key-out", work / "req.key", "--requester", "dpo"]
    assert cli(*argv, "--passphrase-file", root / "keys/alice.pass").rc == 0
    doc = json.loads((work / "req.json").read_text()) | {"request_id": "x/../../victim"}
    (work / "evil.json").write_text(json.dumps(doc))
    evil_sha = hashlib.sha256(canonical_json(doc)).hexdigest()  # the request's own identity
    secret = passphrase_open(json.loads((work / "req.key").read_text()), passphrase, V2_KEY)
    header = {"format": V2_KEY, "request_id": doc["request_id"], "request_sha256": evil_sha}
    sealed = passphrase_seal(header, secret, passphrase, ScryptParams(n=2**15))
    (work / "evil.key").write_text(json.dumps(sealed))
    approvals = []
    for who in ("alice", "bob"):
        argv = ["restore", "approve", work / "evil.json", "--identity", root / f"keys/{who}.key"]
        argv += ["--yes", "--out", work / f"{who}.approval"]
        approvals.append(cli(*argv, "--passphrase-file", root / f"keys/{who}.pass"))
    dest, victim = root / "dest", root / "victim.partial"
    (dest / ".restore-x").mkdir(parents=True)
    victim.mkdir()
    (victim / "precious.txt").write_text("not the restore's to delete")
    if all(a.rc == 0 for a in approvals):
        argv = ["restore", "apply", out, work / "evil.json", work / "alice.approval"]
        argv += [work / "bob.approval", "--dest", dest, "--request-key", work / "evil.key"]
        applied = cli(*argv, "--passphrase-file", root / "keys/alice.pass")
        assert (victim / "precious.txt").exists(), "apply deleted a folder outside --dest"
        assert "request_id" in applied.one_error()
    for approval in approvals:
        assert "request_id" in approval.one_error()


def _legacy_copy(tmp_path: Path) -> Path:
    root = tmp_path / "legacy"
    shutil.copytree(LEGACY, root)
    for path in (root / "keys").glob("*.pass"):
        path.chmod(0o600)
    (root / "work").mkdir()
    return root
