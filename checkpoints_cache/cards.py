"""Run cards: every released run is a TOML file (read with ``tomllib``), validated when read.

Bundled cards live in ``checkpoints_cache/runs/*.toml`` (package data). A user adds runs with
``BRANCHPOINT_RUNS``: card files or folders of ``*.toml`` (not searched recursively), separated by
``os.pathsep``. One file holds one card::

    name = "pythia-160m-deduped"            # what RUN arguments say
    repo_id = "EleutherAI/pythia-160m-deduped"
    family = "pythia"                       # FAMILIES
    scheme = "stepN"                        # revision naming: grids.REVISION_OF
    grid = [0, 1, 2, 4, ..., 143000]        # checkpoint steps, increasing ([] = known only from the Hub)
    aliases = []                            # optional: more names that resolve to this card
    notes = []                              # optional
    trust_remote_code = false               # optional
    branch_notes = []                       # optional: printed by `branch` (e.g. an unsettled LR schedule)
    [recipe]        # the Recipe fields, as trajectory.json's "recipe"
    [architecture]  # Hugging Face config.json keys (model_type and the rest)
    [data_order]    # kind, repo_id, repo_type, revision, batch_size, seq_len, exactness, and any extra keys
    [optimizer_state]  # optional, kept verbatim (RunInfo.optimizer_state)
    [[defects]]     # optional: issue, text, steps (omitted = every step) -- known problems of THIS repo

Other optional tables may be added (kept in ``Card.data`` untouched); unknown top-level keys that
are not tables are refused with a "did you mean", as is a table whose name is one letter away
from a known one. Every problem is one line naming the file, the key and what would work.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .grids import REVISION_OF

BUNDLED_DIR = Path(__file__).with_name("runs")
ENV_VAR = "BRANCHPOINT_RUNS"

# "other": a run of a family branchpoint has no special knowledge of (plain stepN-style grid).
FAMILIES = ("pythia", "amber", "k2", "crystal", "other")
PRECISIONS = ("fp16", "bf16", "fp32")

TOP_REQUIRED = ("name", "repo_id", "family", "scheme", "grid")
TOP_OPTIONAL = ("aliases", "notes", "trust_remote_code", "branch_notes")
TABLES_REQUIRED = ("recipe", "architecture", "data_order")
TABLES_OPTIONAL = ("optimizer_state", "defects")

RECIPE_FLOATS = ("lr", "min_lr", "eps", "weight_decay", "grad_clip")
RECIPE_INTS = ("warmup_iters", "decay_iters", "train_iters", "batch_size", "seq_len", "seed")
RECIPE_KEYS = RECIPE_FLOATS + RECIPE_INTS + ("schedule", "betas", "precision", "extra", "weight_decay_scope")
WEIGHT_DECAY_SCOPES = ("matrices", "all")  # resume.optim.WEIGHT_DECAY_SCOPES (checked there too)

DATA_REQUIRED = ("kind", "repo_type", "revision", "batch_size", "seq_len", "exactness")
# Keys whose type is known; any other [data_order] key (chunk_file, steps_per_chunk, ...) passes through.
DATA_TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str, "repo_id": str, "repo_type": str, "revision": str, "batch_size": int, "seq_len": int,
    "exactness": str, "note": str,
}
ARCH_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings")
DEFECT_KEYS = ("issue", "text", "steps")


class CardError(UserError):
    """A run card that cannot be used: the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Card:
    """One validated card: its parsed TOML and where it came from."""

    path: Path
    data: dict[str, Any]
    bundled: bool

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def origin(self) -> str:
        """``bundled`` or the user card's path (what ``branchpoint runs`` shows)."""
        return "bundled" if self.bundled else str(self.path)

    def text(self) -> str:
        return self.path.read_text()


# -- validation ---------------------------------------------------------------------------------
def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _closest(key: str, known: tuple[str, ...] | list[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=cutoff)
    return f"did you mean {close[0]!r}? " if close else ""


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str, fix: str) -> CardError:
        return CardError(f"run card {self.path}: {where}: {problem}; {fix}")

    def need(self, table: dict[str, Any], key: str, where: str, check: Callable[[Any], bool], what: str,
             example: str) -> Any:
        if key not in table:
            raise self.fail(where, f"missing key {key!r}", f"add {example}")
        value = table[key]
        if not check(value):
            raise self.fail(f"{where} {key}", f"expected {what}, got {value!r} ({_type_name(value)})",
                            f"write e.g. {example}")
        return value

    def optional(self, table: dict[str, Any], key: str, where: str, check: Callable[[Any], bool], what: str,
                 example: str) -> None:
        if key in table:
            self.need(table, key, where, check, what, example)

    def unknown(self, table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in known:
                raise self.fail(where, f"unknown key {key!r}",
                                f"{_closest(key, known)}known keys: {', '.join(known)}")


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)


def validate(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check one parsed card; return it unchanged or raise CardError naming file and key."""
    c = _Checker(path)
    top = "top level"
    # top-level keys: scalars and lists must be known; tables may be others' additions
    known_scalars = TOP_REQUIRED + TOP_OPTIONAL
    known_tables = TABLES_REQUIRED + TABLES_OPTIONAL
    for key, value in data.items():
        is_table = isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(x, dict) for x in value))
        if key in known_scalars or key in known_tables:
            continue
        if not is_table:
            raise c.fail(top, f"unknown key {key!r}",
                         f"{_closest(key, known_scalars + known_tables)}known keys: {', '.join(known_scalars)}")
        close = difflib.get_close_matches(key, list(known_tables), n=1, cutoff=0.8)
        if close:
            raise c.fail(f"[{key}]", "unknown table", f"did you mean [{close[0]}]?")

    c.need(data, "name", top, lambda v: isinstance(v, str) and v.strip() == v and v != "" and " " not in v,
           "a run name without spaces", 'name = "my-run"')
    c.need(data, "repo_id", top, lambda v: isinstance(v, str) and v.count("/") == 1 and all(v.split("/")),
           "a Hub repo id Org/Name", 'repo_id = "EleutherAI/pythia-160m"')
    family = c.need(data, "family", top, lambda v: isinstance(v, str), "a string", 'family = "pythia"')
    if family not in FAMILIES:
        raise c.fail(f"{top} family", f"unknown family {family!r}",
                     f"{_closest(family, FAMILIES)}use one of {', '.join(FAMILIES)}")
    scheme = c.need(data, "scheme", top, lambda v: isinstance(v, str), "a string", 'scheme = "stepN"')
    if scheme not in REVISION_OF:
        raise c.fail(f"{top} scheme", f"unknown revision scheme {scheme!r}",
                     f"{_closest(scheme, tuple(REVISION_OF))}use one of {', '.join(REVISION_OF)}")
    grid = c.need(data, "grid", top, _int_list, "a list of checkpoint steps (integers >= 0)", "grid = [0, 1000, 2000]")
    for i in range(1, len(grid)):
        if grid[i] <= grid[i - 1]:
            raise c.fail(f"{top} grid", f"not increasing at position {i} ({grid[i - 1]} then {grid[i]})",
                         "list each checkpoint step once, in increasing order")
    c.optional(data, "aliases", top, _str_list, "a list of strings", 'aliases = ["Org/Other-Name"]')
    c.optional(data, "notes", top, _str_list, "a list of strings", 'notes = ["what to know"]')
    c.optional(data, "trust_remote_code", top, lambda v: isinstance(v, bool), "true or false", "trust_remote_code = false")
    c.optional(data, "branch_notes", top, _str_list, "a list of strings", 'branch_notes = ["what branch should say"]')

    for t in TABLES_REQUIRED:
        if t not in data:
            raise c.fail(f"[{t}]", "missing table", f"add a [{t}] table (`branchpoint runs --card pythia-160m` shows one)")
        if not isinstance(data[t], dict):
            raise c.fail(t, f"expected a table, got {_type_name(data[t])}", f"write it as a [{t}] table")
    _validate_recipe(c, data["recipe"])
    _validate_architecture(c, data["architecture"])
    _validate_data_order(c, data["data_order"], data["recipe"])
    if "optimizer_state" in data and not isinstance(data["optimizer_state"], dict):
        raise c.fail("optimizer_state", f"expected a table, got {_type_name(data['optimizer_state'])}",
                     "write it as an [optimizer_state] table")
    if "defects" in data:
        _validate_defects(c, data["defects"])
    return data


def _validate_recipe(c: _Checker, rec: dict[str, Any]) -> None:
    where = "[recipe]"
    c.unknown(rec, RECIPE_KEYS, where)
    for k in RECIPE_FLOATS:
        c.need(rec, k, where, lambda v: _is_number(v) and v >= 0, "a number >= 0", f"{k} = 0.1")
    for k in RECIPE_INTS:
        positive = k in ("batch_size", "seq_len")
        c.need(rec, k, where, lambda v, p=positive: _is_int(v) and (v > 0 if p else v >= 0),
               "an integer " + ("> 0" if positive else ">= 0"), f"{k} = {1024 if k == 'batch_size' else 1000}")
    c.need(rec, "schedule", where, lambda v: isinstance(v, str) and v != "", "a schedule name", 'schedule = "neox-cosine"')
    c.need(rec, "betas", where, lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
           "two numbers in [0, 1)", "betas = [0.9, 0.95]")
    precision = c.need(rec, "precision", where, lambda v: isinstance(v, str), "a string", 'precision = "fp16"')
    if precision not in PRECISIONS:
        raise c.fail(f"{where} precision", f"unknown precision {precision!r}",
                     f"{_closest(precision, PRECISIONS)}use one of {', '.join(PRECISIONS)}")
    c.optional(rec, "extra", where, lambda v: isinstance(v, dict), "a table", "[recipe.extra]")
    scope = rec.get("weight_decay_scope", "matrices")
    if scope not in WEIGHT_DECAY_SCOPES:
        raise c.fail(f"{where} weight_decay_scope", f"unknown scope {scope!r}",
                     f"{_closest(str(scope), WEIGHT_DECAY_SCOPES)}use one of {', '.join(WEIGHT_DECAY_SCOPES)}")
    if rec["min_lr"] > rec["lr"]:
        raise c.fail(f"{where} min_lr", f"min_lr {rec['min_lr']} is above lr {rec['lr']}", "the floor must be <= the peak")


def _validate_architecture(c: _Checker, arch: dict[str, Any]) -> None:
    where = "[architecture]"
    c.need(arch, "model_type", where, lambda v: isinstance(v, str) and v != "", "a transformers model_type",
           'model_type = "gpt_neox"')
    for k in ARCH_INTS:
        c.optional(arch, k, where, lambda v: _is_int(v) and v > 0, "a positive integer", f"{k} = 2048")


def _validate_data_order(c: _Checker, order: dict[str, Any], rec: dict[str, Any]) -> None:
    where = "[data_order]"
    for k in DATA_REQUIRED:
        typ = DATA_TYPES[k]
        ex = {"kind": 'kind = "mmidx"', "repo_type": 'repo_type = "dataset"', "revision": 'revision = "main"',
              "exactness": 'exactness = "exact"'}.get(k, f"{k} = 1024")
        c.need(order, k, where, lambda v, t=typ: isinstance(v, t) and not isinstance(v, bool), f"{_type_name(typ())}", ex)
    for k, typ in DATA_TYPES.items():
        c.optional(order, k, where, lambda v, t=typ: isinstance(v, t) and not isinstance(v, bool), f"{_type_name(typ())}",
                   f'{k} = "..."' if typ is str else f"{k} = 1")
    if order["kind"] != "unknown" and "repo_id" not in order:
        raise c.fail(where, f"missing key 'repo_id' (the dataset repo of kind {order['kind']!r})",
                     'add repo_id = "Org/dataset", or kind = "unknown" when the order is not published')
    if order["kind"] == "mmidx":
        for k in ("batch_size", "seq_len"):
            if order[k] != rec[k]:
                raise c.fail(f"{where} {k}", f"{order[k]} differs from [recipe] {k} {rec[k]}",
                             "the data order's global batch must be the recipe's")


def _validate_defects(c: _Checker, defects: Any) -> None:
    if not (isinstance(defects, list) and all(isinstance(d, dict) for d in defects)):
        raise c.fail("defects", f"expected [[defects]] tables, got {_type_name(defects)}",
                     'write [[defects]] tables with issue = "...", text = "...", steps = [...]')
    for i, d in enumerate(defects):
        where = f"[[defects]] #{i + 1}"
        c.unknown(d, DEFECT_KEYS, where)
        c.need(d, "issue", where, lambda v: isinstance(v, str) and v != "", "a string", 'issue = "Org/repo#123"')
        c.need(d, "text", where, lambda v: isinstance(v, str) and v != "", "a string", 'text = "what is wrong"')
        c.optional(d, "steps", where, _int_list, "a list of steps (omit it for every step)", "steps = [0, 1]")


# -- reading ------------------------------------------------------------------------------------
def read_card(path: str | os.PathLike, bundled: bool = False) -> Card:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise CardError(f"run card {path} does not exist; check {ENV_VAR}") from None
    except tomllib.TOMLDecodeError as e:
        raise CardError(f"run card {path} is not valid TOML ({e}); fix the syntax (`branchpoint runs --card pythia-160m` "
                        "prints a valid card)") from None
    return Card(path, validate(data, path), bundled)


def user_card_paths(value: str | None = None) -> list[Path]:
    """The card files ``BRANCHPOINT_RUNS`` names (files, or folders whose ``*.toml`` files are read)."""
    value = os.environ.get(ENV_VAR, "") if value is None else value
    out: list[Path] = []
    for part in value.split(os.pathsep):
        if not part.strip():
            continue
        p = Path(part).expanduser()
        if p.is_dir():
            out.extend(sorted(p.glob("*.toml")))
        elif p.is_file():
            out.append(p)
        else:
            raise CardError(f"{ENV_VAR} names {str(p)!r}, which is neither a card file nor a folder; "
                            f"list .toml files or folders separated by {os.pathsep!r}")
    return out


def _listing_key(card: Card) -> tuple[int, int, str]:
    """Family, then model size (layers x width^2), then name: the order ``branchpoint runs`` lists."""
    arch = card.data["architecture"]
    layers = arch.get("num_hidden_layers", arch.get("n_layer", 0))
    width = arch.get("hidden_size", arch.get("n_embd", 0))
    return FAMILIES.index(card.data["family"]), int(layers) * int(width) ** 2, card.name


@lru_cache(maxsize=1)
def bundled_cards() -> tuple[Card, ...]:
    return tuple(sorted((read_card(p, bundled=True) for p in BUNDLED_DIR.glob("*.toml")), key=_listing_key))


@lru_cache(maxsize=8)
def _user_cards(stamp: tuple[tuple[str, int, int], ...]) -> tuple[Card, ...]:
    return tuple(read_card(p) for p, _, _ in stamp)


def all_cards() -> list[Card]:
    """Bundled cards, then the user's, checked for clashing names (a name or alias used twice)."""
    stamp = []
    for p in user_card_paths():
        st = p.stat()
        stamp.append((str(p), st.st_mtime_ns, st.st_size))
    cards = list(bundled_cards()) + list(_user_cards(tuple(stamp)))
    seen: dict[str, Card] = {}
    for card in cards:
        for spelling in [card.name, *card.data.get("aliases", [])]:
            other = seen.get(spelling.lower())
            if other is not None and other is not card:
                raise CardError(
                    f"run card {card.path}: name {spelling!r} is already used by {other.path}; "
                    "give one of them another name (names and aliases must be unique across cards)"
                )
            seen[spelling.lower()] = card
    return cards
