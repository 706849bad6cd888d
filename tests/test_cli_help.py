"""Every command's --help prints (argparse formats each help text, a stray % breaks it)."""

from __future__ import annotations

import argparse

import pytest

from facekit.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


def test_every_command_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(build_parser())
    assert ("eval", "alignment") in commands and ("push", "model") in commands and len(commands) > 30
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0, command
        assert "usage: facekit" in capsys.readouterr().out, command
