"""Custodian key pairs, passphrase-protected key files, and sealing to an X25519 public key.

A custodian holds an X25519 key pair (shares of the master key are sealed to it) and an Ed25519
key pair (approvals and audit entries are signed with it).

``NAME.pub`` (JSON, public)::

    {"format": "faceveil-custodian-pub/1", "name": ..., "x25519": b64, "ed25519": b64,
     "fingerprint": sha256hex(b"faceveil-custodian/1" + x25519_raw + ed25519_raw)}

``NAME.key`` (JSON, mode 0600): the same name and fingerprint, ``kdf`` (scrypt ``n``, ``r``,
``p`` and a 16-byte salt), ``cipher`` (AES-256-GCM and its nonce) and ``ciphertext`` of the raw
X25519 private key followed by the raw Ed25519 private key (32 + 32 bytes). The AES key is
scrypt(passphrase); the AAD is the canonical JSON of every field but ``ciphertext``, so an edited
name, fingerprint or KDF parameter fails like a wrong passphrase. Passphrases come from a prompt
or a file, never from the command line.

Sealing to a public key (ECIES style): a fresh ephemeral X25519 key, ``HKDF-SHA256(shared,
salt=eph_pub + recipient_pub, info="faceveil/ecies/v1|" + context)``, AES-256-GCM with AAD
``"faceveil/ecies/v1|" + uint16(len(context)) + context + aad``. Blob layout: ``0x01`` (version)
``| eph_pub (32) | nonce (12) | ciphertext+tag``.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import logging
import re
import secrets
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.errors import CustodianKeyError, DecryptionError
from faceveil.manifests.files import write_private_file

log = logging.getLogger(__name__)

PUB_FORMAT = "faceveil-custodian-pub/1"
KEY_FORMAT = "faceveil-custodian-key/1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ECIES_INFO = b"faceveil/ecies/v1|"
_ECIES_VERSION = b"\x01"
MIN_SCRYPT_N = 2**15
MIN_SCRYPT_R = 8
MIN_PASSPHRASE_CHARS = 12


def b64e(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str, what: str, size: int | None = None) -> bytes:
    """Decode base64 text, raising ValueError naming ``what`` (never the value)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"{what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes")
    return raw


def check_name(name: str) -> str:
    """A custodian name usable as a file name: letters, digits, ``_.-``, at most 64 chars."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("custodian names are 1-64 characters of letters, digits, '_', '.', '-'")
    return name


# ---- passphrase-protected secrets ---------------------------------------------------------------


@dataclass(frozen=True)
class ScryptParams:
    """scrypt work factors: ``n`` (a power of two), ``r`` and ``p``."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def check(self) -> None:
        """Refuse parameters below the floor (n >= 2**15, r >= 8) or absurdly expensive ones."""
        n, r, p = self.n, self.r, self.p
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, r, p)):
            raise CustodianKeyError("key file has unacceptable scrypt parameters")
        if n < MIN_SCRYPT_N or r < MIN_SCRYPT_R:
            raise CustodianKeyError(
                f"scrypt parameters n={n}, r={r} are below the floor "
                f"(n >= 2**15 = {MIN_SCRYPT_N}, r >= {MIN_SCRYPT_R}); "
                "re-create the key file with stronger parameters"
            )
        ok = n <= 2**22 and n & (n - 1) == 0 and r <= 32 and 1 <= p <= 16 and 128 * n * r <= 2**31
        if not ok:
            raise CustodianKeyError("key file has unacceptable scrypt parameters")


def _scrypt(passphrase: str, salt: bytes, params: ScryptParams) -> bytes:
    params.check()
    kdf = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p)
    return kdf.derive(passphrase.encode("utf-8"))


def passphrase_seal(
    header: dict, secret: bytes, passphrase: str, params: ScryptParams | None = None
) -> dict:
    """A key-file document: ``header`` + scrypt KDF + AES-256-GCM ciphertext of ``secret``."""
    check_new_passphrase(passphrase)
    params = params or ScryptParams()
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    doc = dict(header)
    doc["kdf"] = {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": b64e(salt)}
    doc["cipher"] = {"name": "aes-256-gcm", "nonce": b64e(nonce)}
    key = _scrypt(passphrase, salt, params)
    doc["ciphertext"] = b64e(AESGCM(key).encrypt(nonce, secret, canonical_json(doc)))
    return doc


def passphrase_open(doc: dict, passphrase: str, expected_format: str) -> bytes:
    """Decrypt a :func:`passphrase_seal` document; one error for wrong passphrase or damage."""
    try:
        if doc.get("format") != expected_format:
            raise CustodianKeyError(f"not a {expected_format} file")
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf.get("name") != "scrypt" or cipher.get("name") != "aes-256-gcm":
            raise CustodianKeyError("key file uses an unknown KDF or cipher")
        params = ScryptParams(kdf["n"], kdf["r"], kdf["p"])
        salt, nonce = b64d(kdf["salt"], "salt"), b64d(cipher["nonce"], "nonce", 12)
        ciphertext = b64d(doc["ciphertext"], "ciphertext")
        aad = canonical_json({k: v for k, v in doc.items() if k != "ciphertext"})
        key = _scrypt(passphrase, salt, params)
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, KeyError, TypeError, ValueError, AttributeError):
        raise CustodianKeyError("wrong passphrase or damaged key file") from None


def check_new_passphrase(passphrase: str) -> None:
    """Refuse a passphrase for a new key file that is shorter than 12 characters."""
    if not isinstance(passphrase, str) or len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise CustodianKeyError(
            f"a new key file needs a passphrase of at least {MIN_PASSPHRASE_CHARS} characters"
        )


def read_passphrase(passphrase_file: str | Path | None, prompt: str, confirm: bool = False) -> str:
    """A passphrase from ``passphrase_file`` (first line) or, without one, from a getpass prompt.

    ``confirm`` marks a new passphrase: asked twice at a prompt, and at least 12 characters.
    """
    if passphrase_file is not None:
        path = Path(passphrase_file)
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("passphrase file %s is readable by group or others", path)
        text = path.read_text(encoding="utf-8").split("\n", 1)[0].rstrip("\r")
    else:
        text = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat passphrase: ") != text:
            raise CustodianKeyError("the passphrases do not match")
    if not text:
        raise CustodianKeyError("an empty passphrase is not accepted")
    if confirm:
        check_new_passphrase(text)
    return text


# ---- sealing to a public key -------------------------------------------------------------------


def _ecies_key(shared: bytes, eph_pub: bytes, recipient: bytes, context: str) -> bytes:
    info = _ECIES_INFO + context.encode("utf-8")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient, info=info).derive(
        shared
    )


def _ecies_aad(context: str, aad: bytes) -> bytes:
    ctx = context.encode("utf-8")
    return _ECIES_INFO + struct.pack(">H", len(ctx)) + ctx + aad


def seal_to(recipient: bytes, plaintext: bytes, context: str, aad: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` to a raw X25519 public key, bound to ``context`` and ``aad``."""
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes_raw()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient))
    nonce = secrets.token_bytes(12)
    key = _ecies_key(shared, eph_pub, recipient, context)
    return (
        _ECIES_VERSION
        + eph_pub
        + nonce
        + AESGCM(key).encrypt(nonce, plaintext, _ecies_aad(context, aad))
    )


def open_sealed(private: X25519PrivateKey, blob: bytes, context: str, aad: bytes = b"") -> bytes:
    """Decrypt a :func:`seal_to` blob; raises one :class:`DecryptionError` on any mismatch."""
    try:
        if len(blob) < 1 + 32 + 12 + 16 or blob[:1] != _ECIES_VERSION:
            raise ValueError("malformed")
        eph_pub, nonce, ciphertext = blob[1:33], blob[33:45], blob[45:]
        recipient = private.public_key().public_bytes_raw()
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _ecies_key(shared, eph_pub, recipient, context)
        return AESGCM(key).decrypt(nonce, ciphertext, _ecies_aad(context, aad))
    except (InvalidTag, ValueError):
        raise DecryptionError(
            f"sealed {context} did not open: wrong recipient key, or the sealed "
            "value or its context was tampered with"
        ) from None


# ---- custodian keys ----------------------------------------------------------------------------


def fingerprint(x25519: bytes, ed25519: bytes) -> str:
    """A custodian's fingerprint: sha256 hex over both raw public keys."""
    return hashlib.sha256(b"faceveil-custodian/1" + x25519 + ed25519).hexdigest()


@dataclass(frozen=True)
class CustodianPublic:
    """A custodian's public identity: name, X25519 and Ed25519 raw public keys."""

    name: str
    x25519: bytes
    ed25519: bytes

    @property
    def fingerprint(self) -> str:
        """sha256 hex over both public keys."""
        return fingerprint(self.x25519, self.ed25519)

    def to_json(self) -> dict:
        """The ``.pub`` document."""
        return {
            "format": PUB_FORMAT,
            "name": self.name,
            "x25519": b64e(self.x25519),
            "ed25519": b64e(self.ed25519),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, doc: dict) -> CustodianPublic:
        """Parse a ``.pub`` document (or an escrow custodian entry), checking the fingerprint."""
        try:
            pub = cls(
                check_name(doc["name"]),
                b64d(doc["x25519"], "x25519 key", 32),
                b64d(doc["ed25519"], "ed25519 key", 32),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CustodianKeyError(f"invalid custodian public key: {exc}") from None
        if doc.get("fingerprint") != pub.fingerprint:
            raise CustodianKeyError(f"custodian {pub.name!r}: fingerprint does not match its keys")
        return pub

    @classmethod
    def load(cls, path: str | Path) -> CustodianPublic:
        """Read a ``.pub`` file."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CustodianKeyError(
                f"cannot read custodian public key {path}: {type(exc).__name__}"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != PUB_FORMAT:
            raise CustodianKeyError(f"{path} is not a faceveil custodian public key")
        return cls.from_json(doc)


class CustodianPrivate:
    """A custodian's private keys, decrypted in memory; never shown by ``repr``."""

    def __init__(self, name: str, x25519: X25519PrivateKey, ed25519: Ed25519PrivateKey) -> None:
        self.name = check_name(name)
        self.x25519 = x25519
        self.ed25519 = ed25519

    def __repr__(self) -> str:
        return f"CustodianPrivate(name={self.name!r}, fingerprint={self.public().fingerprint[:16]})"

    @classmethod
    def generate(cls, name: str) -> CustodianPrivate:
        """Fresh X25519 and Ed25519 key pairs."""
        return cls(name, X25519PrivateKey.generate(), Ed25519PrivateKey.generate())

    def public(self) -> CustodianPublic:
        """The matching public identity."""
        return CustodianPublic(
            self.name,
            self.x25519.public_key().public_bytes_raw(),
            self.ed25519.public_key().public_bytes_raw(),
        )

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data``."""
        return self.ed25519.sign(data)

    def to_key_file(self, passphrase: str, params: ScryptParams | None = None) -> bytes:
        """The encrypted ``.key`` document as bytes."""
        header = {"format": KEY_FORMAT, "name": self.name, "fingerprint": self.public().fingerprint}
        secret = self.x25519.private_bytes_raw() + self.ed25519.private_bytes_raw()
        return json.dumps(passphrase_seal(header, secret, passphrase, params), indent=1).encode()

    @classmethod
    def load(cls, path: str | Path, passphrase: str) -> CustodianPrivate:
        """Read and decrypt a ``.key`` file."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CustodianKeyError(f"cannot read key file {path}: {type(exc).__name__}") from None
        if not isinstance(doc, dict):
            raise CustodianKeyError(f"{path} is not a faceveil custodian key file")
        secret = passphrase_open(doc, passphrase, KEY_FORMAT)
        if len(secret) != 64:
            raise CustodianKeyError("wrong passphrase or damaged key file")
        key = cls(
            doc["name"],
            X25519PrivateKey.from_private_bytes(secret[:32]),
            Ed25519PrivateKey.from_private_bytes(secret[32:]),
        )
        if key.public().fingerprint != doc.get("fingerprint"):
            raise CustodianKeyError("wrong passphrase or damaged key file")
        return key


def keygen(
    name: str, out_dir: str | Path, passphrase: str, params: ScryptParams | None = None
) -> tuple[Path, Path]:
    """Create ``OUT_DIR/NAME.pub`` and ``OUT_DIR/NAME.key`` (0600); refuses to overwrite."""
    check_name(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pub_path, key_path = out / f"{name}.pub", out / f"{name}.key"
    for path in (pub_path, key_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; not overwriting a custodian key")
    key = CustodianPrivate.generate(name)
    write_private_file(key_path, key.to_key_file(passphrase, params))
    pub_path.write_text(json.dumps(key.public().to_json(), indent=1) + "\n", encoding="utf-8")
    log.info("created custodian key pair %s (fingerprint %s)", name, key.public().fingerprint)
    return pub_path, key_path
