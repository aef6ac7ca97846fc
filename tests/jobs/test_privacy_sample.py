"""The in-job privacy sampler: deterministic selection, per-face figures, merging across actors,
nothing kept but anonymized crops by default, and its report page (bundled images only)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pytest

from faceveil.anon_core import AnonConfig, FaceAnonymizer
from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.cli import build_parser
from faceveil.jobs.privacy_report import write_privacy_report
from faceveil.jobs.privacy_sample import PrivacySampler, SampleConfig, merge, privacy_sampler
from faceveil.jobs.run_cli import job_config
from tests.factories import rgb


def test_selection_is_deterministic_and_proportional() -> None:
    a, b = PrivacySampler(SampleConfig(0.25, seed=7)), PrivacySampler(SampleConfig(0.25, seed=7))
    keys = [(f"{k:032x}", face) for k in range(2000) for face in range(2)]
    picks = [a.draw(k, f) < a.config.fraction for k, f in keys]
    assert picks == [b.draw(k, f) < b.config.fraction for k, f in keys]
    assert 0.23 < np.mean(picks) < 0.27
    other = PrivacySampler(SampleConfig(0.25, seed=8))
    assert picks != [other.draw(k, f) < other.config.fraction for k, f in keys]
    with pytest.raises(ValueError):
        SampleConfig(1.5)


def test_run_options_build_the_sampler() -> None:
    def sampler_of(*flags: str) -> PrivacySampler | None:
        args = build_parser().parse_args(["run", "in", "out", *flags])
        return privacy_sampler(job_config(args))

    assert sampler_of() is None
    flags = ["--audit-sample", "0.05", "--audit-seed", "9", "--report-originals"]
    sampler = sampler_of(*flags, "--model-root", "models")
    config = sampler.config
    assert (config.fraction, config.seed, config.keep_originals) == (0.05, "9", True)
    assert config.detector == "scrfd" and config.attacker is None


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[np.ndarray, np.ndarray, object]]:
    """(original, anonymized, faces) for a no-op and a masked version of bundled photos."""
    out = {}
    for method in ("blur", "mask"):
        anonymizer = FaceAnonymizer(AnonConfig(method=method))
        for name in ("obama.jpg", "biden.jpg", "two_people.jpg"):
            result = anonymizer(rgb(name))
            out[f"{method}/{name}"] = (
                result.original.rgb,
                decode_image(result.encoded).rgb,
                result.faces,
            )
    for name in ("obama.jpg", "biden.jpg", "two_people.jpg"):
        original, _, faces = out[f"mask/{name}"]
        out[f"none/{name}"] = (original, original.copy(), faces)
    return out


def _observe(sampler: PrivacySampler, pairs, prefix: str) -> None:
    for name, (original, anonymized, faces) in pairs.items():
        if name.startswith(prefix):
            sampler.observe(f"{name}-key", original, anonymized, faces)


def test_sampler_measures_merges_and_keeps_no_originals(pairs) -> None:
    fresh = PrivacySampler(SampleConfig(1.0, seed=1, max_examples=3))
    copy = pickle.loads(pickle.dumps(fresh))  # shipped to a worker before use
    _observe(fresh, pairs, "none/")
    _observe(copy, pairs, "mask/")
    none, mask = fresh.summary(), copy.summary()
    assert none["faces_sampled"] == none["faces_seen"] == 4  # obama, biden, two people
    assert none["similarity_sum"] / 4 > 0.99 and none["redetected"] == 4
    assert none["landmark_sum"] / none["landmark_n"] < 0.01
    # dlib's cosine similarities are high for anyone; the masked faces sit clearly lower
    assert mask["similarity_sum"] / 4 < none["similarity_sum"] / 4 - 0.1
    assert mask["redetected"] == 0
    assert sum(mask["impostor_hist"]) > 0
    text = json.dumps([none, mask])
    assert "original_png" not in text
    restored = pickle.loads(pickle.dumps(copy))  # after use: the models are not pickled
    assert restored._models is None and restored.summary()["faces_sampled"] == 4
    merged = merge([none, mask])
    assert merged["faces_sampled"] == 8 and sum(merged["similarity_hist"]) == 8
    assert len(merged["examples"]) == 3
    assert merged["examples"] == sorted(merged["examples"], key=lambda e: e["draw"])
    for summary in (none, mask):
        for value in summary.values():
            assert not (isinstance(value, list) and len(value) == 128)  # no embedding


def test_a_face_that_cannot_be_measured_is_counted_not_fatal(pairs) -> None:
    sampler = PrivacySampler(SampleConfig(1.0))
    _observe(sampler, pairs, "mask/obama")

    def broken(images, guides):
        raise ValueError("landmarks are degenerate")

    sampler._models.attacker.embed = broken
    _observe(sampler, pairs, "mask/biden")
    summary = sampler.summary()
    assert (summary["faces_sampled"], summary["faces_failed"]) == (1, 1)
    assert summary["landmark_n"] == 1 and sum(summary["similarity_hist"]) == 1


def test_fraction_zero_loads_no_model(pairs) -> None:
    sampler = PrivacySampler(SampleConfig(0.0))
    _observe(sampler, pairs, "mask/")
    assert sampler._models is None and sampler.summary()["faces_sampled"] == 0
    assert sampler.summary()["faces_seen"] == 4


def test_report_shows_anonymized_faces_only_by_default(pairs, tmp_path: Path) -> None:
    sampler = PrivacySampler(SampleConfig(1.0, seed=3, keep_originals=True))
    _observe(sampler, pairs, "blur/")
    report = write_privacy_report(
        str(tmp_path / "plain"), [sampler.summary()], keep_originals=False
    )
    files = sorted(p.name for p in (tmp_path / "plain" / "examples").iterdir())
    assert len(files) == 4 and not any("original" in f for f in files)
    page = (tmp_path / "plain" / "index.html").read_text()
    assert "Anonymized faces only" in page and not report["originals_shown"]
    assert report["figures"]["faces_sampled"] == 4
    shown = write_privacy_report(str(tmp_path / "shown"), [sampler.summary()], keep_originals=True)
    assert shown["originals_shown"]
    assert len(list((tmp_path / "shown" / "examples").glob("*-original.png"))) == 4
    assert "Original faces are shown" in (tmp_path / "shown" / "index.html").read_text()


def test_report_goes_through_fsspec(pairs) -> None:
    sampler = PrivacySampler(SampleConfig(1.0))
    _observe(sampler, pairs, "blur/obama")
    write_privacy_report("memory://faceveil-audit/report", [sampler.summary()])
    fs = fsspec.filesystem("memory")
    assert json.loads(fs.cat("/faceveil-audit/report/report.json"))["kind"] == "faceveil-audit"
    assert fs.exists("/faceveil-audit/report/index.html")


def test_audit_page_renders_in_chromium(pairs, tmp_path: Path) -> None:
    from tests.jobs.test_evaluate_report import render_in_chromium

    samplers = [
        PrivacySampler(SampleConfig(1.0, seed=5)),
        PrivacySampler(SampleConfig(1.0, seed=5)),
    ]
    _observe(samplers[0], pairs, "blur/")
    _observe(samplers[1], pairs, "mask/")
    write_privacy_report(str(tmp_path / "report"), [s.summary() for s in samplers])
    shot = tmp_path / "audit.png"
    attrs, log = render_in_chromium(tmp_path / "report" / "index.html", shot, 1600)
    assert attrs.get("ready") == "1", log[-2000:]
    assert attrs["images-loaded"] == attrs["images-total"] == "8"
    assert attrs["errors"] == "0" and ":CONSOLE" not in log
    assert shot.stat().st_size > 20_000
