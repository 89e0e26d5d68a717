"""No code from a file: walk the AST of every module of the product and refuse the calls that can run
code while reading data (pickle, marshal, `torch.load` without `weights_only=True`, unsafe YAML, the
builtins `eval`/`exec`).

A call is matched by its dotted name as written (`pickle.load`, `torch.load`) and by names imported
from those modules (`from pickle import loads`), so an alias cannot hide one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("catalog", "datasets_prep", "worker", "cli", "bench", "scripts")

FORBIDDEN = {
    "pickle.load": "unpickles",
    "pickle.loads": "unpickles",
    "pickle.Unpickler": "unpickles",
    "cPickle.load": "unpickles",
    "cPickle.loads": "unpickles",
    "dill.load": "unpickles",
    "dill.loads": "unpickles",
    "marshal.load": "unmarshals code objects",
    "marshal.loads": "unmarshals code objects",
    "yaml.load": "can build arbitrary objects: use yaml.safe_load",
    "yaml.unsafe_load": "builds arbitrary objects: use yaml.safe_load",
    "yaml.full_load": "builds arbitrary objects: use yaml.safe_load",
    "eval": "runs code",
    "exec": "runs code",
}


def _sources() -> list[Path]:
    files = []
    for package in PACKAGES:
        files += sorted((REPO / package).rglob("*.py"))
    return files


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """`a.b.c` for a Name/Attribute chain, with the head resolved through the module's imports."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> what it stands for, from `import x as y` and `from x import y as z`."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _weights_only(call: ast.Call) -> bool:
    return any(
        kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
        for kw in call.keywords
    )


def violations(source: str, filename: str = "<string>") -> list[str]:
    """`file:line: call (why)` for every forbidden call in `source`."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        if name in FORBIDDEN and (name not in ("eval", "exec") or isinstance(node.func, ast.Name)):
            found.append(f"{filename}:{node.lineno}: {name}() {FORBIDDEN[name]}")
        elif name == "torch.load" and not _weights_only(node):
            found.append(f"{filename}:{node.lineno}: torch.load() without weights_only=True unpickles")
    return found


def test_the_checker_finds_each_kind_of_call():
    bad = """
import pickle, marshal, yaml, torch
from pickle import loads as l
import torch as t
pickle.load(f); l(b); pickle.Unpickler(f); marshal.loads(b); yaml.load(s); yaml.unsafe_load(s)
torch.load(p); t.load(p, weights_only=False); eval("1"); exec("x")
"""
    assert len(violations(bad)) == 10
    good = """
import torch, yaml, json
torch.load(p, weights_only=True); yaml.safe_load(s); json.loads(s); model.eval(); re.compile(x)
"""
    assert violations(good) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_code_runs_from_a_file(package):
    found = []
    for path in _sources():
        if path.relative_to(REPO).parts[0] == package:
            found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not found, "unsafe loads:\n" + "\n".join(found)
