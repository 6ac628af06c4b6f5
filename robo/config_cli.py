"""Command-line flags generated from typed config dataclasses, so each option is declared exactly once.

A field ``name: type = default`` becomes ``--name`` with that type and default; its help is the field's docstring
(a string on the line after it) or else its trailing ``# comment``, so the documentation in the source is the help
on the command line. Booleans get ``--x/--no-x``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

_TRAILING_COMMENT = re.compile(r"#\s*(.+)$")


def _field_help(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    helps = {}
    for stmt, following in zip(body, body[1:] + [None]):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant) \
                and isinstance(following.value.value, str):
            helps[stmt.target.id] = " ".join(following.value.value.split())
        elif match := _TRAILING_COMMENT.search(lines[stmt.end_lineno - 1]):
            helps[stmt.target.id] = match.group(1).strip()
    return helps


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return tp


class _Repeatable(argparse.Action):
    """``nargs="*"`` that also accumulates across repeats: ``--arg a --arg b`` is ``--arg a b`` (plain ``store``
    would keep only the last). The first use on a command line replaces the default."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        fresh = current is None or current is self.default
        setattr(namespace, self.dest, list(values) if fresh else [*current, *values])


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                       only_explicit: bool = False) -> None:
    """Add ``--field`` flags for ``cls``. With ``only_explicit`` the namespace holds only flags the user gave, so
    they can be layered over a preset (defaults < preset < command line)."""
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        text = f"{helps.get(f.name, '')} (default: {default})"
        if only_explicit:
            default = argparse.SUPPRESS
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif origin is Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(tp), default=default, help=text)
        elif origin in (tuple, list):
            item = typing.get_args(tp)[0]
            parser.add_argument(flag, dest=f.name, nargs="*", type=item, default=default, help=text,
                                action=_Repeatable)
        elif tp in (int, float, str, Path):
            parser.add_argument(flag, dest=f.name, type=tp, default=default, help=text)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line mapping for {tp}")


def explicit_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The ``cls`` fields present in ``args`` (all of them, or only the explicit ones with ``only_explicit``)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return values


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**explicit_values(cls, args))
