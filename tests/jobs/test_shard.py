"""Sharding: stable listing, pseudonymous keys, reproducible tars, the shards.json index."""

import hashlib
import io

import pytest

from faceveil.jobs.shard import list_sources, read_index, write_shards
from faceveil.jobs.shardio import ShardFormatError, iter_samples, iter_verified
from faceveil.jobs.storage import Location
from faceveil.manifests.jobsecret import open_uri, sample_id
from tests.factories import tar_members, varied_faces, write_folder

SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_folder(root, varied_faces(12))
    (root / "notes.txt").write_text("not an image")
    return root


def test_listing_is_sorted_recursive_and_images_only(photos):
    sources = list_sources(str(photos))
    uris = [s.uri for s in sources]
    assert uris == sorted(uris) and len(uris) == 12
    assert any("/nested/" in u for u in uris)
    assert not any(u.endswith(".txt") for u in uris)


def test_glob_input(photos):
    assert len(list_sources(str(photos / "*.png"))) == sum(1 for p in photos.glob("*.png"))


def test_keys_are_hmac_of_uri_and_change_with_secret():
    # Known answers: HMAC-SHA256(bytes 0..31, URI), first 32 hex characters, computed once with
    # `openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f` (not by faceveil).
    assert sample_id(SECRET, "/a/b.jpg") == "bbb4fa071d74b875b47fb37ee9c0b636"
    assert sample_id(SECRET, "/a/c.jpg") == "18dc59e083c207c75437cc7d1adaa268"
    assert sample_id(SECRET, "s3://bucket/Jane_Doe_0001.jpg") == "3cf19e520f4270aa82e8cebe9783cc59"
    assert sample_id(SECRET, "/a/b.jpg") != sample_id(b"x" * 32, "/a/b.jpg")


def test_shards_are_reproducible_and_indexed(photos, tmp_path):
    first = write_shards(str(photos), str(tmp_path / "a"), SECRET, shard_size=5)
    second = write_shards(str(photos), str(tmp_path / "b"), SECRET, shard_size=5)
    assert [e.shard for e in first] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [e.samples for e in first] == [5, 5, 2]
    for a, b in zip(first, second, strict=True):
        data_a = (tmp_path / "a" / a.shard).read_bytes()
        assert data_a == (tmp_path / "b" / b.shard).read_bytes()
        assert hashlib.sha256(data_a).hexdigest() == a.sha256
    assert read_index(Location(str(tmp_path / "a"))) == first


def test_shard_members_keep_original_bytes_and_hide_names(photos, tmp_path):
    write_shards(str(photos), str(tmp_path), SECRET, shard_size=100)
    data = (tmp_path / "shard-000000.tar").read_bytes()
    names = list(tar_members(data))
    assert not any("jane" in n or "smith" in n for n in names)
    assert b"jane_doe" not in data and b"nested" not in data
    originals = {s.uri: (photos / s.uri[len(str(photos)) + 1 :]).read_bytes()
                 for s in list_sources(str(photos))}  # fmt: skip
    for sample in iter_samples(io.BytesIO(data)):
        uri = open_uri(SECRET, sample.sample_id, sample.members["src"])
        image = next(v for k, v in sample.members.items() if k != "src")
        assert image == originals[uri] and sample.sample_id == sample_id(SECRET, uri)


def test_input_tars_are_resharded(photos, tmp_path):
    write_shards(str(photos), str(tmp_path / "first"), SECRET, shard_size=100)
    again = write_shards(str(tmp_path / "first"), str(tmp_path / "second"), SECRET, 4)
    assert sum(e.samples for e in again) == 12


def test_a_name_twice_in_an_input_tar_gives_two_samples_with_their_own_keys(tmp_path):
    import tarfile

    first, second = (data for _, data in varied_faces(2))
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "batch.tar", "w") as tar:
        for data in (first, second):
            info = tarfile.TarInfo("face.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    uris = [s.uri for s in list_sources(str(tmp_path / "in"))]
    assert len(uris) == 2 and uris[0].endswith("#face.jpg") and uris[1].endswith("#face.jpg~2")
    write_shards(str(tmp_path / "in"), str(tmp_path / "out"), SECRET, shard_size=10)
    with open(tmp_path / "out" / "shard-000000.tar", "rb") as f:
        samples = list(iter_samples(f))
    assert len({s.sample_id for s in samples}) == 2
    images = {open_uri(SECRET, s.sample_id, s.members["src"]): s.members["jpg"] for s in samples}
    assert images == {uris[0]: first, uris[1]: second}


def test_truncated_or_altered_tar_is_detected(photos, tmp_path):
    (entry,) = write_shards(str(photos), str(tmp_path), SECRET, shard_size=100)
    data = (tmp_path / entry.shard).read_bytes()
    cut = data[: 512 * 40]  # on a header boundary: tarfile reads it without complaint
    with pytest.raises(ShardFormatError):
        list(iter_verified(io.BytesIO(cut), entry.sha256))
    assert len(list(iter_verified(io.BytesIO(data), entry.sha256))) == 12


def test_sealed_uri_needs_the_secret():
    from faceveil.manifests.jobsecret import seal_uri

    blob = seal_uri(SECRET, "k" * 32, "/photos/jane_doe.jpg")
    assert b"jane" not in blob and blob == seal_uri(SECRET, "k" * 32, "/photos/jane_doe.jpg")
    assert open_uri(SECRET, "k" * 32, blob) == "/photos/jane_doe.jpg"
    with pytest.raises(ValueError):
        open_uri(b"y" * 32, "k" * 32, blob)
    with pytest.raises(ValueError):
        open_uri(SECRET, "j" * 32, blob)


def test_truncated_input_tar_is_refused_without_naming_it(photos, tmp_path):
    from faceveil.jobs.shard import TruncatedInputError

    (entry,) = write_shards(str(photos), str(tmp_path / "in"), SECRET, shard_size=100)
    whole = (tmp_path / "in" / entry.shard).read_bytes()
    (tmp_path / "in" / "shards.json").unlink()
    (tmp_path / "in" / entry.shard).write_bytes(whole[: 512 * 30])  # cut on a header boundary
    with pytest.raises(TruncatedInputError) as err:
        list_sources(str(tmp_path / "in"))
    assert "shard-000000" not in str(err.value) and "number 1" in str(err.value)
