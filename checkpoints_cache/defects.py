"""Known defects of released trajectories, as data (pythia.md §1.4).

Each defect names the runs and steps it affects; ``fetch`` and ``audit`` warn when a chosen step is
flagged. Steps are checkpoint steps (the ``stepN`` of the revision), not batch indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .grids import PYTHIA_GRID, PYTHIA_LOG_STEPS


@dataclass(frozen=True)
class Defect:
    """One known problem of a released run: where it is tracked, which steps, what is wrong."""

    issue: str  # e.g. "EleutherAI/pythia#205"
    steps: frozenset[int] | None  # None = every step of the run
    text: str
    runs: tuple[str, ...] = field(default=())  # registry names; empty = every run of the family
    family: str = "pythia"

    def affects(self, run_name: str, family: str, step: int) -> bool:
        if self.family != family:
            return False
        if self.runs and run_name not in self.runs:
            return False
        return self.steps is None or step in self.steps

    def to_dict(self) -> dict:
        return {
            "issue": self.issue,
            "steps": None if self.steps is None else sorted(self.steps),
            "text": self.text,
            "runs": list(self.runs),
        }


# pythia#205: 76 step branches of pythia-2.8b hold a model.safetensors byte-identical to main:
# steps 0-512, every 1000 from 1000 to 53000, and 55k, 60k, ..., 140k (pythia.md §1.4).
_P28B_DUP_STEPS = frozenset(
    list(PYTHIA_LOG_STEPS)
    + list(range(1000, 53001, 1000))
    + [55000, 60000, 65000, 70000, 80000, 90000, 100000, 103000, 110000, 120000, 130000, 140000]
)

DEFECTS: list[Defect] = [
    Defect(
        "EleutherAI/pythia#83",
        frozenset({0, 1}),
        "step0 and step1 are identical for every Pythia model (the first update ran with lr = 0)",
    ),
    Defect(
        "EleutherAI/pythia#198",
        frozenset({0, 2}),
        "step0 and step2 are reported identical too (cause unverified, possibly an fp16 overflow skip)",
    ),
    Defect(
        "EleutherAI/pythia#205",
        _P28B_DUP_STEPS,
        "model.safetensors of this branch is byte-identical to main (wrong upload); only non-round steps 66000-142000 are unique",
        runs=("pythia-2.8b",),
    ),
    Defect(
        "EleutherAI/pythia#195",
        frozenset(s for s in PYTHIA_GRID if s <= 6300),
        "weights reported byte-identical between step0 and step6300",
        runs=("pythia-2.8b",),
    ),
    Defect(
        "EleutherAI/pythia#206",
        frozenset({50000, 58000}),
        "the first shard (holding embed_in) equals the shard on main",
        runs=("pythia-12b",),
    ),
    Defect(
        "EleutherAI/pythia#202",
        frozenset({40000}),
        "this branch has no weights",
        runs=("pythia-410m-seed9",),
    ),
    Defect("EleutherAI/pythia#202", frozenset({88000}), "this branch has no weights", runs=("pythia-410m-seed6",)),
    Defect("EleutherAI/pythia#202", frozenset({111000}), "this branch has no weights", runs=("pythia-410m-seed2",)),
    Defect(
        "EleutherAI/pythia#203",
        frozenset(s for s in PYTHIA_GRID if s >= 1),
        "checkpoints at step >= 1 do not descend from this run's own step0",
        runs=("pythia-160m-weight-seed1", "pythia-160m-weight-seed2"),
    ),
]


def defects_for(run_name: str, family: str, steps: list[int] | None = None) -> list[Defect]:
    """Defects that touch ``run_name`` (and, when ``steps`` is given, at least one of those steps)."""
    out = []
    for d in DEFECTS:
        if d.family != family or (d.runs and run_name not in d.runs):
            continue
        if steps is not None and d.steps is not None and not (d.steps & set(steps)):
            continue
        out.append(d)
    return out
