"""Evaluation jobs through the job runner on the real fault-triple test rows: the base and six adapters
(two LoRA-type, p-tuning, p-tuning v2, freeze, full) in ONE job that loads the base once, each result
identical to evaluating that model alone; spec errors naming flags; long prompts; cancellation; and
`ft submit eval --wait` / `ft adapters compare --evaluate` on a real worker."""

from __future__ import annotations

import json
import logging

import pytest

from catalog.datasets import parse_dataset_ref
from catalog.evaluations import list_evaluations
from catalog.jobs import claim_job, get_job
from catalog.models import Evaluation, Job
from tests.conftest import ADGEN_DEV, FAULTS_TEST
from tests.worker.eval_helpers import evaluate, register_faults, submit_eval, train
from tests.worker.procs import run_ft, subprocess_env
from worker.evaluation.metrics.infer import looks_like_triples
from worker.spec import EvalSpec

ADAPTERS = {  # name: (method, method flags, training overrides)
    "f-lora": ("lora", {"rank": 4, "alpha": 64}, {"lr": 3e-3}),
    "f-dora": ("lora", {"rank": 4, "dora": True}, {"lr": 1e-2}),
    "f-freeze": ("freeze", {"layers": 1}, {"lr": 2e-3}),
    "f-ptuning": ("ptuning", {"virtual_tokens": 4}, {}),
    "f-ptuning-v2": ("ptuning-v2", {"virtual_tokens": 4}, {}),
    "f-full": ("full", {}, {"lr": 1e-3}),
}
SUMMARY_KEYS = {"f1", "precision", "recall", "micro_precision", "micro_recall", "micro_f1", "samples"}


@pytest.fixture(autouse=True)
def flush_denormals():
    """The tiny random model's activations under some adapters are subnormal floats, which make CPU
    matrix products ~10x slower; flushing them to zero keeps these tests fast (numerics as good)."""
    import torch

    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def evaluable(catalog, store, lively_model_dir, tmp_path):
    return register_faults(catalog, store, lively_model_dir, tmp_path)


def predictions(store, evaluation: Evaluation) -> list[dict]:
    path = store.path(evaluation.predictions_uri) / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_model(catalog, job_id: int) -> dict[str, Evaluation]:
    """The job's evaluations by adapter name ("base" for the untuned one)."""
    from catalog.models import Adapter

    with catalog.session() as s:
        found = {}
        for ev in s.query(Evaluation).filter(Evaluation.job_id == job_id):
            found["base" if ev.adapter_id is None else s.get_one(Adapter, ev.adapter_id).name] = ev
        return found


def test_one_job_loads_the_base_once_and_matches_each_model_alone(evaluable, settings, store):
    for name, (method, flags, overrides) in ADAPTERS.items():
        train(evaluable, settings, store, name, method, flags, **overrides)
    job = evaluate(evaluable, settings, store, adapters=list(ADAPTERS), bases=["tiny"])

    assert job.result["base_loads"] == 1 and job.result["model_loads"] == 1  # the full model is its own
    assert job.result["metric"] == "triple-f1" and job.result["dataset"] == "faults:1:test"
    assert [e["model"] for e in job.result["evaluations"]] == ["tiny (untuned)", *ADAPTERS]
    assert "f1=" in job.result["scores"]
    log = open(job.log_path, encoding="utf-8").read()
    assert log.count("loaded base model tiny") == 1
    together = by_model(evaluable, job.id)
    assert set(together) == {"base", *ADAPTERS}
    assert sorted(job.result["evaluation_ids"]) == sorted(ev.id for ev in together.values())
    gold = [json.loads(line)["output"] for line in FAULTS_TEST.read_text(encoding="utf-8").splitlines()[:4]]
    for ev in together.values():
        assert ev.sample_count == 4 and ev.metric == "triple-f1" and ev.split == "test"
        assert SUMMARY_KEYS <= set(ev.metrics) and ev.metrics["tokens_per_s"] > 0
        assert ev.generation["max_new_tokens"] == 8 and ev.generation["stop_on_repeated_line"] is True
        assert ev.generation["sample"] is False and ev.generation["limit"] == 4
        assert (ev.generation["device"], ev.generation["dtype"]) == ("cpu", "float32")
        assert ev.generation["engine"] == "generate"  # "auto" leaves a CPU to transformers' generate
        assert ev.seconds > 0 and ev.peak_memory_bytes > 0 and ev.job_id == job.id
        assert store.verify(ev.predictions_uri) == [] and ev.predictions_uri.endswith(ev.predictions_sha256)
        rows = predictions(store, ev)
        assert [r["gold"] for r in rows] == gold and all(r["input"] for r in rows)
        assert all(set(r["scores"]) >= {"f1", "precision", "recall"} for r in rows)
    texts = {name: [r["prediction"] for r in predictions(store, ev)] for name, ev in together.items()}
    # The switching is visible: these models decode differently, so the equalities below have teeth.
    assert len({tuple(texts[n]) for n in ("base", "f-lora", "f-dora", "f-freeze")}) == 4

    for name in ["base", *ADAPTERS]:
        # alone, the base takes its tokenizer's chat template by default; together it took the adapters'
        request = {"bases": ["tiny"], "template": "plain"} if name == "base" else {"adapters": [name]}
        alone = evaluate(evaluable, settings, store, **request)
        assert alone.result["base_loads"] == (0 if name == "f-full" else 1)
        (ev,) = by_model(evaluable, alone.id).values()
        assert [r["prediction"] for r in predictions(store, ev)] == texts[name], name
        same = {k: v for k, v in together[name].metrics.items() if k != "tokens_per_s"}
        assert {k: v for k, v in ev.metrics.items() if k != "tokens_per_s"} == same, name
        assert ev.predictions_sha256 == together[name].predictions_sha256  # content-addressed: identical


def test_spec_errors_name_the_flag_and_queue_nothing(evaluable, settings, store):
    from catalog.errors import InvalidInput, NotFound

    cases = [
        (dict(adapters=["nope"]), NotFound, "unknown adapter 'nope'"),
        (dict(bases=["nope"]), NotFound, r"--base: unknown base model 'nope' \(known: tiny\)"),
        (dict(bases=["tiny"], dataset="nope"), NotFound, r"unknown dataset 'nope' \(known: faults\)"),
        (
            dict(bases=["tiny"], dataset="faults:dev"),
            NotFound,
            r"no split 'dev' \(splits: .*test \(50 rows\)",
        ),
        (dict(bases=["tiny"], dataset="faults:1:test:x"), InvalidInput, "--dataset"),
        (dict(bases=["tiny"], metric="bleu"), InvalidInput, "--metric 'bleu'.*triple-f1"),
        (dict(bases=["tiny"], template="nope"), NotFound, "--template: unknown template 'nope'"),
        (dict(bases=["tiny"], limit=0), InvalidInput, "--limit must be at least 1"),
        (dict(bases=["tiny"], max_new_tokens=0), InvalidInput, "--max-new-tokens"),
        (dict(bases=["tiny"], batch_size=0), InvalidInput, "--batch-size"),
        (dict(bases=["tiny"], max_source_len=0), InvalidInput, "--max-source-len"),
        (dict(bases=["tiny"], temperature=0.5), InvalidInput, "--temperature applies to sampling only"),
        (dict(bases=["tiny"], sample=True, top_p=2.0), InvalidInput, r"--top-p must be in \(0, 1\]"),
        (dict(bases=["tiny"], dtype="int3"), InvalidInput, "--dtype"),
        (dict(), InvalidInput, "nothing to evaluate"),
    ]
    for request, error, message in cases:
        with pytest.raises(error, match=message):
            submit_eval(evaluable, settings, store, **request)
    with evaluable.session() as s:
        assert s.query(Job).count() == 0


def test_names_and_defaults_resolve(evaluable, settings, store, tmp_path):
    from datasets_prep.register import add_dataset
    from worker.resolve import resolve_eval_specs

    assert parse_dataset_ref("faults") == ("faults", None, "test")
    assert parse_dataset_ref("faults:2") == ("faults", 2, "test")
    assert parse_dataset_ref("faults:dev") == ("faults", None, "dev")
    assert parse_dataset_ref("faults:2:dev") == ("faults", 2, "dev")
    assert looks_like_triples(["a_b_c\nd_e_f", "g_h_i"]) and not looks_like_triples(["一段广告文案。", ""])
    adgen = tmp_path / "adgen.jsonl"
    adgen.write_text("".join(ADGEN_DEV.read_text(encoding="utf-8").splitlines(True)[:30]), encoding="utf-8")
    add_dataset(evaluable, store, "adgen", adgen, "adgen", splits={"test": 5}, user="tester")
    with evaluable.session() as s:
        (faults,) = resolve_eval_specs(s, store, bases=["tiny"], dataset="faults")
        (ad,) = resolve_eval_specs(s, store, bases=["tiny"], dataset="adgen", template="alpaca", limit=2)
    assert (
        faults.metric == "triple-f1"
        and faults.split == "test"
        and faults.targets[0].template_ref == "chat:1"  # the tiny tokenizer has a chat template
    )
    assert (
        faults.max_source_len == 2048 and faults.decoding.sample is False and faults.decoding.batch_size == 64
    )
    assert ad.metric == "bleu-rouge-zh" and ad.targets[0].template_ref == "alpaca:1"
    assert EvalSpec.from_json(json.loads(json.dumps(ad.to_json()))) == ad


def test_adapters_of_two_bases_make_one_job_each(evaluable, settings, store, tiny_model_dir):
    from worker.models.registration import register_path

    train(evaluable, settings, store, "f-lora", "lora", {"rank": 4})
    with evaluable.session() as s:
        register_path(s, "tiny2", tiny_model_dir, "tester")
    ids = submit_eval(evaluable, settings, store, adapters=["f-lora", "f-lora"], bases=["tiny2", "tiny"])
    with evaluable.session() as s:
        specs = [EvalSpec.from_json(get_job(s, i).spec) for i in ids]
    assert [(sp.model_name, [t.label for t in sp.targets]) for sp in specs] == [
        ("tiny", ["tiny (untuned)", "f-lora"]),
        ("tiny2", ["tiny2 (untuned)"]),
    ]


def test_long_prompts_keep_their_start_and_still_generate(evaluable, settings, store, tiny_model_dir):
    from transformers import AutoTokenizer

    from worker.evaluation.evaluator import truncate_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = FAULTS_TEST.read_text(encoding="utf-8").splitlines()[0]
    cut, was_cut = truncate_prompt(tok, text, 16, True)
    assert was_cut and text.startswith(cut) and len(tok(cut)["input_ids"]) <= 16
    assert truncate_prompt(tok, "short", 16, True) == ("short", False)
    job = evaluate(evaluable, settings, store, bases=["tiny"], max_source_len=16, limit=2)
    (ev,) = by_model(evaluable, job.id).values()
    assert ev.generation["truncated_prompts"] == 2 and all(r["truncated"] for r in predictions(store, ev))


def test_a_cancelled_evaluation_stops_and_registers_nothing(evaluable, settings, store):
    from worker.jobs.eval import run_eval
    from worker.jobs.handlers import JobCancelled, JobContext

    (job_id,) = submit_eval(evaluable, settings, store, bases=["tiny"])
    job = claim_job(evaluable, job_id, "test-worker", 60)
    ctx = JobContext(evaluable, store, settings, job, logging.getLogger("test"), lambda p: None, lambda: True)
    with pytest.raises(JobCancelled):
        run_eval(ctx)
    with evaluable.session() as s:
        assert list_evaluations(s) == []


@pytest.mark.services
@pytest.mark.timeout(300)
def test_submit_eval_wait_and_compare_evaluate_on_a_real_worker(evaluable, settings, store, workers, ft):
    train(evaluable, settings, store, "f-lora", "lora", {"rank": 4})
    train(evaluable, settings, store, "f-freeze", "freeze", {"layers": 1})
    env = subprocess_env()
    workers.start(env, "--queues", "cpu,gpu")
    done = run_ft(
        env, "submit", "eval", "f-lora", "--base", "tiny", "--dataset", "faults", "--limit", "3",
        "--max-new-tokens", "6", "--wait", timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + workers.dump()
    assert "succeeded" in done.stdout and "f-lora f1=" in done.stdout
    shown = run_ft(env, "adapters", "compare", "f-lora", "f-freeze", "-d", "faults", "--base", "--evaluate",
                   "--json", timeout=240)  # fmt: skip
    assert shown.returncode == 0, shown.stderr + workers.dump()
    data = json.loads(shown.stdout)
    assert data["missing"] == [] and [c["name"] for c in data["columns"]] == ["tiny", "f-lora", "f-freeze"]
    assert data["columns"][2]["samples"] == 50 and data["columns"][1]["samples"] == 3
