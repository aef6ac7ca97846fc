"""A real escrowed job for the key-command tests: photos, custodian keys made with the CLI, a
2-of-3 ``faceveil run`` on the session's local Ray, and helpers that drive every ``restore`` and
``escrow`` command in-process through ``faceveil.jobs.cli.main``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tarfile
from dataclasses import dataclass, field
from math import ceil, floor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import faceveil.jobs.cli
from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.demo import sample_images
from faceveil.jobs.keyfile import new_key_file
from faceveil.jobs.shardio import sniff_ext
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.custodian import ScryptParams, b64e, passphrase_seal
from faceveil.manifests.request import REQUEST_KEY_FORMAT, RestoreRequest, load_request_key

CUSTODIANS = ("alice", "bob", "carol")
OTHERS = ("dave", "mallory1", "mallory2")
PASSPHRASES = {
    "alice": "alice-orchid-Lantern-4417",
    "bob": "bob-granite-Harbour-9021",
    "carol": "carol-meadow-Falcon-3356",
    "dave": "dave-pebble-Comet-5120",
    "mallory1": "mallory-one-Spoof-0001",
    "mallory2": "mallory-two-Spoof-0002",
    "requester": "dpo-copper-Willow-7788",
}
REASON = "subject access request 7"
REQUEST_LABEL = b"faceveil/request/v4|"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def one_error(self) -> str:
        """The single ``error:`` line of a refused command (and no traceback)."""
        assert self.rc != 0, self.err
        errors = [line for line in self.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, self.err
        assert "Traceback" not in self.err
        return errors[0]


def cli(*argv: object, cwd: Path | None = None) -> Result:
    """``faceveil ARGV...`` in-process (in ``cwd``), its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            rc = faceveil.jobs.cli.main([str(a) for a in argv])
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
    return Result(rc, out.getvalue(), err.getvalue())


@dataclass
class World:
    """Inputs, keys and the job output ``out``; ``requester`` is the requester's folder."""

    root: Path
    photos: dict[str, bytes]
    out: Path
    passfiles: dict[str, Path] = field(default_factory=dict)
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def requester(self) -> Path:
        return self.root / "requester"

    def key(self, who: str) -> Path:
        return self.root / "keys" / f"{who}.key"

    def pub(self, who: str) -> Path:
        return self.root / "keys" / f"{who}.pub"

    def run(self, out: Path | str, *extra: object) -> Result:
        argv = ["run", self.root / "photos", out, "--method", "blur", "--shard-size", 2]
        return cli(*argv, "--secret-file", self.root / "secret.key", "--no-progress", *extra)

    def request_result(self, *which: object, out: Path | str | None = None) -> Result:
        """``restore request OUT WHICH...`` to ``req-N.json``, key to ``req-N.key``."""
        self.counter[0] += 1
        name = self.requester / f"req-{self.counter[0]}"
        argv = ["restore", "request", out or self.out, *which, "--reason", REASON]
        argv += ["--kdf-work", 15, "--out", f"{name}.json", "--key-out", f"{name}.key"]
        argv += ["--requester", "dpo-on-duty"]
        return cli(*argv, "--passphrase-file", self.passfiles["requester"], cwd=self.requester)

    def request(self, *which: object, out: Path | str | None = None) -> tuple[Path, RestoreRequest]:
        result = self.request_result(*which, out=out)
        assert result.rc == 0, result.err
        path = self.requester / f"req-{self.counter[0]}.json"
        return path, RestoreRequest.loads(path.read_bytes())

    def approve_result(self, request: Path, who: str, *extra: object) -> Result:
        argv = ["restore", "approve", request, "--identity", self.key(who), "--yes"]
        argv += ["--out", request.with_suffix(f".{who}.approval")]
        return cli(*argv, "--passphrase-file", self.passfiles[who], *extra)

    def approve(self, request: Path, who: str) -> Path:
        result = self.approve_result(request, who)
        assert result.rc == 0, result.err
        return request.with_suffix(f".{who}.approval")

    def apply(
        self, request: Path, approvals: list[Path], dest: Path, out: Path | str | None = None
    ) -> Result:
        argv = ["restore", "apply", out or self.out, request, *approvals, "--dest", dest]
        argv += ["--request-key", request.with_suffix(".key")]
        return cli(*argv, "--passphrase-file", self.passfiles["requester"], cwd=self.requester)

    def escrow(
        self, command: str, out: Path, request: Path, approvals: list[Path], *extra: object
    ) -> Result:
        """``escrow COMMAND OUT`` (rekey or reshare) for ``request`` with ``approvals``, as the
        requester."""
        argv = ["escrow", command, out, "--request", request, "--approvals", *approvals]
        argv += ["--request-key", request.with_suffix(".key"), *extra]
        return cli(*argv, "--passphrase-file", self.passfiles["requester"])

    def copy(self, name: str) -> Path:
        """A copy of the job output to alter."""
        target = self.root / name
        shutil.copytree(self.out, target)
        return target


def make_world(root: Path, count: int = 4, run_args: tuple = ()) -> World:
    """``count`` photos (sample 3 a PNG, the rest JPEG; 2 per shard), a job secret, every
    custodian's key pair made with ``faceveil custodian keygen``, and a 2-of-3 run into OUT."""
    photos = dict(sample_images(count))
    (root / "photos").mkdir(parents=True)
    for name, data in photos.items():
        (root / "photos" / name).write_bytes(data)
    new_key_file(root / "secret.key")
    for folder in ("pass", "requester"):
        (root / folder).mkdir()
    w = World(root, photos, root / "out")
    for who, text in PASSPHRASES.items():
        w.passfiles[who] = root / "pass" / f"{who}.txt"
        w.passfiles[who].write_text(text + "\n")
        w.passfiles[who].chmod(0o600)
    for who in CUSTODIANS + OTHERS:
        argv = ["custodian", "keygen", "--name", who, "--out", root / "keys", "--kdf-work", 15]
        assert cli(*argv, "--passphrase-file", w.passfiles[who]).rc == 0
    args = run_args or ("--custodians", *(w.pub(c) for c in CUSTODIANS), "--threshold", 2)
    result = w.run(w.out, *args)
    assert result.rc == 0, result.err
    return w


def public_metadata(out: Path) -> dict[str, tuple[str, dict]]:
    """sample id -> (image extension, public metadata) over every ``data/`` shard."""
    found: dict[str, tuple[str, dict]] = {}
    for path in sorted((out / "data").glob("*.parquet")):  # --output-format parquet
        for row in pq.read_table(path).to_pylist():
            found[row["__key__"]] = (sniff_ext(row["image"]["bytes"]), row["faceveil"])
    for path in sorted((out / "data").glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            key, _, ext = name.partition(".")
            if ext == "json":
                image_ext = next(n.partition(".")[2] for n in members if n.startswith(key + "."))
                found[key] = (image_ext if image_ext != "json" else "", json.loads(data))
    return found


def input_exts(root: Path) -> dict[str, str]:
    """sample key -> extension of its input file, for a job over ``root/photos`` keyed with
    ``root/secret.key`` (the output has one image format, so it does not tell)."""
    from faceveil.jobs.keyfile import load_key_file
    from faceveil.manifests.jobsecret import sample_id

    secret = load_key_file(root / "secret.key")
    photos = (p for p in (root / "photos").rglob("*") if p.is_file())
    return {sample_id(secret, str(p)): p.suffix.lstrip(".") for p in photos}


def pick(out: Path, ext: str) -> str:
    """A sample whose input file has extension ``ext``, with at least one face (``out`` beside
    the job's ``photos`` and ``secret.key``)."""
    meta, inputs = public_metadata(out), input_exts(Path(out).parent)
    return next(k for k, (_, m) in sorted(meta.items()) if inputs.get(k) == ext and m["faces"])


def check_restored(w, dest: Path, keys: set[str], out: Path | None = None) -> None:
    """Exactly ``keys`` restored from ``w``'s photos (a world of either escrow test module):
    PNG inputs pixel-identical, every JPEG face box exact, no staging folder left."""
    index = json.loads((dest / "restored.json").read_text())
    assert set(index) == keys
    files = sorted(p.name for p in dest.iterdir() if p.name != "restored.json")
    assert [name.partition(".")[0] for name in files] == sorted(keys)
    meta = public_metadata(out or w.out)
    for key, uri in index.items():
        name = Path(uri).name
        assert Path(uri) == w.root / "photos" / name
        original = decode_image(w.photos[name]).rgb
        (restored_file,) = dest.glob(f"{key}.*")
        restored = decode_image(restored_file.read_bytes()).rgb
        assert restored.shape == original.shape
        if name.endswith(".png"):
            assert np.array_equal(restored, original), name
            continue
        assert meta[key][1]["faces"], name
        for face in meta[key][1]["faces"]:
            x1, y1, x2, y2 = face["bbox"]
            box = (slice(floor(y1), ceil(y2)), slice(floor(x1), ceil(x2)))
            assert np.array_equal(restored[box], original[box]), (name, face["bbox"])
    assert not list(dest.glob(".restore-*"))


def actions(out: Path) -> list[str]:
    return [json.loads(line)["action"] for line in (out / "audit.jsonl").read_text().splitlines()]


def request_keys(req: Path):
    """A request file's request and the private keys of its key file (``REQ.key``)."""
    request = RestoreRequest.loads(req.read_bytes())
    key_file = req.with_suffix(".key").read_bytes()
    return request, load_request_key(request, key_file, PASSPHRASES["requester"])


def resign(req: Path, **changes) -> Path:
    """``req`` with ``changes`` made and signed again with its requester key (which the
    requester holds): a well-formed, properly signed forgery."""
    request, keys = request_keys(req)
    doc = request.unsigned_doc() | changes
    signature = keys.ed25519.sign(REQUEST_LABEL + canonical_json(doc))
    forged = req.with_name(f"forged-{req.name}")
    forged.write_text(json.dumps(doc | {"signature": b64e(signature)}))
    header = {"format": REQUEST_KEY_FORMAT, "request_id": doc["request_id"]}
    header["request_sha256"] = hashlib.sha256(
        canonical_json(doc | {"signature": b64e(signature)})
    ).hexdigest()
    secret = keys.x25519.private_bytes_raw() + keys.ed25519.private_bytes_raw()
    sealed = passphrase_seal(header, secret, PASSPHRASES["requester"], ScryptParams(n=2**15))
    forged.with_suffix(".key").write_text(json.dumps(sealed))
    return forged
