"""Issue #15's "done when": a task ft had never seen, registered, trained and evaluated through a real
`ft worker` with no code written for it.

The data has the shape of the public d2q (question generation from a passage) set: training rows
`{"text", "answer"}`, test rows whose `answer` is a list of 1-4 reference questions, two test rows also
in training. One `ft datasets add --format columns` registers it with a clear report (the
`test-in-train` leakage warned, nothing refused); `ft submit train --wait` converts and trains a LoRA
adapter on the tiny model through the queue; `ft submit eval --metric bleu-rouge-zh --wait` scores the
adapter and the untuned base against every reference, and the predictions keep them all.
"""

from __future__ import annotations

import json

import pytest

from tests.worker.procs import Workers, run_ft, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

PASSAGES = [
    ("发动机启动困难，检查发现火花塞积碳严重，更换火花塞后恢复正常。", ["发动机启动困难的原因是什么？"]),
    ("刹车时有异响，拆检发现刹车片磨损到极限，更换刹车片。", ["刹车异响是什么原因？", "刹车片需要更换吗？"]),
    ("空调不制冷，检测发现冷媒不足，加注冷媒后制冷正常。", ["空调为什么不制冷？", "冷媒不足会怎样？"]),
    (
        "仪表盘故障灯常亮，用诊断仪读取故障码为氧传感器故障。",
        ["故障灯常亮怎么办？", "如何读取故障码？", "氧传感器坏了有什么表现？"],
    ),
    (
        "车辆行驶中抖动，检查发现轮胎动平衡不良，做动平衡后消除。",
        ["车辆抖动的原因？", "动平衡不良怎么处理？"],
    ),
    ("变速箱换挡冲击，更换变速箱油并进行自适应学习后好转。", ["换挡冲击如何解决？"]),
    (
        "蓄电池亏电无法启动，检查发现行车记录仪长期耗电。",
        ["蓄电池为什么亏电？", "什么设备会耗电？", "无法启动怎么办？", "如何检查耗电？"],
    ),
    ("转向沉重，检查助力泵油液不足，补充油液后转向轻便。", ["转向沉重是什么原因？", "助力油不足怎么办？"]),
]
"""Passages with their reference questions; the first two are also training rows (leakage)."""


def _train_rows() -> list[dict]:
    rows = []
    for i in range(24):
        text, refs = (
            PASSAGES[i % 2] if i < 2 else (f"第{i}号维修记录：{PASSAGES[i % 8][0]}", PASSAGES[i % 8][1])
        )
        rows.append({"text": text, "answer": refs[0]})
    return rows


@pytest.fixture
def d2q_files(tmp_path):
    train = tmp_path / "d2q_train.json"  # a JSON array, as the public set ships
    train.write_text(json.dumps(_train_rows(), ensure_ascii=False, indent=1), encoding="utf-8")
    test = tmp_path / "d2q_test.json"
    test.write_text(
        json.dumps([{"text": t, "answer": refs} for t, refs in PASSAGES], ensure_ascii=False),
        encoding="utf-8",
    )
    return train, test


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.close()


def test_d2q_registers_trains_and_evaluates_with_every_reference(
    catalog, ft, tiny_model_dir, d2q_files, workers
):
    train, test = d2q_files
    ft("models", "add", "tiny", "--path", str(tiny_model_dir))
    added = ft(
        "datasets", "add", "d2q", str(train), "--test", str(test), "--format", "columns",
        "--prompt-key", "text", "--response-key", "answer",
    )  # fmt: skip
    report = added.output
    assert "2 warnings (the rows are kept): test-in-train 2" in report, report
    assert f"{test}:1: test-in-train: same prompt as {train}:" in report
    assert "invalid" not in report.lower() and "Error" not in report
    shown = json.loads(ft("datasets", "show", "d2q", "--json").output)
    assert shown["splits"] == {"train": 24, "test": 8} and shown["invalid_count"] == 0

    env = subprocess_env()
    workers.start(env, "--queues", "cpu,gpu")
    trained = run_ft(
        env, "submit", "train", "--method", "lora", "--rank", "4", "-m", "tiny", "-d", "d2q",
        "--name", "d2q-lora", "--max-steps", "4", "--batch-size", "2", "--grad-accum", "1",
        "--max-len", "160", "--max-source-len", "96", "--wait", timeout=240,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr + workers.dump()
    assert "adapter d2q-lora" in trained.stdout
    evaluated = run_ft(
        env, "submit", "eval", "d2q-lora", "--base", "tiny", "-d", "d2q", "--metric", "bleu-rouge-zh",
        "--max-new-tokens", "12", "--batch-size", "4", "--wait", timeout=180,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr + workers.dump()
    assert "succeeded" in evaluated.stdout and "bleu-4=" in evaluated.stdout

    jobs = json.loads(ft("jobs", "list", "--json").output)
    # the training job converts the rows itself (tokenised with the tiny model's tokenizer), then trains
    assert sorted((j["kind"], j["status"]) for j in jobs) == [("eval", "succeeded"), ("train", "succeeded")]
    evals = json.loads(ft("adapters", "evals", "d2q-lora", "--json").output)
    assert [(e["metric"], e["dataset"], e["split"], e["sample_count"]) for e in evals] == [
        ("bleu-rouge-zh", "d2q:1", "test", 8)
    ]
    assert set(evals[0]["metrics"]) >= {"bleu-4", "rouge-1", "rouge-2", "rouge-l"}
    rows = json.loads(ft("adapters", "evals", "d2q-lora", "--predictions", "--limit", "8", "--json").output)
    assert [r["gold"] for r in rows] == [refs if len(refs) > 1 else refs[0] for _, refs in PASSAGES]
    assert [r["input"] for r in rows] == [t for t, _ in PASSAGES]
    assert all(set(r["scores"]) == {"bleu-4", "rouge-1", "rouge-2", "rouge-l"} for r in rows)
    compared = json.loads(ft("adapters", "compare", "d2q-lora", "-d", "d2q", "--base", "--json").output)
    assert compared["metric"] == "bleu-rouge-zh" and compared["missing"] == []
