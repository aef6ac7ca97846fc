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


@pytest.mark.shared
@pytest.mark.slow
def test_bench_attacks_prints_the_worst_case_and_recall_tables(tmp_path: Path) -> None:
    shared_path("models", "mobilefacenet_128d.onnx")
    shared_path("data", "lfw_dev", "manifest.csv")
    utk = shared_path("data", "utkface_dev", "labels.csv").parent
    lines = (utk / "labels.csv").read_text().splitlines()
    rows = [line.split(",", 1) for line in lines[1::48]]  # 21 faces
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join([lines[0], *(f"{utk / p},{rest}" for p, rest in rows)]) + "\n")
    command = [
        sys.executable, "-m", "bench.bench_attacks", "--limit-identities", "6",
        "--methods", "mask,identity", "--recall-by", str(labels), "--small-faces", "4",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worst rank-1" in proc.stdout and "parrot_gallery_anonymized" in proc.stdout
    missed = [line for line in proc.stdout.splitlines() if line.startswith("PRIVACY TARGET")]
    assert missed and "identity" in missed[0]  # a no-op must fail the target
    assert "24 px" in proc.stdout and "race" in proc.stdout
