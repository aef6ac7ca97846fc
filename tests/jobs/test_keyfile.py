"""Key files: created owner-only and never overwritten; loading refuses bad or exposed files."""

from __future__ import annotations

import argparse
import logging
import os
import stat

import pytest

from faceveil.jobs.keyfile import (
    KEY_BYTES,
    KeyFileError,
    load_key_file,
    new_key_file,
)
from faceveil.jobs.keys_cli import add_key_commands

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@posix_only
def test_new_key_file_is_owner_only_hex(tmp_path):
    path = new_key_file(tmp_path / "team.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 2 * KEY_BYTES + 1 and text.endswith("\n")
    assert load_key_file(path) == bytes.fromhex(text.strip())


def test_keys_are_random(tmp_path):
    assert load_key_file(new_key_file(tmp_path / "a")) != load_key_file(
        new_key_file(tmp_path / "b")
    )


def test_refuses_to_overwrite(tmp_path):
    path = new_key_file(tmp_path / "team.key")
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        new_key_file(path)
    assert path.read_bytes() == before


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_refuses_files_others_can_reach(tmp_path, mode):
    path = new_key_file(tmp_path / "team.key")
    secret = path.read_text().strip()
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="other users") as info:
        load_key_file(path)
    assert secret not in str(info.value)


@posix_only
@pytest.mark.parametrize(
    "content",
    [b"", b"abc\n", b"zz" * KEY_BYTES, b"ab" * (KEY_BYTES + 1), b"\xff\xfe" * KEY_BYTES],
)
def test_refuses_malformed_files_without_echoing_them(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="hex characters") as info:
        load_key_file(path)
    message = str(info.value)
    assert content.decode("latin-1") not in message or not content
    assert "\\x" not in message and "0xff" not in message


def test_missing_file(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key_file(tmp_path / "none.key")


@posix_only
def test_cli_key_new(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    parser = argparse.ArgumentParser(prog="faceveil")
    add_key_commands(parser.add_subparsers(dest="command", required=True))
    target = tmp_path / "team.key"
    args = parser.parse_args(["key", "new", str(target)])
    assert args.handler(args) == 0
    secret = target.read_text().strip()
    out = capsys.readouterr()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert secret not in out.out + out.err + caplog.text
    with pytest.raises(KeyFileError):
        args.handler(parser.parse_args(["key", "new", str(target)]))
