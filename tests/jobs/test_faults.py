"""Faults on real parts: a killed actor, a killed driver, a flaky object store, a full disk.

Each job test checks invariants 2 and 3: every marker adds up, the totals are exact, no sample
is written twice, and the data/ shards are byte-identical to those of an uninterrupted run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.jobs.config import EscrowConfig, JobConfig
from faceveil.jobs.keyfile import load_key_file
from faceveil.jobs.run import JobError, run_job
from faceveil.jobs.shard import read_index, shard_name, write_shards
from faceveil.jobs.storage import Location, RetryPolicy, StorageError
from faceveil.jobs.worker import ShardOptions, ShardTask, process_shard
from tests.jobs.corpus import large_photos
from tests.jobs.procs import descendants, find, kill_survivors, wait_for

SHARDS, PER_SHARD = 6, 3
ACTOR_TITLE = "MapWorker(MapBatches(ShardProcessor))"
FACEVEIL = str(Path(sys.executable).with_name("faceveil"))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, secret_file) -> Path:
    """18 large photos (about half a second each on one CPU), 3 per shard: 6 shards."""
    root = tmp_path_factory.mktemp("faults")
    photos = root / "photos"
    photos.mkdir()
    for name, data in large_photos(SHARDS * PER_SHARD):
        (photos / name).write_bytes(data)
    write_shards(str(photos), str(root / "shards"), load_key_file(secret_file), PER_SHARD)
    return root / "shards"


@pytest.fixture(scope="module")
def small(tmp_path_factory, secret_file) -> Path:
    """8 small photos, 2 per shard: 4 shards that process in a few seconds."""
    root = tmp_path_factory.mktemp("small")
    (root / "photos").mkdir()
    for name, data in large_photos(8, width=640):
        (root / "photos" / name).write_bytes(data)
    write_shards(str(root / "photos"), str(root / "shards"), load_key_file(secret_file), 2)
    return root / "shards"


def _config(sharded: Path, out: str | Path, secret_file: Path) -> JobConfig:
    return JobConfig(input=str(sharded), output=str(out), secret_file=str(secret_file),
                     escrow=EscrowConfig(no_escrow=True), progress=False)  # fmt: skip


def _digests(out: Location) -> dict[str, str]:
    names = [n for n in out.listdir("data") if n.endswith(".tar")]
    return {n: hashlib.sha256(out.read_bytes("data", n)).hexdigest() for n in names}


def _marker_count(out: Path) -> int:
    folder = out / "_done"
    return len([n for n in os.listdir(folder) if n.endswith(".json")]) if folder.is_dir() else 0


def _check_complete(out: Location, shards: int = SHARDS, per_shard: int = PER_SHARD) -> None:
    """Every shard has its marker, each adds up, no key appears twice, job.json is complete."""
    markers = [out.read_json("_done", n) for n in out.listdir("_done") if n.endswith(".json")]
    assert sorted(m["shard"] for m in markers) == [shard_name(i) for i in range(shards)]
    keys = []
    for m in markers:
        assert m["samples_in"] == per_shard
        assert m["samples_in"] == m["anonymized"] + m["no_face"] + m["quarantined"]
        with tarfile.open(fileobj=io.BytesIO(out.read_bytes(m["files"]["data"]["path"]))) as tar:
            names = tar.getnames()
        assert len(names) == 2 * (m["anonymized"] + m["no_face"])
        keys += sorted({n.split(".", 1)[0] for n in names})
    assert len(keys) == len(set(keys)) == shards * per_shard
    job = out.read_json("job.json")
    assert job["status"] == "complete"
    assert job["totals"]["samples_in"] == shards * per_shard


@pytest.fixture(scope="module")
def reference(sharded, secret_file, ray_local, tmp_path_factory) -> dict[str, str]:
    """sha256 of every data shard of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = run_job(_config(sharded, out, secret_file))
    assert not summary.failed and summary.shards_done == SHARDS
    _check_complete(Location(str(out)))
    return _digests(Location(str(out)))


@pytest.mark.slow
def test_killed_actor_is_restarted_and_its_shard_redone(sharded, secret_file, reference,
                                                        ray_local, tmp_path):  # fmt: skip
    out = tmp_path / "out"
    me = os.getpid()
    before = set(find(me, ACTOR_TITLE))
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(run_job, _config(sharded, out, secret_file))
        wait_for(lambda: _marker_count(out) >= 1 or job.done(), 300, "the first shard")
        actors = [p for p in find(me, ACTOR_TITLE) if p not in before]
        assert len(actors) == 1, "expected one ShardProcessor actor"
        os.kill(actors[0], signal.SIGKILL)
        done_at_kill = _marker_count(out)
        wait_for(lambda: set(find(me, ACTOR_TITLE)) - before - set(actors), 120, "a new actor")
        summary = job.result(timeout=600)
    assert done_at_kill < SHARDS, "the job ended before the actor was killed"
    assert not summary.failed and summary.shards_done == SHARDS
    assert summary.samples_in == SHARDS * PER_SHARD
    _check_complete(Location(str(out)))
    assert _digests(Location(str(out))) == reference


def _skipped(stdout: str) -> int:
    match = re.search(r"\((\d+) skipped as already done\)", stdout)
    assert match, stdout
    return int(match.group(1))


def _kill_then_resume(command: list[str], out: Path, ray_local: str, log_path: Path):
    """Run ``command`` (``faceveil run`` with its own local Ray), SIGKILL it after its first
    marker, then ``--resume`` it joining the test's Ray; returns (markers at the kill, the
    resumed run's completed process)."""
    ray_tmp = tempfile.mkdtemp(prefix="fv-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["FACEVEIL_RAY_TMPDIR"] = ray_tmp
    tree: dict[int, int] = {}
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _marker_count(out) >= 1 or driver.poll() is not None, 300, "a marker")
        tree = descendants(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        done_at_kill = _marker_count(out)
        assert 1 <= done_at_kill < SHARDS, log_path.read_text()[-3000:]
        assert json.loads((out / "job.json").read_text())["status"] == "running"
        resumed = subprocess.run([*command, "--resume", "--address", ray_local], env=env,
                                 capture_output=True, text=True, timeout=600)  # fmt: skip
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_survivors(tree)  # what the killed driver's own Ray left behind
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return done_at_kill, resumed


@pytest.mark.slow
def test_killed_driver_then_resume_gives_identical_output(sharded, secret_file, reference,
                                                          ray_local, tmp_path):  # fmt: skip
    """``faceveil run`` (with its own local Ray) is killed with SIGKILL after its first
    marker; ``faceveil run --resume`` (here joining the test's Ray) finishes the job."""
    out = tmp_path / "out"
    command = [FACEVEIL, "run", str(sharded), str(out), "--secret-file", str(secret_file),
               "--no-escrow", "--no-progress"]  # fmt: skip
    done_at_kill, resumed = _kill_then_resume(command, out, ray_local, tmp_path / "driver.log")
    assert done_at_kill <= _skipped(resumed.stdout) < SHARDS
    _check_complete(Location(str(out)))
    assert _digests(Location(str(out))) == reference


@pytest.mark.slow
def test_killed_escrowed_driver_then_resume_keeps_every_sample_restorable(
    sharded, secret_file, ray_local, tmp_path
):
    """With escrow, the killed run never signed the row lists of the shards it sealed; the
    resumed run signs them (from their markers), so one request restores all 18 samples."""
    keys, out = tmp_path / "keys", tmp_path / "out"
    pass_file = tmp_path / "pass.txt"
    pass_file.write_text("a long enough passphrase\n")
    pass_file.chmod(0o600)
    for who in ("alice", "bob"):
        subprocess.run([FACEVEIL, "custodian", "keygen", "--name", who, "--out", str(keys),
                        "--kdf-work", "15", "--passphrase-file", str(pass_file)],
                       check=True, capture_output=True)  # fmt: skip
    escrow = ["--custodians", str(keys / "alice.pub"), str(keys / "bob.pub"), "--threshold", "2"]
    command = [FACEVEIL, "run", str(sharded), str(out), "--secret-file", str(secret_file),
               "--no-progress", *escrow]  # fmt: skip
    _kill_then_resume(command, out, ray_local, tmp_path / "driver.log")
    _check_complete(Location(str(out)))

    def cli(*argv: str) -> None:
        done = subprocess.run([FACEVEIL, *argv, "--passphrase-file", str(pass_file)],
                              capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]

    req = tmp_path / "req.json"
    cli("restore", "request", str(out), "--all", "--reason", "after a crash", "--kdf-work", "15",
        "--out", str(req), "--key-out", str(tmp_path / "req.key"))  # fmt: skip
    for who in ("alice", "bob"):
        cli("restore", "approve", str(req), "--identity", str(keys / f"{who}.key"), "--yes",
            "--out", str(tmp_path / f"{who}.approval"))  # fmt: skip
    cli("restore", "apply", str(out), str(req), str(tmp_path / "alice.approval"),
        str(tmp_path / "bob.approval"), "--request-key", str(tmp_path / "req.key"),
        "--dest", str(tmp_path / "restored"))  # fmt: skip
    restored = json.loads((tmp_path / "restored" / "restored.json").read_text())
    assert len(restored) == SHARDS * PER_SHARD


@pytest.mark.slow
def test_transient_store_errors_are_retried(small, secret_file, ray_local, s3, tmp_path):
    """The proxy in front of moto answers the first PUT of every output object with
    ``500 InternalError`` (botocore's own retries are off), from the driver and the actors."""
    local = tmp_path / "out"
    run_job(_config(small, local, secret_file))
    out_uri = s3.bucket("faults-retry") + "/out"
    faults = s3.proxy.inject("PUT", "/faults-retry/out/", times=1)
    try:
        summary = run_job(_config(small, out_uri, secret_file))
    finally:
        s3.proxy.heal()
    assert not summary.failed and summary.shards_done == 4
    broken = {path.split("/out/", 1)[1] for path in faults.injected}
    stems = [shard_name(i).removesuffix(".tar") for i in range(4)]
    assert {"job.json"} | {f"data/{s}.tar" for s in stems} | {f"_done/{s}.json" for s in stems} <= (
        broken
    )
    out = Location(out_uri)
    _check_complete(out, shards=4, per_shard=2)
    assert _digests(out) == _digests(Location(str(local)))


def test_persistent_store_errors_give_up_with_a_clear_error(s3):
    out = Location(s3.bucket("faults-down") + "/out", retry=RetryPolicy(3, 0.01))
    s3.proxy.inject("PUT", "/faults-down/", times=99)
    try:
        with pytest.raises(StorageError, match="still failing after 3 attempts") as err:
            out.publish_bytes(b"x", "data", "shard-000000.tar")
    finally:
        s3.proxy.heal()
    assert "faults-down/out/data/shard-000000.tar" in str(err.value)
    assert not out.exists("data", "shard-000000.tar")


def test_permanent_errors_are_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError(errno.EACCES, "Forbidden")

    with pytest.raises(PermissionError):
        RetryPolicy(5, 0.01).call(denied, "write s3://b/x")
    assert len(calls) == 1


def test_output_under_a_regular_file_fails_clearly(small, secret_file, tmp_path):
    """Root ignores permission bits, so "cannot write here" is made with a path whose parent
    is a regular file (ENOTDIR), which stops root as well."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = subprocess.run([FACEVEIL, "run", str(small), str(blocker / "out"),
                             "--secret-file", str(secret_file), "--no-escrow"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1
    assert f"cannot write {blocker / 'out'}/job.json: Not a directory" in result.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs (needs root with CAP_SYS_ADMIN; skipped elsewhere, where the
    simulated store-full test below still runs)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_disk_full_fails_every_shard_loudly(small, secret_file, ray_local, tiny_disk):
    out = tiny_disk / "out"
    with pytest.raises(JobError, match="No space left on device") as err:
        run_job(_config(small, out, secret_file))
    assert "4 shards failed" in str(err.value)
    assert not (out / "_done").exists() or not os.listdir(out / "_done")
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["job.json"]
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "incomplete" and len(job["failed"]) == 4
    assert all("No space left on device" in f["error"] for f in job["failed"])


class FullStore(MemoryFileSystem):
    """Simulated object store that is out of space: every write answers ENOSPC."""

    protocol = ("fullstore",)
    store: dict = {}
    pseudo_dirs = [""]

    def pipe_file(self, path, value, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    def put_file(self, lpath, rpath, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), rpath)


def test_store_full_fails_the_shard_with_a_clear_error(small, secret_file):
    """Simulated: the output is an in-memory fsspec store whose writes raise ENOSPC; the shard
    is processed as an actor would, and nothing of it (above all no marker) is published."""
    fsspec.register_implementation("fullstore", FullStore, clobber=True)
    entry = read_index(Location(str(small)))[0]
    task = ShardTask(entry.shard, str(small / entry.shard), entry.samples, entry.sha256)
    out = Location("fullstore://out")
    with pytest.raises(StorageError) as err:
        options = ShardOptions(secret=load_key_file(secret_file))
        process_shard(task, FaceAnonymizer(AnonConfig(threads=1)), out, options=options)
    assert err.value.errno == errno.ENOSPC
    assert str(err.value) == (
        f"[Errno {errno.ENOSPC}] cannot write fullstore://out/data/{entry.shard}: "
        "No space left on device"
    )
    assert out.listdir("_done") == [] and out.listdir("data") == []
