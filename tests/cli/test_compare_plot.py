"""`ft adapters compare ... --plot`: the compared metrics drawn side by side as a PNG from real
evaluations (a tiny model, an adapter trained a few steps, the untuned base), its path printed; the
image is read back and checked for its size and for the bars' colours, not just for existing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.worker.eval_helpers import evaluate, register_faults, train


@pytest.fixture
def compared(catalog, store, lively_model_dir, tmp_path, settings):
    """`f-lora` and `f-freeze` trained; the base and f-lora evaluated on 4 test rows, f-freeze not.
    Scored with bleu-rouge-zh, whose smoothed character BLEU is above zero even for a tiny model's
    output (its triple-f1 is 0, which draws no bar)."""
    evaluable = register_faults(catalog, store, lively_model_dir, tmp_path)
    train(evaluable, settings, store, "f-lora", "lora", {"rank": 4})
    train(evaluable, settings, store, "f-freeze", "freeze", {"layers": 1})
    evaluate(evaluable, settings, store, adapters=["f-lora"], bases=["tiny"], metric="bleu-rouge-zh")
    return evaluable


def _pixels(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(str(path))[..., :3]  # RGB floats in [0, 1]


def _has_colour(image, rgb, at_least: int) -> bool:
    return int(np.all(np.abs(image - np.array(rgb)) < 0.02, axis=-1).sum()) >= at_least


def test_plot_draws_each_metric_with_a_bar_per_model(compared, ft, tmp_path, settings):
    from matplotlib import colormaps

    png = tmp_path / "out" / "compare.png"
    out = ft("adapters", "compare", "f-lora", "f-freeze", "-d", "faults", "--base", "--plot", "-o", str(png))
    assert out.stdout.splitlines()[-1] == f"plot: {png}"
    assert out.stdout.splitlines()[0].startswith("faults:1:test, bleu-rouge-zh")  # the table is printed too
    image = _pixels(png)
    height, width = image.shape[:2]
    data = json.loads(
        ft("adapters", "compare", "f-lora", "f-freeze", "-d", "faults", "--base", "--json").stdout
    )
    panels = len(data["metric_keys"])
    assert width >= 3.2 * 100 * min(panels, 4) and height >= 340 * -(-panels // 4)  # a panel per metric
    blank = np.all(image > 0.98, axis=-1).mean()
    assert 0.3 < blank < 0.97, blank  # drawn on, but not a solid block
    tab10 = colormaps["tab10"]
    # A bar has its column's colour; a zero bar has no area. The trained f-lora scores above zero.
    assert any(data["columns"][1]["metrics"][key] > 0 for key in data["metric_keys"])
    for k in (0, 1):
        metrics = data["columns"][k]["metrics"]
        drawn = any(metrics[key] > 0 for key in data["metric_keys"])
        assert _has_colour(image, tab10(k)[:3], 50) == drawn, (k, metrics)
    assert not _has_colour(image, tab10(2)[:3], 1)  # f-freeze has no evaluation: no bar, "no eval"

    again = json.loads(
        ft("adapters", "compare", "f-lora", "-d", "faults", "--base", "--plot", "--json").stdout
    )
    default = settings.logs / "compare-faults_1-test-bleu-rouge-zh.png"
    assert again["plot"] == str(default) and again["columns"][1]["name"] == "f-lora"
    small = _pixels(default)
    assert small.shape[:2] == image.shape[:2] and not np.array_equal(small, image)  # two bars, not three

    md = ft("adapters", "compare", "f-lora", "-d", "faults", "--markdown", "--plot", "-o", str(png))
    assert md.stdout.startswith("| | f-lora |") and "plot:" not in md.stdout and f"plot: {png}" in md.stderr


def test_plot_errors_are_one_line(compared, ft, tmp_path):
    cases = [
        (
            ["adapters", "compare", "f-freeze", "-d", "faults", "--plot"],
            1,
            "nothing to plot: no triple-f1 evaluation",
        ),
        (["adapters", "compare", "f-lora", "-d", "faults", "-o", str(tmp_path / "x.png")], 2, "add --plot"),
    ]
    for args, code, message in cases:
        result = ft(*args, ok=False)
        assert result.exit_code == code, (args, result.output)
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("Error: ") and message in error, error
    assert not (tmp_path / "x.png").exists()
