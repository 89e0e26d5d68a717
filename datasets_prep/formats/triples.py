"""`triples`: relation-triple extraction rows, as the fault-report write-up ships them.

Two shapes: `{"instruction", "input", "output"}` and the older `{"text", "answer"}` (text -> input,
answer -> output, no instruction: the template supplies the prompt). The output may be empty: a
report with no triple in it is a real example (22 rows of the reference training set are). It may
also be a list of references (a multi-reference test set): the first is trained on, all are scored.
"""

from __future__ import annotations

from typing import Any

from datasets_prep.formats.base import Format, output_text, text
from datasets_prep.rows import Row


def convert(obj: dict[str, Any]) -> Row:
    if "text" in obj or "answer" in obj:
        output, refs = output_text(obj, "answer", allow_empty=True)
        return Row(instruction="", input=text(obj, "text"), output=output, references=refs)
    instruction, input_ = text(obj, "instruction", allow_empty=True), text(obj, "input")
    output, refs = output_text(obj, "output", allow_empty=True)
    return Row(instruction=instruction, input=input_, output=output, references=refs)


FORMAT = Format(
    name="triples",
    shape='{"instruction", "input", "output"} or {"text", "answer"}',
    claims=lambda keys: {"text", "answer"} <= keys,
    convert=convert,
)
