"""The sample identifier (the HMAC of the source URI, written as ``__key__``) is the "sample id"
everywhere a user reads it and in the records that carry it; "key" is left to keys."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from faceveil.jobs.cli import build_parser
from faceveil.jobs.residual import Residual
from faceveil.jobs.shardio import RawSample


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_command_help_calls_the_sample_id_a_key() -> None:
    helps = {p.prog: p.format_help().lower() for p in _parsers(build_parser())}
    assert len(helps) > 20
    assert [prog for prog, text in helps.items() if "sample key" in text] == []
    for prog in ("faceveil lookup", "faceveil run", "faceveil shard", "faceveil restore request"):
        assert "sample id" in " ".join(helps[prog].split()), prog


def test_restore_request_takes_sample_ids_under_the_new_and_the_old_flag() -> None:
    argv = ["restore", "request", "OUT", "--sample-id", "a1", "b2", "--key", "c3", "--reason", "r"]
    assert build_parser().parse_args(argv).samples == ["a1", "b2", "c3"]


def test_records_carry_a_sample_id() -> None:
    assert RawSample("a1").sample_id == "a1"
    leak = Residual("shard-000000.tar", "a1", [1.0, 2.0, 3.0, 4.0], 0.9, "anonymized")
    assert leak.sample_id == "a1"
    assert leak.to_json() == {
        "shard": "shard-000000.tar",
        "key": "a1",
        "bbox": [1.0, 2.0, 3.0, 4.0],
        "score": 0.9,
        "status": "anonymized",
    }
