"""The attacks of ``faceveil eval`` can fail, on real LFW faces with real recognizers
(MobileFaceNet and dlib's ResNet): the identity method is caught by every attack at its
clear-image level (the pixel U-Net's inversion included), the mask stays near chance under
every attack, and a weak blur that the
aligned attacker scores low is caught by the parrot. Recall per group and on small faces is
measured on real UTKFace faces composited at known places."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from faceveil.jobs.evaluate import add_eval_command
from tests.factories import page_attack_cpu_s, shared_dir

pytestmark = [pytest.mark.shared, pytest.mark.slow]

DATA = shared_dir() / "data"
LFW = DATA / "lfw_dev"
UTK = DATA / "utkface_dev"
ATTACKER = shared_dir() / "models" / "mobilefacenet_128d.onnx"
MOBILE, DLIB = ATTACKER.name, "dlib_resnet"
# sigma 6 % of the face region's side, the region reaching 0.3 of the box past it (the default
# until blur reached 0.6): about 8 px on lfw_dev
WEAK_BLUR = "blur:grow=0.3:strength=0.06"  # options in the order eval labels them
ATTACK_KEYS = ("aligned", "parrot_gallery_anonymized", "parrot_gallery_original", "inversion",
               "inversion_pixels")  # fmt: skip
PIXEL_STEPS = 60  # a short U-Net budget keeps the fixture quick; identity and mask do not need more


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str]:
    """One ``faceveil eval`` through its CLI hook on 40 lfw_dev identities (251 images)."""
    for path in (LFW / "manifest.csv", UTK / "labels.csv", ATTACKER):
        if not path.exists():
            pytest.skip(f"needs {path} (shared test data; set FACEVEIL_TEST_DATA)")
    tmp = tmp_path_factory.mktemp("attacks")
    with open(UTK / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))[::16]  # 61 faces, every age
    for row in labels:
        row["path"] = str(UTK / row["path"])
    with open(tmp / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(labels[0]))
        writer.writeheader()
        writer.writerows(labels)
    parser = argparse.ArgumentParser()
    add_eval_command(parser.add_subparsers())
    out = tmp / "report"
    args = parser.parse_args(
        ["eval", "--images", str(LFW), "--identities", str(LFW / "manifest.csv"),
         "--limit-identities", "40", "--methods", f"identity,mask,{WEAK_BLUR}",
         "--attacks", "aligned,parrot,inversion,inversion-pixels", "--pixel-steps",
         str(PIXEL_STEPS), "--attacker-model", str(ATTACKER),
         "--recall-by", str(tmp / "labels.csv"), "--small-faces", "24", "--no-utility",
         "--examples", "0", "--report", str(out), "--no-progress"]
    )  # fmt: skip
    assert args.handler(args) == 0
    return json.loads((out / "report.json").read_text()), (out / "index.html").read_text()


def _row(report: dict, label: str) -> dict:
    return next(m for m in report["methods"] if m["label"] == label)


def test_every_attack_runs_with_both_recognizers_on_disjoint_identities(report) -> None:
    rep, _ = report
    assert [a["name"] for a in rep["attackers"]] == [MOBILE, DLIB]
    split = rep["dataset"]["attack_split"]
    assert split["train_identities"] + split["test_identities"] == rep["dataset"]["n_identities"]
    assert split["test_identities"] == 20 and split["test_images"] > 60
    for row in rep["methods"]:
        assert set(row["attacks"]) == set(ATTACK_KEYS)
        for key in ATTACK_KEYS:
            assert set(row["attacks"][key]) == {MOBILE, DLIB}
        assert set(row["attack_cpu_s"][MOBILE]) == {
            "aligned", "parrot", "inversion", "inversion-pixels"
        }  # fmt: skip
    budget = rep["attack_budget"]
    assert budget == rep["config"]["attack_budget"]
    assert budget["parrot"]["fine_tuned_layers"] == "none (head only)"
    assert budget["inversion_pixels"]["steps"] == PIXEL_STEPS


def test_the_pixel_unet_is_fitted_on_training_pairs_and_restores_every_held_out_face(
    report,
) -> None:
    rep, _ = report
    split = rep["dataset"]["attack_split"]
    for row in rep["methods"]:
        pixels = row["pixel_inversion"]
        assert 100_000 <= pixels["parameters"] <= 500_000
        assert 0 < pixels["train_pairs"] <= split["train_images"]
        scored = row["attacks"]["inversion_pixels"][MOBILE]
        assert pixels["restored_images"] == scored["n_gallery"] + scored["n_probes"] > 60
    mask = _row(rep, "mask")["pixel_inversion"]
    assert mask["l1_last_tenth"] < mask["l1_first_tenth"]  # it learns something on the mask


def test_the_page_shows_what_the_pixel_inversion_cost(report) -> None:
    """The U-Net's fit and restore (report.json: pixel_inversion) are in the attack's CPU
    seconds, in report.json and on the page; they were left out (about 0 s shown)."""
    rep, html = report
    shown = page_attack_cpu_s(html)
    for row in rep["methods"]:
        pixels = row["pixel_inversion"]
        training = pixels["fit_cpu_s"] + pixels["restore_cpu_s"]
        assert training > 1.0, (row["label"], pixels)  # 60 U-Net steps on the CPU
        for recognizer in (MOBILE, DLIB):
            cpu = row["attack_cpu_s"][recognizer]["inversion-pixels"]
            # both sides are rounded to the millisecond: equal when the scoring took under 1 ms
            assert training - 1e-3 <= cpu < training + 30, (row["label"], recognizer, cpu, training)
            cell = shown[(row["label"], "inversion_pixels", recognizer)]
            assert float(cell) == pytest.approx(cpu, abs=0.006)


def test_identity_is_caught_by_every_attack_at_its_clear_image_level(report) -> None:
    rep, _ = report
    row = _row(rep, "identity")
    clear = {a["name"]: a["on_originals"]["rank1"] for a in rep["attackers"]}
    for recognizer, level in clear.items():
        assert level >= 0.95
        assert row["attacks"]["aligned"][recognizer]["rank1"] >= level - 0.01
        for key in ATTACK_KEYS[1:]:
            assert row["attacks"][key][recognizer]["rank1"] >= level - 0.1, (key, recognizer)
    assert row["worst"]["rank1"] >= 0.95


def test_mask_stays_near_chance_under_every_attack(report) -> None:
    rep, _ = report
    row = _row(rep, "mask")
    for key in ATTACK_KEYS:
        for recognizer, f in row["attacks"][key].items():
            assert f["chance"] == 1 / f["n_gallery"]
            assert f["rank1"] <= 3 * f["chance"], (key, recognizer, f["rank1"], f["chance"])
    assert row["worst"]["rank1"] <= 3 * row["worst"]["rank1_chance"]


def test_a_weak_blur_scored_low_by_the_aligned_attacker_is_caught_by_the_parrot(report) -> None:
    rep, _ = report
    row = _row(rep, WEAK_BLUR)
    aligned = row["attacks"]["aligned"][MOBILE]
    parrot = row["attacks"]["parrot_gallery_anonymized"][MOBILE]
    assert aligned["rank1"] <= 0.1  # the aligned attacker calls it private
    assert parrot["rank1"] >= 3 * aligned["rank1"] and parrot["rank1"] >= 0.2
    assert parrot["rank1"] >= 4 * parrot["chance"]
    worst = row["worst"]
    assert worst["rank1"] >= parrot["rank1"] and worst["rank1_attack"] != "aligned"


def test_worst_case_is_the_highest_of_every_attack_and_recognizer(report) -> None:
    rep, html = report
    for row in rep["methods"]:
        cells = [f for by in row["attacks"].values() for f in by.values()]
        assert row["worst"]["rank1"] == max(f["rank1"] for f in cells)
        assert row["worst"]["tar_at_far"] == max(f["tar_at_far"] for f in cells)
    assert "worst rank-1" in html and "parrot_gallery_anonymized" in html


def test_recall_per_group_and_on_small_faces(report) -> None:
    rep, html = report
    recall = rep["recall"]
    assert recall["overall"]["n"] == 61
    for kind in ("gender", "race", "age"):
        groups = recall["by_group"][kind]
        assert sum(g["n"] for g in groups) == 61, kind
        assert sum(g["detected"] for g in groups) == recall["overall"]["detected"]
    assert {g["group"] for g in recall["by_group"]["gender"]} == {"male", "female"}
    sizes = {r["size_px"]: r for r in recall["small_faces"]}
    assert sorted(sizes) == [16, 24, 32, 48]
    assert all(r["n"] == 24 for r in sizes.values())
    assert sizes[48]["recall"] >= 0.9  # the known boxes are where the faces were pasted
    for r in sizes.values():  # every face the detector found is covered by a region
        assert r["residual"] <= r["n"] - r["detected"]
    assert "Recall per group" in html and "24 px" in html
