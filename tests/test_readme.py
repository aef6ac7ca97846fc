"""README's key and restore examples run as written from a script (no prompt, no placeholder)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from faceveil.jobs.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
# (command, subcommand) pairs that read a passphrase, and those that ask for confirmation.
PASSPHRASE = {("custodian", "keygen"), ("restore", "request"), ("restore", "approve"),
              ("restore", "apply"), ("escrow", "reshare"), ("escrow", "rekey")}  # fmt: skip
CONFIRM = {("restore", "approve")}


def _key_section_commands() -> list[list[str]]:
    text = README.read_text()
    section = text.split("\n## Keys and escrow\n", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(re.findall(r"```\n(.*?)```", section, flags=re.S))
    lines = [line for line in code.splitlines() if line.startswith("faceveil ")]
    return [shlex.split(line, comments=True)[1:] for line in lines]


def test_key_examples_parse_and_need_no_prompt():
    commands = _key_section_commands()
    seen = set()
    for argv in commands:
        assert "..." not in " ".join(argv), argv
        args = build_parser().parse_args(argv)
        pair = tuple(argv[:2])
        seen.add(pair)
        if pair in PASSPHRASE:
            assert args.passphrase_file, f"{' '.join(argv[:2])} would prompt for a passphrase"
        if pair in CONFIRM:
            assert args.yes, f"{' '.join(argv[:2])} would ask for confirmation"
    assert seen >= PASSPHRASE and any(argv[0] == "lookup" for argv in commands)
