"""The job secret that keys sample names: loaded from a key file, created on first use."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from jobs.keyfile import load_key_file, new_key_file

log = logging.getLogger(__name__)

DEFAULT_SECRET = "~/.faceveil/secret.key"


def load_secret(path: str | None) -> bytes:
    """The 32-byte secret in ``path`` (default ~/.faceveil/secret.key, made if missing).

    Sample keys are HMACs of source URIs under this secret: keep the file to rerun a job with
    the same keys, and keep it private, since it turns guessed file names into sample keys.
    """
    target = Path(os.path.expanduser(path or os.environ.get("FACEVEIL_SECRET", DEFAULT_SECRET)))
    if not target.exists():
        if path is not None:
            raise FileNotFoundError(f"secret file {target} does not exist")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        new_key_file(target)
        log.info("created a new job secret at %s; keep it to rerun with the same keys", target)
    return load_key_file(target)
