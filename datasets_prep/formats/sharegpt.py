"""`sharegpt`: multi-turn conversations, as ShareGPT / LLaMA-Factory and the OpenAI API write them.

Either `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}` (an optional
top-level `"system"` too) or `{"messages": [{"role": "user"|"assistant"|"system", "content": ...}]}`.
An optional system turn comes first; then user and assistant turns alternate, ending with the
assistant. The last assistant turn is the output, the user turn before it the instruction, and
the earlier pairs the history. Tool turns (function_call, observation, tool) are not supported.
"""

from __future__ import annotations

from typing import Any

from datasets_prep.formats.base import Format, json_type, optional_text, text
from datasets_prep.reader import RowError
from datasets_prep.rows import Row

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def convert(obj: dict[str, Any]) -> Row:
    key = "conversations" if "conversations" in obj else "messages"
    if key not in obj:
        raise RowError("missing-field", "no field 'conversations' (or 'messages')")
    turns = obj[key]
    if not isinstance(turns, list):
        raise RowError("wrong-type", f"field {key!r} must be an array of turns, found {json_type(turns)}")
    parsed = [_turn(turn, f"{key}[{i}]") for i, turn in enumerate(turns)]
    system = optional_text(obj, "system") or None
    if parsed and parsed[0][0] == "system":
        if system is not None:
            raise RowError("bad-turns", f"both a 'system' field and a system turn in {key!r}")
        system = parsed.pop(0)[1]
    for i, (role, _) in enumerate(parsed):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise RowError(
                "bad-turns", f"turn {i + 1} of {key!r} is {role}, expected {expected} (turns alternate)"
            )
    if not parsed or len(parsed) % 2:
        raise RowError("bad-turns", f"{key!r} must end with an assistant turn")
    pairs = [(parsed[i][1], parsed[i + 1][1]) for i in range(0, len(parsed), 2)]
    (instruction, output), history = pairs[-1], tuple(pairs[:-1])
    return Row(instruction=instruction, input="", output=output, system=system, history=history)


def _turn(turn: Any, where: str) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise RowError("wrong-type", f"{where} must be an object, found {json_type(turn)}")
    role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
    role = text(turn, role_key, label=f"{where}.{role_key}")
    if role not in ROLES:
        known = ", ".join(sorted(ROLES))
        raise RowError("bad-turns", f"{where} has role {role!r} (supported: {known})")
    return ROLES[role], text(turn, text_key, label=f"{where}.{text_key}")


FORMAT = Format(
    name="sharegpt",
    shape='{"conversations": [{"from", "value"}, ...]} or {"messages": [{"role", "content"}, ...]}',
    claims=lambda keys: "conversations" in keys or "messages" in keys,
    convert=convert,
)
