"""GPU discovery without torch: FT_FAKE_GPUS parsing (and its one-line errors), GPU class names from
real NVML model names and memory sizes, --gpus selection, NVML absent or failing, and the pool's
slot -> GPU mapping and CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from worker.jobs.gpus import (
    Gpu,
    GpuSpecError,
    discover_gpus,
    gpu_class,
    nvml_gpus,
    parse_fake_gpus,
    select_gpus,
)
from worker.jobs.pool import VISIBLE, PoolConfig, default_concurrency, job_gpu, slot_gpu

GIB, MIB = 1 << 30, 1 << 20


def test_fake_gpus_count_memory_and_model():
    assert parse_fake_gpus("2x24GiB") == [Gpu(0, "fake", 24 * GIB), Gpu(1, "fake", 24 * GIB)]
    mixed = parse_fake_gpus("2x80GiB@H100, 24GiB@NVIDIA A10")
    assert [(g.index, g.model, g.gpu_class) for g in mixed] == [
        (0, "H100", "h100-80gb"),
        (1, "H100", "h100-80gb"),
        (2, "NVIDIA A10", "a10-24gb"),
    ]
    assert parse_fake_gpus("1x512MiB")[0].memory_bytes == 512 * MIB
    assert parse_fake_gpus("40GB")[0].memory_bytes == 40 * 10**9
    assert parse_fake_gpus("none") == [] and parse_fake_gpus("0") == []


@pytest.mark.parametrize("bad", ["2x24", "two", "2x24XB", "x24GiB", "2x24GiB,,"])
def test_bad_fake_gpus_are_one_clear_line(bad):
    with pytest.raises(GpuSpecError) as err:
        parse_fake_gpus(bad)
    message = str(err.value)
    assert "\n" not in message and message.startswith("FT_FAKE_GPUS: ") and "2x24GiB" in message


def test_zero_count_or_memory_is_refused():
    with pytest.raises(GpuSpecError, match="declares no GPU memory or count"):
        parse_fake_gpus("0x24GiB")
    with pytest.raises(GpuSpecError, match="declares no GPU memory or count"):
        parse_fake_gpus("0GiB")


@pytest.mark.parametrize(
    ("model", "mib", "expected"),
    [  # names and totals as NVML reports them
        ("NVIDIA H200", 143771, "h200-141gb"),
        ("NVIDIA H100 80GB HBM3", 81559, "h100-80gb"),
        ("NVIDIA H100 NVL", 95830, "h100-nvl-94gb"),
        ("NVIDIA A100-SXM4-40GB", 40960, "a100-40gb"),
        ("NVIDIA A10", 23028, "a10-24gb"),
        ("NVIDIA GeForce RTX 4090", 24564, "rtx-4090-24gb"),
        ("Tesla T4", 15360, "t4-16gb"),
        ("NVIDIA L40S", 46068, "l40s-48gb"),
        ("Mystery", 400 * 1024 + 1, "mystery-401gb"),  # past the table: GiB rounded up
    ],
)
def test_gpu_class_from_model_and_memory(model, mib, expected):
    assert gpu_class(model, mib * MIB) == expected


def test_fake_gpus_override_nvml_and_empty_means_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as if nvidia-ml-py were not installed
    assert discover_gpus({"FT_FAKE_GPUS": "2x24GiB"}) == parse_fake_gpus("2x24GiB")
    assert discover_gpus({"FT_FAKE_GPUS": " "}) == [] == discover_gpus({})


def _fake_nvml(init_error: Exception | None = None) -> types.ModuleType:
    """A stand-in for the NVML bindings (the real ones need a driver), with the calls ft makes."""
    nvml = types.ModuleType("pynvml")
    calls: list[str] = []

    def init():
        calls.append("init")
        if init_error is not None:
            raise init_error

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: calls.append("shutdown")
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H200" if h == 0 else "NVIDIA A10"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=(143771 if h == 0 else 23028) * MIB)
    nvml.calls = calls
    return nvml


def test_nvml_gpus_are_read_and_nvml_shut_down(monkeypatch):
    nvml = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert [(g.index, g.model, g.gpu_class) for g in nvml_gpus()] == [
        (0, "NVIDIA H200", "h200-141gb"),
        (1, "NVIDIA A10", "a10-24gb"),
    ]
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_that_cannot_start_means_no_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(RuntimeError("NVML Shared Library Not Found")))
    assert nvml_gpus() == []
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert nvml_gpus() == []


def test_select_gpus():
    found = parse_fake_gpus("4x24GiB")
    assert select_gpus("all", found) == found and select_gpus("none", found) == []
    assert [g.index for g in select_gpus("3,1", found)] == [3, 1]
    with pytest.raises(GpuSpecError, match=r"--gpus: no GPU 7 on this machine \(found: 0,1,2,3"):
        select_gpus("0,7", found)
    with pytest.raises(GpuSpecError, match="expected all, none or indices"):
        select_gpus("first", found)
    with pytest.raises(GpuSpecError, match="names a GPU twice"):
        select_gpus("1,1", found)
    with pytest.raises(GpuSpecError, match=r"found: none; see FT_FAKE_GPUS"):
        select_gpus("0", [])


def test_each_pool_slot_owns_a_gpu(monkeypatch):
    config = PoolConfig(worker_id=1, gpus=(2, 5))
    assert [slot_gpu(config, s) for s in (0, 1, 2, None)] == [2, 5, 2, 2]  # more slots than GPUs share
    assert slot_gpu(PoolConfig(1), 0) is None and slot_gpu(None, 0) is None
    assert default_concurrency(parse_fake_gpus("3x8GiB")) == 3 and default_concurrency([]) == 1

    monkeypatch.setenv(VISIBLE, "untouched")
    with job_gpu(PoolConfig(1), 0) as gpu:  # a worker without GPUs leaves the environment alone
        assert gpu is None and os.environ[VISIBLE] == "untouched"
    with job_gpu(PoolConfig(1, hide_gpus=True), 0):
        assert os.environ[VISIBLE] == ""
    with job_gpu(config, 1) as gpu:
        assert gpu == 5 and os.environ[VISIBLE] == "5"


def test_discovery_and_the_pool_import_no_torch():
    code = "import sys, worker.jobs.gpus, worker.jobs.pool, worker.jobs.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sizes_and_gpu_requests_are_read_or_refused_naming_the_flag():
    from catalog.errors import InvalidInput
    from worker.jobs.gpus import GpuSpecError, parse_size
    from worker.train.config import TrainConfig

    assert parse_size("40GiB", "--min-gpu-memory") == 40 << 30 and parse_size(" 80 GB ", "-") == 80 * 10**9
    for bad in ("lots", "40", "0GiB", "-1GiB", "40 parsecs"):
        with pytest.raises(GpuSpecError, match="--min-gpu-memory: cannot read"):
            parse_size(bad, "--min-gpu-memory")
    assert TrainConfig(gpu_class="h100-80gb", min_gpu_memory="40GiB").gpu_class == "h100-80gb"
    with pytest.raises(InvalidInput, match="--gpu-class 'H100 80GB'"):
        TrainConfig(gpu_class="H100 80GB")
    with pytest.raises(InvalidInput, match="--min-gpu-memory: cannot read 'lots'"):
        TrainConfig(min_gpu_memory="lots")
