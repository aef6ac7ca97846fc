"""Multi-node: ``faceveil cluster local`` (a ``ray.cluster_utils.Cluster`` with a CPU head and two
worker nodes with one simulated GPU each), then ``faceveil run --address`` with a GPU per actor."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faceveil.jobs.config import EscrowConfig, JobConfig, PoolConfig
from faceveil.jobs.keyfile import load_key_file
from faceveil.jobs.raypool import (
    CLUSTER_WAIT_ENV,
    FAKE_GPU_ENV,
    ClusterError,
    actor_device,
    size_pool,
    wait_for_resources,
)
from faceveil.jobs.run import run_job
from faceveil.jobs.shard import write_shards
from tests.factories import done_markers
from tests.jobs.corpus import large_photos
from tests.jobs.procs import descendants, kill_survivors

FACEVEIL = str(Path(sys.executable).with_name("faceveil"))
SHARDS = 8


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """``faceveil cluster local --nodes 3`` in the background; yields the address it prints."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    helper = subprocess.Popen([FACEVEIL, "cluster", "local", "--nodes", "3", "--cpus-per-node",
                               "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(helper.stdout, lines), daemon=True).start()
    tree: dict[int, int] = {}
    try:
        seen = []
        while not seen or not seen[-1].startswith("address: "):
            seen.append(lines.get(timeout=240))
        tree = descendants(helper.pid)
        yield seen[-1].split()[1]
        helper.send_signal(signal.SIGINT)
        assert helper.wait(timeout=120) == 0
    finally:
        if helper.poll() is None:
            helper.kill()
        kill_survivors(tree)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, secret_file) -> Path:
    """16 small photos, 2 per shard: 8 shards, enough for both actors to get work."""
    root = tmp_path_factory.mktemp("multinode")
    (root / "photos").mkdir()
    for name, data in large_photos(2 * SHARDS, width=640):
        (root / "photos" / name).write_bytes(data)
    write_shards(str(root / "photos"), str(root / "shards"), load_key_file(secret_file), 2)
    return root / "shards"


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "data").glob("*.tar"))}  # fmt: skip


@pytest.mark.slow
def test_actors_spread_over_both_gpu_nodes_with_exact_output(local_cluster, sharded, secret_file,
                                                             ray_local, tmp_path):  # fmt: skip
    single = tmp_path / "single"
    run_job(JobConfig(input=str(sharded), output=str(single), secret_file=str(secret_file),
                      escrow=EscrowConfig(no_escrow=True), progress=False))  # fmt: skip
    out = tmp_path / "multi"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([FACEVEIL, "run", str(sharded), str(out), "--no-escrow",
                             "--no-progress", "--secret-file", str(secret_file),
                             "--address", local_cluster, "--gpus-per-actor", "1"],
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"processing {SHARDS} shards on 2 actors" in result.stderr
    markers = done_markers(out)
    assert len(markers) == SHARDS
    for m in markers:
        assert m["samples_in"] == 2 == m["anonymized"] + m["no_face"] + m["quarantined"]
    assert len({m["node"] for m in markers}) == 2  # one GPU each: one actor per worker node
    assert len({m["node"] for m in done_markers(single)}) == 1
    assert sum(m["faces"] for m in markers) == sum(m["faces"] for m in done_markers(single))
    assert _digests(out) == _digests(single)


def test_a_gpu_actor_without_cuda_fails_clearly_unless_gpus_are_simulated(monkeypatch):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: a GPU actor really uses it")
    monkeypatch.delenv(FAKE_GPU_ENV, raising=False)
    with pytest.raises(ClusterError, match="no CUDAExecutionProvider"):
        actor_device("cuda")
    monkeypatch.setenv(FAKE_GPU_ENV, "1")
    assert actor_device("cuda") == "cpu"
    assert actor_device("cpu") == "cpu"


def test_a_joined_cluster_too_small_is_waited_for_then_refused(ray_local, monkeypatch):
    monkeypatch.setenv(CLUSTER_WAIT_ENV, "2")
    started = time.monotonic()
    assert wait_for_resources(PoolConfig(num_actors=1), joined=True)["CPU"] == 2
    assert time.monotonic() - started < 1
    too_big = PoolConfig(num_actors=2, gpus_per_actor=1)
    resources = wait_for_resources(too_big, joined=True)
    assert time.monotonic() - started >= 2
    with pytest.raises(ClusterError, match="asks for 1 GPU but the cluster has 0 GPUs"):
        size_pool(too_big, resources)


@pytest.mark.slow
@pytest.mark.shared
def test_surrogate_first_pass_and_context_cross_nodes(local_cluster, secret_file, ray_local,
                                                      tmp_path):  # fmt: skip
    """The sealed first-pass context reaches actors on other nodes, and the output is the
    same byte for byte as on one node: neither pass depends on where shards ran."""
    from faceveil.jobs.keyfile import new_key_file
    from tests.factories import lfw_people

    lfw_people(tmp_path / "photos", 16, 2)
    shards = tmp_path / "shards"
    write_shards(str(tmp_path / "photos"), str(shards), load_key_file(secret_file), 4)
    key = new_key_file(tmp_path / "team.key")
    flags = ["--method", "surrogate", "--key-file", str(key), "--donors", "4", "--no-escrow",
             "--no-progress", "--secret-file", str(secret_file)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    runs = {}
    for name, where in (("single", []), ("multi", ["--address", local_cluster,
                                                   "--gpus-per-actor", "1"])):  # fmt: skip
        out = tmp_path / name
        result = subprocess.run([FACEVEIL, "run", str(shards), str(out), *flags, *where],
                                env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = out
    markers = done_markers(runs["multi"])
    assert len(markers) == 8 and len({m["node"] for m in markers}) == 2
    first = json.loads((runs["multi"] / "job.json").read_text())["surrogate"]["first_pass"]
    assert first["shards"] == 8 and first["donor_identities"] >= 8
    assert _digests(runs["multi"]) == _digests(runs["single"])
