"""The CLI as a user meets it (issue 15 part 6, issue 14 part 6): one exit-code policy, one
error line, every default in --help, clear refusals, and no Ray noise unless --verbose."""

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from faceveil.jobs.cli import build_parser
from faceveil.jobs.demo import sample_images
from faceveil.jobs.exitcodes import ExitCode
from faceveil.jobs.keyfile import new_key_file
from tests.conftest import RAY_TMP
from tests.jobs.corpus import png_claiming
from tests.jobs.escrow_world import cli

FACEVEIL = str(Path(sys.executable).with_name("faceveil"))
# Ray's own lines that used to reach a user's console on every run (issue 15).
RAY_NOISE = ("has constructor arguments in the object store", "Token authentication is enabled",
             "Progress bars disabled")  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """Three bundled photos (faces) and a header that claims 2000 x 2000 pixels; a secret."""
    root = tmp_path_factory.mktemp("cli")
    (root / "photos").mkdir()
    for name, data in sample_images(3):
        (root / "photos" / name).write_bytes(data)
    (root / "photos" / "big_header.png").write_bytes(png_claiming(2000, 2000))
    return root / "photos", new_key_file(root / "secret.key")


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_exit_codes_are_pinned():
    assert [int(code) for code in ExitCode] == [0, 1, 2]
    assert [code.name for code in ExitCode] == ["OK", "REFUSED", "USAGE"]


def test_every_option_with_a_default_shows_it_and_every_help_lists_the_exit_codes():
    checked = 0
    for parser in _parsers(build_parser()):
        text = parser.format_help()
        assert "exit codes: 0 done; 1 refused" in " ".join(text.split()), parser.prog
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.default in (None, []):
                continue
            flag = action.option_strings[0]
            block = text[text.index(f"\n  {flag}") + 1 :]
            block = block.split("\n  -", 1)[0].split("\n\n", 1)[0]
            assert "default" in block, f"{parser.prog} {flag}: {block!r}"
            checked += 1
    assert checked >= 35  # run, shard, demo, eval, restore, escrow, audit... all walked


def test_usage_error_exits_2_and_refusal_exits_1_with_one_error_line(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(["run", "--shard-size", "many", "in", "out"])
    assert usage.value.code == ExitCode.USAGE == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "error: faceveil run: argument --shard-size: invalid int value: 'many'"
    photo_dir, secret = photos
    refused = cli("run", photo_dir, tmp_path / "out", "--secret-file", secret)  # no escrow flag
    assert refused.rc == 1
    assert "choose how the originals are escrowed" in refused.one_error()


def test_missing_input_does_not_exist(tmp_path, photos):
    _, secret = photos
    for argv in (["run", tmp_path / "nope", tmp_path / "out", "--no-escrow"],
                 ["shard", tmp_path / "nope", tmp_path / "shards"]):  # fmt: skip
        result = cli(*argv, "--secret-file", secret)
        assert result.rc == 1
        assert result.one_error() == f"error: input {tmp_path / 'nope'} does not exist"
    assert not (tmp_path / "out").exists() and not (tmp_path / "shards").exists()


def test_a_non_empty_folder_that_is_no_job_is_refused_as_output(photos, tmp_path):
    photo_dir, secret = photos
    home = tmp_path / "my-files"
    home.mkdir()
    (home / "holiday.jpg").write_bytes(b"mine")
    (home / "notes.txt").write_text("mine too")
    result = cli("run", photo_dir, home, "--no-escrow", "--secret-file", secret)
    assert result.rc == 1
    error = result.one_error()
    assert "is not empty and holds no faceveil job (2 entries that a job does not write)" in error
    assert "holiday" not in error  # file names may be people's names
    assert sorted(p.name for p in home.iterdir()) == ["holiday.jpg", "notes.txt"]


def test_a_first_use_secret_file_is_created_like_the_default_one(photos, tmp_path):
    photo_dir, _ = photos
    secret = tmp_path / "keys" / "team-secret.key"
    result = cli("shard", photo_dir, tmp_path / "shards", "--secret-file", secret)
    assert result.rc == 0, result.err
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert len(bytes.fromhex(secret.read_text().strip())) == 32
    assert f"created a new job secret at {secret}" in result.err
    again = cli("shard", photo_dir, tmp_path / "shards2", "--secret-file", secret)
    index = [json.loads((tmp_path / d / "shards.json").read_text()) for d in ("shards", "shards2")]
    assert again.rc == 0 and index[0]["secret_fingerprint"] == index[1]["secret_fingerprint"]


def test_lookup_does_not_make_up_a_secret(photos, tmp_path):
    result = cli("lookup", tmp_path, "--secret-file", tmp_path / "typo.key", "x.jpg")
    assert result.rc == 1 and "does not exist" in result.one_error()
    assert not (tmp_path / "typo.key").exists()


def test_max_pixels_in_the_reason_and_audit_verify_names_no_escrow(photos, tmp_path, ray_local):
    photo_dir, secret = photos
    out = tmp_path / "out"
    result = cli("run", photo_dir, out, "--no-escrow", "--secret-file", secret, "--no-progress",
                 "--max-pixels", "1000000", "--address", ray_local)  # fmt: skip
    assert result.rc == 0, result.err
    (reason,) = pq.read_table(out / "quarantine" / "shard-000000.parquet").column("reason")
    assert (
        reason.as_py() == "too_many_pixels: 2000x2000 = 4000000 pixels exceeds --max-pixels 1000000"
    )
    verify = cli("audit", "verify", out)
    assert verify.rc == 1
    assert verify.one_error() == (
        f"error: {out} has no audit log because its job ran with --no-escrow: nothing was "
        "sealed, so there are no key operations to log"
    )
    assert cli("audit", "verify", tmp_path / "nothing").one_error().endswith("does not exist")


def _run_own_ray(photo_dir: Path, secret: Path, out: Path, *extra: str):
    env = {**os.environ, "FACEVEIL_RAY_TMPDIR": RAY_TMP + "-own"}
    env.pop("RAY_ADDRESS", None)
    command = [FACEVEIL, *extra, "run", str(photo_dir), str(out), "--no-escrow",
               "--secret-file", str(secret), "--no-progress", "--num-actors", "1"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_ray_is_quiet_unless_verbose(photos, tmp_path):
    """``faceveil run`` with a local Ray of its own: none of Ray's lines by default; back with
    --verbose."""
    photo_dir, secret = photos
    quiet = _run_own_ray(photo_dir, secret, tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert [noise for noise in RAY_NOISE if noise in quiet.stderr] == [], quiet.stderr
    assert "logging.cc" not in quiet.stderr and "streaming_executor" not in quiet.stderr
    assert quiet.stdout.startswith("job ")
    loud = _run_own_ray(photo_dir, secret, tmp_path / "loud", "--verbose")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert RAY_NOISE[0] in loud.stderr and RAY_NOISE[2] in loud.stderr
