"""Dialogue turns and roles: the data model every other module speaks.

A dialogue is a tuple of `Turn`s. Roles are canonical identifiers; the names shown
in a transcript ("User", "Sparrow", ...) are a display choice made when rendering.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Iterable, Sequence


class Role(str, enum.Enum):
    USER = "user"
    AGENT = "agent"
    SEARCH_QUERY = "search_query"
    SEARCH_RESULT = "search_result"


DEFAULT_DISPLAY_NAMES = {
    Role.USER: "User",
    Role.AGENT: "Sparrow",
    Role.SEARCH_QUERY: "Search Query",
    Role.SEARCH_RESULT: "Search Result",
}

# Fixed role order: `Rendered.role_ids` stores the index of a role in this tuple (-1 = no role, e.g. bos).
ROLES: tuple[Role, ...] = (Role.USER, Role.AGENT, Role.SEARCH_QUERY, Role.SEARCH_RESULT)
ROLE_INDEX = {role: i for i, role in enumerate(ROLES)}

# Turns written by the policy: the only tokens that ever get a training loss.
POLICY_ROLES = frozenset({Role.AGENT, Role.SEARCH_QUERY})


@dataclasses.dataclass(frozen=True)
class Turn:
    role: Role
    text: str

    def to_json(self) -> dict:
        return {"role": self.role.value, "text": self.text}

    @classmethod
    def from_json(cls, obj: dict) -> "Turn":
        """Raises KeyError/ValueError on a missing field or unknown role."""
        return cls(Role(obj["role"]), obj["text"])


Dialogue = tuple[Turn, ...]


def dialogue(turns: Iterable[tuple[Role | str, str]]) -> Dialogue:
    """Build a dialogue from (role, text) pairs."""
    return tuple(Turn(Role(role), text) for role, text in turns)


def to_json(turns: Sequence[Turn]) -> list[dict]:
    return [turn.to_json() for turn in turns]
