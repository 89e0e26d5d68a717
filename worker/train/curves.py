"""A training job's curves (loss, eval loss, learning rate per step) read back from the TensorBoard
event files it wrote, and drawn as a PNG, for users without a TensorBoard server at hand.

The events are read with tensorboard's own `EventAccumulator` (the file format is tensorboard's) and
drawn with matplotlib's Agg backend (no display needed). Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from catalog.errors import NotFound

CURVES = {"train/loss": "loss", "eval/loss": "eval loss", "train/lr": "learning rate"}
"""The scalar tags a job writes (worker/train/engine.py) and how the plot labels them."""


def metric_tag(spec: dict | None) -> str | None:
    """The TensorBoard tag of a train job's --eval-metric headline (e.g. eval/f1), from its spec."""
    name = ((spec or {}).get("train") or {}).get("eval_metric")
    if not name:
        return None
    from worker.evaluation.metrics import get_metric

    return f"eval/{get_metric(name).headline}"


def read_curves(log_dir: Path, metric: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Every curve of CURVES (and the `metric` tag, e.g. eval/f1) found under `log_dir`, as (step,
    value) sorted by step; the latest value wins where a resumed job logged a step twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.is_dir():
        raise NotFound(f"no TensorBoard events at {log_dir}: has the job trained a step yet?")
    found: dict[str, dict[int, float]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in [*CURVES, *([metric] if metric else [])]:
            if tag in acc.Tags().get("scalars", []):
                found.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return {tag: sorted(points.items()) for tag, points in found.items()}


def plot_curves(curves: dict[str, list[tuple[int, float]]], out: Path, title: str) -> Path:
    """A PNG at `out`: loss and eval loss on top, the --eval-metric's curve below them when there is
    one, the learning rate on its own panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(curves.get(tag) for tag in ("train/loss", "eval/loss")):
        raise NotFound("the job logged no loss yet: nothing to plot")
    metrics = [tag for tag in curves if tag not in CURVES and curves[tag]]  # --eval-metric's
    if metrics:
        fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 8), sharex=True, height_ratios=[3, 2, 1])
        steps, values = zip(*curves[metrics[0]], strict=True)
        middle.plot(steps, values, "o-", color="tab:purple", markersize=4)
        middle.set_ylabel(metrics[0].removeprefix("eval/"))
        middle.grid(alpha=0.3)
    else:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    for tag, style in (("train/loss", "-"), ("eval/loss", "o-")):
        if curves.get(tag):
            steps, values = zip(*curves[tag], strict=True)
            top.plot(steps, values, style, label=CURVES[tag], markersize=4)
    top.set_ylabel("loss")
    top.legend()
    top.grid(alpha=0.3)
    top.set_title(title)
    if curves.get("train/lr"):
        steps, values = zip(*curves["train/lr"], strict=True)
        bottom.plot(steps, values, color="tab:green")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
