"""Key files (32 random bytes as hex, owner-only), ``faceveil key new``, and the job secret.

Format: 64 lowercase hex characters and a newline, so a key can be read, copied and escrowed as
text. Errors name the file, never its content.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

KEY_BYTES = 32


class KeyFileError(ValueError):
    """A key file that is missing, malformed or readable by others (never shows the key)."""


def new_key_file(path: str | Path) -> Path:
    """Create ``path`` holding a fresh random key as 64 hex characters, mode 0600.

    Refuses to overwrite: losing a team key makes its pseudonyms unreproducible.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        path.unlink(missing_ok=True)
        raise
    return path


def load_key_file(path: str | Path) -> bytes:
    """The key in ``path``; refuses files that group or others can read or write."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} is accessible to other users; chmod 600 it")
    malformed = KeyFileError(f"key file {path} is not {KEY_BYTES * 2} hex characters")
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except ValueError:  # also UnicodeDecodeError, whose message would show a byte of the file
        raise malformed from None
    if len(key) != KEY_BYTES:
        raise malformed
    return key


DEFAULT_SECRET = "~/.faceveil/secret.key"


def load_secret(path: str | None, create: bool = True) -> bytes:
    """The 32-byte secret in ``path`` (default ~/.faceveil/secret.key); either is made, mode
    0600 in a folder made 0700, on first use (unless not ``create``: a command that reads an
    existing job's keys must not make up a new secret).

    Sample ids (``__key__``) are HMACs of source URIs under this secret: keep the file to rerun
    a job with the same sample ids, and keep it private, since it turns guessed file names into
    sample ids.
    """
    target = Path(os.path.expanduser(path or os.environ.get("FACEVEIL_SECRET", DEFAULT_SECRET)))
    if not target.exists() and create:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        new_key_file(target)
        log.info("created a new job secret at %s; keep it to rerun with the same keys", target)
    return load_key_file(target)
