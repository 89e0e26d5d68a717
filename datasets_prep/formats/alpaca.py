"""`alpaca`: Stanford Alpaca rows as LLaMA-Factory writes them.

`instruction` and `output` are required, `input` is optional (often absent or empty), and
LLaMA-Factory adds an optional `system` prompt and a `history` of earlier `[user, assistant]`
turns. Preference data (an `output` list) and tool calls are not supported.
"""

from __future__ import annotations

from typing import Any

from datasets_prep.formats.base import Format, json_type, optional_text, text
from datasets_prep.reader import RowError
from datasets_prep.rows import Row


def convert(obj: dict[str, Any]) -> Row:
    instruction = text(obj, "instruction", allow_empty=True)
    input_ = optional_text(obj, "input") or ""
    if not instruction.strip() and not input_.strip():
        raise RowError("empty-field", "field 'instruction' is empty (and there is no 'input')")
    output = text(obj, "output")
    return Row(
        instruction=instruction,
        input=input_,
        output=output,
        system=optional_text(obj, "system") or None,
        history=_history(obj.get("history")),
    )


def _history(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RowError("wrong-type", f"field 'history' must be an array of pairs, found {json_type(value)}")
    turns = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RowError("wrong-type", f"history[{i}] must be a [user, assistant] pair of strings")
        turns.append((pair[0], pair[1]))
    return tuple(turns)


FORMAT = Format(
    name="alpaca",
    shape='{"instruction", "input" (optional), "output", "system" (optional), "history" (optional)}',
    claims=lambda keys: {"instruction", "output"} <= keys,
    convert=convert,
)
