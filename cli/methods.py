"""`ft methods list`: the registered training methods and the defaults `ft submit train` uses for each.

The defaults are the tuned settings of the quality sweep (see worker/train/config.py); a user asking
"what does --method ptuning-v2 do if I give no flags" gets the answer here instead of in the source.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from cli.output import print_json, print_table


def method_json(name: str) -> dict[str, Any]:
    """One method's registry entry: what it saves, its training defaults and its flags' defaults."""
    from worker.methods import get_method
    from worker.train.config import TrainConfig

    method = get_method(name)
    train = TrainConfig().with_method_defaults(method)
    module = sys.modules.get(method.prepare.__module__)
    summary = ((module.__doc__ if module else "") or "").strip().split("\n\n")[0]
    return {
        "name": name,
        "artifact": method.artifact.kind,
        "lr": train.lr,
        "epochs": train.epochs,
        "optimizer": train.optimizer,
        "flags": {
            f.name: f.default
            for f in dataclasses.fields(method.config)
            if f.default is not dataclasses.MISSING
        },
        "summary": " ".join(summary.split()),
    }


@click.group()
def methods() -> None:
    """Training methods (`ft submit train --method NAME`) and their defaults.

    \b
    Example:
        ft methods list
    """


@methods.command("list")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (with each method's one-paragraph summary)."
)
def list_(as_json: bool) -> None:
    """List the training methods with the learning rate, epochs, optimizer and flags they use by default.

    Shared defaults: --batch-size 8 --grad-accum 4 (an effective batch of 32), --max-len 2048. Each
    setting is a flag of `ft submit train` (rank -> --rank) or can be given as -o KEY=VALUE.

    \b
    Example:
        ft methods list
        ft methods list --json
    """
    from worker.methods import METHODS

    rows = [method_json(name) for name in sorted(METHODS)]
    if as_json:
        print_json(rows)
        return
    print_table(
        ["method", "saves", "lr", "epochs", "optimizer", "settings"],
        [
            (
                r["name"],
                r["artifact"],
                f"{r['lr']:g}",
                r["epochs"],
                r["optimizer"],
                " ".join(f"{k}={_setting(r['name'], k, v)}" for k, v in r["flags"].items()),
            )  # fmt: skip
            for r in rows
        ],
    )


def _setting(method: str, key: str, value: Any) -> str:
    if method == "freeze" and key == "layers" and value is None:
        return "last-53%"  # worker.methods.freeze.default_layers
    if value is None or value in ((), []):
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)
