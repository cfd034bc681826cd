"""Run cards: the bundled TOML cards equal the old registry rows, user cards, validation, defects per repo."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from checkpoints_cache.cards import BUNDLED_DIR, CardError
from checkpoints_cache.errors import UserError
from checkpoints_cache.recipe import Recipe
from checkpoints_cache.registry import known_runs, resolve_run

from . import legacy_registry as legacy

ROOT = Path(__file__).resolve().parents[2]


def _card_text(name: str) -> str:
    return (BUNDLED_DIR / f"{name}.toml").read_text()


@pytest.mark.parametrize("row", legacy.all_rows(), ids=lambda r: r["name"])
def test_bundled_card_equals_the_old_registry_row_field_for_field(row):
    run = resolve_run(row["name"])
    assert run.bundled and Path(run.source) == BUNDLED_DIR / f"{row['name']}.toml"
    assert (run.name, run.repo_id, run.family, run.scheme) == (row["name"], row["repo_id"], row["family"], row["scheme"])
    assert run.steps == list(row["grid"])
    assert run.recipe == Recipe.from_dict(row["recipe"])
    assert run.architecture == row["architecture"]
    # every key of the old [data_order] with its value (RunInfo adds "path" and, for chunk releases, "vocab_size")
    assert {k: run.data_order.get(k) for k in row["data_order"]} == row["data_order"]
    assert {k: v for k, v in run.card["data_order"].items()} == {k: v for k, v in row["data_order"].items()
                                                                   if v not in (None, "")}
    assert run.trust_remote_code_required == bool(row.get("trust_remote_code", False))
    assert run.notes == list(row.get("notes", []))
    got = [{"issue": d.issue, "steps": None if d.steps is None else sorted(d.steps), "text": d.text} for d in run.defects]
    assert got == legacy.legacy_defects_for(row["name"], row["family"])
    assert run.optimizer_state == row.get("optimizer_state")
    assert run.branch_notes == list(row.get("branch_notes", []))


def test_the_bundled_cards_are_exactly_the_old_runs():
    assert sorted(r["name"] for r in known_runs()) == sorted(r["name"] for r in legacy.all_rows())
    assert resolve_run("LLM360/Crystal").name == "crystal"  # an alias from the card (the renamed repo)


def _user_card(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _mine(base: str = "pythia-160m", **replace: str | None) -> str:
    """A bundled card with the first line of each given key replaced (None: removed)."""
    lines = []
    for line in _card_text(base).splitlines():
        key = line.split("=")[0].strip()
        if key in replace:
            new = replace.pop(key)
            if new is not None:
                lines.append(new)
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_user_cards_from_files_and_folders(tmp_path, monkeypatch):
    folder = tmp_path / "cards"
    folder.mkdir()
    _user_card(folder, _mine(name='name = "my-run"', repo_id='repo_id = "me/my-run"'), "a.toml")
    (folder / "ignored.txt").write_text("not a card")
    single = _user_card(tmp_path, _mine(name='name = "other-run"', repo_id='repo_id = "me/other"'), "b.toml")
    monkeypatch.setenv("BRANCHPOINT_RUNS", os.pathsep.join([str(folder), str(single)]))
    run = resolve_run("my-run")
    assert run.source == str(folder / "a.toml") and not run.bundled and run.repo_id == "me/my-run"
    assert resolve_run("me/other").name == "other-run"
    origins = {r["name"]: r["origin"] for r in known_runs()}
    assert origins["my-run"] == str(folder / "a.toml") and origins["pythia-160m"] == "bundled"
    # A user card with family "pythia" has the defects its own card lists (here: copied from pythia-160m's),
    # never another repo's (pythia#205 is pythia-2.8b's).
    assert [d.issue for d in run.defects] == ["EleutherAI/pythia#83", "EleutherAI/pythia#198"]
    assert run.defects_at(1000) == [] and [d.issue for d in run.defects_at(1)] == ["EleutherAI/pythia#83"]


def test_defects_attach_to_the_repo_they_concern(tmp_path, monkeypatch):
    # a copy of the 2.8b card under another name (e.g. with another data order) concerns the same repo
    text = _mine("pythia-2.8b", name='name = "my-2.8b"', notes='notes = ["my copy"]')
    text = text.replace("[[defects]]", "[[ignored]]").split("[[ignored]]")[0]  # no defect tables in the copy
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(_user_card(tmp_path, text)))
    mine = resolve_run("my-2.8b")
    assert mine.repo_id == "EleutherAI/pythia-2.8b"
    assert [d.issue for d in mine.defects_at(1000)] == ["EleutherAI/pythia#205", "EleutherAI/pythia#195"]
    assert resolve_run("EleutherAI/pythia-2.8b").name == "pythia-2.8b"  # the repo id still names the bundled card
    # a user card for a new repo with family pythia gets only the defects it records itself
    own = _mine("pythia-2.8b", name='name = "new-run"', repo_id='repo_id = "me/new-run"').split("[[defects]]")[0]
    own += '[[defects]]\nissue = "me/new-run#1"\ntext = "step 2000 was uploaded twice"\nsteps = [2000]\n'
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(_user_card(tmp_path, own, "new.toml")))
    new = resolve_run("new-run")
    assert [d.issue for d in new.defects] == ["me/new-run#1"] and new.defects_at(1000) == []


def test_optional_tables_and_extra_data_order_keys_pass_through(tmp_path, monkeypatch):
    text = _mine("pythia-410m", name='name = "my-run"', repo_id='repo_id = "me/my-run"')  # a card without [optimizer_state]
    text = text.replace("[data_order]\n", '[data_order]\nchunk_file = "train_{k:03d}.jsonl"\nexamples_per_chunk = 1706976\n'
                        "steps_per_chunk = 762\nseed_base = 11111\norder = \"permutation\"\nchunk_order = [0, 2, 1]\n")
    text += '\n[optimizer_state]\nrepo_id = "EleutherAI/neox-ckpt-pythia-160m"\nformat = "neox"\n\n[my_table]\nwhatever = 1\n'
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(_user_card(tmp_path, text)))
    run = resolve_run("my-run")
    assert run.optimizer_state == {"repo_id": "EleutherAI/neox-ckpt-pythia-160m", "format": "neox"}
    assert run.data_order["chunk_order"] == [0, 2, 1] and run.data_order["steps_per_chunk"] == 762
    assert run.card["my_table"] == {"whatever": 1}


BAD_CARDS = [
    ({"repo_id": None}, r"top level: missing key 'repo_id'; add repo_id = "),
    ({"family": 'family = "pythai"'}, r"top level family: unknown family 'pythai'; did you mean 'pythia'\?"),
    ({"scheme": "scheme = 3"}, r"top level scheme: expected a string, got 3 \(an integer\)"),
    ({"lr": 'lr = "fast"'}, r"\[recipe\] lr: expected a number >= 0, got 'fast' \(a string\); write e.g. lr = 0.1"),
    ({"warmup_iters": "warmup_iters = 14.3"}, r"\[recipe\] warmup_iters: expected an integer >= 0, got 14.3"),
    ({"betas": "betas = [0.9]"}, r"\[recipe\] betas: expected two numbers in \[0, 1\)"),
    ({"batch_size": None}, r"\[recipe\]: missing key 'batch_size'"),
    ({"model_type": None}, r"\[architecture\]: missing key 'model_type'"),
    ({"exactness": None}, r"\[data_order\]: missing key 'exactness'"),
    ({"famliy": 'famliy = "pythia"'}, r"top level: unknown key 'famliy'; did you mean 'family'\?"),
    ({"precision": 'precision = "fp8"'}, r"\[recipe\] precision: unknown precision 'fp8'"),
]


@pytest.mark.parametrize("replace, message", BAD_CARDS, ids=[m for _, m in BAD_CARDS])
def test_a_bad_card_is_one_line_naming_file_and_key(tmp_path, monkeypatch, replace, message):
    text = _mine(**{"name": 'name = "my-run"', "repo_id": 'repo_id = "me/my-run"', **replace})
    if "famliy" in replace:
        text = text.replace('family = "pythia"\n', 'family = "pythia"\nfamliy = "pythia"\n', 1)
    path = _user_card(tmp_path, text)
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(path))
    with pytest.raises(CardError, match=message) as e:
        resolve_run("pythia-160m")  # every card is validated when the cards are read
    assert str(e.value).startswith(f"run card {path}: ") and "\n" not in str(e.value)


def test_grid_must_increase_and_names_must_be_unique(tmp_path, monkeypatch):
    text = _mine(name='name = "my-run"', repo_id='repo_id = "me/my-run"')
    bad_grid = text.replace("grid = [\n  0, 1, 2, 4,", "grid = [\n  0, 2, 1, 4,")
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(_user_card(tmp_path, bad_grid)))
    with pytest.raises(CardError, match=r"grid: not increasing at position 2 \(2 then 1\)"):
        resolve_run("my-run")
    a = _user_card(tmp_path, text, "a.toml")
    b = _user_card(tmp_path, text, "b.toml")
    monkeypatch.setenv("BRANCHPOINT_RUNS", os.pathsep.join([str(a), str(b)]))
    with pytest.raises(CardError, match=rf"run card {b}: name 'my-run' is already used by {a}"):
        resolve_run("my-run")
    dup = _mine()  # same name as the bundled card
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(_user_card(tmp_path, dup, "dup.toml")))
    with pytest.raises(CardError, match=r"name 'pythia-160m' is already used by .*pythia-160m.toml"):
        resolve_run("amber")
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(tmp_path / "nope.toml"))
    with pytest.raises(CardError, match=r"BRANCHPOINT_RUNS names .*nope.toml.*neither a card file nor a folder"):
        resolve_run("amber")
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(_user_card(tmp_path, "name = 'x\n", "syntax.toml")))
    with pytest.raises(CardError, match=r"syntax.toml is not valid TOML"):
        resolve_run("amber")


def test_unknown_run_suggests_a_close_card_name(tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(_user_card(tmp_path, _mine(name='name = "my-study-run"',
                                                                         repo_id='repo_id = "me/x"'))))
    with pytest.raises(UserError, match=r"unknown run 'my-studdy-run'; did you mean my-study-run\?"):
        resolve_run("my-studdy-run")


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BRANCHPOINT_RUNS"}
    env.update(env_extra or {}, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "resume", *args], env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_runs_cli_lists_sources_and_prints_cards(tmp_path):
    mine = _user_card(tmp_path, _mine(name='name = "my-run"', repo_id='repo_id = "me/my-run"'))
    env = {"BRANCHPOINT_RUNS": str(mine)}
    r = _cli("runs", env_extra=env)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert lines["pythia-160m"].endswith("bundled") and lines["my-run"].endswith(str(mine))
    r = _cli("runs", "--card", "my-run", env_extra=env)
    assert r.returncode == 0 and r.stdout == mine.read_text()
    r = _cli("runs", "--card", "EleutherAI/pythia-160m-deduped")
    card = tomllib.loads(r.stdout)
    assert r.returncode == 0 and card["name"] == "pythia-160m-deduped" and card["recipe"]["lr"] == 6e-4
    # the printed card, saved and renamed, is a valid user card
    copy = _user_card(tmp_path, r.stdout.replace('name = "pythia-160m-deduped"', 'name = "copy"'), "copy.toml")
    r = _cli("runs", "--family", "pythia", env_extra={"BRANCHPOINT_RUNS": str(copy)})
    assert r.returncode == 0 and "copy " in r.stdout
    r = _cli("runs", "--card", "pythia-160m-dedupd")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        r.stderr.strip()] and "did you mean pythia-160m-deduped" in r.stderr
    bad = _user_card(tmp_path, _mine(name='name = "my-run"', repo_id='repo_id = "me/my-run"', lr='lr = "x"'), "bad.toml")
    r = _cli("runs", env_extra={"BRANCHPOINT_RUNS": str(bad)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and f"run card {bad}: [recipe] lr" in r.stderr
