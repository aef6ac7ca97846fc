"""Smoke test of bench/bench_privacy.py: a tiny run prints the rank-1 table and the verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import shared_path

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.shared
@pytest.mark.slow
def test_bench_privacy_prints_the_table(tmp_path: Path) -> None:
    attacker = shared_path("models", "mobilefacenet_128d.onnx")
    lfw = shared_path("data", "lfw_dev", "manifest.csv").parent
    out = tmp_path / "figures.json"
    command = [
        sys.executable, "-m", "bench.bench_privacy", "--limit-identities", "3",
        "--methods", "mask,identity", "--json", str(out),
        "--data", str(lfw), "--attacker", str(attacker),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank-1" in proc.stdout and "TAR@FAR=1e-3" in proc.stdout
    missed = [line for line in proc.stdout.splitlines() if line.startswith("TARGET MISSED by:")]
    assert missed and "identity" in missed[0]  # a no-op must fail the target
    rows = {r[0]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["identity"][1].startswith("100.00%")
