"""The key subcommands end to end on a small synthetic output tree (local and on moto S3)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from jobs.keys_cli import OutTree, append_audit, main
from manifests.custodian import CustodianPublic
from manifests.envelope import EMPTY_SHA256
from manifests.jobkeys import JobKeys
from manifests.keymanifest import KeyRow, ShardSealer, key_manifest_bytes, read_key_manifest

JOB = "job-cli-0001"
PNG_KEY, JPG_KEY, QUAR_KEY, FILE_KEY = "a" * 32, "b" * 32, "c" * 32, "d" * 32
FACES = [(5, 6, 20, 22), (18, 3, 35, 15)]
PASS = {"alice": "alice pass phrase", "bob": "bob pass phrase", "carol": "carol pass",
        "req": "requester pass"}


def _encode(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _anonymize(rgb: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    for x1, y1, x2, y2 in FACES:
        out[y1:y2, x1:x2] = 128
    return out


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _seal_faces(sealer: ShardSealer, key: str, rgb: np.ndarray, anon: bytes, uri: str) -> None:
    sha = hashlib.sha256(anon).hexdigest()
    for i, (x1, y1, x2, y2) in enumerate(FACES):
        png = _encode(np.ascontiguousarray(rgb[y1:y2, x1:x2]), "PNG")
        sealer.seal_face(key, i, (x1, y1, x2, y2), png, uri, sha)
    sealer.seal_sample(key, uri, sha)


def _build_tree(out: Path, keys: JobKeys, originals: dict[str, np.ndarray]) -> dict[str, bytes]:
    """data/ + keys/ for two shards; returns the original file bytes by key."""
    files = {PNG_KEY: _encode(originals[PNG_KEY], "PNG"), JPG_KEY: _encode(originals[JPG_KEY],
             "JPEG"), QUAR_KEY: b"\xff\xd8 not really a jpeg", FILE_KEY: b"GIF89a original"}
    anon_png, anon_jpg = (_encode(_anonymize(originals[k]), f) for k, f in
                          ((PNG_KEY, "PNG"), (JPG_KEY, "JPEG")))
    anon_gif = _encode(_anonymize(originals[PNG_KEY]), "PNG")
    s0 = ShardSealer(keys.envelope, "shard-000000")
    _seal_faces(s0, PNG_KEY, originals[PNG_KEY], anon_png, "s3://raw/Jane_Doe.png")
    _seal_faces(s0, JPG_KEY, originals[JPG_KEY], anon_jpg, "s3://raw/John_Roe.jpg")
    s0.seal_sample(QUAR_KEY, "s3://raw/broken.jpg", EMPTY_SHA256, files[QUAR_KEY])
    s1 = ShardSealer(keys.envelope, "shard-000001")
    s1.seal_sample(FILE_KEY, "s3://raw/Ann_Poe.gif", hashlib.sha256(anon_gif).hexdigest(),
                   files[FILE_KEY])
    meta = json.dumps({"status": "ok"}).encode()
    (out / "data").mkdir(parents=True)
    (out / "keys").mkdir()
    (out / "_done").mkdir()
    (out / "data/shard-000000.tar").write_bytes(_tar({
        f"{PNG_KEY}.png": anon_png, f"{PNG_KEY}.json": meta,
        f"{JPG_KEY}.jpg": anon_jpg, f"{JPG_KEY}.json": meta}))
    (out / "data/shard-000001.tar").write_bytes(_tar({f"{FILE_KEY}.png": anon_gif}))
    for shard, sealer in (("shard-000000", s0), ("shard-000001", s1)):
        data = sealer.manifest_bytes()
        (out / f"keys/{shard}.parquet").write_bytes(data)
        marker = {"counts": {"in": 3}, "sha256": {"keys": hashlib.sha256(data).hexdigest()}}
        (out / f"_done/{shard}.json").write_text(json.dumps(marker))
    return files


def _passfiles(tmp_path: Path) -> dict[str, Path]:
    passfiles = {}
    for name, text in PASS.items():
        passfiles[name] = tmp_path / f"{name}.pass"
        passfiles[name].write_text(text + "\n")
        passfiles[name].chmod(0o600)
    return passfiles


@pytest.fixture
def world(tmp_path):
    """Three custodians made with the CLI, a job tree with escrow 2-of-3, and passphrase files."""
    passfiles = _passfiles(tmp_path)
    for name in ("alice", "bob", "carol"):
        assert main(["custodian", "keygen", "--name", name, "--out", str(tmp_path / "keys"),
                     "--passphrase-file", str(passfiles[name]), "--kdf-work", "10"]) == 0
    pubs = [CustodianPublic.load(tmp_path / f"keys/{n}.pub") for n in ("alice", "bob", "carol")]
    return _job_world(tmp_path, JobKeys.create(JOB, pubs, threshold=2), passfiles)


def _job_world(tmp_path: Path, keys: JobKeys, passfiles: dict[str, Path]) -> dict:
    """Publish a job tree for ``keys``: data, manifests, escrow, audit log, job.json."""
    rng = np.random.default_rng(0)
    originals = {k: rng.integers(0, 256, (32, 40, 3), dtype=np.uint8) for k in (PNG_KEY, JPG_KEY)}
    out = tmp_path / "out"
    files = _build_tree(out, keys, originals)
    tree = OutTree(str(out))
    tree.write("escrow.json", keys.escrow.dumps())
    append_audit(tree, keys.audit, "job.start", keys.start_details())
    tail = append_audit(tree, keys.audit, "job.end", {"shards": 2})
    tree.write("job.json", json.dumps({"job_id": JOB, **keys.job_json_fields(tail)}).encode())
    return {"tmp": tmp_path, "out": out, "pass": passfiles, "originals": originals,
            "files": files, "keys": keys}


def _request(w, name="req", purpose="restore", samples=(PNG_KEY, JPG_KEY, QUAR_KEY, FILE_KEY)):
    req = w["tmp"] / f"{name}.json"
    argv = ["restore", "request", str(w["out"]), "--reason", "subject access request 7",
            "--requester", "bob-the-dpo", "--out", str(req), "--purpose", purpose,
            "--passphrase-file", str(w["pass"]["req"]), "--kdf-work", "10"]
    if purpose == "restore":
        argv += ["--all"] if samples == "all" else ["--samples", *samples]
    assert main(argv) == 0
    return req


def _approve(w, req, who, out=None):
    approval = w["tmp"] / f"{req.stem}.{who}.approval"
    assert main(["restore", "approve", out or str(w["out"]), str(req),
                 "--key", str(w["tmp"] / f"keys/{who}.key"), "--out", str(approval),
                 "--passphrase-file", str(w["pass"][who]), "--yes"]) == 0
    return approval


def _apply(w, req, approvals, dest, out=None):
    return main(["restore", "apply", out or str(w["out"]), str(req), *map(str, approvals),
                 "--dest", str(dest), "--passphrase-file", str(w["pass"]["req"])])


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def _check_restored(w, dest: Path) -> None:
    originals, files = w["originals"], w["files"]
    assert np.array_equal(_pixels(dest / f"{PNG_KEY}.png"), originals[PNG_KEY])
    jpg = _pixels(dest / f"{JPG_KEY}.png")
    for x1, y1, x2, y2 in FACES:
        assert np.array_equal(jpg[y1:y2, x1:x2], originals[JPG_KEY][y1:y2, x1:x2])
    assert (dest / f"{QUAR_KEY}.jpg").read_bytes() == files[QUAR_KEY]
    assert (dest / f"{FILE_KEY}.gif").read_bytes() == files[FILE_KEY]
    index = json.loads((dest / "restored.json").read_text())
    assert index[PNG_KEY] == "s3://raw/Jane_Doe.png" and index[FILE_KEY] == "s3://raw/Ann_Poe.gif"
    assert not list(dest.glob(".restore-*"))


def _actions(out: Path) -> list[str]:
    return [json.loads(line)["action"] for line in (out / "audit.jsonl").read_text().splitlines()]


def test_full_workflow_restores_exact_originals(world, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    w = world
    req = _request(w)
    approvals = [_approve(w, req, "alice"), _approve(w, req, "carol")]
    dest = w["tmp"] / "restored"
    assert _apply(w, req, approvals, dest) == 0
    _check_restored(w, dest)
    assert _actions(w["out"]) == ["job.start", "job.end", "restore.approve", "restore.approve",
                                  "restore.apply"]
    shown = capsys.readouterr()
    tail = [line for line in shown.out.splitlines() if line.startswith("audit tail: ")][-1]
    assert main(["audit", "verify", str(w["out"]), "--expect-tail", tail.split(": ")[1]]) == 0
    text = shown.out + shown.err + "\n".join(r.getMessage() for r in caplog.records)
    master = w["keys"].envelope._master.reveal()
    for secret in [master, *(p.encode() for p in PASS.values()), b"Jane_Doe"]:
        for form in (secret.hex(), base64.b64encode(secret).decode(), secret.decode("latin-1")):
            assert form not in text


def test_failures_restore_nothing(world, capsys):
    w = world
    req = _request(w)
    alice, bob = _approve(w, req, "alice"), _approve(w, req, "bob")
    dest = w["tmp"] / "dest"
    assert _apply(w, req, [alice], dest) == 1
    assert "needs 2" in capsys.readouterr().err
    assert _apply(w, req, [alice, alice], dest) == 1
    assert "counts once" in capsys.readouterr().err
    other = _request(w, "other", samples=(PNG_KEY,))
    assert _apply(w, req, [alice, _approve(w, other, "bob")], dest) == 1
    assert "another request" in capsys.readouterr().err
    w["pass"]["req"].write_text("wrong\n")
    assert _apply(w, req, [alice, bob], dest) == 1
    assert "wrong passphrase" in capsys.readouterr().err
    w["pass"]["req"].write_text(PASS["req"] + "\n")
    manifest = w["out"] / "keys/shard-000000.parquet"
    rows = read_key_manifest(manifest.read_bytes())
    flipped = bytearray(rows[1].ciphertext)
    flipped[3] ^= 0x40
    rows[1] = KeyRow(rows[1].key, rows[1].face, rows[1].bbox, rows[1].nonce, bytes(flipped),
                     rows[1].aad_sha256)
    manifest.write_bytes(key_manifest_bytes(rows))
    assert _apply(w, req, [alice, bob], dest) == 1
    assert "did not decrypt" in capsys.readouterr().err
    assert not dest.exists() or not any(dest.iterdir())
    assert _actions(w["out"])[-1] == "restore.failed"


def test_audit_verify_names_the_bad_line(world, capsys):
    w = world
    _approve(w, _request(w), "alice")
    log = w["out"] / "audit.jsonl"
    good = log.read_bytes()
    lines = good.splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["details"]["shards"] = 3
    log.write_bytes(lines[0] + json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
                    + b"\n" + lines[2])
    assert main(["audit", "verify", str(w["out"])]) == 1
    assert "audit line 2" in capsys.readouterr().err
    log.write_bytes(lines[0])
    assert main(["audit", "verify", str(w["out"])]) == 1
    assert "trailing lines were removed" in capsys.readouterr().err
    log.write_bytes(good[:-5])
    assert main(["audit", "verify", str(w["out"])]) == 1
    assert "audit line 3" in capsys.readouterr().err
    log.write_bytes(good)
    assert main(["audit", "verify", str(w["out"]), "--job-key", "ed25519:" + "0" * 32]) == 1


def test_reshare_then_rekey(world, capsys):
    w = world
    old_req = _request(w, "old")
    old_approvals = [_approve(w, old_req, "alice"), _approve(w, old_req, "bob")]
    req = _request(w, "reshare", purpose="reshare")
    approvals = [_approve(w, req, "alice"), _approve(w, req, "bob")]
    pubs = [str(w["tmp"] / f"keys/{n}.pub") for n in ("alice", "bob", "carol")]
    assert main(["escrow", "reshare", str(w["out"]), str(req), *map(str, approvals),
                 "--custodians", *pubs, "--threshold", "3",
                 "--passphrase-file", str(w["pass"]["req"])]) == 0
    rk = _request(w, "rekey", purpose="rekey")
    two = [_approve(w, rk, "alice"), _approve(w, rk, "bob")]
    argv = ["escrow", "rekey", str(w["out"]), str(rk)]
    passphrase = ["--passphrase-file", str(w["pass"]["req"])]
    assert main([*argv, *map(str, two), *passphrase]) == 1
    assert "needs 3" in capsys.readouterr().err
    old_manifest = (w["out"] / "keys/shard-000000.parquet").read_bytes()
    three = [*two, _approve(w, rk, "carol")]
    assert main([*argv, *map(str, three), *passphrase, "--custodians", *pubs[1:],
                 "--threshold", "2"]) == 0
    new_manifest = (w["out"] / "keys/shard-000000.parquet").read_bytes()
    assert new_manifest != old_manifest and not (w["out"] / "_rekey").exists()
    marker = json.loads((w["out"] / "_done/shard-000000.json").read_text())
    assert marker["sha256"]["keys"] == hashlib.sha256(new_manifest).hexdigest()
    assert _apply(w, old_req, old_approvals, w["tmp"] / "stale") == 1
    assert "another job or another escrow" in capsys.readouterr().err
    req = _request(w, "after")
    dest = w["tmp"] / "after"
    assert _apply(w, req, [_approve(w, req, "bob"), _approve(w, req, "carol")], dest) == 0
    _check_restored(w, dest)
    assert main(["audit", "verify", str(w["out"])]) == 0
    assert "escrow.reshare" in _actions(w["out"]) and "escrow.rekey" in _actions(w["out"])


def test_interrupted_rekey_must_be_finished(world, capsys):
    w = world
    tree = OutTree(str(w["out"]))
    tree.write("_rekey/COMPLETE", json.dumps({"new_escrow_id": "x", "manifests": {}}).encode())
    tree.write("_rekey/escrow.json", (w["out"] / "escrow.json").read_bytes())
    req = _request(w)
    assert _apply(w, req, [], w["tmp"] / "d") == 1
    assert "--finish" in capsys.readouterr().err
    assert main(["escrow", "rekey", str(w["out"]), "--finish"]) == 0
    assert not (w["out"] / "_rekey").exists()


def test_restore_from_s3(world, aws_s3):
    w = world
    s3, url = aws_s3
    s3.create_bucket(Bucket="jobs")
    req = _request(w)
    for path in w["out"].rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "jobs", f"out/{path.relative_to(w['out'])}")
    approvals = [_approve(w, req, "alice", out="s3://jobs/out"),
                 _approve(w, req, "bob", out="s3://jobs/out")]
    dest = w["tmp"] / "from-s3"
    assert _apply(w, req, approvals, dest, out="s3://jobs/out") == 0
    _check_restored(w, dest)
    assert main(["audit", "verify", "s3://jobs/out"]) == 0
    shutil.rmtree(w["out"])


def test_kms_escrow_restore_needs_no_approvals(tmp_path, aws_kms, capsys):
    client, arn, url = aws_kms
    w = _job_world(tmp_path, JobKeys.create(JOB, kms_arn=arn, kms=client), _passfiles(tmp_path))
    assert json.loads((w["out"] / "escrow.json").read_text())["scheme"] == "kms"
    req = _request(w, samples="all")
    dest = tmp_path / "kms-restored"
    assert main(["restore", "apply", str(w["out"]), str(req), "--dest", str(dest),
                 "--kms-endpoint", url]) == 0
    _check_restored(w, dest)
    assert main(["audit", "verify", str(w["out"])]) == 0
    assert _actions(w["out"])[-1] == "restore.apply"


@pytest.fixture
def aws_kms(monkeypatch):
    from tests.manifests.conftest import DUMMY_AWS_ENV, moto_server

    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    with moto_server() as url:
        client = boto3.client("kms", region_name="us-east-1", endpoint_url=url)
        yield client, client.create_key()["KeyMetadata"]["Arn"], url


@pytest.fixture
def aws_s3(monkeypatch):
    import fsspec

    from tests.manifests.conftest import DUMMY_AWS_ENV, moto_server

    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    with moto_server() as url:
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": url})
        yield boto3.client("s3", region_name="us-east-1", endpoint_url=url), url


def test_approve_asks_before_approving(world, monkeypatch, capsys):
    w = world
    req = _request(w)
    monkeypatch.setattr("builtins.input", lambda prompt="": "n")
    argv = ["restore", "approve", str(w["out"]), str(req), "--key",
            str(w["tmp"] / "keys/alice.key"), "--out", str(w["tmp"] / "a.approval"),
            "--passphrase-file", str(w["pass"]["alice"])]
    assert main(argv) == 1
    shown = capsys.readouterr()
    assert "subject access request 7" in shown.out and "not approved" in shown.err
    assert not (w["tmp"] / "a.approval").exists()
    monkeypatch.setattr("builtins.input", lambda prompt="": "y")
    assert main(argv) == 0 and (w["tmp"] / "a.approval").exists()
