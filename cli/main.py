"""The `ft` entry point: the command group and the edge where domain errors become one line."""

from __future__ import annotations

import sys

import click

from catalog.errors import FtError
from cli.context import AppContext, pass_app


class FtGroup(click.Group):
    """A group that prints domain errors as `Error: ...` with their exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FtError as exc:
            err = click.ClickException(str(exc))
            err.exit_code = exc.exit_code
            raise err from exc


@click.group(cls=FtGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ft")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """ft: fine-tune LLM adapters on a shared pool of workers.

    State lives in FT_HOME (default ~/.ft): an SQLite catalog, an SQLite broker and the artifact
    store. A team sets FT_DATABASE_URL, FT_BROKER_URL (redis://...) and FT_ARTIFACTS instead.

    \b
    Example:
        ft init
        ft datasets add faults train.jsonl --format triples --split test=50
        ft worker &
        ft submit convert faults --model smol --template plain --wait
    """
    ctx.ensure_object(AppContext)


@cli.command()
@pass_app
def init(app: AppContext) -> None:
    """Create the catalog, or upgrade it to this version's schema; seed built-in templates.

    \b
    Example:
        FT_HOME=/tmp/ft ft init
    """
    from catalog.migrate import upgrade
    from datasets_prep.templates import seed_builtin_templates

    app.settings.ensure_dirs()
    before, after = upgrade(app.raw_catalog.engine)
    added = seed_builtin_templates(app.raw_catalog, app.settings.user)
    state = "created" if before is None else ("up to date" if before == after else f"upgraded from {before}")
    click.echo(f"Catalog {state} at revision {after}: {app.settings.database_url}")
    click.echo(f"Artifacts: {app.settings.artifacts}")
    if added:
        click.echo(f"Seeded templates: {', '.join(added)}")


def _register_subcommands() -> None:
    import importlib

    for module, name in (
        ("cli.datasets", "datasets"),
        ("cli.templates", "templates"),
        ("cli.models", "models"),
        ("cli.methods", "methods"),
        ("cli.submit", "submit"),
        ("cli.submit_train", None),  # adds `ft submit train`
        ("cli.submit_eval", None),  # adds `ft submit eval`
        ("cli.jobs", "jobs"),
        ("cli.worker", "worker"),
        ("cli.workers", "workers"),
        ("cli.workers", "pool"),  # `ft pool`: the same as `ft workers list`
        ("cli.adapters", "adapters"),
        ("cli.compare", None),  # adds `ft adapters compare` and `ft adapters evals`
        ("cli.generate", "generate"),
        ("cli.generate", "chat"),
        ("cli.quickstart", "quickstart"),
        ("cli.doctor", "doctor"),
        ("cli.dashboard", "dashboard"),
    ):
        mod = importlib.import_module(module)
        if name is not None:
            cli.add_command(getattr(mod, name))


_register_subcommands()


def main() -> None:
    cli.main(prog_name="ft")


if __name__ == "__main__":
    sys.exit(main())
