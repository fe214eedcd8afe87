"""The README's usage is checked against the CLI: every flag a `kindling ...` line of its
shell blocks shows exists in that command's parser, and every command of `kindling --help`
appears in the README."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from host_shim import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def usage_lines() -> list[str]:
    """The `kindling ...` lines of the README's sh blocks, comments cut off."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("kindling ")]


def words(line: str) -> list[str]:
    """The command line's words, optional parts ([-f], [--source app|vmm]) included."""
    return shlex.split(line.replace("[", " ").replace("]", " "))[1:]


def parser_for(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    parser, rest = cli.build_parser(), list(argv)
    while rest and rest[0] in (choices := subcommands_or_empty(parser)):
        parser, rest = choices[rest[0]], rest[1:]
    return parser, rest


def subcommands_or_empty(parser):
    try:
        return subcommands(parser)
    except ValueError:
        return {}


def test_the_readme_has_usage_lines():
    assert len(usage_lines()) > 20


@pytest.mark.parametrize("line", usage_lines())
def test_every_flag_the_readme_shows_exists(line):
    parser, rest = parser_for(words(line))
    assert parser.prog != "kindling", f"no such command: {line}"
    known = {s for a in parser._actions for s in a.option_strings}
    flags = []
    for word in rest:
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1:
            flags.append(word.split("=")[0])
    for flag in flags:
        if flag.startswith("--") or len(flag) == 2:
            assert flag in known, f"{parser.prog} has no {flag} ({line})"
        else:        # -it: combined short flags
            assert all(f"-{c}" in known for c in flag[1:]), f"{parser.prog}: {flag} ({line})"


def test_every_command_is_in_the_readme():
    text = README.read_text()
    parser = cli.build_parser()
    for name, sub in subcommands(parser).items():
        if name in ("rm", "ps"):       # aliases of delete and list, mentioned as such
            assert f"`{name}`" in text
            continue
        assert f"kindling {name}" in text, f"`kindling {name}` is not in the README"
        for inner in subcommands_or_empty(sub):
            if inner != "ls":
                assert f"kindling {name} {inner}" in text, f"kindling {name} {inner}"
