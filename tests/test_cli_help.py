"""Every command's --help renders, with its bracketed texts intact (rich markup used to
swallow "[synth]" and "[default: ...]") and its examples pointing at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from metavox.cli import app

REPO = Path(__file__).resolve().parents[1]


def commands(group, path=()):
    yield path, group
    if hasattr(group, "commands"):  # a group (typer's own, not necessarily click's class)
        for name, sub in group.commands.items():
            yield from commands(sub, (*path, name))


def flat(text: str) -> str:
    return " ".join(text.split())


def test_every_help_keeps_its_bracketed_text_and_examples_exist():
    root = typer.main.get_command(app)
    seen = 0
    for path, cmd in commands(root):
        res = CliRunner().invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        out = flat(res.output)
        texts = [p.help for p in cmd.params if getattr(p, "help", None)]
        texts.append(cmd.help or "")
        for text in texts:
            for bracket in re.findall(r"\[[^\]]+\]", text):
                assert flat(bracket) in out, (path, bracket)
                seen += 1
        for config in re.findall(r"configs/[\w./-]+\.toml", res.output):
            assert (REPO / config).is_file(), (path, config)
    assert seen >= 4  # synth's [synth] and [default: ...] texts among them
