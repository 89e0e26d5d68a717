"""The canonical row every source format converts to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One training example: the prompt parts, the target output, optional system and history."""

    instruction: str
    input: str
    output: str
    system: str | None = None
    history: tuple[tuple[str, str], ...] = field(default=())
    """Earlier (user, assistant) turns of a conversation, oldest first."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"instruction": self.instruction, "input": self.input, "output": self.output}
        if self.system:
            data["system"] = self.system
        if self.history:
            data["history"] = [list(turn) for turn in self.history]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(
            instruction=data.get("instruction", ""),
            input=data.get("input", ""),
            output=data["output"],
            system=data.get("system") or None,
            history=tuple((u, a) for u, a in data.get("history") or ()),
        )
