"""The key subcommands end to end on a real job output (``faceveil run`` on the bundled
public-domain photos, 2-of-3 custodians): keygen, request, approve (terminal prompt), apply,
audit verify, reshare to a new custodian, rekey, a restore from ``s3://`` and a KMS escrow on
moto. A resumed job (two key epochs) is in ``test_escrow_workflow.py``; the security review's
findings are in ``test_review_findings.py``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest

from faceveil.jobs.auditlog import append
from faceveil.jobs.keys_cli import main
from faceveil.jobs.restorelog import approval_details
from faceveil.manifests.audit import AuditWriter
from faceveil.manifests.escrow import Escrow, new_epoch
from faceveil.manifests.keymanifest import key_manifest_bytes, key_manifest_epoch, load_key_manifest
from faceveil.manifests.restore import Approval
from tests.jobs.escrow_world import (
    CUSTODIANS,
    REASON,
    World,
    actions,
    check_restored,
    cli,
    make_world,
    pick,
    public_metadata,
    request_keys,
    resign,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local) -> World:
    return make_world(tmp_path_factory.mktemp("keys-cli"))


def test_keygen_refuses_weak_scrypt_and_short_passphrases(tmp_path, capsys):
    argv = ["custodian", "keygen", "--name", "erin", "--out", str(tmp_path / "keys")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--kdf-work", "10"])
    assert exit_.value.code == 2 and "--kdf-work" in capsys.readouterr().err
    short = tmp_path / "short.pass"
    short.write_text("eleven char\n")
    short.chmod(0o600)
    assert main([*argv, "--passphrase-file", str(short), "--kdf-work", "15"]) == 1
    assert "at least 12 characters" in capsys.readouterr().err
    assert not (tmp_path / "keys/erin.key").exists()


def test_full_workflow_restores_exact_originals(world):
    """Every sample: PNG inputs pixel-exact, JPEG face regions exact; the log verifies; no
    copy of the inputs (``shards/``) under OUT (review row 4)."""
    w = world
    assert not (w.out / "shards").exists()
    escrow = Escrow.loads((w.out / "escrow.json").read_bytes())
    assert escrow.scheme == "shamir" and escrow.policy.threshold == 2
    assert [c.name for c in escrow.policy.custodians] == list(CUSTODIANS)
    everything = set(public_metadata(w.out))
    assert len(everything) == len(w.photos) and pick(w.out, "png") and pick(w.out, "jpg")
    req, request = w.request("--all")
    assert {s.sample_id for s in request.samples} == everything
    approvals = [w.approve(req, "alice"), w.approve(req, "carol")]
    result = w.apply(req, approvals, w.root / "restored")
    assert result.rc == 0, result.err
    check_restored(w, w.root / "restored", everything)
    assert actions(w.out)[-4:] == [
        "restore.request",
        "restore.approve",
        "restore.approve",
        "restore.apply",
    ]
    tail = [line for line in result.out.splitlines() if line.startswith("audit tail: ")][-1]
    verify = cli("audit", "verify", w.out, "--expect-tail", tail.split(": ")[1])
    assert verify.rc == 0, verify.err


def test_approve_asks_on_the_terminal_before_approving(world, monkeypatch):
    w = world
    req, request = w.request("--key", pick(w.out, "png"), "--key", pick(w.out, "jpg"))
    asked = []

    def answer(reply):
        def ask(text):
            asked.append(text)
            return reply

        return ask

    monkeypatch.setattr("faceveil.jobs.cli_io.ask_tty", answer("n\n"))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    argv = ["restore", "approve", req, "--identity", w.key("alice")]
    argv += ["--passphrase-file", w.passfiles["alice"]]
    result = cli(*argv)
    assert result.rc == 1 and "not approved" in result.err and not result.out
    text = asked.pop()
    assert REASON in text and "dpo-on-duty" in text and "restore of 2 sample(s)" in text
    for ref in request.samples:
        assert ref.sample_id in text
    monkeypatch.setattr("faceveil.jobs.cli_io.ask_tty", answer("y\n"))
    result = cli(*argv)
    assert result.rc == 0, result.err
    approval = Approval.loads(result.out)
    assert approval.custodian == "alice" and "written to stdout" in result.err


def test_approve_without_a_terminal_needs_yes(world, monkeypatch):
    w = world
    req, _ = w.request("--key", pick(w.out, "png"))

    def no_tty(*args, **kwargs):
        raise OSError(6, "No such device or address", "/dev/tty")

    monkeypatch.setattr("faceveil.jobs.cli_io.open", no_tty, raising=False)
    argv = ["restore", "approve", req, "--identity", w.key("alice")]
    result = cli(*argv, "--passphrase-file", w.passfiles["alice"])
    assert result.rc == 1 and "no terminal to confirm on" in result.err and not result.out


def test_apply_does_not_record_an_approval_twice(world):
    """An approval recorded by its custodian (--out-tree) and the request are recorded once,
    however often the request is applied."""
    w = world
    req, request = w.request("--key", pick(w.out, "png"))
    alice = w.approve_result(req, "alice", "--out-tree", w.out)
    assert alice.rc == 0, alice.err
    assert actions(w.out)[-2:] == ["restore.request", "restore.approve"]
    approvals = [req.with_suffix(".alice.approval"), w.approve(req, "carol")]
    for dest in ("d1", "d2"):
        result = w.apply(req, approvals, w.root / dest)
        assert result.rc == 0, result.err
    assert actions(w.out)[-5:] == [
        "restore.request",
        "restore.approve",
        "restore.approve",
        "restore.apply",
        "restore.apply",
    ]
    log = [json.loads(line) for line in (w.out / "audit.jsonl").read_text().splitlines()]
    mine = [e for e in log if e["details"].get("request_id") == request.request_id]
    assert [e["actor"] for e in mine[:3]] == [
        "requester:dpo-on-duty",
        "custodian:alice",
        "requester:dpo-on-duty",
    ]
    assert cli("audit", "verify", w.out, "-q").rc == 0


def test_failures_restore_nothing(world):
    w = world
    req, _ = w.request("--all")
    alice, bob = w.approve(req, "alice"), w.approve(req, "bob")
    dest = w.root / "refused"
    cases = [
        ([alice], "needs 2"),
        ([alice, alice], "counts once"),
    ]
    for approvals, message in cases:
        assert message in w.apply(req, approvals, dest).one_error()
        assert not dest.exists()
    argv = ["restore", "apply", w.out, req, alice, bob, "--dest", dest]
    argv += ["--request-key", req.with_suffix(".key"), "--passphrase-file", w.passfiles["bob"]]
    assert "wrong passphrase" in cli(*argv).one_error()
    assert not dest.exists()


def test_restore_from_s3(world, s3):
    """The same output, uploaded to moto S3, restores from ``s3://`` exactly."""
    w = world
    bucket = s3.bucket("keys-cli-out")
    client = s3.client()
    for path in w.out.rglob("*"):
        if path.is_file():
            rel = path.relative_to(w.out).as_posix()
            client.put_object(Bucket=bucket[5:], Key=f"out/{rel}", Body=path.read_bytes())
    url = f"{bucket}/out"
    png, jpg = pick(w.out, "png"), pick(w.out, "jpg")
    req, _ = w.request("--key", png, "--key", jpg, out=url)
    approvals = [w.approve(req, "bob"), w.approve(req, "carol")]
    dest = w.root / "from-s3"
    result = w.apply(req, approvals, dest, out=url)
    assert result.rc == 0, result.err
    check_restored(w, dest, {png, jpg})
    verify = cli("audit", "verify", url)
    assert verify.rc == 0, verify.err
    log = client.get_object(Bucket=bucket[5:], Key="out/audit.jsonl")["Body"].read()
    assert log.decode().splitlines()[-1].find('"restore.apply"') > 0


def _apply_exactly(w, out: Path, req: Path, approvers: tuple[str, ...], keys: set[str]) -> None:
    """Apply ``req`` with the approvals of ``approvers``: exactly ``keys`` come back, and the
    audit log of ``out`` still verifies."""
    dest = w.root / f"restored-{req.stem}"
    result = w.apply(req, [w.approve(req, who) for who in approvers], dest, out=out)
    assert result.rc == 0, result.err
    check_restored(w, dest, keys, out=out)
    assert cli("audit", "verify", out, "-q").rc == 0


def test_reshare_then_restore_with_a_new_custodian(world):
    """carol replaced by dave: alice and dave restore; carol's approval no longer counts."""
    w = world
    out = w.copy("out-reshare")
    req, _ = w.request(
        "--purpose", "reshare", "--custodians", w.pub("alice"), w.pub("bob"), w.pub("dave"),
        "--threshold", 2, out=out,
    )  # fmt: skip
    approvals = [w.approve(req, "alice"), w.approve(req, "carol")]
    result = w.escrow("reshare", out, req, approvals)
    assert result.rc == 0, result.err
    escrow = Escrow.loads((out / "escrow.json").read_bytes())
    assert [c.name for c in escrow.policy.custodians] == ["alice", "bob", "dave"]
    png, jpg = pick(out, "png"), pick(out, "jpg")
    req, _ = w.request("--key", png, "--key", jpg, out=out)
    assert "no custodian with fingerprint" in w.approve_result(req, "carol").one_error()
    _apply_exactly(w, out, req, ("alice", "dave"), {png, jpg})
    assert "escrow.reshare" in actions(out)


def test_rekey_reseals_and_old_approvals_no_longer_work(world):
    w = world
    out = w.copy("out-rekey")
    png = pick(out, "png")
    old_req, _ = w.request("--key", png, out=out)
    old = [w.approve(old_req, "alice"), w.approve(old_req, "bob")]
    before = {p.name: p.read_bytes() for p in (out / "keys").iterdir()}
    req, request = w.request("--purpose", "rekey", out=out)
    assert len(request.samples) == len(w.photos)
    approvals = [w.approve(req, "bob"), w.approve(req, "carol")]
    result = w.escrow("rekey", out, req, approvals)
    assert result.rc == 0, result.err
    escrow = Escrow.loads((out / "escrow.json").read_bytes())
    (epoch,) = escrow.escrow_ids
    for path in (out / "keys").iterdir():
        assert key_manifest_epoch(path) == epoch and path.read_bytes() != before[path.name]
    dest = w.root / "rekey-old"
    error = w.apply(old_req, old, dest, out=out).one_error()
    assert "make a new request" in error and not dest.exists()
    req, _ = w.request("--key", png, out=out)
    _apply_exactly(w, out, req, ("alice", "carol"), {png})


# ---- KMS escrow on moto ----------------------------------------------------------------------


def test_kms_escrow_restore_needs_no_approvals(tmp_path_factory, ray_local, s3):
    """``--kms``: the actors call GenerateDataKey on moto themselves (the session Ray's
    workers get AWS_ENDPOINT_URL, which botocore uses for KMS too); apply needs no approval."""
    kms = boto3.client("kms", endpoint_url=s3.direct, region_name="us-east-1")
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    w = make_world(tmp_path_factory.mktemp("kms"), run_args=("--kms", f"aws-kms:{arn}"))
    assert json.loads((w.out / "escrow.json").read_text())["scheme"] == "kms"
    req, _ = w.request("--all")
    dest = w.root / "kms-restored"
    argv = ["restore", "apply", w.out, req, "--dest", dest, "--kms-endpoint", s3.endpoint]
    argv += ["--request-key", req.with_suffix(".key")]
    result = cli(*argv, "--passphrase-file", w.passfiles["requester"], cwd=w.requester)
    assert result.rc == 0, result.err
    check_restored(w, dest, set(public_metadata(w.out)))
    assert actions(w.out)[-1] == "restore.apply"
    assert cli("audit", "verify", w.out, "-q").rc == 0


def test_request_names_samples_or_the_whole_job(world):
    w = world
    assert "name samples" in w.request_result().one_error()
    error = w.request_result("--purpose", "rekey", "--key", pick(w.out, "png")).one_error()
    assert "covers the whole job" in error
    missing = w.request_result("--key", "f" * 32).one_error()
    assert "in no key manifest" in missing


def test_interrupted_rekey_must_be_finished(world, monkeypatch):
    """A rekey that stops after its audit entry and COMPLETE marker blocks every request until
    ``escrow rekey OUT --finish`` publishes the stage; then restores work again."""
    w = world
    out = w.copy("out-interrupted")
    req, _ = w.request("--purpose", "rekey", out=out)
    approvals = [w.approve(req, "alice"), w.approve(req, "bob")]

    def crash(location):
        raise OSError("simulated crash before publishing")

    monkeypatch.setattr("faceveil.jobs.restore_cli.publish_rekey", crash)
    assert "simulated crash" in w.escrow("rekey", out, req, approvals).one_error()
    monkeypatch.undo()
    assert (out / "_rekey/COMPLETE").exists()
    assert "an interrupted rekey is pending" in w.request_result("--all", out=out).one_error()
    assert "rerun with --finish" in cli("escrow", "rekey", out).one_error()
    result = cli("escrow", "rekey", out, "--finish")
    assert result.rc == 0 and "published the staged rekey (2 manifests)" in result.out
    assert not (out / "_rekey").exists()
    png = pick(out, "png")
    req, _ = w.request("--samples", png, out=out)
    _apply_exactly(w, out, req, ("bob", "carol"), {png})


def test_request_with_a_forged_escrow_copy_is_refused(world):
    """A request re-signed by its requester with another escrow copy: a swapped public share
    does not even parse; a valid escrow of a fresh key under the same custodians, epoch id and
    revision is refused by custodians checking against OUT and by apply."""
    w = world
    req, request = w.request("--key", pick(w.out, "png"))
    doc = request.escrow.to_json()
    shares = doc["epochs"][0]["public_shares"]
    doc["epochs"][0]["public_shares"] = [shares[1], *shares[1:]]
    error = w.approve_result(resign(req, escrow=doc), "alice").one_error()
    assert "the public shares do not interpolate to the escrow public key" in error
    escrow = request.escrow
    (epoch,) = escrow.epochs
    fresh = new_epoch(escrow.job_id, escrow.policy, epoch.escrow_id)
    other = Escrow(escrow.job_id, escrow.revision, escrow.policy, (fresh,))
    forged = resign(req, escrow=other.to_json())
    approve = w.approve_result(forged, "carol", "--out-tree", w.out).one_error()
    assert "forged or altered request" in approve
    approvals = [w.approve(forged, "alice"), w.approve(forged, "bob")]
    dest = w.root / "forged-escrow"
    assert "forged or altered request" in w.apply(forged, approvals, dest).one_error()
    assert not dest.exists()


def test_audit_verify_checks_recorded_approval_signatures(world):
    """An approval recorded by the requester: its custodian's signed statement is checked."""
    w = world
    out = w.copy("out-approval-signature")
    req, _ = w.request("--key", pick(out, "png"), out=out)
    request, keys = request_keys(req)
    approval = Approval.loads(w.approve(req, "alice").read_bytes())
    escrow = Escrow.loads((out / "escrow.json").read_bytes())
    details = approval_details(request, approval, escrow.policy.custodian(approval.fingerprint))
    writer = AuditWriter(keys.ed25519, "requester:dpo-on-duty")
    good = (out / "audit.jsonl").read_bytes()
    append(str(out), writer, "restore.approve", details)
    assert cli("audit", "verify", out, "-q").rc == 0
    (out / "audit.jsonl").write_bytes(good)
    details["statement"]["time"] = "2000-01-01T00:00:00Z"
    append(str(out), writer, "restore.approve", details)
    line = len(good.splitlines()) + 1
    error = cli("audit", "verify", out, "-q").one_error()
    assert f"audit line {line}: the approval by 'alice': bad custodian signature" in error


def test_manifest_of_an_unknown_epoch_is_one_clear_error(world):
    w = world
    req, _ = w.request("--all")
    approvals = [w.approve(req, "alice"), w.approve(req, "bob")]
    out = w.copy("out-unknown-epoch")
    manifest = out / "keys/shard-000001.parquet"
    parsed = load_key_manifest(manifest.read_bytes())
    manifest.write_bytes(key_manifest_bytes(parsed.rows, "0" * 32, parsed.version))
    dest = w.root / "unknown-epoch"
    error = w.apply(req, approvals, dest, out=out).one_error()
    assert "keys/shard-000001.parquet was sealed under a key epoch escrow.json lacks" in error
    assert not dest.exists()


def test_rekey_to_kms_then_restore_without_approvals(world, s3):
    """``restore request --purpose rekey --kms``, two approvals, ``escrow rekey``: every
    manifest re-sealed under a KMS epoch (moto); a restore then needs no approval."""
    w = world
    out = w.copy("out-rekey-kms")
    kms = boto3.client("kms", endpoint_url=s3.direct, region_name="us-east-1")
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    req, request = w.request("--purpose", "rekey", "--kms", f"aws-kms:{arn}", out=out)
    assert request.new_policy.describe() == f"KMS key {arn}"
    approvals = [w.approve(req, "alice"), w.approve(req, "carol")]
    result = w.escrow("rekey", out, req, approvals, "--kms-endpoint", s3.endpoint)
    assert result.rc == 0, result.err
    assert json.loads((out / "escrow.json").read_text())["scheme"] == "kms"
    req, _ = w.request("--all", out=out)
    dest = w.root / "after-kms-rekey"
    argv = ["restore", "apply", out, req, "--dest", dest, "--kms-endpoint", s3.endpoint]
    argv += ["--request-key", req.with_suffix(".key")]
    result = cli(*argv, "--passphrase-file", w.passfiles["requester"])
    assert result.rc == 0, result.err
    check_restored(w, dest, set(public_metadata(out)), out=out)
    assert cli("audit", "verify", out, "-q").rc == 0
