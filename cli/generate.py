"""`ft generate` and `ft chat`: run an adapter (or a base model, or a merged export) on a prompt, a
JSONL file of prompts, or interactively, with the template it was trained with; on this machine's GPU
when it has one, else on the CPU. The work is worker/evaluation/interactive.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from catalog.errors import InvalidInput
from cli.context import AppContext, pass_app
from cli.flags import apply, dataclass_options
from cli.output import print_json


def _common_options(f):  # noqa: ANN001, ANN202
    from worker.evaluation.decoding import Decoding

    opts = [
        click.option("--base", metavar="MODEL|DIR",
                     help="Run the untuned base MODEL (a registered name), or the model in DIR (e.g. made by "
                          "`ft adapters export --merge`), instead of an adapter."),
        click.option("--template", "-t",
                     help="Prompt template  [default: the adapter's own; a merged export: its adapter's; a "
                          "base: chat if its tokenizer has one, else plain]"),
        click.option("--system", metavar="TEXT", help="A system message, for templates that use one."),
        click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
                     show_default=True, help="Where to run: auto is this machine's GPU when it has one, else "
                                             "the CPU."),
        click.option("--stop-on-repeated-line", is_flag=True,
                     help="End an answer at the first line it repeats (as triple-f1 evaluation does)."),
        *dataclass_options([(None, Decoding)]),
    ]  # fmt: skip
    return apply(opts, f)


@click.command()
@click.argument("target", metavar="ADAPTER|--base MODEL", required=False)
@click.argument("prompt", required=False)
@click.option(
    "--file",
    "-f",
    "prompt_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='A JSONL file of prompts: {"input": ...} per line (or instruction/system/history).',
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --file: write the JSONL answers here instead of to stdout.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (no streaming).")
@_common_options
@pass_app
def generate(
    app: AppContext, target: str | None, prompt: str | None, prompt_file: Path | None, output: Path | None,
    as_json: bool, base: str | None, template: str | None, system: str | None, device: str,
    stop_on_repeated_line: bool, **flags: Any,
) -> None:  # fmt: skip
    """Answer PROMPT (streamed as it is generated), or every prompt of --file, with an adapter.

    The prompt is formatted with the template the adapter was trained with. Decoding is greedy
    unless --sample; a --file is generated in batches of --batch-size and written as JSONL: each
    line's object with its "prediction" added.

    \b
    Example:
        ft generate faults-lora "发动机怠速不稳，检查发现节气门积碳。"
        ft generate --base smol "What is LoRA?" --max-new-tokens 64
        ft generate --base ./faults-merged "..." --json
        ft generate faults-lora --file prompts.jsonl -o answers.jsonl
        ft generate adgen-lora "类型#裤*版型#宽松" --sample --temperature 0.7 --top-p 0.9 --seed 1
    """
    from worker.evaluation.interactive import read_prompts

    adapter, prompt = _split_target(target, prompt, base)
    if prompt_file is not None and prompt is not None:
        raise InvalidInput("give a PROMPT or --file F.jsonl, not both")
    if prompt_file is None and prompt is None:
        raise InvalidInput("nothing to answer: give a PROMPT or --file F.jsonl (or talk with `ft chat`)")
    if output is not None and prompt_file is None:
        raise InvalidInput("-o/--output goes with --file; a single answer is printed")
    decoding = _decoding(flags)
    lines = read_prompts(prompt_file, system=system) if prompt_file is not None else None  # before loading
    talker = _load(app, adapter, base, template, device)
    if lines is not None:
        result = talker.complete(
            [p.row for p in lines], decoding, stop_on_repeated_line=stop_on_repeated_line
        )
        text = "".join(
            json.dumps({**p.data, "prediction": answer}, ensure_ascii=False) + "\n"
            for p, answer in zip(lines, result.texts, strict=True)
        )
        if output is not None:
            output.write_text(text, encoding="utf-8")
        else:
            click.echo(text, nl=False)
        click.echo(
            f"{len(lines)} prompts: {_cost(result)}" + (f"; wrote {output}" if output else ""), err=True
        )
        return
    from worker.evaluation.interactive import prompt_row

    row = prompt_row(prompt, system=system)
    if as_json:
        result = talker.complete([row], decoding, stop_on_repeated_line=stop_on_repeated_line)
        print_json({
            "model": talker.target.label, "adapter": adapter, "template": talker.target.template_ref,
            "input": prompt, "prediction": result.texts[0], "new_tokens": result.new_tokens,
            "seconds": round(result.seconds, 3), "tokens_per_s": round(result.tokens_per_s, 1),
            "device": str(talker.device), "dtype": str(talker.dtype).removeprefix("torch."),
        })  # fmt: skip
        return
    result = talker.stream(row, decoding, _echo, stop_on_repeated_line=stop_on_repeated_line)
    click.echo()
    click.echo(f"({_cost(result)})", err=True)


@click.command()
@click.argument("target", metavar="ADAPTER|--base MODEL", required=False)
@_common_options
@pass_app
def chat(
    app: AppContext, target: str | None, base: str | None, template: str | None, system: str | None,
    device: str, stop_on_repeated_line: bool, **flags: Any,
) -> None:  # fmt: skip
    """Talk to an adapter: type a line, read the answer as it is generated.

    With a chat template (the tokenizer's, or a Jinja one that uses the history) the conversation is
    kept: each answer sees the earlier turns. /reset forgets them; /exit or Ctrl-D ends the chat;
    Ctrl-C stops an answer.

    \b
    Example:
        ft chat faults-lora
        ft chat --base smol --system "You are terse." --sample --temperature 0.7
    """
    from worker.evaluation.interactive import Conversation

    if target is not None and base is not None:
        raise InvalidInput(f"name an ADAPTER or --base MODEL, not both (got {target!r} and --base {base})")
    if target is None and base is None:
        raise InvalidInput("name an ADAPTER (see `ft adapters list`) or --base MODEL")
    decoding = _decoding(flags)
    talker = _load(app, target, base, template, device)
    conversation = Conversation(talker, system=system)
    if not talker.remembers:
        click.echo(f"(template {talker.target.template_ref} renders one turn: each line is answered alone)",
                   err=True)  # fmt: skip
    click.echo("(/reset forgets the conversation; /exit or Ctrl-D ends it)", err=True)
    while True:
        try:
            line = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
        except click.Abort:  # Ctrl-D (or Ctrl-C) at the prompt
            click.echo()
            return
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            conversation.reset()
            click.echo("(conversation reset)", err=True)
            continue
        if not text:
            continue
        click.echo(f"{talker.target.label}> ", nl=False)
        try:
            conversation.ask(text, decoding, _echo, stop_on_repeated_line=stop_on_repeated_line)
        except KeyboardInterrupt:
            click.echo("\n(stopped; this turn is forgotten)", err=True)
            continue
        click.echo()


# ---------------------------------------------------------------- helpers


def _split_target(target: str | None, prompt: str | None, base: str | None) -> tuple[str | None, str | None]:
    """(adapter, prompt): with --base, the first argument is the prompt."""
    if base is None:
        if target is None:
            raise InvalidInput("name an ADAPTER (see `ft adapters list`) or --base MODEL")
        return target, prompt
    if prompt is not None:
        raise InvalidInput(f"name an ADAPTER or --base MODEL, not both (got {target!r} and --base {base})")
    return None, target


def _decoding(flags: dict[str, Any]) -> Any:
    from worker.evaluation.decoding import Decoding

    given = {k: v for k, v in flags.items() if v is not None}
    if not given.get("sample"):
        for key in ("temperature", "top_p"):
            if key in given:
                flag = "--" + key.replace("_", "-")
                raise InvalidInput(
                    f"{flag} applies to sampling only: add --sample (decoding is greedy by default)"
                )
    return Decoding(**given)


def _load(app: AppContext, adapter: str | None, base: str | None, template: str | None, device: str) -> Any:
    from worker.evaluation.interactive import Talker, resolve_target

    with app.catalog.session() as s:
        target = resolve_target(s, app.store, adapter=adapter, base=base, template=template)
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per load would sit between the user's lines
    talker = Talker.load(target, None if device == "auto" else device)
    what = f"{target.method} adapter" if target.method else "model"
    dtype = str(talker.dtype).removeprefix("torch.")
    click.echo(
        f"({what} {target.label}, template {target.template_ref}, on {talker.device} in {dtype})", err=True
    )
    return talker


def _echo(text: str) -> None:
    click.echo(text, nl=False)


def _cost(result: Any) -> str:
    return f"{result.new_tokens} new tokens in {result.seconds:.1f}s, {result.tokens_per_s:.1f} tok/s"
