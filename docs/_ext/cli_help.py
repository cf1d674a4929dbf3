"""The ``pyro-vae-help`` directive: the command line's reference, rendered from its parser.

Our own few lines rather than sphinx-argparse: the page shows exactly what ``pyro-vae X --help``
prints (the same formatter, defaults and wording), and help text is never read as
reStructuredText, so no option's help can break a ``-W`` build.
"""

from __future__ import annotations

import argparse
import os
from unittest import mock

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from pyro_vae.cli_parser import build_parser

Commands = list[tuple[str, argparse.ArgumentParser]]


def commands(parser: argparse.ArgumentParser, path: str) -> Commands:
    """``(command line, parser)`` for the parser and each of its subcommands, depth first."""
    found = [(path, parser)]
    for action in parser._actions:  # argparse keeps its subcommands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += commands(child, f"{path} {name}")
    return found


def help_texts() -> list[tuple[str, str]]:
    """``(command line, its --help)`` for every command, wrapped to 100 columns."""
    # argparse wraps to the terminal's width; the page's width must not depend on who builds it
    with mock.patch.dict(os.environ, {"COLUMNS": "100"}):
        return [(path, p.format_help()) for path, p in commands(build_parser(), "pyro-vae")]


class CommandHelp(SphinxDirective):
    """One section per command, its ``--help`` text as a literal block (in an .rst page: the
    generated lines are reStructuredText)."""

    def run(self):
        lines = []
        for path, text in help_texts():
            lines += [path, "-" * len(path), "", ".. code-block:: text", ""]
            lines += ["   " + line for line in text.splitlines()] + [""]
        body = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, "pyro_vae.cli_parser"), body)
        return body.children


def setup(app):
    """Register the directive."""
    app.add_directive("pyro-vae-help", CommandHelp)
    return {"parallel_read_safe": True, "version": "1"}
