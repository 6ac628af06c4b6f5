"""Command-line flags generated from typed config dataclasses, so each option is declared exactly once.

A field ``name: type = default  # help text`` becomes ``--name`` with that type, default and help (the trailing
comment is the documentation in the source and the help on the command line). Booleans get ``--x/--no-x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from pathlib import Path
from typing import Any, Literal

_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:.*?#\s*(.+)$")


def _field_help(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in map(_FIELD_COMMENT.match, source.splitlines()) if m}


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        text = f"{helps.get(f.name, '')} (default: {default})"
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif origin is Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(tp), default=default, help=text)
        elif origin in (tuple, list):
            item = typing.get_args(tp)[0]
            parser.add_argument(flag, dest=f.name, nargs="*", type=item, default=default, help=text)
        elif tp in (int, float, str, Path):
            parser.add_argument(flag, dest=f.name, type=tp, default=default, help=text)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line mapping for {tp}")


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
