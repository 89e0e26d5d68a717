"""Talking to one model: a registered adapter on its base, a registered base model, or a merged export
directory (`ft adapters export --merge`), prompted with the template the adapter was trained with and
answered by the evaluation engine (worker/evaluation/generation.py), streamed as it is produced.
`ft generate` and `ft chat` (cli/generate.py) are thin over this module.

    with catalog.session() as s:
        target = resolve_target(s, store, adapter="faults-lora")
    talker = Talker.load(target)                                   # sha256-checked, on cuda or cpu
    talker.complete([prompt_row("...")], Decoding()).texts        # batched, as evaluation generates
    chat = Conversation(talker)
    chat.ask("...", Decoding(), on_text=print)                     # streamed; the turn is remembered

A prompt is a canonical row (datasets_prep/rows.py) without an output: `instruction` + `input` are the
user's turn, as in training; `system` and `history` go to templates that use them (the tokenizer's chat
template, Jinja templates). Only such templates can carry a conversation: a string template (`plain`,
`alpaca`) renders each line alone, which `Talker.remembers` says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.errors import InvalidInput, NotFound
from datasets_prep.rows import Row
from worker.evaluation.decoding import Decoding
from worker.evaluation.stopping import cut_at_repeated_line

PROMPT_KEYS = ("instruction", "input", "system", "history")
"""The keys of a prompt line in a `--file` (a canonical row's, less the output)."""

TextFn = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """What to load and how to prompt it; plain values, so it outlives the catalog session."""

    label: str
    """The adapter's name, the base model's, or the directory's path."""
    model_dir: Path
    """The base model's directory (for an adapter: the base it was trained on)."""
    template_kind: str
    template_body: str
    template_ref: str
    """`name:version` of a catalog template, or `chat` / `plain` for a directory outside the catalog."""
    method: str | None = None
    artifact_dir: Path | None = None
    sha256: str | None = None
    """The catalog's sha256 of the artifact, checked before it is loaded."""
    trust_remote_code: bool = False

    @property
    def add_special_tokens(self) -> bool:
        """A chat template's text already holds its special tokens (training tokenises it so too)."""
        return self.template_kind != "chat"


def resolve_target(
    session: Any,
    store: Any,
    *,
    adapter: str | None = None,
    base: str | None = None,
    template: str | None = None,
) -> Target:
    """The target of `ft generate` / `ft chat`: an adapter by name (with its own template unless
    `template` is given), or `base`: a registered base model's name, else a model directory (a merged
    export). Unknown names raise NotFound, one line naming them."""
    from catalog.adapters import get_adapter
    from catalog.base_models import get_base_model
    from worker.models.directories import model_dir

    if (adapter is None) == (base is None):
        raise InvalidInput("name an ADAPTER or --base MODEL (one of them)")
    override = _template(session, template) if template else None
    if adapter is not None:
        a = get_adapter(session, adapter)
        if a.status != "ready":
            raise InvalidInput(f"adapter {adapter} is {a.status}, not ready: it cannot generate")
        tpl = override or a.template
        return Target(
            label=a.name, model_dir=model_dir(store, a.base_model), template_kind=tpl.kind,
            template_body=tpl.body, template_ref=tpl.ref, method=a.method,
            artifact_dir=store.path(a.artifact_uri), sha256=a.sha256,
            trust_remote_code=a.base_model.trust_remote_code,
        )  # fmt: skip
    try:
        registered = get_base_model(session, base)
    except NotFound as exc:
        directory = Path(base).expanduser()
        if not (directory / "config.json").is_file():
            raise NotFound(
                f"--base: {exc}; or give a model directory (e.g. one made by `ft adapters export --merge`)"
            ) from None
        return _directory_target(session, directory.resolve(), override)
    root = model_dir(store, registered)
    tpl = override or _template(session, _default_template(root))
    return Target(
        label=registered.name, model_dir=root, template_kind=tpl.kind, template_body=tpl.body,
        template_ref=tpl.ref, trust_remote_code=registered.trust_remote_code,
    )  # fmt: skip


def _directory_target(session: Any, directory: Path, override: Any) -> Target:
    """A model directory outside the catalog. A merged export's model card names the adapter it was
    made from: that adapter's template is the default, as it was trained with it."""
    from catalog.adapters import get_adapter

    tpl = override
    if tpl is None and (name := merged_adapter_name(directory)) is not None:
        try:
            tpl = get_adapter(session, name).template
        except NotFound:
            tpl = None
    tpl = tpl or _template(session, _default_template(directory))
    return Target(
        label=str(directory), model_dir=directory, template_kind=tpl.kind, template_body=tpl.body,
        template_ref=tpl.ref,
    )  # fmt: skip


def merged_adapter_name(directory: Path) -> str | None:
    """The adapter a merged export was made from, read from the `| adapter | NAME |` row of the model
    card that `ft adapters export --merge` writes (worker/methods/saving.py); None for other models."""
    try:
        card = (directory / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    if "merged" not in card:
        return None
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == "adapter" and cells[1]:
            return cells[1]
    return None


def _default_template(directory: Path) -> str:
    from datasets_prep.templates import default_template_name

    return default_template_name(directory)


def _template(session: Any, ref: str) -> Any:
    from catalog.templates import get_template

    try:
        return get_template(session, ref)
    except NotFound as exc:
        raise NotFound(f"--template: {exc}") from None


# ---------------------------------------------------------------- prompts


def prompt_row(text: str = "", *, instruction: str = "", system: str | None = None, history=()) -> Row:
    """A prompt as a canonical row (no output)."""
    return Row(instruction=instruction, input=text, output="", system=system or None, history=tuple(history))


@dataclass(frozen=True)
class PromptLine:
    """One prompt of a `--file`: where it is, the object as written, and the row it makes."""

    line: int
    data: dict[str, Any]
    row: Row


def read_prompts(path: Path | str, *, system: str | None = None) -> list[PromptLine]:
    """Every prompt of a JSONL file: one object per line with `input` and/or `instruction` (strings),
    optionally `system` and `history` ([[user, assistant], ...]); other keys are kept in the output.
    Blank lines are skipped. A bad line raises InvalidInput naming `file:line`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InvalidInput(f"--file {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"--file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompts = []
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        where = f"{path}:{n}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        prompts.append(PromptLine(n, data, _row_of(data, where, system)))
    if not prompts:
        raise InvalidInput(f'--file {path}: no prompts (one JSON object per line, e.g. {{"input": "..."}})')
    return prompts


def _row_of(data: Any, where: str, system: str | None) -> Row:
    if not isinstance(data, dict):
        raise InvalidInput(
            f'{where}: expected a JSON object like {{"input": "..."}}, got {type(data).__name__}'
        )
    if "input" not in data and "instruction" not in data:
        keys = ", ".join(sorted(data)) or "none"
        raise InvalidInput(f'{where}: no "input" or "instruction" key (keys: {keys})')
    for key in ("instruction", "input", "system"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise InvalidInput(f'{where}: "{key}" must be a string, got {type(data[key]).__name__}')
    history = data.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        for turn in history
    ):
        raise InvalidInput(f'{where}: "history" must be a list of [user, assistant] string pairs')
    return prompt_row(
        data.get("input") or "", instruction=data.get("instruction") or "",
        system=data.get("system") or system, history=[tuple(turn) for turn in history],
    )  # fmt: skip


# ---------------------------------------------------------------- the model


class Talker:
    """One loaded model, its tokenizer and its template."""

    def __init__(self, target: Target, model: Any, tokenizer: Any, device: Any, dtype: Any) -> None:
        self.target, self.model, self.tokenizer, self.device, self.dtype = (
            target,
            model,
            tokenizer,
            device,
            dtype,
        )

    @classmethod
    def load(cls, target: Target, device: Any = None) -> Talker:
        """Load `target` on `device` (default: this process's GPU, else the CPU) in the evaluation's
        dtype (bf16 on a GPU that has it, else fp32). An adapter's artifact is checked against the
        catalog's sha256 first (worker/methods/saving.py `load_for_inference`)."""
        import torch

        from worker.methods import compute_dtype
        from worker.methods.saving import load_for_inference
        from worker.models.loading import default_device, load_base, load_tokenizer

        device = torch.device(device) if device is not None else default_device()
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInput("--device cuda: this machine has no CUDA GPU (use --device cpu)")
        dtype = compute_dtype(device)
        tokenizer = load_tokenizer(target.model_dir, trust_remote_code=target.trust_remote_code)
        if target.artifact_dir is not None:
            model = load_for_inference(
                target.model_dir, target.artifact_dir, target.method or "", device=device, dtype=dtype,
                trust_remote_code=target.trust_remote_code, sha256=target.sha256,
                label=f"adapter {target.label}",
            )  # fmt: skip
        else:
            model = load_base(
                target.model_dir, device, dtype=dtype, trust_remote_code=target.trust_remote_code
            )
        return cls(target, model.eval(), tokenizer, device, dtype)

    @property
    def remembers(self) -> bool:
        """Whether the template renders earlier turns (the tokenizer's chat template, or a Jinja
        template that uses `history`); string templates prompt each line alone."""
        kind, body = self.target.template_kind, self.target.template_body
        return kind == "chat" or (kind == "jinja" and "history" in body)

    def prompt(self, row: Row) -> str:
        """The prompt text of `row`, rendered with the target's template as training rendered it."""
        from datasets_prep.templates import render_prompt

        return render_prompt(self.target.template_kind, self.target.template_body, row, self.tokenizer)

    def complete(self, rows: list[Row], decoding: Decoding, *, stop_on_repeated_line: bool = False,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:  # fmt: skip
        """Every row's completion, batched as evaluation batches; a GenerationResult."""
        from worker.evaluation.generation import GenerationConfig, generate

        cfg = GenerationConfig.of(decoding, stop_on_repeated_line=stop_on_repeated_line)
        prompts = [self.prompt(row) for row in rows]
        return generate(
            self.model, self.tokenizer, prompts, cfg, on_progress=on_progress,
            add_special_tokens=self.target.add_special_tokens,
        )  # fmt: skip

    def stream(
        self, row: Row, decoding: Decoding, on_text: TextFn, *, stop_on_repeated_line: bool = False
    ) -> Any:
        """One row's completion, its text given to `on_text` piece by piece as it is produced; the
        pieces add up to the returned result's text (trailing whitespace aside)."""
        from worker.evaluation.generation import GenerationConfig, generate

        cfg = GenerationConfig.of(decoding, stop_on_repeated_line=stop_on_repeated_line)
        shown = StreamedText(on_text, hold_lines=stop_on_repeated_line)
        streamer = callback_streamer(self.tokenizer, shown.feed)
        result = generate(
            self.model, self.tokenizer, [self.prompt(row)], cfg, streamer=streamer,
            add_special_tokens=self.target.add_special_tokens,
        )  # fmt: skip
        shown.finish(result.texts[0])
        return result


class StreamedText:
    """What of a streamed answer has been shown: only text the final answer starts with.

    The engine cleans a row's text at the end (a repeated line cut, trailing whitespace stripped), so
    what streams may run past the final text. With `hold_lines` (the repeated-line stop) a line is shown
    once it is complete and known not to repeat an earlier one; the rest is shown at `finish`."""

    def __init__(self, emit: TextFn, *, hold_lines: bool = False) -> None:
        self.emit, self.hold_lines = emit, hold_lines
        self.text = ""
        self.shown = 0

    def feed(self, piece: str) -> None:
        self.text += piece
        safe = self.text
        if self.hold_lines:
            safe = cut_at_repeated_line(safe)
            safe = safe[: safe.rfind("\n") + 1]  # an unfinished line may still turn out to repeat
        self._show(safe)

    def finish(self, final: str) -> None:
        if final.startswith(self.text[: self.shown]):
            self._show(final)

    def _show(self, upto: str) -> None:
        if len(upto) > self.shown:
            self.emit(upto[self.shown :])
            self.shown = len(upto)


def callback_streamer(tokenizer: Any, on_text: TextFn) -> Any:
    """transformers' TextStreamer (the prompt skipped, text flushed at word ends), handing its text to
    `on_text` instead of printing it."""
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@dataclass
class Conversation:
    """A chat with one talker: each answer is streamed, and remembered for the next turn when the
    template renders earlier turns (`Talker.remembers`)."""

    talker: Talker
    system: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)

    def ask(
        self, text: str, decoding: Decoding, on_text: TextFn, *, stop_on_repeated_line: bool = False
    ) -> str:
        row = prompt_row(text, system=self.system, history=self.history if self.talker.remembers else ())
        answer = self.talker.stream(
            row, decoding, on_text, stop_on_repeated_line=stop_on_repeated_line
        ).texts[0]
        if self.talker.remembers:
            self.history.append((text, answer))
        return answer

    def reset(self) -> None:
        self.history.clear()
