"""The house rules, checked on the code itself: dependencies point one way (cli -> worker -> datasets_prep
-> catalog) with no circles, the queue plumbing and the CLI's import path load no torch, every config
field has its flag, specs are read strictly, and no module grows past the size one can hold in mind."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("catalog", "datasets_prep", "worker", "dashboard", "cli")
"""In the direction dependencies point: each may import those before it, never those after."""
MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports, at the top or inside functions (a lazy import is a dependency
    too). `from pkg import mod` counts as importing pkg.mod when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, name, known) for name, path in mods.items()}


def test_dependencies_point_one_way():
    rank = {p: i for i, p in enumerate(PACKAGES)}
    against = [
        f"{a} imports {b}"
        for a, targets in graph().items()
        for b in targets
        if rank[b.split(".")[0]] > rank[a.split(".")[0]]
    ]
    assert against == []


def test_no_module_import_circles():
    edges = graph()
    # a package's __init__ importing its own submodules (a registry) is not a circle of the design
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in edges.items()}
    seen, stack, circles = set(), [], []

    def visit(node: str) -> None:
        if node in stack:
            circles.append(stack[stack.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(edges):
        visit(node)
    assert circles == []


def _loaded_after(imports: str) -> list[str]:
    code = f"import sys\n{imports}\nprint(sorted(m for m in HEAVY if m in sys.modules))"
    code = f"HEAVY = ('torch', 'transformers', 'peft', 'pyarrow')\n{code}"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.replace("'", '"'))


def test_the_queue_plumbing_and_the_cli_import_no_torch():
    assert _loaded_after("import cli.main") == []  # `ft --help` and every command's help
    jobs = "worker.jobs." + ", worker.jobs.".join(
        ("celery_app", "tasks", "runner", "reconciler", "messages", "convert", "train", "eval")
    )
    loaded = _loaded_after(f"import {jobs}, worker.spec, worker.resolve, worker.methods.saving")
    assert set(loaded) <= {"pyarrow"}  # the conversion's Arrow files; no torch before a job runs


def test_no_module_is_too_long_to_hold_in_mind():
    long = {n: c for n, p in modules().items() if (c := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_config_field_has_its_flag():
    from cli.main import cli
    from datasets_prep.spec import ConvertSpec
    from worker.evaluation.decoding import Decoding
    from worker.methods import METHODS
    from worker.spec import EvalSpec
    from worker.train.config import TrainConfig

    def flags(*path: str) -> set[str]:
        cmd = cli
        for name in path:
            cmd = cmd.commands[name]
        return {opt for p in cmd.params for opt in getattr(p, "opts", [])}

    train, evaluate = flags("submit", "train"), flags("submit", "eval")
    wanted = [f.name for f in dataclasses.fields(TrainConfig)] + ["max_len", "max_source_len"]
    wanted += [f.name for m in METHODS.values() for f in dataclasses.fields(m.config)]
    assert sorted(n for n in wanted if "--" + n.replace("_", "-") not in train) == []
    wanted = [f.name for f in dataclasses.fields(Decoding)] + ["limit", "max_source_len", "dtype"]
    assert sorted(n for n in wanted if "--" + n.replace("_", "-") not in evaluate) == []
    convert = flags("submit", "convert")
    assert {"--max-len", "--max-source-len"} <= convert
    assert ConvertSpec.__dataclass_fields__["max_len"].default == 2048 and EvalSpec


@pytest.fixture
def train_spec_json(catalog, store, tiny_model_dir):
    from datasets_prep.register import add_dataset
    from tests.conftest import FAULTS_TEST
    from worker.models.registration import register_path
    from worker.resolve import resolve_train_spec

    add_dataset(catalog, store, "faults", FAULTS_TEST, user="tester")
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
        spec = resolve_train_spec(
            s,
            name="x",
            method="lora",
            model="tiny",
            dataset="faults",
            method_flags={},
            train_flags={},
            store=store,
        )
    return json.loads(json.dumps(spec.to_json()))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["train"].update(lr="fast"), r'field "lr"'),
        (lambda d: d["train"].update(warmup="x"), r'"warmup"'),
        (lambda d: d["method_config"].update(rank="4"), r'field "rank"'),
        (lambda d: d["data"].update(max_len=[1]), r'field "max_len"'),
        (lambda d: d.pop("data"), "missing key.*data"),
        (lambda d: d.update(method="lorra"), "unknown training method 'lorra'"),
    ],
)
def test_train_spec_from_json_names_the_bad_key(train_spec_json, edit, message):
    from catalog.errors import InvalidInput
    from worker.spec import TrainSpec

    assert TrainSpec.from_json(train_spec_json).to_json() == train_spec_json
    edit(train_spec_json)
    with pytest.raises(InvalidInput, match=message):
        TrainSpec.from_json(train_spec_json)


def test_the_spec_is_resolved_once(train_spec_json):
    from worker.spec import TrainSpec

    spec = TrainSpec.from_json(train_spec_json)
    assert (spec.train.lr, spec.train.epochs, spec.train.optimizer) == (2e-3, 4, "adamw")  # lora's defaults
    assert "max_len" not in train_spec_json["train"] and train_spec_json["data"]["max_len"] == 2048
