"""Continued training (`ft submit train --from ADAPTER`): the child starts from the parent's weights
(checked by training it at a vanishing learning rate: its tensors stay the parent's, and differ from a
fresh adapter's), inherits the parent's method, base, data, template and method settings, is
registered with the parent as its parent, and `ft adapters show` prints the chain. What cannot be
continued is refused at submit, naming the flag, with nothing queued."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from catalog.adapters import get_adapter, lineage
from catalog.jobs import get_job
from catalog.models import Job
from tests.worker.jobs.test_train_job import SHORT, submit_train, trainable  # noqa: F401 (fixture)
from worker.jobs.runner import run_job

WEIGHTS = {
    "lora": "adapter_model.safetensors",
    "freeze": "freeze_weights.safetensors",
    "full": "model.safetensors",
}
VARIANTS = {"lora": ("lora", {"rank": 4}), "dora": ("lora", {"rank": 4, "dora": True}),
            "freeze": ("freeze", {"layers": 1}), "full": ("full", {})}  # fmt: skip
VANISHING = ["--lr", "1e-12", "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1"]


def tensors(store, catalog, name: str, method: str) -> dict:
    with catalog.session() as s:
        uri = get_adapter(s, name).artifact_uri
    return load_file(store.path(uri) / WEIGHTS[method])


def submit(ft, *args: str) -> int:
    out = ft("submit", "train", *args, "--max-len", "192", "--max-source-len", "128", "--json").stdout
    return json.loads(out)["id"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_continued_adapter_starts_from_its_parents_weights(trainable, settings, store, ft, variant):  # noqa: F811

    method, flags = VARIANTS[variant]
    parent = f"p-{variant}"
    assert (
        run_job(trainable, submit_train(trainable, settings, parent, method, flags), "w", store=store)
        == "succeeded"
    )

    child = submit(
        ft, "--from", parent, "--name", f"c-{variant}", *VANISHING
    )  # method, model, data: the parent's
    assert run_job(trainable, child, "w", store=store) == "succeeded"
    fresh = submit(ft, "--method", method, *[f"--{k}={v}" for k, v in flags.items() if k != "dora"],
                   *(["--dora"] if flags.get("dora") else []), "-m", "tiny", "-d", "faults", "-t", "plain",
                   "--name", f"f-{variant}", *VANISHING)  # fmt: skip
    assert run_job(trainable, fresh, "w", store=store) == "succeeded"

    was, now, new = (tensors(store, trainable, n, method) for n in (parent, f"c-{variant}", f"f-{variant}"))
    assert was.keys() == now.keys()

    def gap(a: dict, b: dict) -> float:
        return max((a[k].float() - b[k].float()).abs().max().item() for k in a)

    # the child is the parent, moved by one step at lr 1e-12; a fresh adapter is not
    assert gap(was, now) < 1e-6 and gap(was, new) > 1e-5
    with trainable.session() as s:
        a = get_adapter(s, f"c-{variant}")
        assert [x.name for x in lineage(s, a)] == [f"c-{variant}", parent]
        assert a.method == method and a.template.ref == "plain:1"  # the parent's template, not the model's
        assert a.hyperparameters["method"] == get_adapter(s, parent).hyperparameters["method"]
        card = (store.path(a.artifact_uri) / "README.md").read_text(encoding="utf-8")
        assert parent in card and get_adapter(s, parent).sha256 in card
    shown = ft("adapters", "show", f"c-{variant}").stdout
    assert (
        f"lineage       c-{variant} (faults:1, job {child}) <- {parent} (faults:1, job 1) <- tiny (base)"
        in shown
    )
    data = json.loads(ft("adapters", "show", f"c-{variant}", "--json").stdout)
    assert data["parent"] == parent and [x["name"] for x in data["lineage"]] == [f"c-{variant}", parent]


def test_what_cannot_be_continued_is_refused_at_submit_with_nothing_queued(trainable, settings, store, ft):  # noqa: F811
    assert (
        run_job(trainable, submit_train(trainable, settings, "p", "lora", {"rank": 4}), "w", store=store)
        == "succeeded"
    )
    assert run_job(
        trainable, submit_train(trainable, settings, "pt", "ptuning", {"virtual_tokens": 4}), "w", store=store
    ) == "succeeded"  # fmt: skip
    with trainable.session() as s:
        before = s.query(Job).count()
    cases = [
        (["--from", "nope"], "--from: "),
        (["--from", "p", "--method", "full"], "--from p was trained with --method lora"),
        (["--from", "p", "--rank", "8"], "--rank 8: --from p was trained with 4"),
        (["--from", "pt"], "cannot be continued"),
    ]
    for args, message in cases:
        result = ft("submit", "train", *args, "--name", "x", ok=False)
        assert result.exit_code != 0 and message in result.output, result.output
    with trainable.session() as s:
        assert s.query(Job).count() == before

    # a flag that leaves the adapter's shape alone may change
    job_id = submit(ft, "--from", "p", "--dropout", "0.0", "--name", "c", *VANISHING)
    with trainable.session() as s:
        spec = get_job(s, job_id).spec
        assert spec["parent"]["name"] == "p" and spec["method_config"]["rank"] == 4
        assert spec["method_config"]["dropout"] == 0.0
    # the parent of a queued continuation cannot be removed from under it
    removed = ft("adapters", "rm", "p", "--yes", ok=False)
    assert removed.exit_code != 0 and f"job(s) {job_id} continue training from adapter 'p'" in removed.output
    assert run_job(trainable, job_id, "w", store=store) == "succeeded"
    removed = ft("adapters", "rm", "p", "--yes", ok=False)
    assert removed.exit_code != 0 and "is the parent of c" in removed.output


def test_a_damaged_parent_fails_the_job_with_a_one_line_reason(trainable, settings, store, ft):  # noqa: F811
    assert (
        run_job(trainable, submit_train(trainable, settings, "p", "lora", {"rank": 4}), "w", store=store)
        == "succeeded"
    )
    job_id = submit(ft, "--from", "p", "--name", "c", *VANISHING)
    with trainable.session() as s:
        weights = store.path(get_adapter(s, "p").artifact_uri) / WEIGHTS["lora"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.chmod(0o644)
    weights.write_bytes(bytes(data))
    assert run_job(trainable, job_id, "w", store=store) == "failed"
    with trainable.session() as s:
        error = get_job(s, job_id).error
        assert "adapter p (--from) is damaged" in error and "adapter_model.safetensors" in error
        assert s.query(Job).filter(Job.id == job_id).one().status == "failed"
