"""``faceveil eval --attack-splits N`` on real LFW faces: one anonymized output attacked on N
identity splits gives, per split, what a run with that ``--attack-seed`` alone gives, pools
their probes into each figure, and reports the worst case of each split beside the pooled one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from faceveil.jobs.evaluate import runner
from faceveil.jobs.evaluate.attacks import AttackPlan, split_identities
from faceveil.jobs.evaluate.config import AttackBudget, EvalConfig, parse_attacks, parse_methods
from faceveil.jobs.evaluate.report import render_eval_page, text_table
from tests.factories import shared_dir

pytestmark = [pytest.mark.shared, pytest.mark.slow]

LFW = shared_dir() / "data" / "lfw_dev"
ATTACKER = shared_dir() / "models" / "mobilefacenet_128d.onnx"
LEARNING = ("parrot_gallery_anonymized", "parrot_gallery_original", "inversion")


def _alone(session, seed: int):
    """The session as a run with ``--attack-seed seed`` and one split would have it."""
    budget = replace(session.config.budget, seed=seed, splits=1)
    o = session.originals
    plan = AttackPlan(session.config.attacks, split_identities(o.ids, o.has_face, budget),
                      budget, session.config.far)  # fmt: skip
    return replace(session, config=replace(session.config, budget=budget), plan=plan)


def test_each_split_is_the_run_of_its_seed_and_the_figures_pool_them() -> None:
    for path in (LFW / "manifest.csv", ATTACKER):
        if not path.exists():
            pytest.skip(f"needs {path} (shared test data; set FACEVEIL_TEST_DATA)")
    config = EvalConfig(
        images=str(LFW), identities=str(LFW / "manifest.csv"), report_dir="",
        methods=parse_methods("blur:strength=0.06"), attacker_models=(str(ATTACKER),),
        dlib_attacker=False, attacks=parse_attacks("aligned,parrot,inversion"),
        budget=AttackBudget(epochs=10, seed=1, splits=2), limit_identities=30, utility=False,
        examples=0, progress=False, sample_salt=b"splits",
    )  # fmt: skip
    session = runner.start_session(config)
    assert (_alone(session, 1).plan.split.test == session.plan.split.test).all()  # as eval splits
    spec = config.methods[0]
    pooled = runner.evaluate_method(spec, session)
    alone = [runner.evaluate_method(spec, _alone(session, seed)) for seed in (1, 2)]
    mfn = ATTACKER.name

    assert (
        pooled["attacks"]["aligned"]
        == alone[0]["attacks"]["aligned"]
        == alone[1]["attacks"]["aligned"]
    )
    differs = False
    for key in LEARNING:
        cell, each = pooled["attacks"][key][mfn], [a["attacks"][key][mfn] for a in alone]
        assert [b["seed"] for b in cell["by_split"]] == [1, 2]
        assert [b["rank1"] for b in cell["by_split"]] == [e["rank1"] for e in each]
        assert cell["n_probes"] == sum(e["n_probes"] for e in each)
        assert cell["rank1_correct"] == sum(e["rank1_correct"] for e in each)
        differs |= each[0]["rank1"] != each[1]["rank1"]
    assert differs  # two splits, two sets of held-out people
    assert [w["rank1"] for w in pooled["worst_by_split"]] == [a["worst"]["rank1"] for a in alone]
    assert pooled["worst"]["rank1"] <= max(a["worst"]["rank1"] for a in alone)
    assert pooled["attack_cpu_s"][mfn].keys() == alone[0]["attack_cpu_s"][mfn].keys()

    report = runner.figures.assemble(session, [pooled], {"group_photos": []})
    report |= {"elapsed_s": 1.0, "examples": []}  # what run_eval adds around it
    assert report["attack_budget"]["splits"] == 2 and report["attack_budget"]["seed"] == 1
    page = render_eval_page(report)
    assert "the first of 2 identity splits" in page
    each = [
        f"{100 * a['worst']['rank1']:.1f}% (seed {seed})"
        for seed, a in zip((1, 2), alone, strict=True)
    ]
    assert f"worst of each split alone: {each[0]}, {each[1]}" in text_table(report)
