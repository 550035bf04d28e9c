from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FieldProblem:
    """One reason a field was refused, in the shape of a pydantic error (``loc``, ``msg``, ``code``)."""

    loc: tuple[str | int, ...]
    msg: str
    code: str


@dataclass
class Refusal(Exception):
    """A request the rules refuse: a 4xx with a stable machine-readable ``code``."""

    code: str
    message: str
    status: int = 400
    fields: list[FieldProblem] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
