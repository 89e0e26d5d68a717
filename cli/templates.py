"""`ft templates add|list|show`: named, versioned, immutable prompt templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from catalog.errors import InvalidInput
from catalog.models import PromptTemplate
from cli.context import AppContext, pass_app
from cli.output import print_json, print_table, when
from datasets_prep.rows import Row
from datasets_prep.templates import KINDS

EXAMPLE_ROW = Row(
    instruction="List the faults in this report. ",
    input="The left headlight flickers when the engine starts.",
    output="headlight_部件故障_flickers",
)


@click.group()
def templates() -> None:
    """Prompt templates: how a row's instruction and input become the prompt.

    \b
    Example:
        ft templates list
        ft templates add short --body "{instruction}\\n{input}\\n"
    """


@templates.command("add")
@click.argument("name")
@click.option("--file", "file", type=click.Path(dir_okay=False), help="Read the body from this file.")
@click.option("--body", help="The body itself.")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="format",
    show_default=True,
    help="format: {instruction} {input} {system}; jinja: a Jinja2 template; chat: the tokenizer's.",
)
@click.option("--description", help="One line on what the template is for.")
@pass_app
def add(
    app: AppContext, name: str, file: str | None, body: str | None, kind: str, description: str | None
) -> None:
    """Add template NAME, or a new version of it if the body changed (versions are immutable).

    \b
    Example:
        ft templates add qa --body 'Question: {input} Answer: '
        ft templates add report --file report.j2 --kind jinja --description "report with optional system"
        ft templates add my-chat --kind chat --body ''
    """
    from datasets_prep.templates import add_template

    if (file is None) == (body is None):
        raise InvalidInput("give exactly one of --file FILE or --body TEXT")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise InvalidInput(f"no such template file: {path} (--file)")
        body = path.read_text(encoding="utf-8")
    with app.catalog.session() as s:
        tpl, created = add_template(s, name, kind, body or "", app.settings.user, description)
        ref = tpl.ref
    if created:
        click.echo(f"Added template {ref} ({kind})")
    else:
        click.echo(f"Template {ref} already has this body; nothing added")


@templates.command("list")
@click.option("--all", "all_versions", is_flag=True, help="Every version, not only the latest.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def list_(app: AppContext, all_versions: bool, as_json: bool) -> None:
    """List templates (the latest version of each, or --all).

    \b
    Example:
        ft templates list
        ft templates list --all --json
    """
    from catalog.templates import list_templates

    with app.catalog.session() as s:
        rows = list_templates(s, all_versions=all_versions)
        if as_json:
            print_json([template_json(t) for t in rows])
            return
        print_table(
            ["ref", "kind", "builtin", "description", "created"],
            [(t.ref, t.kind, "yes" if t.builtin else "", t.description, when(t.created_at)) for t in rows],
            empty="(no templates; run `ft init` to seed the built-ins)",
        )


@templates.command("show")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--render-example", is_flag=True, help="Also render the template on an example row.")
@click.option("--model", help="Render a chat template with this base model's tokenizer.")
@pass_app
def show(app: AppContext, ref: str, as_json: bool, render_example: bool, model: str | None) -> None:
    """Show a template version (the latest without :VERSION).

    \b
    Example:
        ft templates show alpaca
        ft templates show plain:1 --render-example
        ft templates show chat --render-example --model smol
    """
    from catalog.templates import get_template

    with app.catalog.session() as s:
        tpl = get_template(s, ref)
        data = template_json(tpl)
        if render_example:
            data["example"] = _render_example(app, s, tpl, model)
    if as_json:
        print_json(data)
        return
    for key in ("ref", "kind", "builtin", "description", "sha256", "created_by"):
        click.echo(f"{key + ':':<13}{'-' if data[key] is None else data[key]}")
    click.echo(f"{'created:':<13}{when(tpl.created_at)}")
    click.echo("body:")
    click.echo(data["body"] or "(empty: the tokenizer's chat template)")
    if render_example:
        click.echo(f"example row: instruction={EXAMPLE_ROW.instruction!r} input={EXAMPLE_ROW.input!r}")
        click.echo("rendered prompt:")
        click.echo(data["example"])


def _render_example(app: AppContext, session: Any, tpl: PromptTemplate, model: str | None) -> str:
    from datasets_prep.templates import render_prompt

    tokenizer = None
    if tpl.kind == "chat":
        if model is None:
            raise InvalidInput(
                f"template {tpl.ref} uses a model's chat template: add --model NAME to render it"
            )
        from catalog.base_models import get_base_model
        from worker.models.directories import tokenizer_of as load_tokenizer

        tokenizer = load_tokenizer(app.store, get_base_model(session, model))
    return render_prompt(tpl.kind, tpl.body, EXAMPLE_ROW, tokenizer)


def template_json(t: PromptTemplate) -> dict[str, Any]:
    return {
        "name": t.name,
        "version": t.version,
        "ref": t.ref,
        "kind": t.kind,
        "body": t.body,
        "description": t.description,
        "builtin": t.builtin,
        "sha256": t.sha256,
        "created_by": t.created_by,
        "created_at": t.created_at,
    }
