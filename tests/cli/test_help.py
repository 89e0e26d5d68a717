"""Every command's --help works and shows an example; built-in lists in help match the registries."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from cli.main import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


ALL = list(_commands(cli))


def test_the_contract_commands_exist():
    names = {" ".join(path) for path, _ in ALL}
    for expected in ("init", "datasets add", "datasets list", "templates add", "models add", "submit convert",
                     "submit train", "submit eval", "jobs list", "jobs logs", "jobs cancel", "jobs retry",
                     "jobs wait", "adapters list", "adapters show", "adapters compare", "adapters export",
                     "adapters rm", "worker", "quickstart"):  # fmt: skip
        assert expected in names, expected


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=[" ".join(p) for p, _ in ALL])
def test_help_has_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert "ft " in result.output.split("Example:")[1]


def test_method_names_in_help_match_the_registry():
    from worker.methods import METHODS

    (method,) = [p for p in cli.commands["submit"].commands["train"].params if p.name == "method"]
    assert set(method.type.choices) == set(METHODS)


def test_every_listing_has_json():
    listings = [p for p, cmd in ALL if p[-1] == "list"]
    assert len(listings) >= 5
    for path, cmd in ALL:
        if path[-1] in ("list", "show"):
            assert any("--json" in opt.opts for opt in cmd.params if isinstance(opt, click.Option)), path
