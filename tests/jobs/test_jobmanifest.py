"""job.json's typed record: one schema, versioned, version 1 still read on resume."""

import json
from dataclasses import replace

import pytest

from faceveil.jobs.jobmanifest import SCHEMA, JobFileError, JobManifest, JobStatus
from faceveil.manifests.canonical import canonical_json

V1 = {
    "job_id": "0" * 32,
    "created": 1764496481.123456,
    "status": "incomplete",
    "config": {"anon": {"method": "blur"}, "shard_size": 4, "batch_size": 16},
    "config_sha256": "ab" * 32,
    "versions": {"faceveil": "0.1.0", "python": "3.11.9"},
    "escrow_mode": "none",
    "totals": {"samples_in": 8, "anonymized": 6, "no_face": 1, "quarantined": 1, "faces": 9},
    "shards": {"total": 3, "done": 2},
    "failed": [{"shard": "shard-000002.tar", "error": "OSError: gone"}],
}


def test_a_version_1_job_json_is_read_and_written_back_with_only_the_schema_added():
    manifest = JobManifest.from_json(V1)
    assert manifest.status is JobStatus.INCOMPLETE
    assert json.loads(canonical_json(manifest.to_json())) == {"schema": SCHEMA, **V1}


def test_the_current_schema_round_trips():
    manifest = JobManifest.new({"anon": {}}, "cd" * 32, {"faceveil": "0.1.0"})
    done = replace(manifest, escrow_mode="kms", status=JobStatus.COMPLETE)
    done = done.with_surrogate(key_fingerprint="f" * 16).with_surrogate(first_pass={"faces": 3})
    doc = json.loads(canonical_json(done.to_json()))
    assert doc["schema"] == SCHEMA and doc["status"] == "complete"
    assert doc["surrogate"] == {"key_fingerprint": "f" * 16, "first_pass": {"faces": 3}}
    assert "totals" not in doc and "audit" not in doc
    assert JobManifest.from_json(doc) == done


def test_statuses_serialise_as_plain_strings():
    assert canonical_json({"status": JobStatus.RUNNING}) == b'{"status":"running"}'
    assert type(JobManifest.from_json(V1).to_json()["status"]) is str


@pytest.mark.parametrize(
    "doc", [{**V1, "schema": "faceveil-job/9"}, {**V1, "colour": "blue"}], ids=["schema", "field"]
)
def test_an_unknown_schema_or_field_is_refused(doc):
    with pytest.raises(JobFileError):
        JobManifest.from_json(doc)


def test_resume_opens_a_version_1_job_json(tmp_path):
    from faceveil.jobs.config import JobConfig
    from faceveil.jobs.run import open_job
    from faceveil.jobs.storage import Location

    config = JobConfig(str(tmp_path / "in"), str(tmp_path / "out"), resume=True)
    doc = {**V1, "config": config.output_config(), "config_sha256": config.output_config_sha256()}
    out = Location(config.output)
    out.publish_json(doc, "job.json")
    manifest, resumed = open_job(config, out)
    assert resumed and manifest == JobManifest.from_json(doc)
    assert manifest.to_json() == {"schema": SCHEMA, **doc}
