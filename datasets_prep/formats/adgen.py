"""`adgen`: ADGEN advertising text, `类型#裤*版型#宽松*...` -> a paragraph of ad copy.

The official release writes `{"content", "summary"}`; the ChatGLM write-up's copy writes
`{"instruction", "output"}`. Either way the attribute string is the prompt's content, so it
becomes the canonical `input` (the instruction stays empty; the template adds any wording).
"""

from __future__ import annotations

from typing import Any

from datasets_prep.formats.base import Format, text
from datasets_prep.rows import Row


def convert(obj: dict[str, Any]) -> Row:
    if "content" in obj or "summary" in obj:
        return Row(instruction="", input=text(obj, "content"), output=text(obj, "summary"))
    return Row(instruction="", input=text(obj, "instruction"), output=text(obj, "output"))


FORMAT = Format(
    name="adgen",
    shape='{"content", "summary"} or {"instruction", "output"}',
    claims=lambda keys: {"content", "summary"} <= keys or keys == {"instruction", "output"},
    convert=convert,
)
