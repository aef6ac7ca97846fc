"""Hostile tar members: sparse, oversized, non-regular and huge headers are refused unread."""

from __future__ import annotations

import io
import tarfile
import tracemalloc

import pytest

from faceveil.jobs.shard import build_shard, list_sources
from faceveil.jobs.shardio import ShardFormatError, iter_samples
from faceveil.jobs.storage import Location
from faceveil.jobs.worker import classify_sample
from faceveil.manifests.jobsecret import sample_id
from tests.factories import gnu_sparse_tar

SECRET = bytes(range(32))
SMALL_PEAK = 8 * 2**20  # far below the 512 MiB a sparse member claims


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gnu_sparse_member_is_refused_before_any_allocation(tmp_path):
    tar = gnu_sparse_tar(tmp_path / "in")
    assert tar.stat().st_size < 64 * 1024
    with tarfile.open(tar) as t:
        assert t.getmember("aaaa.jpg").issparse() and t.getmember("aaaa.jpg").size == 512 * 2**20
    with open(tar, "rb") as f:
        samples, peak = _peak(lambda: list(iter_samples(f)))
    assert peak < SMALL_PEAK
    assert [s.sample_id for s in samples] == ["aaaa", "bbbb"]
    assert samples[0].refused == "tar member is a GNU sparse file"
    assert samples[0].members == {"jpg": b""}
    assert samples[1].refused == "" and samples[1].members == {"jpg": b"small member"}
    pending = classify_sample(samples[0], set(), None)
    assert pending.image is None
    assert (pending.result.status, pending.result.stage) == ("quarantined", "input")
    assert pending.result.reason == "tar member is a GNU sparse file"


def _tar_bytes(members: list[tarfile.TarInfo], fmt=tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info in members:
            data = b"x" * info.size if info.isreg() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, size: int = 0, type_: bytes = tarfile.REGTYPE, **pax) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.pax_headers = size, type_, pax
    if type_ == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


def test_member_over_the_cap_is_refused_unread():
    data = _tar_bytes([_info("big.png", 3 * 2**20), _info("ok.png", 10)])
    samples, peak = _peak(lambda: list(iter_samples(io.BytesIO(data), max_member_bytes=2**20)))
    assert peak < 2**20  # the 3 MiB member was skipped, never read into memory
    assert samples[0].refused == f"tar member of {3 * 2**20} bytes exceeds the cap of {2**20} bytes"
    assert samples[1].refused == "" and samples[1].members == {"png": b"x" * 10}


def test_non_regular_members_are_refused_and_directories_skipped():
    data = _tar_bytes(
        [_info("dir", type_=tarfile.DIRTYPE), _info("link.jpg", type_=tarfile.SYMTYPE),
         _info("fifo.jpg", type_=tarfile.FIFOTYPE), _info("ok.jpg", 4)]
    )  # fmt: skip
    samples = list(iter_samples(io.BytesIO(data)))
    assert [(s.sample_id, s.refused) for s in samples] == [
        ("link", "tar member of type b'2' is not a regular file"),
        ("fifo", "tar member of type b'6' is not a regular file"),
        ("ok", ""),
    ]


def test_huge_pax_header_fails_the_shard_clearly():
    data = _tar_bytes([_info("a.jpg", 4, comment="c" * (2 * 2**20))], fmt=tarfile.PAX_FORMAT)
    with pytest.raises(ShardFormatError, match="extension header of .* exceeds the cap"):
        list(iter_samples(io.BytesIO(data)))


def test_sparse_member_of_an_input_tar_is_quarantined_at_read(tmp_path):
    gnu_sparse_tar(tmp_path / "in")
    sources = list_sources(str(tmp_path / "in"))
    assert [s.uri.rsplit("#", 1)[1] for s in sources] == ["aaaa.jpg", "bbbb.jpg"]
    assert sources[0].error == "tar member is a GNU sparse file" and sources[1].error == ""
    shard, peak = _peak(lambda: build_shard(Location(str(tmp_path / "in")), sources, SECRET))
    assert peak < SMALL_PEAK
    samples = {s.sample_id: s for s in iter_samples(io.BytesIO(shard))}
    sparse, small = (sample_id(SECRET, s.uri) for s in sources)
    assert samples[sparse].members["err"] == b"tar member is a GNU sparse file"
    assert "jpg" not in samples[sparse].members
    assert samples[small].members["jpg"] == b"small member"


def test_residual_audit_reader_refuses_a_sparse_member(tmp_path):
    import fsspec

    from faceveil.jobs import residual

    tar = gnu_sparse_tar(tmp_path / "in")
    fs = fsspec.filesystem("file")
    samples, peak = _peak(lambda: list(residual.iter_samples(fs, str(tar))))
    assert peak < SMALL_PEAK
    assert [k for k, _ in samples] == ["aaaa", "bbbb"]
    assert set(samples[0][1]) == {residual.REFUSED}
    assert samples[1][1] == {"jpg": b"small member"}
