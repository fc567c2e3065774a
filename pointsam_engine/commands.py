"""Commands other packages add to ``pointsam`` (``pointsam.commands`` entry points, e.g. ``train`` from ``training``),
loaded only when one is run.

``pointsam --help`` lists them with the first line of their docstring, read from their source without importing
it, so neither the help nor the engine's own commands import ``training`` (and so torch). A command whose package
is not installed is left out silently; any other failure to load one (a broken install: a missing dependency,
a syntax error) is reported when it is run, as one ``error:`` line naming the command and the fix.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Dict, List, Optional

import click

from .errors import PointSamError

GROUP = "pointsam.commands"


@lru_cache(maxsize=1)
def _installed() -> Dict[str, EntryPoint]:
    """Entry points whose top-level package is installed, by command name."""
    found = {}
    for entry in entry_points(group=GROUP):
        top = entry.module.split(".")[0]
        if importlib.util.find_spec(top) is not None:
            found[entry.name] = entry
    return found


def _docstring(entry: EntryPoint) -> str:
    """The docstring of the entry point's function, read from its source file (not imported)."""
    try:
        tree = ast.parse(Path(importlib.util.find_spec(entry.module).origin).read_text(encoding="utf-8"))
    except Exception:  # not found or unreadable: running the command says why
        return ""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry.attr:
            return ast.get_docstring(node) or ""
    return ""


class PluginGroup(click.Group):
    """A group that also offers the ``pointsam.commands`` entry points, each imported only when it is run."""

    _listing = False  # True while the group's --help lists its commands

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted({*super().list_commands(ctx), *_installed()})

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        command = super().get_command(ctx, name)
        if command is not None or name not in _installed():
            return command
        if self._listing:  # a stand-in with the command's help line: listing it imports nothing
            return click.Command(name, help=_docstring(_installed()[name]))
        command = load(_installed()[name])
        self.add_command(command, name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False


def load(entry: EntryPoint) -> click.Command:
    """Import a plugin command; a broken install becomes one :class:`PointSamError` line."""
    try:
        return entry.load()
    except Exception as exc:
        what = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PointSamError(f"the `pointsam {entry.name}` command cannot be loaded from {entry.module} ({what}); "
                            f"reinstall it, e.g. pip install -e . in the PointSAM checkout") from None
