"""The attack layer of ``faceveil eval`` on synthetic recognizer features whose answer is known:
a disjoint identity split, an inversion that undoes a hidden linear scrambling the aligned
attack cannot see through, a parrot that matches scrambled to scrambled, noise that nothing
re-identifies, and the worst case over attacks and recognizers."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from faceveil.jobs.evaluate.attacks import (
    AttackPlan,
    Features,
    first_per_identity,
    pool_splits,
    run_attacks,
    split_identities,
    worst_case,
)
from faceveil.jobs.evaluate.config import AttackBudget, EvalConfig, PixelBudget, parse_attacks

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _world(n_ids: int = 80, per_id: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(identity per sample, original features): identity centres plus per-image noise."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_ids), per_id)
    centres = rng.normal(size=(n_ids, DIM))
    return ids, _unit(centres[ids] + 0.35 * rng.normal(size=(len(ids), DIM)))


def _run(ids: np.ndarray, originals: np.ndarray, anonymized: np.ndarray) -> dict:
    has = np.ones(len(ids), bool)
    budget = AttackBudget(epochs=12, hidden=64)
    plan = AttackPlan(("aligned", "parrot", "inversion"), split_identities(ids, has, budget),
                      budget, far=1e-2)  # fmt: skip
    gallery = first_per_identity(ids, has)
    figures, cpu = run_attacks(Features(originals, anonymized, ids, gallery, has), plan)
    assert set(cpu) == {"aligned", "parrot", "inversion"}
    return figures


def test_split_is_disjoint_seeded_and_holds_out_only_repeated_identities() -> None:
    ids = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8])
    has = np.ones(len(ids), bool)
    has[0] = False  # identity 0 has one face left: it cannot be held out
    split = split_identities(ids, has, AttackBudget(train_share=0.5))
    assert not set(ids[split.train]) & set(ids[split.test])
    assert not (split.train & split.test).any()
    assert ((split.train | split.test) == has).all()
    held_out = set(ids[split.test].tolist())
    assert len(held_out) == 3  # half of the six identities with two or more faces
    assert held_out <= {2, 4, 5, 6, 7, 8} and {0, 1, 3} <= set(ids[split.train].tolist())
    again = split_identities(ids, has, AttackBudget(train_share=0.5))
    assert (again.test == split.test).all()
    other = [split_identities(ids, has, AttackBudget(seed=s)).test for s in range(1, 6)]
    assert any((o != split.test).any() for o in other)  # the seed, not name order, decides


def test_inversion_undoes_a_hidden_scrambling_that_fools_the_aligned_attack() -> None:
    ids, originals = _world()
    rotation, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(DIM, DIM)))
    scrambled = _unit(originals @ rotation)
    figures = _run(ids, originals, scrambled)
    assert figures["aligned"]["rank1"] < 0.15
    assert figures["inversion"]["rank1"] > 0.9
    assert figures["parrot_gallery_anonymized"]["rank1"] > 0.9  # scrambled vs scrambled
    assert figures["inversion"]["n_gallery"] == 40 and figures["inversion"]["chance"] == 1 / 40
    assert figures["aligned"]["n_gallery"] == 80


def test_a_parrot_beats_the_aligned_attack_on_a_weak_distortion() -> None:
    """A strong, consistent distortion leaves identity in the distorted features only."""
    ids, originals = _world(seed=3)
    rng = np.random.default_rng(4)
    shift = rng.normal(size=(1, DIM)) * 3.0
    anonymized = _unit(0.25 * originals + shift + 0.02 * rng.normal(size=originals.shape))
    figures = _run(ids, originals, anonymized)
    assert figures["parrot_gallery_anonymized"]["rank1"] > figures["aligned"]["rank1"] + 0.3


def test_noise_is_not_reidentified_by_any_attack() -> None:
    ids, originals = _world(seed=5)
    noise = _unit(np.random.default_rng(6).normal(size=originals.shape))
    figures = _run(ids, originals, noise)
    for key, f in figures.items():
        assert f["rank1"] <= 3 * f["chance"], (key, f["rank1"], f["chance"])
        assert f["tar_at_far"] < 0.05, key


def test_identity_is_caught_by_every_attack() -> None:
    ids, originals = _world(seed=8)
    figures = _run(ids, originals, originals.copy())
    for key, f in figures.items():
        assert f["rank1"] > 0.9, key


def test_worst_case_is_the_maximum_over_attacks_and_recognizers() -> None:
    attacks = {
        "aligned": {"a": {"rank1": 0.01, "tar_at_far": 0.002, "chance": 0.004}},
        "parrot_gallery_anonymized": {
            "a": {"rank1": 0.12, "tar_at_far": 0.01, "chance": 0.02},
            "b": {"rank1": 0.20, "tar_at_far": 0.03, "chance": 0.02},
        },
        "inversion": {"a": {"rank1": 0.05, "tar_at_far": 0.07, "chance": 0.02}},
        "parrot_gallery_original": {"b": {"rank1": None, "reason": "too few"}},
    }
    worst = worst_case(attacks)
    assert worst["rank1"] == 0.20
    assert (worst["rank1_attack"], worst["rank1_recognizer"]) == ("parrot_gallery_anonymized", "b")
    assert worst["tar_at_far"] == 0.07 and worst["tar_attack"] == "inversion"
    assert worst["rank1_chance"] == 0.02


def test_attack_names_and_budget_are_checked() -> None:
    assert parse_attacks("parrot") == ("aligned", "parrot")
    assert parse_attacks("inversion,aligned,parrot") == ("aligned", "parrot", "inversion")
    with pytest.raises(ValueError, match="unknown attack 'gan'"):
        parse_attacks("aligned,gan")
    with pytest.raises(ValueError, match="aligned among them"):
        EvalConfig(images="i", identities="m", report_dir="r", attacks=("parrot",))
    with pytest.raises(ValueError, match="'mlp' or 'linear'"):
        AttackBudget(head="resnet")
    budget = EvalConfig(images="i", identities="m", report_dir="r").public()["attack_budget"]
    assert budget["parrot"]["fine_tuned_layers"] == "none (head only)"
    assert budget["parrot"]["epochs"] == AttackBudget().epochs
    assert budget["parrot"]["torch_threads"] == 1


def test_the_heads_train_on_their_budget_threads_and_give_the_rest_back() -> None:
    """One torch thread trains the small heads several times faster on shared cores; the
    caller's thread setting is restored afterwards."""
    import torch

    from faceveil.jobs.evaluate.heads import MetricHead, torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    ids, originals = _world(n_ids=10, per_id=3)
    seen = []

    class Probe(MetricHead):
        def _fit(self, x, labels):
            seen.append(torch.get_num_threads())
            return super()._fit(x, labels)

    Probe(AttackBudget(epochs=1, threads=1)).fit(originals, ids)
    assert seen == [1] and torch.get_num_threads() == before


def test_the_issue_command_line_parses_into_the_attack_config() -> None:
    from faceveil.jobs.cli import build_parser
    from faceveil.jobs.evaluate.cli import eval_config

    argv = shlex.split(
        "eval --images ../shared/data/lfw_dev --identities ../shared/data/lfw_dev/manifest.csv "
        "--methods identity,blur,pixelate,mask,surrogate --attacks aligned,parrot,inversion "
        "--attacker-model ../shared/models/mobilefacenet_128d.onnx "
        "--recall-by ../shared/data/utkface_dev/labels.csv --report report/"
    )
    config = eval_config(build_parser().parse_args(argv))
    assert config.attacks == ("aligned", "parrot", "inversion")
    assert config.attacker_models == ("../shared/models/mobilefacenet_128d.onnx",)
    assert config.dlib_attacker  # dlib's ResNet is the second recognizer
    assert config.recall.labels == "../shared/data/utkface_dev/labels.csv"
    assert config.recall.sizes == (16, 24, 32, 48)
    labels = [m.label for m in config.methods]
    assert labels == ["identity", "blur", "pixelate", "mask", "surrogate"]


def test_the_pixel_inversion_is_scored_on_restored_held_out_images_only() -> None:
    """Restored embeddings stand for the U-Net's output: a perfect restoration is caught, a
    restoration that is noise is not, and without restored images there is no figure."""
    ids, originals = _world(seed=9)
    has = np.ones(len(ids), bool)
    budget = AttackBudget(epochs=2, hidden=16)
    split = split_identities(ids, has, budget)
    plan = AttackPlan(("aligned", "inversion-pixels"), split, budget, far=1e-2)
    gallery = first_per_identity(ids, has)
    noise = _unit(np.random.default_rng(10).normal(size=originals.shape))

    def pixels(restored):
        features = Features(originals, noise, ids, gallery, has, restored)
        figures, cpu = run_attacks(features, plan)
        assert set(cpu) == {"aligned", "inversion-pixels"}
        return figures["inversion_pixels"]

    restored = np.where(split.test[:, None], originals, np.nan).astype(np.float32)
    perfect = pixels(restored)
    assert perfect["rank1"] == 1.0 and perfect["n_gallery"] == 40
    assert perfect["n_probes"] == int(split.test.sum()) - 40
    failed = pixels(np.where(split.test[:, None], noise, np.nan).astype(np.float32))
    assert failed["rank1"] <= 3 * failed["chance"]
    assert pixels(None) == {"rank1": None, "reason": "no restored held-out images"}


def test_the_pixel_attack_is_opt_in_and_its_budget_is_reported() -> None:
    assert parse_attacks("inversion-pixels") == ("aligned", "inversion-pixels")
    assert "inversion-pixels" not in EvalConfig(images="i", identities="m", report_dir="r").attacks
    budget = EvalConfig(images="i", identities="m", report_dir="r").public()["attack_budget"]
    pixels = budget["inversion_pixels"]
    assert pixels["steps"] == PixelBudget().steps and pixels["torch_threads"] == 1
    assert pixels["crop"].startswith("64 x 64")
    with pytest.raises(ValueError, match="multiple of 8"):
        PixelBudget(side=60)


def test_the_finetuned_parrot_is_opt_in_scored_as_the_parrot_and_says_why_when_absent() -> None:
    assert "parrot-finetune" not in EvalConfig(images="i", identities="m", report_dir="r").attacks
    ids, originals = _world(n_ids=40)
    has = np.ones(len(ids), bool)
    noise = _unit(np.random.default_rng(5).normal(size=originals.shape))
    budget = AttackBudget()
    split = split_identities(ids, has, budget)
    gallery = first_per_identity(ids, has)
    plan = AttackPlan(("aligned", "parrot-finetune"), split, budget, far=1e-2)
    keys = ("parrot_finetune_gallery_anonymized", "parrot_finetune_gallery_original")

    def tuned(embedded: tuple | None, plan: AttackPlan = plan) -> dict:
        features = Features(originals, noise, ids, gallery, has, finetuned=embedded)
        return run_attacks(features, plan)[0]

    held = split.test[:, None]
    seen = tuple(np.where(held, e, np.nan).astype(np.float32) for e in (originals, originals))
    caught = tuned(seen)
    for key in keys:
        assert caught[key]["rank1"] >= 0.9 and caught[key]["n_gallery"] == 20
    blind = tuned(tuple(np.where(held, e, np.nan).astype(np.float32) for e in (noise, originals)))
    assert blind[keys[1]]["rank1"] <= 3 * blind[keys[1]]["chance"]
    assert tuned(None)[keys[0]]["reason"].startswith("no fine-tuned network for this recognizer")
    off = AttackPlan(plan.attacks, split, AttackBudget(finetune_steps=0), far=1e-2)
    assert tuned(seen, off)[keys[1]] == {"rank1": None, "reason": "finetune_steps is 0"}


def test_splits_pool_their_probes_and_keep_each_split_s_figures() -> None:
    """Three splits of one output: rank-1 counts every split's probes together, each split's
    figures are those of a run on that split alone, and the aligned attack (no split) is
    not counted three times."""
    ids, originals = _world(seed=11)
    rng = np.random.default_rng(12)
    weak = _unit(
        originals @ np.linalg.qr(rng.normal(size=(DIM, DIM)))[0] + rng.normal(size=originals.shape)
    )
    has = np.ones(len(ids), bool)
    gallery = first_per_identity(ids, has)
    seeds = (3, 4, 5)
    alone = []
    for seed in seeds:
        budget = AttackBudget(epochs=12, hidden=64, seed=seed)
        plan = AttackPlan(("aligned", "parrot", "inversion"), split_identities(ids, has, budget),
                          budget, far=1e-2)  # fmt: skip
        figures = run_attacks(Features(originals, weak, ids, gallery, has), plan)[0]
        alone.append({key: {"a": f} for key, f in figures.items()})  # one recognizer, "a"
    pooled = {key: f["a"] for key, f in pool_splits(alone, seeds).items()}
    alone = [{key: f["a"] for key, f in a.items()} for a in alone]
    assert pooled["aligned"] == alone[0]["aligned"]
    for key in ("parrot_gallery_anonymized", "parrot_gallery_original", "inversion"):
        cell, each = pooled[key], [a[key] for a in alone]
        assert cell["n_probes"] == sum(e["n_probes"] for e in each)
        assert cell["rank1_correct"] == sum(e["rank1_correct"] for e in each)
        assert cell["rank1"] == pytest.approx(cell["rank1_correct"] / cell["n_probes"])
        assert min(e["rank1"] for e in each) <= cell["rank1"] <= max(e["rank1"] for e in each)
        assert cell["tar_at_far"] == pytest.approx(np.mean([e["tar_at_far"] for e in each]))
        assert [b["seed"] for b in cell["by_split"]] == list(seeds)
        assert [b["rank1"] for b in cell["by_split"]] == [e["rank1"] for e in each]
    assert len({a["inversion"]["rank1_correct"] for a in alone}) > 1  # the splits differ
    assert (
        pool_splits([{"aligned": {"a": alone[0]["aligned"]}}], seeds[:1])["aligned"]["a"]
        is (alone[0]["aligned"])
    )


def test_a_split_without_figures_is_left_out_of_the_pool() -> None:
    scored = {"rank1": 0.5, "rank1_correct": 5, "n_probes": 10, "n_gallery": 10, "chance": 0.1,
              "tar_at_far": 0.2, "far": 1e-3, "n_genuine": 30, "n_impostor": 900,
              "same_photo_similarity_mean": 0.4, "same_photo_accept_rate": 0.1}  # fmt: skip
    empty = {"rank1": None, "reason": "fewer than 2 training identities"}
    pooled = pool_splits([{"inversion": {"a": empty}}, {"inversion": {"a": scored}}], (0, 1))
    assert pooled["inversion"]["a"]["rank1"] == 0.5
    assert pooled["inversion"]["a"]["splits"] == 1
    assert [b["seed"] for b in pooled["inversion"]["a"]["by_split"]] == [1]
    both_empty = pool_splits([{"inversion": {"a": empty}}] * 2, (0, 1))
    assert both_empty["inversion"]["a"] == empty
    with pytest.raises(ValueError, match="at least 1"):
        AttackBudget(splits=0)
    assert AttackBudget(seed=4, splits=3).split_seeds() == (4, 5, 6)


def test_a_method_on_several_splits_sums_its_cost_once_per_split_and_keeps_each_worst() -> None:
    from faceveil.jobs.evaluate.figures import pool_runs

    def cell(correct: int, probes: int) -> dict:
        return {"rank1": correct / probes, "rank1_correct": correct, "n_probes": probes,
                "n_gallery": 10, "chance": 0.1, "tar_at_far": 0.01, "far": 1e-3,
                "threshold": 0.5, "n_genuine": 5, "n_impostor": 50,
                "same_photo_similarity_mean": 0.2, "same_photo_accept_rate": 0.0}  # fmt: skip

    def one_split(parrot: int, seconds: float) -> dict:
        return {
            "attacks": {"aligned": {"a": cell(1, 40)}, "inversion": {"a": cell(parrot, 20)}},
            "attack_cpu_s": {"a": {"aligned": 0.5, "inversion": seconds}},
            "pixel_inversion": {"fit_cpu_s": seconds},
        }

    pooled = pool_runs([one_split(2, 1.0), one_split(6, 3.0)], (7, 8))
    assert pooled["attack_cpu_s"] == {"a": {"aligned": 0.5, "inversion": 4.0}}
    assert pooled["attacks"]["inversion"]["a"]["rank1"] == 8 / 40
    assert pooled["attacks"]["aligned"]["a"]["n_probes"] == 40  # not counted twice
    assert [(w["seed"], w["rank1"]) for w in pooled["worst_by_split"]] == [(7, 0.1), (8, 0.3)]
    assert pooled["pixel_inversion"] == {"fit_cpu_s": 1.0}  # the first split's, as before
    assert pooled["extras_by_split"] == [
        {"seed": 7, "pixel_inversion": {"fit_cpu_s": 1.0}},
        {"seed": 8, "pixel_inversion": {"fit_cpu_s": 3.0}},
    ]
