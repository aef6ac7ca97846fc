"""Smoke test for bench/bench_gpu.py on the CPU: a tiny run prints every row and writes every
figure; the device detector (fp32) finds exactly the CPU path's faces (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import shared_path

REPO = Path(__file__).resolve().parents[2]
ROWS = {
    ("decode", "device codec: PIL (host)"),
    ("decode", "CPU PIL, 1 threads"),
    ("decode+encode", "device codec: PIL (host)"),
    ("decode+encode", "CPU PIL, 1 threads"),
    ("detect", "device (cpu, fp32), pre-decoded"),
    ("detect+blur e2e", "device-resident: PIL (host) -> detect -> blur -> PIL (host)"),
    ("detect+blur e2e", "FaceAnonymizer.map (1 I/O threads, CPU codec)"),
    ("detect+blur e2e", "plain CPU pipeline, 1 processes x 1 thread"),
}


@pytest.mark.slow
@pytest.mark.shared
def test_bench_gpu_prints_every_row_on_cpu(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    command = [
        sys.executable, "bench/bench_gpu.py", "--device", "cpu", "--sizes", "250",
        "--images", "8", "--seconds", "1", "--batch-size", "8", "--workers", "1",
        "--cpu-procs", "1", "--recall-images", "24", "--recall-precisions", "fp32",
        "--source", str(shared_path("data", "lfw_dev", "images")), "--json", str(raw),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for text in ("machine:", "accelerator:", "throughput:", "recall of the device detector"):
        assert text in proc.stdout
    figures = json.loads(raw.read_text())
    assert {(r["what"], r["path"]) for r in figures["runs"]} == ROWS
    for run in figures["runs"]:
        assert run["images"] >= 8 and run["rate"] > 0, run
        assert run["faces"] == -1 or run["faces"] > 0, run
    fp32 = figures["recall"]["250"]["fp32"]
    assert fp32["images"] == 24 and fp32["cpu_faces"] >= 24
    assert fp32["recall"] == 1.0 and fp32["images_with_other_count"] == 0
    assert fp32["max_box_shift_px"] < 0.01
