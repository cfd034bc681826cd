"""Known defects of released trajectories (pythia.md §1.4), as data in the run cards.

Each card's ``[[defects]]`` tables name problems of that card's repo; a defect attaches to the
repo id it concerns, never to a whole family, so a user card inherits only the defects recorded
for its own repo. ``fetch``, ``branch`` and ``audit`` warn when a chosen step is flagged. Steps are
checkpoint steps (the ``stepN`` of the revision), not batch indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Defect:
    """One known problem of a released run: where it is tracked, which steps, what is wrong."""

    issue: str  # e.g. "EleutherAI/pythia#205"
    steps: frozenset[int] | None  # None = every step of the run
    text: str
    repo_id: str | None = None  # the repo it concerns

    def affects(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def to_dict(self) -> dict:
        return {
            "issue": self.issue,
            "steps": None if self.steps is None else sorted(self.steps),
            "text": self.text,
            "repo_id": self.repo_id,
        }

    @classmethod
    def from_card(cls, table: dict[str, Any], repo_id: str) -> "Defect":
        steps = table.get("steps")
        return cls(table["issue"], None if steps is None else frozenset(int(s) for s in steps), table["text"], repo_id)


def defects_of(cards: list[Any], repo_id: str) -> list[Defect]:
    """The defects every card records for ``repo_id`` (case-insensitive), each once, in card order."""
    out: list[Defect] = []
    for card in cards:
        if card.data["repo_id"].lower() != repo_id.lower():
            continue
        for table in card.data.get("defects", []):
            d = Defect.from_card(table, card.data["repo_id"])
            if all((d.issue, d.steps, d.text) != (o.issue, o.steps, o.text) for o in out):
                out.append(d)
    return out
