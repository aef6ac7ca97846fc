"""``faceveil eval`` options become the EvalConfig they name, every field accounted for."""

from __future__ import annotations

import shlex

from faceveil.jobs.evaluate.config import AttackBudget, EvalConfig, RecallConfig, parse_methods


def test_every_option_lands_in_its_field() -> None:
    from faceveil.jobs.cli import build_parser
    from faceveil.jobs.evaluate.cli import eval_config

    argv = shlex.split(
        "eval --images imgs --identities ids.csv --attributes attrs.csv --methods blur,mask "
        "--attacker-model a.onnx --no-dlib-attacker --attacks aligned,parrot,parrot-finetune "
        "--attack-epochs 3 --finetune-steps 11 --attack-seed 5 --attack-splits 3 "
        "--recall-by labels.csv --small-faces 5 --report rep --detector scrfd "
        "--second-detector centerface --model-root models --limit-identities 7 --far 0.01 "
        "--examples 2 --no-utility --attribute-faces 9 --attribute-judge both --device cuda "
        "--threads 4 --no-progress"
    )
    expected = EvalConfig(
        images="imgs",
        identities="ids.csv",
        report_dir="rep",
        methods=parse_methods("blur,mask"),
        attacker_models=("a.onnx",),
        dlib_attacker=False,
        attacks=("aligned", "parrot", "parrot-finetune"),
        budget=AttackBudget(epochs=3, finetune_steps=11, seed=5, splits=3),
        recall=RecallConfig(labels="labels.csv", small_faces=5),
        attributes="attrs.csv",
        detector="scrfd",
        second_detector="centerface",
        model_root="models",
        limit_identities=7,
        utility=False,
        attribute_faces=9,
        attribute_judge="both",
        far=0.01,
        examples=2,
        device="cuda",
        threads=4,
        progress=False,
    )
    assert eval_config(build_parser().parse_args(argv)) == expected


def test_bench_attacks_takes_the_attack_options_of_eval_and_builds_the_same_config() -> None:
    """``python -m bench.bench_attacks`` measures what ``faceveil eval`` would with the same
    attack options (one option set, one reader), only its defaults differ: every attack and
    utkface_dev's labels."""
    from bench.bench_attacks import _arguments
    from bench.common import shared_root
    from faceveil.jobs.cli import build_parser
    from faceveil.jobs.evaluate.cli import attack_fields, eval_config
    from faceveil.jobs.evaluate.config import PixelBudget

    options = shlex.split(
        "--attacks parrot,inversion-pixels --attack-epochs 3 --pixel-steps 7 "
        "--recall-by labels.csv --small-faces 5"
    )
    config = eval_config(build_parser().parse_args(["eval", *shlex.split(
        "--images i --identities m.csv --report r"), *options]))  # fmt: skip
    assert attack_fields(_arguments(options)) == {
        "attacks": config.attacks,
        "budget": config.budget,
        "recall": config.recall,
    }
    assert config.attacks == ("aligned", "parrot", "inversion-pixels")
    assert config.budget == AttackBudget(epochs=3, pixels=PixelBudget(steps=7))
    assert config.recall == RecallConfig(labels="labels.csv", small_faces=5)
    defaults = attack_fields(_arguments([]))
    assert defaults["attacks"] == (
        "aligned", "parrot", "parrot-finetune", "inversion", "inversion-pixels"
    )  # fmt: skip
    assert defaults["budget"] == AttackBudget()
    labels = shared_root() / "data" / "utkface_dev" / "labels.csv"
    assert defaults["recall"] == RecallConfig(labels=str(labels))


def test_another_attack_seed_holds_out_other_identities() -> None:
    """Two seeds split the same identities into other training and test sets, each disjoint."""
    import numpy as np

    from faceveil.jobs.evaluate.attacks import split_identities

    ids = np.repeat(np.arange(40), 3)
    has_face = np.ones(len(ids), bool)
    a, b = (split_identities(ids, has_face, AttackBudget(seed=s)) for s in (0, 1))
    for split in (a, b):
        assert not set(ids[split.train]) & set(ids[split.test])
        assert len(set(ids[split.test])) == 20
    assert set(ids[a.test]) != set(ids[b.test])
