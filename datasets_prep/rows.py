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
    references: tuple[str, ...] = field(default=())
    """Every reference output when the source listed several (`output` is the first, the one trained
    on); empty for the usual single output."""

    @property
    def gold(self) -> str | list[str]:
        """What a metric scores against: the output, or every reference."""
        return list(self.references) if self.references else self.output

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"instruction": self.instruction, "input": self.input, "output": self.output}
        if self.system:
            data["system"] = self.system
        if self.history:
            data["history"] = [list(turn) for turn in self.history]
        if self.references:
            data["references"] = list(self.references)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(
            instruction=data.get("instruction", ""),
            input=data.get("input", ""),
            output=data["output"],
            system=data.get("system") or None,
            history=tuple((u, a) for u, a in data.get("history") or ()),
            references=tuple(data.get("references") or ()),
        )
