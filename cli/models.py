"""`ft models add|list|show`: register base models (a directory, a GGUF file, a hub id) and look at them."""

from __future__ import annotations

from typing import Any

import click

from catalog.errors import InvalidInput
from catalog.models import BaseModel
from cli.context import AppContext, pass_app
from cli.output import human_count, print_json, print_table, when


@click.group()
def models() -> None:
    """Base models: a transformers directory, an imported GGUF file, or a hub id.

    \b
    Example:
        ft models add smol --gguf SmolLM2-135M-Instruct.Q4_1.gguf
        ft models list --json
    """


@models.command("add")
@click.argument("name")
@click.option("--path", "path", type=click.Path(file_okay=False), help="A transformers model directory.")
@click.option("--gguf", "gguf", type=click.Path(dir_okay=False), help="A GGUF file, dequantised once.")
@click.option("--hub", "hub", metavar="ORG/NAME", help="A hub id, resolved later by a worker.")
@click.option("--revision", help="The model's revision (commit); required with --trust-remote-code.")
@click.option("--trust-remote-code", is_flag=True, help="Run the model's own code (needs --revision).")
@pass_app
def add(
    app: AppContext,
    name: str,
    path: str | None,
    gguf: str | None,
    hub: str | None,
    revision: str | None,
    trust_remote_code: bool,
) -> None:
    """Register base model NAME from exactly one of --path, --gguf or --hub.

    A GGUF file is loaded once, dequantised and stored as safetensors in the artifact store
    (about 40 s for a 135M model on 2 cores); the same file under another name is not stored twice.

    \b
    Example:
        ft models add tiny --path ./models/tiny-llama
        ft models add smol --gguf SmolLM2-135M-Instruct.Q4_1.gguf
        ft models add qwen --hub Qwen/Qwen2.5-0.5B-Instruct --revision 7ae557604adf
    """
    from worker.models.gguf import import_gguf
    from worker.models.registration import register_hub, register_path

    if sum(x is not None for x in (path, gguf, hub)) != 1:
        raise InvalidInput("give exactly one of --path DIR, --gguf FILE or --hub ORG/NAME")
    if gguf is not None and (revision or trust_remote_code):
        raise InvalidInput("--revision and --trust-remote-code do not apply to --gguf")
    if hub is not None and trust_remote_code:
        raise InvalidInput("--trust-remote-code is only accepted for a local --path with a pinned --revision")
    user = app.settings.user
    if gguf is not None:
        say = lambda msg: click.echo(msg, err=True)  # noqa: E731
        model = import_gguf(app.catalog, app.store, name, gguf, user, report=say)
    else:
        with app.catalog.session() as s:
            if path is not None:
                model = register_path(
                    s, name, path, user, trust_remote_code=trust_remote_code, revision=revision
                )
            else:
                model = register_hub(s, name, hub or "", user, revision=revision)
    click.echo(f"Added base model {model.name} ({model.source}): {_summary(model)}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List the registered base models.

    \b
    Example:
        ft models list
        ft models list --json
    """
    from catalog.base_models import list_base_models

    with app.catalog.session() as s:
        rows = list_base_models(s)
        if as_json:
            print_json([model_json(m) for m in rows])
            return
        print_table(
            ["name", "source", "architecture", "params", "dtype", "created"],
            [
                (
                    m.name,
                    m.source,
                    m.architecture,
                    human_count(m.parameter_count),
                    m.dtype,
                    when(m.created_at),
                )
                for m in rows
            ],
            empty="(no base models; add one with `ft models add NAME --path DIR`)",
        )


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> None:
    """Show one base model: architecture, parameter count, dtype, source and where it is loaded from.

    \b
    Example:
        ft models show smol
        ft models show smol --json
    """
    from catalog.base_models import get_base_model

    with app.catalog.session() as s:
        data = model_json(get_base_model(s, name))
    if as_json:
        print_json(data)
        return
    if data["source"] == "gguf":
        data["location"] = str(app.store.path(data["uri"]))
    data["created_at"] = when(data["created_at"])
    for key, value in data.items():
        click.echo(f"{key + ':':<19}{'-' if value is None else value}")


def model_json(m: BaseModel) -> dict[str, Any]:
    return {
        "name": m.name,
        "source": m.source,
        "uri": m.uri,
        "origin": m.origin,
        "revision": m.revision,
        "architecture": m.architecture,
        "model_type": m.model_type,
        "parameter_count": m.parameter_count,
        "dtype": m.dtype,
        "tokenizer_sha256": m.tokenizer_sha256,
        "sha256": m.sha256,
        "trust_remote_code": m.trust_remote_code,
        "created_by": m.created_by,
        "created_at": m.created_at,
    }


def _summary(m: BaseModel) -> str:
    if m.source == "hub":
        return f"{m.uri}" + (f"@{m.revision}" if m.revision else "") + " (resolved by a worker)"
    return f"{m.architecture}, {human_count(m.parameter_count)} parameters, {m.dtype}, {m.uri}"
