"""Click options derived from the config dataclasses: a field is a flag (`max_grad_norm` ->
`--max-grad-norm`), its docstring the flag's help, its default the shown default, its type the
flag's type; a bool is a `--x/--no-x` pair. A field and its flag cannot drift apart, and a new field
needs no CLI code.

Written here rather than with jsonargparse (which litgpt uses) because ft's commands are Click
commands with their own arguments and groups; what is needed is the field -> option step alone, about
sixty lines. Field docstrings (the string under a field, as litgpt writes them) are read from the class
source with `ast`, once per class.

Every option defaults to None, so that a flag the user did not give leaves the value of `--config`,
`-o` or the dataclass default in place.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click

_FLAG_MENTION = re.compile(r"\s*\((?:--[\w-]+(?:[ ,;:][^)]*)?)\)")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """name -> the docstring written under each field of dataclass `cls` (and of its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (a frozen app): help without docstrings
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_bool) of a field annotation: int, float, str, bool, X | None, tuple[str, ...]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _click_type(inner[0]) if len(inner) == 1 else (str, False)
    if annotation is bool:
        return None, True
    if annotation in (int, float, str):
        return annotation, False
    return str, False  # tuples and lists: comma-separated text, split by the dataclass


def _help(doc: str, defaults: list[tuple[str, Any]]) -> str:
    text = _FLAG_MENTION.sub("", doc).strip()
    shown = {repr(v) for _, v in defaults}
    if len(shown) == 1:
        value = defaults[0][1]
        if value not in (None, (), [], ""):
            text += f"  [default: {str(value).lower() if isinstance(value, bool) else value}]"
    elif defaults:
        text += "  [default: " + ", ".join(f"{v} ({owner})" for owner, v in defaults) + "]"
    return text


def dataclass_options(
    sources: Iterable[tuple[str | None, type]], *, only: Iterable[str] | None = None
) -> list[Callable[[Any], Any]]:
    """One click option per field of the dataclasses in `sources` ((owner, cls) pairs: owner is shown
    in the help of a field several classes share, e.g. the methods that take `--rank`). `only` keeps
    the named fields."""
    keep = set(only) if only is not None else None
    seen: dict[str, dict[str, Any]] = {}
    for owner, cls in sources:
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if keep is not None and f.name not in keep:
                continue
            blank = {"type": hints[f.name], "doc": docs.get(f.name, ""), "owners": []}
            entry = seen.setdefault(f.name, blank)
            default = f.default if f.default is not dataclasses.MISSING else None
            entry["owners"].append((owner or "", default))
    options = []
    for name, entry in seen.items():
        click_type, is_bool = _click_type(entry["type"])
        owners = [o for o, _ in entry["owners"] if o]
        doc = entry["doc"]
        if owners and len(entry["owners"]) == len(owners):
            doc = f"{', '.join(owners)}: {doc}"
        help_text = _help(doc, [(o, d) for o, d in entry["owners"]])
        decl = f"{flag_name(name)}/--no-{name.replace('_', '-')}" if is_bool else flag_name(name)
        kwargs: dict[str, Any] = {"default": None, "help": help_text}
        if not is_bool:
            kwargs["type"] = click_type
        options.append(click.option(decl, name, **kwargs))
    return options


def apply(options: list[Callable[[Any], Any]], f: Any) -> Any:
    for option in reversed(options):
        f = option(f)
    return f
