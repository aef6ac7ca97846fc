"""``faceveil eval`` options become the EvalConfig they name, every field accounted for."""

from __future__ import annotations

import shlex

from faceveil.jobs.evaluate.config import AttackBudget, EvalConfig, RecallConfig, parse_methods


def test_every_option_lands_in_its_field() -> None:
    from faceveil.jobs.cli import build_parser
    from faceveil.jobs.evaluate.cli import eval_config

    argv = shlex.split(
        "eval --images imgs --identities ids.csv --attributes attrs.csv --methods blur,mask "
        "--attacker-model a.onnx --no-dlib-attacker --attacks aligned,parrot --attack-epochs 3 "
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
        attacks=("aligned", "parrot"),
        budget=AttackBudget(epochs=3),
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
