"""`adgen`: ADGEN advertising text, `类型#裤*版型#宽松*...` -> a paragraph of ad copy.

The official release writes `{"content", "summary"}`; the ChatGLM write-up's copy writes
`{"instruction", "output"}`. Either way the attribute string is the prompt's content, so it
becomes the canonical `input` (the instruction stays empty; the template adds any wording).
"""

from __future__ import annotations

from typing import Any

from datasets_prep.formats.base import Format, output_text, text
from datasets_prep.rows import Row


def convert(obj: dict[str, Any]) -> Row:
    prompt, response = (
        ("content", "summary") if "content" in obj or "summary" in obj else ("instruction", "output")
    )
    input_ = text(obj, prompt)
    output, refs = output_text(obj, response)
    return Row(instruction="", input=input_, output=output, references=refs)


FORMAT = Format(
    name="adgen",
    shape='{"content", "summary"} or {"instruction", "output"}',
    claims=lambda keys: {"content", "summary"} <= keys or keys == {"instruction", "output"},
    convert=convert,
)
