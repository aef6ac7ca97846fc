"""The anchored audit log: appends that anchor each tail, and verification of the output tree.

Logs are written through the real append function with real Ed25519 keys; anchors are a local
folder and a moto S3 bucket with Object Lock. The last test runs a real escrowed job with
``faceveil run --audit-anchor`` and verifies it with ``faceveil audit verify``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import faceveil.jobs.cli
from faceveil.jobs.auditlog import Anchor, append, recorded_anchor, verify_tree
from faceveil.jobs.keys_cli import main as keys_main
from faceveil.jobs.storage import Location
from faceveil.manifests.audit import AuditTail, AuditWriter, key_id
from faceveil.manifests.errors import AuditError
from tests.factories import JobInput

JOB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
REQUESTER = Ed25519PrivateKey.from_private_bytes(bytes(range(4, 36)))
JOB_ID = "job-1"


def _b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def _kid(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key().public_bytes_raw())


def _write_job(out: Path | str, anchor: str | None) -> None:
    """job.start, job.end, then a restore request and two restore.failed: six lines."""
    job, req = AuditWriter(JOB_KEY, "operator"), AuditWriter(REQUESTER, "requester:dpo")
    start = {"job_id": JOB_ID, "audit_public_key": _b64(JOB_KEY), "audit_key_id": _kid(JOB_KEY)}
    append(str(out), job, "job.start", start | {"audit_anchor": anchor})
    append(str(out), job, "job.end", {"status": "complete"})
    request = {
        "request_id": "ab" * 16,
        "request_sha256": "cd" * 32,
        "requester_key": _b64(REQUESTER),
        "purpose": "restore",
    }
    append(str(out), req, "restore.request", request)
    for error in ("one", "two", "three"):
        append(str(out), req, "restore.failed", {"request_id": "ab" * 16, "error": error})


@pytest.fixture
def anchored_job(tmp_path) -> tuple[Path, str]:
    """(out, anchor): the six-line log of ``_write_job`` anchored in a local folder."""
    out, anchor = tmp_path / "out", str(tmp_path / "anchor")
    _write_job(out, anchor)
    return out, anchor


def _bad_line(tree: str | Location, match: str) -> int:
    """The line of the AuditError, matching ``match``, that verifying ``tree`` raises."""
    with pytest.raises(AuditError, match=match) as err:
        verify_tree(tree)
    return err.value.line


def _cut(out: Path, keep: int) -> None:
    log = out / "audit.jsonl"
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:keep]))


def test_local_anchor_detects_the_last_three_lines_cut(anchored_job):
    out, anchor = anchored_job
    assert sorted(p.name for p in Path(anchor).iterdir()) == [f"{s:012d}.json" for s in range(1, 7)]
    result = verify_tree(str(out), [_kid(JOB_KEY)])
    assert result.anchor == anchor and result.report.tail.seq == 6
    assert "anchored: lines 1..6" in "\n".join(result.summary())
    _cut(out, 3)
    assert _bad_line(str(out), "ends at line 3 but .* anchors line 6") == 4


def test_appending_after_a_cut_cannot_overwrite_the_anchor(anchored_job):
    out, anchor = anchored_job
    _cut(out, 3)
    req = AuditWriter(REQUESTER, "requester:dpo")
    with pytest.raises(AuditError, match="already holds another line 4"):
        append(str(out), req, "restore.failed", {"request_id": "ab" * 16, "error": "forged"})
    assert len((out / "audit.jsonl").read_bytes().splitlines()) == 3


def test_lines_appended_without_anchoring_fail(anchored_job):
    out, anchor = anchored_job
    log = out / "audit.jsonl"
    data, _ = AuditWriter(REQUESTER, "requester:dpo").append(
        log.read_bytes(), "restore.failed", {"request_id": "ab" * 16, "error": "unanchored"}
    )
    log.write_bytes(data)
    assert _bad_line(str(out), "appended without anchoring") == 7
    (Path(anchor) / "000000000003.json").unlink()
    _cut(out, 6)
    assert _bad_line(str(out), "appended without anchoring") == 3


def test_anchor_objects_must_match_the_log(anchored_job):
    out, anchor = anchored_job
    path = Path(anchor) / "000000000002.json"
    doc = json.loads(path.read_bytes())
    path.write_text(json.dumps(doc | {"sha256": "0" * 64}))
    assert _bad_line(str(out), "differs from its anchored tail") == 2
    path.write_text(json.dumps(doc | {"job_id": "another-job"}))
    with pytest.raises(AuditError, match="not a tail of job job-1"):
        verify_tree(str(out))


def test_unanchored_log_says_truncation_cannot_be_detected(tmp_path, capsys):
    out = tmp_path / "out"
    _write_job(out, None)
    _cut(out, 3)
    assert keys_main(["audit", "verify", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "unanchored: truncation after line 3 cannot be detected" in printed
    assert "trust rests on the job key ids published when the run started" in printed
    assert keys_main(["audit", "verify", str(out), "-q", "--job-key", _kid(JOB_KEY)]) == 0
    printed = capsys.readouterr().out
    assert "unanchored: truncation after line 3" in printed and "trust rests" not in printed


def test_anchor_named_by_the_user(tmp_path, anchored_job, capsys):
    out, anchor = anchored_job
    assert keys_main(["audit", "verify", str(out), "-q", "--anchor", anchor]) == 0
    assert keys_main(["audit", "verify", str(out), "-q", "--anchor", str(tmp_path)]) == 1
    assert "is not the anchor the signed start names" in capsys.readouterr().err
    bare = tmp_path / "bare"
    _write_job(bare, None)  # a log rewritten without its anchor, checked against the real one
    assert keys_main(["audit", "verify", str(bare), "-q", "--anchor", anchor]) == 1
    assert "differs from its anchored tail" in capsys.readouterr().err
    with pytest.raises(AuditError, match="anchored at None, not"):
        append(str(bare), AuditWriter(JOB_KEY, "x"), "job.end", {}, anchor=anchor)


def test_pinned_job_key_that_does_not_match_fails(tmp_path, capsys):
    out = tmp_path / "out"
    _write_job(out, str(tmp_path / "anchor"))
    other = "ed25519:" + "0" * 32
    assert keys_main(["audit", "verify", str(out), "-q", "--job-key", other]) == 1
    assert f"the job key {_kid(JOB_KEY)} is not pinned" in capsys.readouterr().err


@pytest.fixture
def locked_bucket(s3) -> str:
    """A moto S3 bucket with Object Lock (compliance mode, one day) for the anchor."""
    client = s3.client()
    name = "audit-anchor-locked"
    if name not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        client.put_object_lock_configuration(
            Bucket=name,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
            },
        )
    return name


def test_s3_object_lock_anchor_detects_the_last_three_lines_cut(tmp_path, locked_bucket, s3):
    out, anchor = tmp_path / "out", f"s3://{locked_bucket}/{tmp_path.name}"
    _write_job(out, anchor)
    assert recorded_anchor(str(out)) == anchor
    keys = s3.client().list_objects_v2(Bucket=locked_bucket, Prefix=tmp_path.name)["Contents"]
    assert len(keys) == 6
    assert verify_tree(str(out)).report.tail.seq == 6
    _cut(out, 3)
    assert _bad_line(Location(str(out)), "ends at line 3 but .* anchors line 6") == 4
    with pytest.raises(AuditError, match="already holds another line 4"):
        Anchor(anchor).write(JOB_ID, AuditTail(4, "0" * 64))
    racing = Anchor(anchor)  # another writer got there between the check and the PUT
    racing.loc.exists = lambda *parts: False
    with pytest.raises(AuditError, match="already holds a line 4"):
        racing.write(JOB_ID, AuditTail(4, "0" * 64))


# ---- through the CLI: a real escrowed run with an anchor -----------------------------------------


def _photos_and_custodians(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    """``count`` demo photos and two custodians made with the CLI; returns the photo folder
    and the escrow flags (2 of 2)."""
    from faceveil.jobs.demo import sample_images

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, data in sample_images(count):
        (photos / name).write_bytes(data)
    pass_file = tmp_path / "pass.txt"
    pass_file.write_text("alice-orchid-Lantern-4417\n")
    pass_file.chmod(0o600)
    for who in ("alice", "bob"):
        keygen = ["custodian", "keygen", "--name", who, "--out", str(tmp_path / "keys")]
        assert (
            faceveil.jobs.cli.main(
                [*keygen, "--kdf-work", "15", "--passphrase-file", str(pass_file)]
            )
            == 0
        )
    pubs = [str(tmp_path / f"keys/{c}.pub") for c in ("alice", "bob")]
    return photos, ["--custodians", *pubs, "--threshold", "2"]


def test_run_with_anchor_then_cut_log_fails_verify(tmp_path, ray_local, secret_file, capsys):
    photos, escrow = _photos_and_custodians(tmp_path, 4)
    job = JobInput(tmp_path, photos, secret_file, ("--no-progress",))
    out, anchor = tmp_path / "out", str(tmp_path / "anchor")
    capsys.readouterr()
    assert job.run(out, *escrow, "--audit-anchor", anchor) == 0
    printed = capsys.readouterr().out
    job_key = printed.split("audit: job signing key ")[1].split(",")[0]
    assert faceveil.jobs.cli.main(["audit", "verify", str(out), "-q", "--job-key", job_key]) == 0
    assert "anchored: lines 1..3" in capsys.readouterr().out  # job.start, job.manifests, job.end
    other = str(tmp_path / "other-anchor")
    assert job.run(out, "--resume", "--audit-anchor", other) == 1
    assert "anchored at" in capsys.readouterr().err and not Path(other).exists()
    assert job.run(out, "--resume") == 0  # keeps the anchor the start entry names
    resumed = capsys.readouterr().out.split("audit: job signing key ")[1].split(",")[0]
    pins = ["--job-key", job_key, "--job-key", resumed]
    assert faceveil.jobs.cli.main(["audit", "verify", str(out), *pins]) == 0
    printed = capsys.readouterr().out
    assert "anchored: lines 1..6" in printed and " job.resume " in printed
    _cut(out, 1)
    assert faceveil.jobs.cli.main(["audit", "verify", str(out), "-q", "--job-key", job_key]) == 1
    assert "but " + anchor + " anchors line 6: lines were removed" in capsys.readouterr().err


def test_run_with_an_unwritable_anchor_fails_before_any_work(
    tmp_path, ray_local, secret_file, capsys
):
    photos, escrow = _photos_and_custodians(tmp_path, 2)
    job = JobInput(tmp_path, photos, secret_file, ("--no-progress",))
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "out"
    anchor = ["--audit-anchor", str(tmp_path / "a-file" / "anchor")]
    capsys.readouterr()
    assert job.run(out, *escrow, *anchor) == 1
    assert "cannot write the audit anchor" in capsys.readouterr().err
    assert not (out / "data").exists() or not list((out / "data").iterdir())
    assert not (out / "audit.jsonl").exists() or not (out / "audit.jsonl").read_bytes()
    anchor = ["--audit-anchor", str(tmp_path / "anchor")]  # fixed: the resume starts the log
    # No signed entry vouches for the escrow.json the failed run left: the flags are needed.
    assert job.run(out, "--resume", *anchor) == 1
    assert "give the escrow flags" in capsys.readouterr().err
    assert job.run(out, "--resume", *escrow, *anchor) == 0
    capsys.readouterr()
    assert faceveil.jobs.cli.main(["audit", "verify", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "anchored: lines 1..3" in printed and " job.start " in printed
    assert job.run(tmp_path / "bare", "--no-escrow", *anchor) == 1
    assert "without escrow" in capsys.readouterr().err


def test_unwritable_anchor_fails_the_first_append_and_writes_nothing(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "out"
    with pytest.raises(AuditError, match="cannot write the audit anchor"):
        _write_job(out, str(tmp_path / "a-file" / "anchor"))
    assert not (out / "audit.jsonl").exists() or not (out / "audit.jsonl").read_bytes()


def test_s3_anchor_objects_hidden_or_overwritten_are_seen(tmp_path, locked_bucket, s3):
    """On a versioned (Object Lock) bucket a plain DELETE only adds a delete marker and a PUT
    a new version: the verifier reads every version, so neither hides a cut log."""
    out, prefix = tmp_path / "out", tmp_path.name
    _write_job(out, f"s3://{locked_bucket}/{prefix}")
    client = s3.client()
    _cut(out, 3)
    for seq in (4, 5, 6):
        client.delete_object(Bucket=locked_bucket, Key=f"{prefix}/{seq:012d}.json")
    with pytest.raises(AuditError, match="000000000004.json was deleted"):
        verify_tree(str(out))
    _write_job(tmp_path / "out2", f"s3://{locked_bucket}/{prefix}-2")
    key = f"{prefix}-2/000000000006.json"
    body = json.loads(client.get_object(Bucket=locked_bucket, Key=key)["Body"].read())
    client.put_object(Bucket=locked_bucket, Key=key, Body=json.dumps(body | {"seq": 6}).encode())
    with pytest.raises(AuditError, match="000000000006.json was overwritten"):
        verify_tree(str(tmp_path / "out2"))
