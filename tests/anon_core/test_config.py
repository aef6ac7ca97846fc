"""from_args: a config dataclass filled from a parsed command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from faceveil.anon_core.config import AnonConfig, from_args


@dataclass(frozen=True)
class _Config:
    out: str
    detector: str = "scrfd"
    threads: int = 0
    progress: bool = True


def test_fields_come_from_same_named_options_and_given_values_win() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--detector", default="centerface")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--unrelated", default="x")
    args = parser.parse_args(["s3://b/out", "--no-progress"])
    config = from_args(_Config, args, progress=not args.no_progress)
    assert config == _Config(out="s3://b/out", detector="centerface", threads=0, progress=False)
    overridden = from_args(_Config, args, detector="scrfd", progress=True)
    assert overridden == _Config(out="s3://b/out", detector="scrfd", threads=0, progress=True)


def test_a_field_without_an_option_keeps_its_default() -> None:
    config = from_args(AnonConfig, argparse.Namespace(method="mask", handler=print))
    assert config == AnonConfig(method="mask")
