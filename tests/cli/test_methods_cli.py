"""`ft methods list`: every registered method with the defaults `ft submit train` really resolves."""

from __future__ import annotations

import json

from worker.methods import METHODS, get_method
from worker.train.config import TrainConfig


def test_methods_list_shows_the_defaults_submit_train_uses(ft):
    rows = {r["name"]: r for r in json.loads(ft("methods", "list", "--json").stdout)}
    assert set(rows) == set(METHODS)
    for name, row in rows.items():
        resolved = TrainConfig().with_method_defaults(get_method(name))
        assert (row["lr"], row["epochs"], row["optimizer"]) == (
            resolved.lr,
            resolved.epochs,
            resolved.optimizer,
        )
        assert row["flags"] == json.loads(json.dumps(vars(get_method(name).make_config({})))), name
        assert row["summary"].startswith(f"`--method {name}`")
    # the tuned recipes of the quality sweep (README "Quality")
    assert (rows["lora"]["lr"], rows["lora"]["epochs"], rows["lora"]["flags"]["rank"]) == (2e-3, 4, 32)
    assert rows["ptuning-v2"]["flags"]["prefix_projection"] is True
    text = ft("methods", "list").stdout
    assert "layers=last-53%" in text and "paged_adamw_8bit" in text
    assert text.splitlines()[0].split() == ["METHOD", "SAVES", "LR", "EPOCHS", "OPTIMIZER", "SETTINGS"]
