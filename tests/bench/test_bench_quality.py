"""bench/bench_quality.py, which produced every quality claim of the README: its recipes are the
product's defaults, and a smoke run goes through the real commands (ft datasets add with a validation
split, a real `ft worker`, ft submit train / eval) and reports validation and test scores."""

from __future__ import annotations

import json

import pytest

from cli.methods import method_json
from datasets_prep.lengths import DEFAULT_MAX_LEN, default_max_source_len
from datasets_prep.spec import ConvertSpec
from datasets_prep.templates import CHAT
from tests.bench.test_bench_scripts import _load
from tests.conftest import DATA
from worker.evaluation.decoding import DEFAULT_BATCH_SIZE, Decoding
from worker.methods import METHODS
from worker.spec import EvalSpec
from worker.train.config import TrainConfig


@pytest.fixture(scope="module")
def recipes():
    return _load("bench_quality").load_recipes()


def test_the_recipes_are_the_defaults_of_ft_methods_list(recipes):
    defaults = recipes["defaults"]
    assert sorted(defaults["methods"]) == sorted(METHODS)
    for name, expected in defaults["methods"].items():
        shown = method_json(name)
        shown = json.loads(json.dumps(shown))  # as `ft methods list --json` prints it (tuples are lists)
        assert {k: shown[k] for k in ("lr", "epochs", "optimizer", "flags")} == expected, name
    train, cfg = defaults["train"], TrainConfig()
    assert (train["batch_size"], train["grad_accum"]) == (cfg.batch_size, cfg.grad_accum)
    assert train["max_tokens_per_batch"] == cfg.max_tokens_per_batch
    assert train["max_len"] == ConvertSpec.__dataclass_fields__["max_len"].default == DEFAULT_MAX_LEN
    assert train["max_source_len"] == default_max_source_len(DEFAULT_MAX_LEN) and train["template"] == CHAT
    decoding = Decoding()
    assert defaults["eval"]["batch_size"] == decoding.batch_size == DEFAULT_BATCH_SIZE
    assert defaults["eval"]["max_new_tokens"] == decoding.max_new_tokens
    assert defaults["eval"]["max_source_len"] == EvalSpec.__dataclass_fields__["max_source_len"].default


def test_variants_and_candidates_name_only_flags_of_ft_submit_train(recipes):
    from cli.main import cli

    train = cli.commands["submit"].commands["train"]
    flags = {opt for p in train.params for opt in p.opts}
    for name, spec in {**recipes["variants"], **recipes["candidates"]}.items():
        assert spec["method"] in METHODS, name
        assert all(f in flags for f in spec.get("flags", []) if f.startswith("--")), name
    assert all(c["against"] in recipes["variants"] for c in recipes["candidates"].values())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_run_through_the_real_commands(tiny_model_dir, tmp_path, monkeypatch):
    bench = _load("bench_quality")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    out = bench.main([
        "--smoke", "--model-dir", str(tiny_model_dir), "--data", str(DATA), "--home", str(tmp_path / "home"),
        "--variants", "ptuning", "--seeds", "42,1", "--out", str(tmp_path / "q.json"),
    ])  # fmt: skip
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["smoke"] and record["commit"] and record["device"] == "cpu" and record["versions"]["peft"]
    names = sorted(record["adapters"])
    candidates = [c for c, spec in bench.load_recipes()["candidates"].items() if spec["against"] == "ptuning"]
    assert candidates and names == sorted(
        ["faults-ptuning-s1", "faults-ptuning-s42", *(f"faults-{c}-s42" for c in candidates)]
    )
    for adapter in record["adapters"].values():
        assert "validation" in adapter and adapter["spec"]["data"]["max_source_len"] == 192  # 3/4 of 256
        assert ("test" in adapter) == adapter["default"]  # candidates are never scored on test
        assert (
            adapter["spec"]["train"]["seed"] == adapter["seed"]
            and adapter["spec"]["data"]["template_ref"] == "chat:1"
        )
    (row,) = [r for r in record["rows"] if r["variant"] == "ptuning"]
    assert row["seeds"] == [42, 1] and len(row["test"]["values"]) == 2 and row["test"]["std"] >= 0
    assert set(record["selection"]) == set(candidates)
    assert set(record["base"]) == {"validation", "test"}
    assert "| ptuning | `--method ptuning` | 42, 1 |" in record["markdown"]
    assert any(
        c.startswith("ft datasets add faults") and "--split validation=0.1" in c
        for c in record["ft_commands"]
    )
    assert any(c.startswith("ft worker ") for c in record["ft_commands"])


def test_previous_results_ignore_flags_added_since_but_not_changed_defaults():
    bench = _load("bench_quality")
    now = bench.load_recipes()
    then = json.loads(json.dumps(now))
    del then["defaults"]["methods"]["lora"]["flags"]["int8_matmul"]  # a flag added after that run
    assert bench._method_defaults(then, "lora") == bench._method_defaults(now, "lora", like=then)
    then["defaults"]["methods"]["lora"]["flags"]["rank"] = 16  # a default changed since: not the same run
    assert bench._method_defaults(then, "lora") != bench._method_defaults(now, "lora", like=then)
    then["defaults"]["methods"]["ptuning"]["epochs"] = 16
    assert bench._method_defaults(then, "ptuning") != bench._method_defaults(now, "ptuning", like=then)


def test_previous_results_take_only_adapters_scored_on_every_split_they_need(tmp_path):
    """An adapter trained in an earlier session that was cut off before its evaluations trains again:
    its artifact went with that machine, and taking it would report a seed that was never scored."""
    bench = _load("bench_quality")
    recipes = bench.load_recipes()
    scored = {"f1": 0.4, "precision": 0.5}

    def entry(variant: str, seed: int, default: bool = True, **splits) -> dict:
        method = recipes["variants"].get(variant, recipes["candidates"].get(variant, {})).get("method")
        return {"variant": variant, "method": method, "default": default, "seed": seed, **splits}

    candidate = next(iter(recipes["candidates"]))  # whichever recipes.yaml lists today
    gone = {"variant": "a-candidate-since-removed", "method": "ptuning", "default": False, "seed": 42,
            "validation": scored}  # fmt: skip
    record = {"task": "faults", "headline": "f1", "recipes": recipes, "commit": "abc", "base": {},
              "adapters": {
                  "faults-lora-s42": entry("lora", 42, validation=scored, test=scored),
                  "faults-lora-s1": entry("lora", 1),  # trained, never evaluated
                  "faults-full-s1": entry("full", 1, validation=scored),  # test evaluation cut off
                  f"faults-{candidate}-s42": entry(candidate, 42, default=False, validation=scored),
                  "faults-gone-s42": gone,  # its variant is no longer in recipes.yaml: not today's recipe
              }}  # fmt: skip
    previous = tmp_path / "previous.json"
    previous.write_text(json.dumps(record), encoding="utf-8")
    args = bench.parse_args(
        ["--model-dir", str(tmp_path), "--home", str(tmp_path / "home"), "--previous", str(previous)]
    )
    taken = bench.Bench(args, recipes).previous
    assert sorted(taken) == sorted(["faults-lora-s42", f"faults-{candidate}-s42"])
    assert taken["faults-lora-s42"]["from"] == "previous.json" and taken["faults-lora-s42"]["commit"] == "abc"
