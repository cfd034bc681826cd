"""Which runs exist: registry names of released runs, or local trajectory directories.

``resolve_run(spec)`` turns ``pythia-160m-deduped``, ``EleutherAI/pythia-160m-deduped``,
``LLM360/Amber`` or a path to a trajectory directory into a ``RunInfo``: step grid, revision
names, recipe, architecture, data-order source, known defects. The released runs are run cards,
TOML files (``checkpoints_cache/runs/*.toml`` and the user's, named by ``BRANCHPOINT_RUNS``; see
``cards.py``); nothing here talks to the network.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import data_store
from .cards import Card, all_cards
from .defects import Defect, defects_of
from .errors import UserError
from .grids import PER_CHUNK_SCHEMES, REVISION_OF, step_of_revision
from .recipe import Recipe
from .trajectory import Trajectory, describe_nearest


@dataclass
class RunInfo:
    """Everything branchpoint knows about one run without downloading it."""

    name: str
    repo_id: str | None  # None for local trajectories
    family: str  # "pythia" | "amber" | "k2" | "crystal" | "other" (cards.FAMILIES) | "local"
    steps: list[int]  # the checkpoint grid (local: the steps on disk)
    recipe: Recipe
    architecture: dict[str, Any]
    data_order: dict[str, Any] | None
    defects: list[Defect] = field(default_factory=list)
    trust_remote_code_required: bool = False
    trajectory: Trajectory | None = None
    scheme: str = "stepN"  # revision naming: "stepN" | "amber" | "k2" | "crystal"
    notes: list[str] = field(default_factory=list)
    source: str = ""  # the run card's path (bundled or the user's); the directory for local runs
    # Where the run's own optimizer state lives (the card's [optimizer_state] table, verbatim): for Pythia the
    # NeoX checkpoints, {"kind": "neox-zero1", "repo_id", "revision": "step{N}" | a branch, "step", ...}.
    optimizer_state: dict[str, Any] | None = None
    branch_notes: list[str] = field(default_factory=list)  # printed by `branch` (e.g. an unsettled LR schedule)
    bundled: bool = False  # True for cards shipped with branchpoint
    aliases: list[str] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)  # the whole parsed card (other tables included)

    def check_step(self, step: int) -> None:
        """Raise a UserError naming the nearest available steps if ``step`` is not on the grid."""
        if not self.steps and not self.is_local:
            return  # grid known only from the Hub (Crystal); a missing branch is reported when fetching
        if step not in self.steps:
            raise UserError(
                f"step {step} is not a checkpoint of {self.name}; nearest available: "
                f"{self.describe_nearest(step)} (`branchpoint steps {self.name}` lists all)"
            )

    def describe_nearest(self, step: int) -> str:
        """``762 and 1524 (ckpt_000 and ckpt_001)``: the neighbouring grid steps, with their branch names
        where those are not just ``stepN``."""
        near = describe_nearest(self.steps, step)
        if self.scheme == "stepN" or self.family == "local" or near == "none":
            return near
        names = " and ".join(self._revision(int(s)) for s in near.split(" and "))
        return f"{near} ({names})"

    def _steps_per_ckpt(self) -> int | None:
        per = (self.data_order or {}).get("steps_per_chunk")
        return int(per) if per else None

    def _revision(self, step: int) -> str:
        if self.scheme in PER_CHUNK_SCHEMES and self._steps_per_ckpt():
            return REVISION_OF[self.scheme](step, self._steps_per_ckpt())
        return REVISION_OF[self.scheme](step)

    def revision(self, step: int) -> str:
        """The Hub branch holding checkpoint ``step`` (``step1000``, ``ckpt_001``, ...)."""
        self.check_step(step)
        if self.family == "local":
            return f"step{step}"
        return self._revision(step)

    def step_of_revision(self, name: str) -> int | None:
        """The step a branch name of this run stands for (``ckpt_012`` -> 9906 for Amber), or None."""
        if self.family == "local":
            return step_of_revision("stepN", name)
        return step_of_revision(self.scheme, name, self._steps_per_ckpt())

    @property
    def branch_refusal(self) -> str | None:
        """Why this run cannot be branched (the card's ``[data_order] not_branchable``), or None."""
        reason = (self.data_order or {}).get("not_branchable")
        return f"{self.name} cannot be branched: {reason}" if reason else None

    def has_optimizer_state(self, step: int) -> bool:
        # Released HF repos hold weights only (pythia.md §3, llm360.md §2).
        return self.trajectory is not None and self.trajectory.has_optimizer_state(step)

    def defects_at(self, step: int) -> list[Defect]:
        return [d for d in self.defects if d.affects(step)]

    @property
    def is_local(self) -> bool:
        return self.family == "local"


def _cards() -> dict[str, Card]:
    return {card.name: card for card in all_cards()}


def known_runs() -> list[dict[str, Any]]:
    """Every card (bundled first, then the user's), as its parsed TOML plus ``source`` (the card
    file) and ``origin`` (``bundled`` or the file), for ``branchpoint runs``."""
    return [{**card.data, "source": card.source, "origin": card.origin} for card in _cards().values()]


def card_of(spec: str) -> Card:
    """The card a registry name, alias or repo id names (UserError with suggestions otherwise)."""
    cards = _cards()
    name = _aliases(cards).get(str(spec).strip().lower())
    if name is None:
        raise _unknown(str(spec).strip(), _aliases(cards))
    return cards[name]


def _aliases(cards: dict[str, Card]) -> dict[str, str]:
    """Lower-cased spellings -> card name: the name, its aliases and its repo id (the first card
    with a repo id keeps it: a user card sharing a bundled repo is reached by its own name)."""
    out: dict[str, str] = {}
    for name, card in cards.items():
        out.setdefault(card.data["repo_id"].lower(), name)
    for name, card in cards.items():
        for spelling in [name, *card.data.get("aliases", [])]:
            out[spelling.lower()] = name
    return out


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith(".") or Path(spec).exists()


# Data released as chunk files (LLM360): data_order.chunked converts them; the token dtype follows the vocabulary.
CHUNK_KINDS = ("amber-chunks", "k2-chunks")


def _data_order_with_path(order: dict[str, Any], architecture: dict[str, Any] | None = None) -> dict[str, Any]:
    order = dict(order)
    order["path"] = None
    if order.get("kind") == "mmidx" and order.get("repo_id"):
        found = data_store.existing_partial_dir(order["repo_id"], order.get("revision", "main"))
        order["path"] = str(found) if found else None
    if order.get("kind") in CHUNK_KINDS and (architecture or {}).get("vocab_size"):
        order.setdefault("vocab_size", int(architecture["vocab_size"]))
    return order


def _from_card(card: Card) -> RunInfo:
    row = card.data
    order = {"repo_id": None, "repo_type": "dataset", "revision": "main", "note": "", **row["data_order"]}
    return RunInfo(
        name=row["name"],
        repo_id=row["repo_id"],
        family=row["family"],
        steps=list(row["grid"]),
        recipe=Recipe.from_dict(row["recipe"]),
        architecture=dict(row["architecture"]),
        data_order=_data_order_with_path(order, row.get("architecture")),
        defects=defects_of(list(_cards().values()), row["repo_id"]),
        trust_remote_code_required=bool(row.get("trust_remote_code", False)),
        scheme=row["scheme"],
        notes=list(row.get("notes", [])),
        source=card.source,
        optimizer_state=dict(row["optimizer_state"]) if row.get("optimizer_state") else None,
        branch_notes=list(row.get("branch_notes", [])),
        bundled=card.bundled,
        aliases=list(row.get("aliases", [])),
        card=row,
    )


def _from_trajectory(path: str) -> RunInfo:
    traj = Trajectory.open(path)
    config = traj.model_config
    arch = {"model_type": config.get("model_type"), **config}
    order = traj.data_order
    if order is not None:
        order = dict(order)
        order.setdefault("kind", "mmidx")
        order.setdefault("exactness", "exact")
        rel = order.get("path")
        if rel:
            p = Path(rel)
            order["path"] = str(p if p.is_absolute() else (traj.root / p).resolve())
        elif traj.data_dir.is_dir():
            order["path"] = str(traj.data_dir.resolve())
        else:
            order["path"] = None
    return RunInfo(
        name=traj.name, repo_id=None, family="local", steps=traj.steps, recipe=traj.recipe, architecture=arch,
        data_order=order, trajectory=traj, source=str(traj.root),
    )


# `toy` names the embedded toy trajectory (DESIGN.md, CLI contract) at its default place,
# runs/toy-<size> under the working directory (or $BRANCHPOINT_TOY_DIR): `branchpoint toy` builds it.
TOY_ALIASES = {"toy": "small", "toy-small": "small", "toy-tiny": "tiny"}


def toy_dir(spec: str) -> Path:
    """Where the toy named ``spec`` lives; raises a one-line hint when it is not built yet."""
    size = TOY_ALIASES[spec.lower()]
    path = Path(os.environ.get("BRANCHPOINT_TOY_DIR", "runs")) / f"toy-{size}"
    if not (path / "trajectory.json").is_file():
        raise UserError(f"the toy trajectory {spec!r} is not built yet; run `branchpoint toy --size {size}` (writes {path})")
    return path


def resolve_run(spec: str) -> RunInfo:
    """A registry name / repo id (case-insensitive) or a trajectory directory -> RunInfo."""
    spec = str(spec).strip()
    if spec.lower() in TOY_ALIASES and not _looks_like_path(spec):
        return _from_trajectory(str(toy_dir(spec)))
    cards = _cards()
    aliases = _aliases(cards)
    name = aliases.get(spec.lower())
    if name is not None:
        return _from_card(cards[name])
    if _looks_like_path(spec):
        return _from_trajectory(spec)
    raise _unknown(spec, aliases)


def _unknown(spec: str, aliases: dict[str, str]) -> UserError:
    close = difflib.get_close_matches(spec.lower(), list(aliases), n=3, cutoff=0.6)
    suggestion = ", ".join(dict.fromkeys(aliases[c] for c in close)) if close else None
    hint = f"did you mean {suggestion}?" if suggestion else "`branchpoint runs` lists the known runs"
    return UserError(f"unknown run {spec!r}; {hint} (a trajectory directory path also works)")
