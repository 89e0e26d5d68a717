"""`columns`: any flat JSON rows, with the prompt and response fields named on the command line.

`--format columns --prompt-key text --response-key answer` reads `{"text": ..., "answer": ...}` as
input -> output (no instruction: the template supplies the wording), so a new task needs no code. The
response may be a list of references, as in the other formats. Other keys are ignored.
"""

from __future__ import annotations

from typing import Any

from catalog.errors import InvalidInput
from datasets_prep.formats.base import Format, output_text, text
from datasets_prep.reader import RowError
from datasets_prep.rows import Row

NAME = "columns"


def make(prompt_key: str | None, response_key: str | None) -> Format:
    """The `columns` format reading `prompt_key` as the input and `response_key` as the output."""
    if not prompt_key or not response_key:
        raise InvalidInput("--format columns needs --prompt-key KEY and --response-key KEY")
    if prompt_key == response_key:
        raise InvalidInput(f"--prompt-key and --response-key are both {prompt_key!r}; name two fields")

    def convert(obj: dict[str, Any]) -> Row:
        missing = [f"{k!r} (--{flag}-key)" for k, flag in ((prompt_key, "prompt"), (response_key, "response"))
                   if k not in obj]  # fmt: skip
        if missing:
            raise RowError("missing-field", f"no field {' and no field '.join(missing)}")
        input_ = text(obj, prompt_key)
        output, refs = output_text(obj, response_key)
        return Row(instruction="", input=input_, output=output, references=refs)

    return Format(
        name=NAME,
        shape=f'{{"{prompt_key}": prompt, "{response_key}": response}}',
        claims=lambda keys: False,
        convert=convert,
    )
