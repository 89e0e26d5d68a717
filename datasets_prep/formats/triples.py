"""`triples`: relation-triple extraction rows, as the fault-report write-up ships them.

Two shapes: `{"instruction", "input", "output"}` and the older `{"text", "answer"}` (text -> input,
answer -> output, no instruction: the template supplies the prompt). The output may be empty: a
report with no triple in it is a real example (22 rows of the reference training set are).
"""

from __future__ import annotations

from typing import Any

from datasets_prep.formats.base import Format, text
from datasets_prep.rows import Row


def convert(obj: dict[str, Any]) -> Row:
    if "text" in obj or "answer" in obj:
        return Row(instruction="", input=text(obj, "text"), output=text(obj, "answer", allow_empty=True))
    return Row(
        instruction=text(obj, "instruction", allow_empty=True),
        input=text(obj, "input"),
        output=text(obj, "output", allow_empty=True),
    )


FORMAT = Format(
    name="triples",
    shape='{"instruction", "input", "output"} or {"text", "answer"}',
    claims=lambda keys: {"text", "answer"} <= keys,
    convert=convert,
)
