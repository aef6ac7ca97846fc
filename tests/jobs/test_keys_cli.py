"""The key subcommands end to end on a small synthetic output tree (local and on moto S3), with
one key epoch and with two (a job resumed once)."""

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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from jobs.keys_cli import OutTree, _approval_entry, _request_entry, append_audit, main
from manifests.audit import AuditWriter, key_id
from manifests.custodian import CustodianPrivate, CustodianPublic, canonical_json
from manifests.envelope import EMPTY_SHA256
from manifests.escrow import Escrow
from manifests.jobkeys import JobKeys
from manifests.keymanifest import (
    KeyRow,
    ShardSealer,
    key_manifest_bytes,
    key_manifest_epoch,
    load_key_manifest,
    read_key_manifest,
)
from manifests.restore import Approval, RestoreRequest

JOB = "job-cli-0001"
PNG_KEY, JPG_KEY, QUAR_KEY, FILE_KEY = "a" * 32, "b" * 32, "c" * 32, "d" * 32
FACES = [(5, 6, 20, 22), (18, 3, 35, 15)]
PASS = {
    "alice": "alice pass phrase",
    "bob": "bob pass phrase",
    "carol": "carol pass phrase",
    "req": "requester pass",
}


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


def _build_tree(
    out: Path, keys: JobKeys, originals: dict[str, np.ndarray], resumed: JobKeys | None = None
) -> dict[str, bytes]:
    """data/ + keys/ for two shards (the second sealed by ``resumed`` if given); returns the
    original file bytes by key."""
    files = {
        PNG_KEY: _encode(originals[PNG_KEY], "PNG"),
        JPG_KEY: _encode(originals[JPG_KEY], "JPEG"),
        QUAR_KEY: b"\xff\xd8 not really a jpeg",
        FILE_KEY: b"GIF89a original",
    }
    anon_png, anon_jpg = (
        _encode(_anonymize(originals[k]), f) for k, f in ((PNG_KEY, "PNG"), (JPG_KEY, "JPEG"))
    )
    anon_gif = _encode(_anonymize(originals[PNG_KEY]), "PNG")
    s0 = ShardSealer(keys.envelope, "shard-000000")
    _seal_faces(s0, PNG_KEY, originals[PNG_KEY], anon_png, "s3://raw/Jane_Doe.png")
    _seal_faces(s0, JPG_KEY, originals[JPG_KEY], anon_jpg, "s3://raw/John_Roe.jpg")
    s0.seal_sample(QUAR_KEY, "s3://raw/broken.jpg", EMPTY_SHA256, files[QUAR_KEY])
    s1 = ShardSealer((resumed or keys).envelope, "shard-000001")
    s1.seal_sample(
        FILE_KEY, "s3://raw/Ann_Poe.gif", hashlib.sha256(anon_gif).hexdigest(), files[FILE_KEY]
    )
    meta = json.dumps({"status": "ok"}).encode()
    (out / "data").mkdir(parents=True)
    (out / "keys").mkdir()
    (out / "_done").mkdir()
    (out / "data/shard-000000.tar").write_bytes(
        _tar(
            {
                f"{PNG_KEY}.png": anon_png,
                f"{PNG_KEY}.json": meta,
                f"{JPG_KEY}.jpg": anon_jpg,
                f"{JPG_KEY}.json": meta,
            }
        )
    )
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


def _custodians(tmp_path: Path, passfiles: dict[str, Path]) -> list[CustodianPublic]:
    for name in ("alice", "bob", "carol"):
        assert (
            main(
                [
                    "custodian",
                    "keygen",
                    "--name",
                    name,
                    "--out",
                    str(tmp_path / "keys"),
                    "--passphrase-file",
                    str(passfiles[name]),
                    "--kdf-work",
                    "15",
                ]
            )
            == 0
        )
    return [CustodianPublic.load(tmp_path / f"keys/{n}.pub") for n in ("alice", "bob", "carol")]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Three custodians made with the CLI, a job tree with escrow 2-of-3, and passphrase files.

    The working directory is ``tmp_path``: request key files go to ``./REQUEST_ID.key``."""
    monkeypatch.chdir(tmp_path)
    passfiles = _passfiles(tmp_path)
    pubs = _custodians(tmp_path, passfiles)
    return _job_world(tmp_path, JobKeys.create(JOB, pubs, threshold=2), passfiles)


@pytest.fixture
def resumed_world(tmp_path, monkeypatch):
    """As ``world``, but the job was killed after shard 0 and resumed: shard 1 is sealed under a
    second key epoch, made from the published escrow.json as ``faceveil run --resume`` does."""
    monkeypatch.chdir(tmp_path)
    passfiles = _passfiles(tmp_path)
    first = JobKeys.create(JOB, _custodians(tmp_path, passfiles), threshold=2)
    return _job_world(tmp_path, first, passfiles, resume=True)


def _job_world(
    tmp_path: Path, keys: JobKeys, passfiles: dict[str, Path], resume: bool = False, kms=None
) -> dict:
    """Publish a job tree for ``keys``: data, manifests, escrow, audit log, job.json.

    With ``resume``, the run is resumed once (a second key epoch) after its ``job.start``.
    """
    rng = np.random.default_rng(0)
    originals = {k: rng.integers(0, 256, (32, 40, 3), dtype=np.uint8) for k in (PNG_KEY, JPG_KEY)}
    out = tmp_path / "out"
    tree = OutTree(str(out))
    tree.write("escrow.json", keys.escrow.dumps())
    append_audit(tree, keys.audit, "job.start", keys.start_details())
    last = keys
    if resume:
        last = JobKeys.resume(Escrow.loads(tree.read("escrow.json")), JOB, kms=kms)
        tree.write("escrow.json", last.escrow.dumps())
        append_audit(tree, last.audit, "job.resume", last.start_details())
    files = _build_tree(out, keys, originals, last)
    tail = append_audit(tree, last.audit, "job.end", {"shards": 2})
    tree.write("job.json", json.dumps({"job_id": JOB, **last.job_json_fields(tail)}).encode())
    return {
        "tmp": tmp_path,
        "out": out,
        "pass": passfiles,
        "originals": originals,
        "files": files,
        "keys": keys,
        "resumed": last,
    }


def _request(w, name="req", purpose="restore", samples=(PNG_KEY, JPG_KEY, QUAR_KEY, FILE_KEY)):
    req = w["tmp"] / f"{name}.json"
    argv = [
        "restore",
        "request",
        str(w["out"]),
        "--reason",
        "subject access request 7",
        "--requester",
        "bob-the-dpo",
        "--out",
        str(req),
        "--purpose",
        purpose,
        "--passphrase-file",
        str(w["pass"]["req"]),
        "--kdf-work",
        "15",
    ]
    if purpose == "restore" and samples != "all":
        argv += [arg for key in samples for arg in ("--key", key)]
    else:
        argv += ["--all"]
    assert main(argv) == 0
    return req


def _approve(w, req, who, tree=None, legacy=False):
    """``restore approve REQ --identity K --out F``: offline unless ``tree`` (``--out-tree``);
    ``legacy``: the old form ``restore approve OUT REQ --key K`` (records at approve time)."""
    approval = w["tmp"] / f"{req.stem}.{who}.approval"
    key = str(w["tmp"] / f"keys/{who}.key")
    if legacy:
        argv = ["restore", "approve", tree or str(w["out"]), str(req), "--key", key]
    else:
        argv = ["restore", "approve", str(req), "--identity", key]
        argv += ["--out-tree", tree] if tree else []
    argv += ["--out", str(approval), "--passphrase-file", str(w["pass"][who]), "--yes"]
    assert main(argv) == 0
    return approval


def _apply(w, req, approvals, dest, out=None):
    return main(
        [
            "restore",
            "apply",
            out or str(w["out"]),
            str(req),
            *map(str, approvals),
            "--dest",
            str(dest),
            "--passphrase-file",
            str(w["pass"]["req"]),
        ]
    )


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


def test_full_workflow_restores_exact_originals(world, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    w = world
    req = _request(w)
    approvals = [_approve(w, req, "alice"), _approve(w, req, "carol")]
    dest = w["tmp"] / "restored"
    assert _apply(w, req, approvals, dest) == 0
    _check_restored(w, dest)
    assert _actions(w["out"]) == [
        "job.start",
        "job.end",
        "restore.request",
        "restore.approve",
        "restore.approve",
        "restore.apply",
    ]
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
    rows[1] = KeyRow(
        rows[1].key, rows[1].face, rows[1].bbox, rows[1].nonce, bytes(flipped), rows[1].aad_sha256
    )
    manifest.write_bytes(key_manifest_bytes(rows, w["keys"].escrow_id))
    assert _apply(w, req, [alice, bob], dest) == 1
    assert "did not decrypt" in capsys.readouterr().err
    assert not dest.exists() or not any(dest.iterdir())
    assert _actions(w["out"])[-1] == "restore.failed"


def test_audit_verify_names_the_bad_line(world, capsys):
    w = world
    log = w["out"] / "audit.jsonl"
    good = log.read_bytes()
    lines = good.splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["details"]["shards"] = 3
    log.write_bytes(lines[0] + canonical_json(entry) + b"\n")
    assert main(["audit", "verify", str(w["out"])]) == 1
    assert "audit line 2" in capsys.readouterr().err
    log.write_bytes(good[:-5])
    assert main(["audit", "verify", str(w["out"])]) == 1
    assert "audit line 2" in capsys.readouterr().err
    # Cut to line 1 without an anchor: verify cannot see it, says so, and does not trust the
    # tail that job.json (unsigned) records.
    log.write_bytes(lines[0])
    assert main(["audit", "verify", str(w["out"])]) == 0
    out = capsys.readouterr().out
    assert "unanchored: truncation after line 1 cannot be detected" in out
    assert "hint: job.json (unsigned, not trusted) records tail 2:" in out
    log.write_bytes(good)
    assert main(["audit", "verify", str(w["out"]), "--job-key", "ed25519:" + "0" * 32]) == 1
    assert "is not pinned (--job-key)" in capsys.readouterr().err


def test_reshare_then_rekey(world, capsys):
    w = world
    old_req = _request(w, "old")
    old_approvals = [_approve(w, old_req, "alice"), _approve(w, old_req, "bob")]
    req = _request(w, "reshare", purpose="reshare")
    approvals = [_approve(w, req, "alice"), _approve(w, req, "bob")]
    pubs = [str(w["tmp"] / f"keys/{n}.pub") for n in ("alice", "bob", "carol")]
    assert (
        main(
            [
                "escrow",
                "reshare",
                str(w["out"]),
                "--request",
                str(req),
                "--approvals",
                *map(str, approvals),
                "--custodians",
                *pubs,
                "--threshold",
                "3",
                "--passphrase-file",
                str(w["pass"]["req"]),
            ]
        )
        == 0
    )
    rk = _request(w, "rekey", purpose="rekey")
    two = [_approve(w, rk, "alice"), _approve(w, rk, "bob")]
    argv = ["escrow", "rekey", str(w["out"]), "--request", str(rk), "--approvals"]
    passphrase = ["--passphrase-file", str(w["pass"]["req"])]
    assert main([*argv, *map(str, two), *passphrase]) == 1
    assert "needs 3" in capsys.readouterr().err
    assert main([*argv[:3], str(rk), *argv[3:], *map(str, two), *passphrase]) == 1
    assert "give the request once" in capsys.readouterr().err
    old_manifest = (w["out"] / "keys/shard-000000.parquet").read_bytes()
    three = [*two, _approve(w, rk, "carol")]
    assert (
        main([*argv, *map(str, three), *passphrase, "--custodians", *pubs[1:], "--threshold", "2"])
        == 0
    )
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
    approvals = [
        _approve(w, req, "alice", tree="s3://jobs/out", legacy=True),
        _approve(w, req, "bob", tree="s3://jobs/out"),
    ]
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
    assert _apply_with_kms(w, req, dest, url) == 0
    _check_restored(w, dest)
    assert main(["audit", "verify", str(w["out"])]) == 0
    assert _actions(w["out"])[-1] == "restore.apply"


def _apply_with_kms(w: dict, req, dest, url: str) -> int:
    """``restore apply`` of ``req`` into ``dest``, unwrapping the key with KMS at ``url``."""
    return main(["restore", "apply", str(w["out"]), str(req), "--dest", str(dest),
                 "--kms-endpoint", url])  # fmt: skip


def _dummy_aws_env(monkeypatch) -> None:
    from tests.manifests.conftest import DUMMY_AWS_ENV

    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def aws_kms(monkeypatch):
    from tests.conftest import moto_server

    _dummy_aws_env(monkeypatch)
    with moto_server() as url:
        client = boto3.client("kms", region_name="us-east-1", endpoint_url=url)
        yield client, client.create_key()["KeyMetadata"]["Arn"], url


@pytest.fixture
def aws_s3(monkeypatch):
    import fsspec

    from tests.conftest import moto_server

    _dummy_aws_env(monkeypatch)
    with moto_server() as url:
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": url})
        yield boto3.client("s3", region_name="us-east-1", endpoint_url=url), url


def test_approve_asks_on_the_terminal_before_approving(world, monkeypatch, capsys):
    w = world
    req = _request(w)
    asked = []

    def answer(reply):
        def ask(text):
            asked.append(text)
            return reply

        return ask

    monkeypatch.setattr("jobs.keys_cli._ask_tty", answer("n\n"))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    argv = ["restore", "approve", str(req), "--identity", str(w["tmp"] / "keys/alice.key")]
    argv += ["--passphrase-file", str(w["pass"]["alice"])]
    assert main(argv) == 1
    shown = capsys.readouterr()
    assert "not approved" in shown.err and not shown.out
    text = asked.pop()
    assert "subject access request 7" in text and "bob-the-dpo" in text and "4 sample(s)" in text
    monkeypatch.setattr("jobs.keys_cli._ask_tty", answer("y\n"))
    assert main(argv) == 0
    shown = capsys.readouterr()
    approval = Approval.loads(shown.out)
    assert approval.custodian == "alice" and "written to stdout" in shown.err


def test_approve_without_a_terminal_needs_yes(world, monkeypatch, capsys):
    w = world
    req = _request(w)

    def no_tty(*args, **kwargs):
        raise OSError(6, "No such device or address", "/dev/tty")

    monkeypatch.setattr("jobs.keys_cli.open", no_tty, raising=False)
    argv = ["restore", "approve", str(req), "--identity", str(w["tmp"] / "keys/alice.key")]
    argv += ["--passphrase-file", str(w["pass"]["alice"])]
    assert main(argv) == 1
    shown = capsys.readouterr()
    assert "no terminal to confirm on" in shown.err and not shown.out


def test_request_and_approval_on_stdout_approved_offline(world, monkeypatch, capsys):
    """The README's form: request to stdout, key in ./ID.key, approval to stdout, all without
    the output tree on the custodian's side; apply records request and approvals."""
    w = world
    monkeypatch.setenv("USER", "dpo-on-duty")
    monkeypatch.setenv("LOGNAME", "dpo-on-duty")
    argv = ["restore", "request", str(w["out"]), "--key", PNG_KEY, "--key", FILE_KEY]
    argv += ["--reason", "subject access request 2026-114", "--kdf-work", "15"]
    assert main([*argv, "--passphrase-file", str(w["pass"]["req"])]) == 0
    shown = capsys.readouterr()
    request = RestoreRequest.loads(shown.out)
    assert request.requester == "dpo-on-duty" and request.samples == (PNG_KEY, FILE_KEY)
    assert f"{request.request_id}.key" in shown.err
    key_file = w["tmp"] / f"{request.request_id}.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    req = w["tmp"] / "elsewhere" / "req.json"
    req.parent.mkdir()
    req.write_text(shown.out)
    offline = w["tmp"] / "custodian-laptop"
    shutil.copytree(w["out"], offline / "out")
    shutil.rmtree(w["out"])
    approvals = []
    for who in ("alice", "bob"):
        argv = ["restore", "approve", str(req), "--identity", str(w["tmp"] / f"keys/{who}.key")]
        assert main([*argv, "--passphrase-file", str(w["pass"][who]), "--yes"]) == 0
        approvals.append(w["tmp"] / f"{who}.approval")
        approvals[-1].write_text(capsys.readouterr().out)
    shutil.copytree(offline / "out", w["out"])
    dest = w["tmp"] / "restored"
    assert _apply(w, req, approvals, dest) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [f"{FILE_KEY}.gif", f"{PNG_KEY}.png", "restored.json"]
    )
    log = [json.loads(line) for line in (w["out"] / "audit.jsonl").read_text().splitlines()]
    assert [e["action"] for e in log[2:]] == [
        "restore.request",
        "restore.approve",
        "restore.approve",
        "restore.apply",
    ]
    assert [e["actor"] for e in log[3:5]] == ["custodian:alice", "custodian:bob"]
    assert log[2]["details"]["requester"] == "dpo-on-duty" and log[2]["details"]["samples"] == 2
    assert "sealed" not in json.dumps(log[3]["details"]["statement"]["sealed_shares"])
    capsys.readouterr()
    assert main(["audit", "verify", str(w["out"])]) == 0
    listing = capsys.readouterr().out
    assert listing.count(f"request {request.request_id}") == 4
    assert "restore.approve  custodian:alice" in listing


def test_apply_does_not_record_an_approval_twice(world):
    w = world
    req = _request(w)
    approvals = [_approve(w, req, "alice", tree=str(w["out"])), _approve(w, req, "carol")]
    assert _actions(w["out"])[-1] == "restore.approve"
    assert _apply(w, req, approvals, w["tmp"] / "d1") == 0
    assert _apply(w, req, approvals, w["tmp"] / "d2") == 0
    assert _actions(w["out"])[2:] == [
        "restore.approve",
        "restore.request",
        "restore.approve",
        "restore.apply",
        "restore.apply",
    ]
    assert main(["audit", "verify", str(w["out"])]) == 0


def test_request_with_a_forged_escrow_copy_is_refused(world, capsys):
    w = world
    req = _request(w)
    doc = json.loads(req.read_text())
    doc["escrow"]["epochs"][0]["audit_key"]["sealed"] = base64.b64encode(b"x" * 60).decode()
    req.write_text(json.dumps(doc))
    approvals = [_approve(w, req, "alice"), _approve(w, req, "bob")]
    capsys.readouterr()
    dest = w["tmp"] / "dest"
    assert _apply(w, req, approvals, dest) == 1
    assert "forged or altered request" in capsys.readouterr().err
    assert not dest.exists()
    key = str(w["tmp"] / "keys/carol.key")
    argv = ["restore", "approve", str(req), "--identity", key, "--out-tree", str(w["out"])]
    assert main([*argv, "--passphrase-file", str(w["pass"]["carol"]), "--yes"]) == 1
    assert "forged or altered request" in capsys.readouterr().err


def test_audit_verify_checks_recorded_approval_signatures(world, capsys):
    """A real approval recorded by the requester: its custodian signature is checked."""
    w = world
    req = _request(w)
    request = RestoreRequest.loads(req.read_bytes())
    approval = Approval.loads(_approve(w, req, "alice").read_bytes())
    custodian = w["keys"].escrow.custodian(approval.fingerprint)
    requester = Ed25519PrivateKey.generate()
    public = base64.b64encode(requester.public_key().public_bytes_raw()).decode()
    writer = AuditWriter(requester, "requester:bob-the-dpo")
    tree = OutTree(str(w["out"]))
    append_audit(
        tree, writer, "restore.request", _request_entry(request) | {"requester_key": public}
    )
    good = (w["out"] / "audit.jsonl").read_bytes()
    details = _approval_entry(request, approval, custodian)
    append_audit(tree, writer, "restore.approve", details)
    assert main(["audit", "verify", str(w["out"]), "-q"]) == 0
    (w["out"] / "audit.jsonl").write_bytes(good)
    details["statement"]["time"] = "2000-01-01T00:00:00Z"
    append_audit(tree, writer, "restore.approve", details)
    capsys.readouterr()
    assert main(["audit", "verify", str(w["out"]), "-q"]) == 1
    assert "audit line 4: the approval by 'alice': bad custodian signature" in (
        capsys.readouterr().err
    )


# ---- key epochs: a job resumed once -------------------------------------------------------------


def _epochs(w) -> tuple[str, str]:
    return w["keys"].escrow_id, w["resumed"].escrow_id


def test_two_epochs_restore_exactly_with_one_request(resumed_world, capsys):
    w = resumed_world
    first, second = _epochs(w)
    assert first != second
    assert key_manifest_epoch(w["out"] / "keys/shard-000000.parquet") == first
    assert key_manifest_epoch(w["out"] / "keys/shard-000001.parquet") == second
    escrow = json.loads((w["out"] / "escrow.json").read_text())
    assert [e["escrow_id"] for e in escrow["epochs"]] == [first, second]
    req = _request(w)
    approvals = [_approve(w, req, "alice"), _approve(w, req, "carol")]
    sealed = json.loads(approvals[0].read_text())["sealed_shares"]
    assert [s["escrow_id"] for s in sealed] == [first, second]
    dest = w["tmp"] / "restored"
    assert _apply(w, req, approvals, dest) == 0
    _check_restored(w, dest)
    assert _actions(w["out"]) == [
        "job.start",
        "job.resume",
        "job.end",
        "restore.request",
        "restore.approve",
        "restore.approve",
        "restore.apply",
    ]
    capsys.readouterr()
    assert main(["audit", "verify", str(w["out"])]) == 0
    shown = capsys.readouterr().out
    assert key_id(w["keys"].audit_public_key) in shown
    assert key_id(w["resumed"].audit_public_key) in shown


def _resign(w, path: Path, who: str, **changes) -> None:
    custodian = CustodianPrivate.load(w["tmp"] / f"keys/{who}.key", PASS[who])
    approval = Approval.loads(path.read_bytes())
    unsigned = Approval(**{**approval.__dict__, **changes, "signature": b""})
    signature = custodian.sign(unsigned.signing_bytes())
    path.write_bytes(Approval(**{**unsigned.__dict__, "signature": signature}).dumps())


def test_approval_missing_an_epoch_restores_nothing(resumed_world, capsys):
    w = resumed_world
    first, second = _epochs(w)
    req = _request(w)
    alice, bob = _approve(w, req, "alice"), _approve(w, req, "bob")
    shares = Approval.loads(bob.read_bytes()).sealed_shares
    _resign(w, bob, "bob", sealed_shares={first: shares[first]})
    dest = w["tmp"] / "dest"
    before = _actions(w["out"])
    assert _apply(w, req, [alice, bob], dest) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert f"approval 2 (by 'bob') carries no share for key epoch {second} (2 of 2)" in err
    assert not dest.exists() or not any(dest.iterdir())
    assert _actions(w["out"]) == before


def _relabel(path: Path, escrow_id: str | None) -> None:
    path.write_bytes(key_manifest_bytes(load_key_manifest(path.read_bytes()).rows, escrow_id))


def test_manifest_of_an_unknown_epoch_is_one_clear_error(resumed_world, capsys):
    w = resumed_world
    req = _request(w)
    approvals = [_approve(w, req, "alice"), _approve(w, req, "bob")]
    manifest = w["out"] / "keys/shard-000001.parquet"
    _relabel(manifest, "ef" * 16)
    dest = w["tmp"] / "dest"
    assert _apply(w, req, approvals, dest) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert f"keys/shard-000001.parquet was sealed under key epoch {'ef' * 16}" in err
    assert not dest.exists() or not any(dest.iterdir())
    rk = _request(w, "rekey", purpose="rekey")
    two = [_approve(w, rk, "alice"), _approve(w, rk, "bob")]
    old = {p.name: p.read_bytes() for p in (w["out"] / "keys").iterdir()}
    assert (
        main(
            [
                "escrow",
                "rekey",
                str(w["out"]),
                str(rk),
                *map(str, two),
                "--passphrase-file",
                str(w["pass"]["req"]),
            ]
        )
        == 1
    )
    assert "which escrow.json does not hold" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (w["out"] / "keys").iterdir()} == old
    assert not (w["out"] / "_rekey").exists()
    _relabel(manifest, None)
    assert _apply(w, req, approvals, dest) == 1
    assert "records no key epoch" in capsys.readouterr().err


def test_rekey_collapses_the_epochs(resumed_world, capsys):
    w = resumed_world
    old_escrow = Escrow.loads((w["out"] / "escrow.json").read_bytes())
    old_req = _request(w, "old")
    old_approvals = [_approve(w, old_req, "alice"), _approve(w, old_req, "bob")]
    rk = _request(w, "rekey", purpose="rekey")
    two = [_approve(w, rk, "alice"), _approve(w, rk, "bob")]
    assert (
        main(
            [
                "escrow",
                "rekey",
                str(w["out"]),
                str(rk),
                *map(str, two),
                "--passphrase-file",
                str(w["pass"]["req"]),
            ]
        )
        == 0
    )
    new = Escrow.loads((w["out"] / "escrow.json").read_bytes())
    (epoch,) = new.epochs
    assert epoch.escrow_id not in old_escrow.escrow_ids
    assert epoch.audit_public == w["keys"].audit_public_key
    for shard in ("shard-000000", "shard-000001"):
        assert key_manifest_epoch(w["out"] / f"keys/{shard}.parquet") == epoch.escrow_id
    custodians = [
        CustodianPrivate.load(w["tmp"] / f"keys/{n}.key", PASS[n]) for n in ("alice", "bob")
    ]
    old_shares = [old_escrow.open_shares(c) for c in custodians]
    for eid in old_escrow.escrow_ids:
        with pytest.raises(Exception, match="key-check"):
            epoch.recover([s[eid] for s in old_shares])
    assert _apply(w, old_req, old_approvals, w["tmp"] / "stale") == 1
    assert "another job or another escrow" in capsys.readouterr().err
    req = _request(w, "after")
    dest = w["tmp"] / "after"
    assert _apply(w, req, [_approve(w, req, "bob"), _approve(w, req, "carol")], dest) == 0
    _check_restored(w, dest)
    assert main(["audit", "verify", str(w["out"])]) == 0
    pins = ["--job-key", key_id(w["keys"].audit_public_key)]
    assert main(["audit", "verify", str(w["out"]), *pins]) == 0


def test_reshare_covers_every_epoch(resumed_world, capsys):
    w = resumed_world
    req = _request(w, "reshare", purpose="reshare")
    approvals = [_approve(w, req, "alice"), _approve(w, req, "bob")]
    pubs = [str(w["tmp"] / f"keys/{n}.pub") for n in ("bob", "carol")]
    assert (
        main(
            [
                "escrow",
                "reshare",
                str(w["out"]),
                str(req),
                *map(str, approvals),
                "--custodians",
                *pubs,
                "--threshold",
                "2",
                "--passphrase-file",
                str(w["pass"]["req"]),
            ]
        )
        == 0
    )
    new = Escrow.loads((w["out"] / "escrow.json").read_bytes())
    assert new.escrow_ids == _epochs(w) and [c.name for c in new.custodians] == ["bob", "carol"]
    restore = _request(w, "after")
    dest = w["tmp"] / "after"
    assert (
        _apply(w, restore, [_approve(w, restore, "bob"), _approve(w, restore, "carol")], dest) == 0
    )
    _check_restored(w, dest)
    capsys.readouterr()
    assert (
        main(
            [
                "restore",
                "approve",
                str(w["out"]),
                str(restore),
                "--key",
                str(w["tmp"] / "keys/alice.key"),
                "--out",
                str(w["tmp"] / "x.approval"),
                "--passphrase-file",
                str(w["pass"]["alice"]),
                "--yes",
            ]
        )
        == 1
    )
    assert "holds no share" in capsys.readouterr().err
    assert main(["audit", "verify", str(w["out"])]) == 0


def test_audit_verify_trusts_every_run_key_and_names_the_bad_line(resumed_world, capsys):
    w = resumed_world
    k1, k2 = (key_id(k.audit_public_key) for k in (w["keys"], w["resumed"]))
    log = w["out"] / "audit.jsonl"
    good = log.read_bytes()
    lines = good.splitlines(keepends=True)
    assert [json.loads(line)["signer"] for line in lines] == [k1, k2, k2]
    assert main(["audit", "verify", str(w["out"]), "--job-key", k1, "--job-key", k2]) == 0
    assert main(["audit", "verify", str(w["out"]), "--job-key", k1]) == 1
    assert f"audit line 2: the job key {k2} is not pinned" in capsys.readouterr().err
    entry = json.loads(lines[2])
    entry["details"]["shards"] = 3
    log.write_bytes(b"".join(lines[:2]) + canonical_json(entry) + b"\n")
    assert main(["audit", "verify", str(w["out"])]) == 1
    assert "audit line 3: bad signature" in capsys.readouterr().err
    # escrow.json is no trust root any more: dropping an epoch changes nothing.
    log.write_bytes(good)
    escrow = json.loads((w["out"] / "escrow.json").read_text())
    escrow["epochs"] = escrow["epochs"][:1]
    (w["out"] / "escrow.json").write_text(json.dumps(escrow))
    assert main(["audit", "verify", str(w["out"]), "--job-key", k1, "--job-key", k2]) == 0
    # The first run's key, after the resume declared the second run's key, signs nothing.
    log.write_bytes(b"".join(lines[:2]))
    append_audit(
        OutTree(str(w["out"])), AuditWriter(w["keys"].audit._key, "operator"), "job.end", {}
    )
    assert main(["audit", "verify", str(w["out"])]) == 1
    assert "audit line 3: job.end: a job key signs after its run ended" in capsys.readouterr().err


def test_kms_epochs_round_trip_against_moto_server(tmp_path, aws_kms, capsys):
    client, arn, url = aws_kms
    first = JobKeys.create(JOB, kms_arn=arn, kms=client)
    w = _job_world(tmp_path, first, _passfiles(tmp_path), resume=True, kms=client)
    escrow = Escrow.loads((w["out"] / "escrow.json").read_bytes())
    assert escrow.scheme == "kms" and escrow.escrow_ids == _epochs(w)
    req = _request(w, samples="all")
    dest = tmp_path / "kms-restored"
    assert _apply_with_kms(w, req, dest, url) == 0
    _check_restored(w, dest)
    rk = _request(w, "rekey", purpose="rekey")
    assert main(["escrow", "rekey", str(w["out"]), str(rk), "--kms-endpoint", url]) == 0
    (epoch,) = Escrow.loads((w["out"] / "escrow.json").read_bytes()).epochs
    assert epoch.scheme == "kms" and epoch.escrow_id not in escrow.escrow_ids
    req = _request(w, "after", samples="all")
    dest = tmp_path / "after"
    assert _apply_with_kms(w, req, dest, url) == 0
    _check_restored(w, dest)
    assert main(["audit", "verify", str(w["out"])]) == 0


def test_request_sample_aliases_and_whole_job_purposes(world, capsys):
    w = world
    base = ["restore", "request", str(w["out"]), "--reason", "r", "--requester", "dpo"]
    base += ["--passphrase-file", str(w["pass"]["req"]), "--kdf-work", "15"]
    assert main([*base, "--samples", PNG_KEY, JPG_KEY]) == 0
    assert RestoreRequest.loads(capsys.readouterr().out).samples == (PNG_KEY, JPG_KEY)
    listed = w["tmp"] / "samples.txt"
    listed.write_text(f"{FILE_KEY}\n\n{QUAR_KEY}\n")
    assert main([*base, "--samples-file", str(listed)]) == 0
    assert RestoreRequest.loads(capsys.readouterr().out).samples == (FILE_KEY, QUAR_KEY)
    assert main([*base, "--purpose", "rekey", "--key", PNG_KEY]) == 1
    assert "covers the whole job: use --all" in capsys.readouterr().err
    assert main([*base, "--purpose", "rekey", "--all"]) == 0
    request = RestoreRequest.loads(capsys.readouterr().out)
    assert request.purpose == "rekey" and request.samples is None
    assert main(base) == 1
    assert "--key SAMPLEKEY" in capsys.readouterr().err
