"""The escrow workflow of the README on real photos through the real ``faceveil run``.

Custodian keygen, a 2-of-3 escrowed run on a local Ray, a restore request by sample id and one
for every sample, approvals made offline (the output tree out of reach) and captured from
stdout, apply, audit verify; then a resumed run (a second key epoch) that one request restores
across both epochs; every refusal through the CLI; and nothing secret in the logs (DEBUG) or on
the console over the whole workflow. Every command runs in-process through
``faceveil.jobs.cli.main``.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

import faceveil.jobs.cli
from faceveil.jobs.demo import NAMES, sample_images
from faceveil.jobs.keyfile import new_key_file
from faceveil.manifests.custodian import CustodianPrivate
from faceveil.manifests.escrow import Escrow
from faceveil.manifests.keymanifest import (
    KeyRow,
    key_manifest_bytes,
    key_manifest_epoch,
    load_key_manifest,
)
from faceveil.manifests.request import RestoreRequest
from tests.jobs.escrow_world import (
    CUSTODIANS,
    PASSPHRASES,
    Result,
    actions,
    check_restored,
    pick,
    public_metadata,
)
from tests.jobs.escrow_world import cli as run_cli

SHARD_SIZE = 4
RESUMED_SHARD = "shard-000002"


# ---- running the CLI and recording everything it says ------------------------------------------


class Journal(logging.Handler):
    """Every log record (DEBUG and up, formatted with its traceback) and every console output."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.records: list[tuple[str, str]] = []
        self.console: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, self.format(record)))

    def text(self, leaving_out: tuple[str, ...] = ()) -> str:
        """Records and console lines, leaving out those of the loggers ``leaving_out``."""
        kept = [text for name, text in self.records if not name.startswith(leaving_out)]
        marks = tuple(f" {name}" for name in leaving_out)
        for output in self.console:
            kept += [
                line for line in output.splitlines() if not marks or not _logged_by(line, marks)
            ]
        return "\n".join(kept)


def _logged_by(line: str, marks: tuple[str, ...]) -> bool:
    return any(f"{mark}." in line or f"{mark}:" in line for mark in marks)


@pytest.fixture(scope="module")
def journal() -> Iterator[Journal]:
    """Every ``faceveil`` call of this module logs at DEBUG into the journal too."""
    handler = Journal()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure = faceveil.jobs.cli.configure_logging

    def configure_and_record(*args, **kwargs) -> None:
        configure(*args, **kwargs)
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(faceveil.jobs.cli, "configure_logging", configure_and_record)
        yield handler
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def cli(journal: Journal, *argv: object, cwd: Path | None = None) -> Result:
    """``faceveil ARGV...`` in-process (in ``cwd``), its stdout and stderr captured and kept in
    the journal."""
    result = run_cli(*argv, cwd=cwd)
    journal.console += [result.out, result.err]
    return result


# ---- the job -------------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    photos: dict[str, bytes]
    out: Path
    pubs: list[Path]
    journal: Journal
    passfiles: dict[str, Path] = field(default_factory=dict)

    @property
    def requester(self) -> Path:
        """The requester's working folder: request key files land here as ./ID.key."""
        return self.root / "requester"

    def run(self, *extra: str) -> Result:
        argv = ["run", self.root / "photos", self.out, "--method", "blur"]
        argv += ["--shard-size", SHARD_SIZE, "--secret-file", self.root / "secret.key"]
        return cli(self.journal, *argv, "--no-progress", *extra)

    def request(self, *which: str, purpose: str = "restore") -> tuple[Path, RestoreRequest]:
        return self.request_with(*which, "--purpose", purpose)

    def request_with(self, *which: object) -> tuple[Path, RestoreRequest]:
        argv = ["restore", "request", self.out, *which, "--reason", "subject access request 7"]
        argv += ["--kdf-work", 15]
        result = cli(
            self.journal,
            *argv,
            "--passphrase-file",
            self.passfiles["requester"],
            cwd=self.requester,
        )
        assert result.rc == 0, result.err
        request = RestoreRequest.loads(result.out)
        path = self.requester / f"req-{request.request_id}.json"
        path.write_text(result.out)
        assert (self.requester / f"{request.request_id}.key").stat().st_mode & 0o777 == 0o600
        return path, request

    def approve(self, request: Path, who: str) -> Path:
        """``restore approve REQ --identity WHO.key > WHO.approval`` on a machine without OUT."""
        argv = ["restore", "approve", request, "--identity", self.root / f"keys/{who}.key"]
        away = self.out.with_name("out-elsewhere")
        self.out.rename(away)
        try:
            result = cli(self.journal, *argv, "--passphrase-file", self.passfiles[who], "--yes")
        finally:
            away.rename(self.out)
        assert result.rc == 0, result.err
        approval = request.with_name(f"{request.stem}.{who}.approval")
        approval.write_text(result.out)
        return approval

    def apply(self, request: Path, approvals: list[Path], dest: Path, out: Path | None = None):
        argv = ["restore", "apply", out or self.out, request, *approvals, "--dest", dest]
        argv += ["--passphrase-file", self.passfiles["requester"]]
        return cli(self.journal, *argv, cwd=self.requester)


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local, journal) -> World:
    """Photos, a job secret, three custodians made with the CLI, and a 2-of-3 escrowed run."""
    root = tmp_path_factory.mktemp("escrow")
    photos = dict(sample_images(12))
    (root / "photos").mkdir()
    for name, data in photos.items():
        (root / "photos" / name).write_bytes(data)
    new_key_file(root / "secret.key")
    (root / "pass").mkdir()
    (root / "requester").mkdir()
    w = World(root, photos, root / "out", [root / f"keys/{c}.pub" for c in CUSTODIANS], journal)
    for who, text in PASSPHRASES.items():
        w.passfiles[who] = root / "pass" / f"{who}.txt"
        w.passfiles[who].write_text(text + "\n")
        w.passfiles[who].chmod(0o600)
    for who in CUSTODIANS:
        argv = ["custodian", "keygen", "--name", who, "--out", root / "keys", "--kdf-work", 15]
        assert cli(journal, *argv, "--passphrase-file", w.passfiles[who]).rc == 0
    result = w.run("--custodians", *w.pubs, "--threshold", 2)
    assert result.rc == 0, result.err
    return w


# ---- what the output holds and what a restore must give back ------------------------------------


def _pick(out: Path) -> tuple[str, str]:
    """A sample of a PNG input and one of a JPEG input, each with at least one face."""
    return pick(out, "png"), pick(out, "jpg")


@dataclass
class Restores:
    by_key: tuple[str, str]
    dest_keys: Path
    dest_all: Path
    request_keys: RestoreRequest
    request_all: RestoreRequest
    verify: Result


@pytest.fixture(scope="module")
def first_restores(world) -> Restores:
    """One request for two samples by key, one for all; two offline approvals each; apply."""
    w = world
    png, jpg = _pick(w.out)
    by_key, req_keys = w.request("--key", png, "--key", jpg)
    approvals = [w.approve(by_key, "alice"), w.approve(by_key, "bob")]
    result = w.apply(by_key, approvals, w.root / "restored-by-key")
    assert result.rc == 0, result.err
    everything, req_all = w.request("--all")
    approvals = [w.approve(everything, "bob"), w.approve(everything, "carol")]
    result = w.apply(everything, approvals, w.root / "restored-all")
    assert result.rc == 0, result.err
    verify = cli(w.journal, "audit", "verify", w.out)
    return Restores(
        (png, jpg), w.root / "restored-by-key", w.root / "restored-all", req_keys, req_all, verify
    )


def test_run_escrows_the_job_to_three_custodians(world):
    escrow = Escrow.loads((world.out / "escrow.json").read_bytes())
    assert escrow.scheme == "shamir" and escrow.policy.threshold == 2 and len(escrow.epochs) == 1
    assert [c.name for c in escrow.policy.custodians] == list(CUSTODIANS)
    shards = sorted(p.stem for p in (world.out / "keys").glob("*.parquet"))
    assert shards == [f"shard-{i:06d}" for i in range(3)]
    assert len(public_metadata(world.out)) == len(world.photos)
    assert not (world.out / "shards").exists()  # review row 4: loose inputs are read in place


def test_restore_by_sample_id_is_exact(world, first_restores):
    r = first_restores
    assert {s.sample_id for s in r.request_keys.samples} == set(r.by_key)
    assert r.request_keys.requester
    check_restored(world, r.dest_keys, set(r.by_key))


def test_restore_of_every_sample_is_exact(world, first_restores):
    check_restored(world, first_restores.dest_all, set(public_metadata(world.out)))


def test_audit_verify_lists_requests_approvals_and_applies(first_restores):
    r = first_restores
    assert r.verify.rc == 0 and "audit log OK" in r.verify.out
    for request in (r.request_keys, r.request_all):
        listed = [
            line.split()[2] for line in r.verify.out.splitlines() if request.request_id in line
        ]
        assert listed == ["restore.request", "restore.approve", "restore.approve", "restore.apply"]


# ---- a resumed run: a second key epoch ----------------------------------------------------------


@dataclass
class Resumed:
    epochs: tuple[str, ...]
    dest: Path
    verify: Result


@pytest.fixture(scope="module")
def resumed(world, first_restores) -> Resumed:
    """Shard 2's outputs removed, the job resumed without escrow flags, then one request for
    every sample approved by alice and carol and applied."""
    w = world
    for rel in (f"data/{RESUMED_SHARD}.tar", f"keys/{RESUMED_SHARD}.parquet"):
        (w.out / rel).unlink()
    (w.out / f"quarantine/{RESUMED_SHARD}.parquet").unlink()
    (w.out / f"_done/{RESUMED_SHARD}.json").unlink()
    result = w.run("--resume")
    assert result.rc == 0, result.err
    escrow = Escrow.loads((w.out / "escrow.json").read_bytes())
    request, _ = w.request("--all")
    approvals = [w.approve(request, "alice"), w.approve(request, "carol")]
    dest = w.root / "restored-after-resume"
    result = w.apply(request, approvals, dest)
    assert result.rc == 0, result.err
    return Resumed(escrow.escrow_ids, dest, cli(w.journal, "audit", "verify", w.out))


def test_resume_seals_under_a_second_epoch(world, resumed):
    first, second = resumed.epochs
    epochs = {p.stem: key_manifest_epoch(p) for p in (world.out / "keys").glob("*.parquet")}
    assert epochs == {"shard-000000": first, "shard-000001": first, RESUMED_SHARD: second}


def test_one_request_restores_both_epochs(world, resumed):
    check_restored(world, resumed.dest, set(public_metadata(world.out)))
    assert resumed.verify.rc == 0
    logged = actions(world.out)
    assert logged.count("job.start") == 1 and logged.count("job.resume") == 1
    assert logged[-4:] == [
        "restore.request",
        "restore.approve",
        "restore.approve",
        "restore.apply",
    ]


def _copy_of(w: World, name: str) -> World:
    """The same world on a copy of its output (the copy is altered, not the output)."""
    shutil.copytree(w.out, w.root / name)
    return replace(w, out=w.root / name)


def _escrow_command(w: World, command: str, request: Path, approvals: list[Path]) -> Result:
    argv = ["escrow", command, w.out, "--request", request, "--approvals", *approvals]
    return cli(w.journal, *argv, "--passphrase-file", w.passfiles["requester"], cwd=w.requester)


def test_rekey_collapses_both_epochs_into_one(world, resumed):
    """A rekey of the resumed job: every manifest re-sealed under one new epoch; a restore
    after it is exact."""
    w = _copy_of(world, "out-rekey-epochs")
    request, _ = w.request(purpose="rekey")
    result = _escrow_command(
        w, "rekey", request, [w.approve(request, "alice"), w.approve(request, "bob")]
    )
    assert result.rc == 0, result.err
    escrow = Escrow.loads((w.out / "escrow.json").read_bytes())
    (epoch,) = escrow.escrow_ids
    assert epoch not in resumed.epochs
    assert {key_manifest_epoch(p) for p in (w.out / "keys").glob("*.parquet")} == {epoch}
    request, _ = w.request("--all")
    dest = w.root / "restored-after-rekey"
    result = w.apply(request, [w.approve(request, "bob"), w.approve(request, "carol")], dest)
    assert result.rc == 0, result.err
    check_restored(w, dest, set(public_metadata(w.out)))


def test_reshare_covers_every_epoch(world, resumed):
    """A reshare of the resumed job to 3 of 3: both epochs move; two approvals no longer do."""
    w = _copy_of(world, "out-reshare-epochs")
    argv = ["--purpose", "reshare", "--custodians", *w.pubs, "--threshold", 3]
    request, _ = w.request_with(*argv)
    result = _escrow_command(
        w, "reshare", request, [w.approve(request, "alice"), w.approve(request, "carol")]
    )
    assert result.rc == 0, result.err
    escrow = Escrow.loads((w.out / "escrow.json").read_bytes())
    assert escrow.escrow_ids == resumed.epochs and escrow.policy.threshold == 3
    request, _ = w.request("--all")
    approvals = [w.approve(request, who) for who in CUSTODIANS]
    dest = w.root / "restored-after-reshare"
    refused = w.apply(request, approvals[:2], dest)
    assert "this escrow needs 3" in refused.one_error() and not dest.exists()
    result = w.apply(request, approvals, dest)
    assert result.rc == 0, result.err
    check_restored(w, dest, set(public_metadata(w.out)))


# ---- refusals -----------------------------------------------------------------------------------


@dataclass
class Ready:
    request: Path
    alice: Path
    bob: Path
    other_bob: Path


@pytest.fixture(scope="module")
def ready(world, first_restores) -> Ready:
    """A valid request for every sample with two approvals, and bob's approval of another one."""
    request, _ = world.request("--all")
    other, _ = world.request("--key", first_restores.by_key[0])
    return Ready(
        request,
        world.approve(request, "alice"),
        world.approve(request, "bob"),
        world.approve(other, "bob"),
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong passphrase", "wrong passphrase or damaged key file"),
        ("M-1 approvals", "1 valid approval(s) from distinct custodians; this escrow needs 2"),
        ("approval of another request", "approval 2 (by 'bob') is for another request"),
        ("same approval twice", "approval 2 duplicates the approval of 'alice'"),
    ],
)
def test_refused_apply_writes_nothing(world, ready, case, message):
    dest = world.root / f"refused-{case.replace(' ', '-')}"
    approvals = {
        "M-1 approvals": [ready.alice],
        "approval of another request": [ready.alice, ready.other_bob],
        "same approval twice": [ready.alice, ready.alice],
    }.get(case, [ready.alice, ready.bob])
    argv = ["restore", "apply", world.out, ready.request, *approvals, "--dest", dest]
    passfile = world.passfiles["requester" if case != "wrong passphrase" else "bob"]
    before = actions(world.out)
    result = cli(world.journal, *argv, "--passphrase-file", passfile, cwd=world.requester)
    assert message in result.one_error()
    assert not dest.exists()
    assert actions(world.out) == before


def _flip_a_ciphertext_byte(manifest: Path) -> None:
    parsed = load_key_manifest(manifest.read_bytes())
    rows = list(parsed.rows)
    row = rows[0]
    flipped = bytearray(row.ciphertext)
    flipped[len(flipped) // 2] ^= 0x01
    rows[0] = KeyRow(row.sample_id, row.face, row.bbox, row.nonce, bytes(flipped), row.aad_sha256)
    manifest.write_bytes(key_manifest_bytes(rows, parsed.escrow_id))


def test_tampered_key_manifest_restores_nothing(world, ready):
    copy = world.root / "out-tampered"
    shutil.copytree(world.out, copy)
    _flip_a_ciphertext_byte(copy / "keys/shard-000001.parquet")
    dest = world.root / "refused-tampered"
    result = world.apply(ready.request, [ready.alice, ready.bob], dest, out=copy)
    # The row list no longer matches the one the job signed (job.manifests): refused before
    # anything is decrypted.
    error = result.one_error()
    assert "keys/shard-000001.parquet differs from the row list the job signed" in error
    assert not dest.exists()
    assert actions(copy)[-1] == "restore.failed"


def test_edited_audit_line_is_named(world, first_restores):
    copy = world.root / "out-edited-audit"
    shutil.copytree(world.out, copy)
    log = copy / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if '"restore.request"' in line)
    lines[n] = lines[n].replace("subject access request 7", "routine maintenance 7")
    log.write_text("".join(lines))
    result = cli(world.journal, "audit", "verify", copy)
    assert f"audit line {n + 1}: bad signature" in result.one_error()


# ---- nothing secret anywhere it should not be ----------------------------------------------------


def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), base64.b64encode(secret).decode(), secret.decode("latin-1")]


def _key_file_secrets(w: World) -> list[bytes]:
    """The custodians' and requesters' key-file ciphertexts and salts, and the raw private keys."""
    found = []
    for path in [*(w.root / "keys").glob("*.key"), *w.requester.glob("*.key")]:
        doc = json.loads(path.read_text())
        found += [base64.b64decode(doc["ciphertext"]), base64.b64decode(doc["kdf"]["salt"])]
    for who in CUSTODIANS:
        private = CustodianPrivate.load(w.root / f"keys/{who}.key", PASSPHRASES[who])
        found += [private.x25519.private_bytes_raw(), private.ed25519.private_bytes_raw()]
    return found


def _source_names(w: World) -> list[str]:
    return [Path(name).stem for name in w.photos] + list(NAMES)


def test_no_secret_or_source_name_in_logs_console_or_public_files(world, resumed, ready):
    """Over the whole workflow (run, resume, restores, refusals): passphrases, key files,
    private keys, original bytes and source names appear in no log record (DEBUG), no console
    output, and no file outside restored.json and the restore destinations."""
    text = world.journal.text()
    assert "restore.apply" in text and "DEBUG faceveil.jobs.auditlog" in text
    secrets_ = [p.encode() for p in PASSPHRASES.values()] + _key_file_secrets(world)
    secrets_ += [data[200:248] for data in world.photos.values()]
    for secret in secrets_:
        for form in _forms(secret):
            assert form not in text
    names = _source_names(world)
    for name in names:
        assert name not in text, name
    originals = [data[200:248] for data in world.photos.values()]
    for folder in (world.out, world.requester):
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            for secret in [p.encode() for p in PASSPHRASES.values()]:
                assert secret not in data, path
            for name in names:  # loose photos are read in place: OUT has no copy of them
                assert name.encode() not in data, (path, name)
            if folder == world.out:
                assert not any(o in data for o in originals), path


def test_debug_logs_of_third_party_libraries_name_no_source_file(world, resumed):
    """fsspec logs every path it opens at DEBUG; faceveil -v must hold it back."""
    text = world.journal.text()
    for name in _source_names(world):
        assert name not in text, name
