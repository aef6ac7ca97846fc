"""Custodian key files (scrypt + AES-GCM, mode 0600), passphrases, and sealing to a public key."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from faceveil.manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    ScryptParams,
    keygen,
    open_sealed,
    read_passphrase,
    seal_to,
)
from faceveil.manifests.errors import CustodianKeyError, DecryptionError

PASS = "correct horse battery staple"
FAST_KDF = ScryptParams(n=2**15)  # the floor: about 30 ms


def test_keygen_writes_public_and_0600_private_files(tmp_path):
    pub_path, key_path = keygen("alice", tmp_path / "keys", PASS, FAST_KDF)
    assert pub_path.name == "alice.pub" and key_path.name == "alice.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    pub_doc = json.loads(pub_path.read_text())
    assert set(pub_doc) == {"format", "name", "x25519", "ed25519", "fingerprint"}
    key_doc = json.loads(key_path.read_text())
    assert key_doc["kdf"]["name"] == "scrypt" and key_doc["cipher"]["name"] == "aes-256-gcm"
    private = CustodianPrivate.load(key_path, PASS)
    public = CustodianPublic.load(pub_path)
    assert private.public() == public
    raw = private.x25519.private_bytes_raw()
    assert raw.hex() not in key_path.read_text() and raw.hex() not in repr(private)
    with pytest.raises(FileExistsError):
        keygen("alice", tmp_path / "keys", PASS, FAST_KDF)


def test_wrong_passphrase_is_one_clear_error(tmp_path):
    _, key_path = keygen("bob", tmp_path, PASS, FAST_KDF)
    with pytest.raises(CustodianKeyError, match="wrong passphrase") as err:
        CustodianPrivate.load(key_path, "not the passphrase")
    assert "not the passphrase" not in str(err.value)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(name="mallory"),
        lambda d: d.update(fingerprint="0" * 64),
        lambda d: d["kdf"].update(n=2**16),
        lambda d: d["kdf"].update(n=2**40),
        lambda d: d.update(ciphertext=d["ciphertext"][:-4] + "AAA="),
    ],
)
def test_edited_key_file_does_not_open(tmp_path, edit):
    _, key_path = keygen("carol", tmp_path, PASS, FAST_KDF)
    doc = json.loads(key_path.read_text())
    edit(doc)
    key_path.write_text(json.dumps(doc))
    with pytest.raises(CustodianKeyError):
        CustodianPrivate.load(key_path, PASS)


@pytest.mark.parametrize("weak", [ScryptParams(n=2**14), ScryptParams(n=2**15, r=4)])
def test_new_key_file_below_the_scrypt_floor_is_refused(tmp_path, weak):
    with pytest.raises(CustodianKeyError, match=r"below the floor \(n >= 2\*\*15"):
        keygen("erin", tmp_path, PASS, weak)
    assert not list(tmp_path.iterdir())


def test_key_file_with_weak_scrypt_params_does_not_open(tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # a key file written before the floor existed
        m.setattr(ScryptParams, "check", lambda self: None)
        _, key_path = keygen("frank", tmp_path, PASS, ScryptParams(n=2**10))
    with pytest.raises(CustodianKeyError, match=r"n=1024, r=8 are below the floor"):
        CustodianPrivate.load(key_path, PASS)


def test_new_key_file_needs_a_12_character_passphrase(tmp_path):
    for short in ("", "eleven char"):
        with pytest.raises(CustodianKeyError, match="at least 12 characters"):
            keygen("grace", tmp_path, short, FAST_KDF)
    assert not list(tmp_path.iterdir())
    path = tmp_path / "short.txt"
    path.write_text("eleven char\n")
    path.chmod(0o600)
    with pytest.raises(CustodianKeyError, match="at least 12 characters"):
        read_passphrase(path, "p: ", confirm=True)
    assert read_passphrase(path, "p: ") == "eleven char"  # opening an existing file: any length


def test_public_file_with_wrong_fingerprint_is_rejected(tmp_path):
    pub_path, _ = keygen("dave", tmp_path, PASS, FAST_KDF)
    doc = json.loads(pub_path.read_text())
    doc["ed25519"] = CustodianPrivate.generate("x").public().to_json()["ed25519"]
    pub_path.write_text(json.dumps(doc))
    with pytest.raises(CustodianKeyError, match="fingerprint"):
        CustodianPublic.load(pub_path)


def test_names_must_be_plain(tmp_path):
    for name in ("../evil", "", "a b", ".hidden", "x" * 65):
        with pytest.raises(ValueError):
            keygen(name, tmp_path, PASS, FAST_KDF)


def test_passphrase_file_and_prompt(tmp_path, monkeypatch):
    path = tmp_path / "pass.txt"
    path.write_text(PASS + "\nignored second line\n")
    path.chmod(0o600)
    assert read_passphrase(path, "p: ") == PASS
    answers = iter(["one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(CustodianKeyError, match="do not match"):
        read_passphrase(None, "p: ", confirm=True)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "")
    with pytest.raises(CustodianKeyError, match="empty"):
        read_passphrase(None, "p: ")


def test_seal_to_public_key_round_trip_and_binding():
    recipient = X25519PrivateKey.generate()
    pub = recipient.public_key().public_bytes_raw()
    blob = seal_to(pub, b"share bytes", "escrow-share", b"aad")
    assert open_sealed(recipient, blob, "escrow-share", b"aad") == b"share bytes"
    assert seal_to(pub, b"share bytes", "escrow-share", b"aad") != blob
    bad = [
        (X25519PrivateKey.generate(), blob, "escrow-share", b"aad"),
        (recipient, blob, "restore-share", b"aad"),
        (recipient, blob, "escrow-share", b"other"),
        (recipient, blob[:-1] + bytes([blob[-1] ^ 1]), "escrow-share", b"aad"),
        (recipient, blob[:20], "escrow-share", b"aad"),
        (recipient, b"\x02" + blob[1:], "escrow-share", b"aad"),
    ]
    for key, data, context, aad in bad:
        with pytest.raises(DecryptionError):
            open_sealed(key, data, context, aad)
