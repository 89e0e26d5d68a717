"""This machine's GPUs, as a worker registers them: index, model, memory and a class like `h100-80gb`.

Found with NVML (`pynvml`, from the `nvidia-ml-py` package of the `gpu` extra), imported only when
asked; without it, or when NVML cannot start (no driver), the machine has no GPUs. CUDA is never
initialised here (no torch): the worker's parent must not hold a CUDA context its job processes share.

`FT_FAKE_GPUS` declares GPUs instead of asking NVML, for tests and CPU machines: comma-separated
groups `[COUNTx]MEMORY[@MODEL]`, MEMORY a number with a unit (`GiB`, `MiB`, `TiB`, `GB`, `MB`, `TB`).

    FT_FAKE_GPUS=2x24GiB                     two GPUs of 24 GiB, model "fake" (class fake-24gb)
    FT_FAKE_GPUS=2x80GiB@H100,24GiB@A10      indices 0, 1: h100-80gb; index 2: a10-24gb
    FT_FAKE_GPUS=none                        no GPUs, whatever NVML sees
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

FAKE_ENV = "FT_FAKE_GPUS"

UNITS = {"tib": 1 << 40, "gib": 1 << 30, "mib": 1 << 20, "tb": 10**12, "gb": 10**9, "mb": 10**6}
_GROUP = re.compile(r"^(?:(?P<count>\d+)\s*x\s*)?(?P<size>\d+(?:\.\d+)?)\s*(?P<unit>[a-z]+)(?:@.+)?$")

MARKETED_GB = (4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 128, 141, 180, 192, 256, 288)
"""Memory sizes GPUs are sold by: NVML reports a bit less (an "80GB" H100 has 79.6 GiB, an H200
140.4 GiB), so a class names the smallest of these at or above the GiB it reports."""

_VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro"}
_VARIANT = re.compile(r"^(\d+gb|sxm\d*|pcie|hbm\d*e?)$")


class GpuSpecError(ValueError):
    """A malformed `FT_FAKE_GPUS` or `--gpus` value (the message is one line for the user)."""


@dataclass(frozen=True)
class Gpu:
    """One GPU of this machine. `index` is what CUDA_VISIBLE_DEVICES names (NVML's order)."""

    index: int
    model: str
    memory_bytes: int

    @property
    def gpu_class(self) -> str:
        return gpu_class(self.model, self.memory_bytes)

    def to_dict(self) -> dict[str, Any]:
        """The entry `catalog.workers.register_worker` takes."""
        return {**asdict(self), "class": self.gpu_class}


def gpu_class(model: str, memory_bytes: int) -> str:
    """A short class name from a model name and its memory: `NVIDIA H200` with 140.4 GiB ->
    `h200-141gb`; `NVIDIA A100-SXM4-40GB` -> `a100-40gb`; `NVIDIA GeForce RTX 4090` -> `rtx-4090-24gb`."""
    words = [w for w in re.split(r"[\s_\-/]+", model.lower()) if w]
    kept = [w for w in words if w not in _VENDOR_WORDS and not _VARIANT.match(w)]
    name = "-".join(re.sub(r"[^a-z0-9.]", "", w) for w in kept).strip("-") or "gpu"
    gib = memory_bytes / (1 << 30)
    size = next((gb for gb in MARKETED_GB if gb >= gib - 0.05), math.ceil(gib))
    return f"{name}-{size}gb"


def parse_fake_gpus(value: str) -> list[Gpu]:
    """The GPUs an `FT_FAKE_GPUS` value declares (see the module's docstring)."""
    text = value.strip()
    if text.lower() in ("none", "0"):
        return []
    gpus: list[Gpu] = []
    for group in text.split(","):
        found = _GROUP.match(group.strip().lower())
        unit = found and UNITS.get(found["unit"])
        if not found or not unit:
            raise GpuSpecError(
                f"{FAKE_ENV}: cannot read {group.strip()!r} in {value!r}: write [COUNTx]MEMORY[@MODEL], "
                "e.g. 2x24GiB or 2x80GiB@H100,24GiB@A10 (units GiB, MiB, TiB, GB, MB, TB), or none"
            )
        count = int(found["count"]) if found["count"] is not None else 1
        memory = int(float(found["size"]) * unit)
        if count < 1 or memory <= 0:
            raise GpuSpecError(f"{FAKE_ENV}: {group.strip()!r} in {value!r} declares no GPU memory or count")
        model = group.strip().partition("@")[2].strip() or "fake"
        first = len(gpus)
        gpus.extend(Gpu(first + i, model, memory) for i in range(count))
    return gpus


def parse_size(text: str, flag: str) -> int:
    """Bytes of a size like `40GiB` or `80GB` (GiB, MiB, TiB, GB, MB, TB); GpuSpecError naming `flag`."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", str(text))
    unit = found and UNITS.get(found[2].lower())
    if not found or not unit or float(found[1]) <= 0:
        raise GpuSpecError(f"{flag}: cannot read {text!r}: write a size like 40GiB or 80GB")
    return int(float(found[1]) * unit)


def nvml_gpus() -> list[Gpu]:
    """The GPUs NVML sees; none where `pynvml` is missing or NVML does not start (no driver)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError and friends: no driver, no device, no permission
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            gpus.append(Gpu(i, name, int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return gpus
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def nvml_usage(indices: list[int]) -> dict[int, dict[str, int]]:
    """Each GPU's utilisation (% of the last sample period a kernel ran) and memory in use, from NVML;
    {} where `pynvml` is missing or NVML does not start. Declared (`FT_FAKE_GPUS`) GPUs have no reading:
    the caller asks only for GPUs NVML found."""
    if not indices:
        return {}
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except Exception:
        return {}
    found: dict[int, dict[str, int]] = {}
    try:
        for i in indices:
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # one GPU fallen off the bus must not hide the others
                continue
            found[i] = {"utilization": int(rates.gpu), "memory_used_bytes": int(memory.used)}
        return found
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def discover_gpus(environ: Mapping[str, str]) -> list[Gpu]:
    """`FT_FAKE_GPUS` when set (non-empty), else NVML."""
    fake = environ.get(FAKE_ENV, "").strip()
    return parse_fake_gpus(fake) if fake else nvml_gpus()


def select_gpus(choice: str, found: list[Gpu]) -> list[Gpu]:
    """`--gpus`: `all` (every GPU found), `none`, or comma-separated indices like `0,1`."""
    text = choice.strip().lower()
    if text == "all":
        return list(found)
    if text == "none":
        return []
    by_index = {g.index: g for g in found}
    try:
        wanted = [int(part) for part in text.split(",")]
    except ValueError:
        raise GpuSpecError(f"--gpus: expected all, none or indices like 0,1, got {choice!r}") from None
    missing = [i for i in wanted if i not in by_index]
    if missing:
        have = ",".join(str(i) for i in by_index) or "none"
        raise GpuSpecError(f"--gpus: no GPU {missing[0]} on this machine (found: {have}; see {FAKE_ENV})")
    if len(set(wanted)) != len(wanted):
        raise GpuSpecError(f"--gpus: {choice!r} names a GPU twice")
    return [by_index[i] for i in wanted]
