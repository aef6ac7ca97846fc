"""Private files of an output tree stay 0600 when rewritten, even for the moment of the write."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

import faceveil.jobs.storage
from faceveil.jobs.storage import Location


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which a plain open() makes 0644 files."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def modes_at_rename(monkeypatch) -> list[int]:
    """Modes of every temp file at the moment it is renamed onto its target."""
    seen: list[int] = []
    real = os.replace

    def replace(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real(src, dst)

    monkeypatch.setattr(faceveil.jobs.storage.os, "replace", replace)
    return seen


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.usefixtures("umask_022")
def test_location_publish_rewrite_keeps_0600(tmp_path, modes_at_rename):
    out = Location(str(tmp_path))
    source = tmp_path / "staged.parquet"
    source.write_bytes(b"rows")
    for _ in range(2):
        out.publish_bytes(b"{}", "escrow.json")
        out.publish_json({"job_id": "x"}, "job.json")
        out.publish_file(str(source), "keys", "shard-000000.parquet")
    for rel in ("escrow.json", "job.json", "keys/shard-000000.parquet"):
        assert _mode(tmp_path / rel) == 0o600
    assert modes_at_rename == [0o600] * 6
