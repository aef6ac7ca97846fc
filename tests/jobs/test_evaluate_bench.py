"""Smoke test of bench/bench_privacy.py: a tiny run prints the rank-1 table and the verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import shared_path

REPO = Path(__file__).resolve().parents[2]


def _bench(module: str, *args: str, timeout: int) -> str:
    """``python -m MODULE ARGS...`` from the checkout; its stdout, after asserting it exited 0."""
    command = [sys.executable, "-m", module, *args]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _first_line(stdout: str, prefix: str) -> str:
    """The first line of ``stdout`` starting with ``prefix`` (asserting there is one)."""
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert lines, f"no line starts with {prefix!r}"
    return lines[0]


@pytest.mark.shared
@pytest.mark.slow
def test_bench_privacy_prints_the_table(tmp_path: Path) -> None:
    attacker = shared_path("models", "mobilefacenet_128d.onnx")
    lfw = shared_path("data", "lfw_dev", "manifest.csv").parent
    out = tmp_path / "figures.json"
    stdout = _bench(
        "bench.bench_privacy", "--limit-identities", "3", "--methods", "mask,identity",
        "--json", str(out), "--data", str(lfw), "--attacker", str(attacker), timeout=600,
    )  # fmt: skip
    assert "rank-1" in stdout and "TAR@FAR=1e-3" in stdout
    assert "identity" in _first_line(stdout, "TARGET MISSED by:")  # a no-op must fail the target
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
    stdout = _bench(
        "bench.bench_attacks", "--limit-identities", "6", "--methods", "mask,identity",
        "--recall-by", str(labels), "--small-faces", "4", "--pixel-steps", "20", "--finetune-steps",
        "20", timeout=900,
    )  # fmt: skip
    assert "worst rank-1" in stdout and "parrot_gallery_anonymized" in stdout
    assert "inversion_pixels" in stdout and "pixel inversion, identity:" in stdout
    assert "parrot_finetune_gallery_original" in stdout and "parrot fine-tune, mask:" in stdout
    assert "identity" in _first_line(stdout, "PRIVACY TARGET")  # a no-op must fail the target
    assert "24 px" in stdout and "race" in stdout
