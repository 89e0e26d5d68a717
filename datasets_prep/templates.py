"""Prompt templates: the built-ins, validating and rendering (table access: catalog.templates).

Three kinds:
- `format`: a Python format string over `{instruction}`, `{input}`, `{system}` (`{{`/`}}` for braces);
- `jinja`: a sandboxed Jinja2 template over the same names (for optional sections);
- `chat`: the tokenizer's own chat template; the user turn is instruction + input.
Templates are immutable: adding a changed body under an existing name makes a new version.
A Jinja body is trial-rendered in a limited child process when added and rendered with bounds
everywhere (datasets_prep/template_guard.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import string
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import InvalidInput
from catalog.models import PromptTemplate
from catalog.names import check_name
from catalog.templates import insert_template
from datasets_prep.rows import Row
from datasets_prep.template_guard import BoundedSandbox, check_template, render_bounded

KINDS = ("format", "jinja", "chat")
FIELDS = ("instruction", "input", "system")

TRIPLES_INSTRUCTION = (
    '你现在是一个信息抽取模型，请你帮我抽取出关系内容为"性能故障", "部件故障", "组成"和 "检测工具"的相关三元组，'  # noqa: E501
    '三元组内部用"_"连接，三元组之间用\\n分割。文本：'
)

BUILTINS: dict[str, tuple[str, str, str]] = {
    "plain": ("format", "{instruction}{input}", "instruction and input concatenated; the output follows"),
    "chat": ("chat", "", "the tokenizer's chat template; user turn = instruction + input"),
    "alpaca": (
        "jinja",
        "{% if input %}Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{{ instruction }}\n\n### Input:\n{{ input }}\n\n### Response:\n"
        "{% else %}Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{{ instruction }}\n\n### Response:\n{% endif %}",
        "the Stanford Alpaca prompt, with and without input",
    ),
    "triples-zh": (
        "format",
        TRIPLES_INSTRUCTION + "{input}",
        "the fault-report extraction instruction + input (for {text, answer} rows)",
    ),
}

CHAT, PLAIN = "chat", "plain"
"""The default template: the tokenizer's chat template when it has one (every quality result of the
README used it), else the instruction and input concatenated."""

_jinja = BoundedSandbox(keep_trailing_newline=True)


def has_chat_template(model_dir: Path | None) -> bool:
    """Whether the tokenizer saved in `model_dir` has a chat template, read from its files (no
    tokenizer is loaded): `chat_template.jinja` / `.json`, or `chat_template` in tokenizer_config.json."""
    if model_dir is None or not model_dir.is_dir():
        return False
    if any((model_dir / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def default_template_name(model_dir: Path | None) -> str:
    """`chat` when the model's tokenizer has a chat template, else `plain`."""
    return CHAT if has_chat_template(model_dir) else PLAIN


@functools.lru_cache(maxsize=64)
def _compiled(body: str) -> Any:
    return _jinja.from_string(body)


def _user_text(row: Row) -> str:
    return row.instruction + row.input


def validate_body(kind: str, body: str) -> None:
    """Raise InvalidInput if `body` cannot render a row."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown template kind {kind!r}: choose one of {', '.join(KINDS)} (--kind)")
    if kind == "format":
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(body) if f is not None]
        except ValueError as exc:
            raise InvalidInput(
                f"template body is not a valid format string: {exc} (use {{{{ for a brace)"
            ) from exc
        unknown = sorted({n for n in names if n not in FIELDS})
        if unknown:
            raise InvalidInput(
                f"template uses unknown field(s) {', '.join(unknown)}: allowed are {{instruction}}, "
                "{input}, {system} (write {{ and }} for literal braces)"
            )
        if not names:
            raise InvalidInput("template body uses neither {instruction} nor {input}: the rows would be lost")
    elif kind == "jinja":
        try:
            _jinja.parse(body)  # parsing only: compiling runs code of the body (template_guard.py)
        except TemplateError as exc:
            raise InvalidInput(f"template body is not valid Jinja2: {exc}") from exc


def render_prompt(kind: str, body: str, row: Row, tokenizer: Any = None) -> str:
    """The prompt text for `row` (everything before the output)."""
    if kind == "format":
        return body.format(instruction=row.instruction, input=row.input, system=row.system or "")
    if kind == "jinja":
        try:
            return render_bounded(
                _compiled(body),
                instruction=row.instruction, input=row.input, system=row.system or "", history=row.history,
            )  # fmt: skip
        except TemplateError as exc:
            raise InvalidInput(f"the jinja template failed to render a row: {exc}") from exc
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(
            "template 'chat' needs a tokenizer with a chat template: pick another --template (e.g. plain)"
        )
    messages: list[dict[str, str]] = []
    if row.system:
        messages.append({"role": "system", "content": row.system})
    for user, assistant in row.history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": _user_text(row)})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def body_sha256(kind: str, body: str) -> str:
    return hashlib.sha256(f"{kind}\x00{body}".encode()).hexdigest()


# ---------------------------------------------------------------- catalog functions


def add_template(
    session: Session,
    name: str,
    kind: str,
    body: str,
    user: str,
    description: str | None = None,
    builtin: bool = False,
) -> tuple[PromptTemplate, bool]:
    """Validate `body` and register it under `name`; returns (template, created). An identical latest
    body is reused."""
    check_name(name, "template name")
    validate_body(kind, body)
    # The built-ins are tested: no child process per `ft init`.
    if kind == "jinja" and not builtin:
        check_template(name, body)
    return insert_template(session, name, kind, body, body_sha256(kind, body), user, description, builtin)


def seed_builtin_templates(catalog: Catalog, user: str) -> list[str]:
    """Insert the built-ins that are missing or changed; returns the refs added."""
    added = []
    with catalog.session() as s:
        for name, (kind, body, description) in BUILTINS.items():
            tpl, created = add_template(s, name, kind, body, user, description, builtin=True)
            if created:
                added.append(tpl.ref)
    return added
