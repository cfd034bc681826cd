"""Pythia's released eval JSONs (lm-eval v0.3 schema) on fixtures written in that schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checkpoints_cache.errors import UserError
from resume.evaluation.published import normalize_model, read_published


def pythia_json(path: Path, model: str, step: int, shots: int, results: dict) -> Path:
    """A file as pythia@a19eecb:evals/ has them (users_and_suites.md §4.2)."""
    obj = {"results": results, "versions": {t: 0 for t in results},
           "config": {"model": "hf-causal", "model_args": f"pretrained=EleutherAI/{model},revision=step{step}",
                      "num_fewshot": shots, "batch_size": 16, "device": "cuda:7", "no_cache": True, "limit": None,
                      "bootstrap_iters": 100000, "description_dict": {}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


RES = {"piqa": {"acc": 0.627, "acc_stderr": 0.011, "acc_norm": 0.616, "acc_norm_stderr": 0.0113},
       "lambada_openai": {"ppl": 38.06, "ppl_stderr": 1.44, "acc": 0.328, "acc_stderr": 0.0065}}


def test_rows_keyed_on_config_not_file_names(tmp_path):
    d = tmp_path / "evals" / "pythia-v1" / "pythia-160m"
    pythia_json(d / "zero-shot" / "160m_step143000.json", "pythia-v1.1-160m", 143000, 0, RES)
    # like pythia-1b-bf16's four zero-shot files named -5shot: the config says 0 shots and step 1000
    pythia_json(d / "zero-shot" / "160m-5shot_step512.json", "pythia-v1.1-160m", 1000, 0,
                {"piqa": {"acc": 0.59, "acc_stderr": 0.012}})
    pythia_json(d / "five-shot" / "160m-5shot_step143000.json", "pythia-v1.1-160m", 143000, 5,
                {"piqa": {"acc": 0.64, "acc_stderr": 0.011}})
    pub = read_published([tmp_path / "evals"], parent_name="pythia-160m", num_fewshot=0)
    df = pub.rows
    assert pub.files == 3 and pub.warnings == []  # pythia-v1.1-160m is the parent pythia-160m
    assert set(df.run) == {"published:pythia-v1.1-160m"} and set(df.weights) == {"published"}
    assert sorted(set(df.step)) == [1000, 143000]  # from revision=stepN, not from the file name (step512)
    v = df.set_index(["step", "metric"]).value
    assert v[(143000, "task/piqa/acc")] == 0.627 and v[(143000, "task/piqa/acc_stderr")] == 0.011
    assert v[(143000, "task/lambada_openai/perplexity")] == 38.06  # v0.3 ppl is 0.4's perplexity
    assert v[(143000, "task/lambada_openai/perplexity_stderr")] == 1.44
    assert v[(1000, "task/piqa/acc")] == 0.59
    five = read_published([tmp_path / "evals"], parent_name="pythia-160m", num_fewshot=5).rows
    assert five.value.tolist() == [0.64, 0.011] and set(five.step) == {143000}
    only = read_published([d / "zero-shot" / "160m_step143000.json"], tasks=["piqa"]).rows
    assert set(only.metric) == {"task/piqa/acc", "task/piqa/acc_stderr", "task/piqa/acc_norm", "task/piqa/acc_norm_stderr"}


def test_other_model_name_warns_and_is_kept(tmp_path):
    f = pythia_json(tmp_path / "a.json", "pythia-v1.1-410m", 3000, 0, RES)
    pub = read_published([f], parent_name="pythia-160m", num_fewshot=0)
    assert len(pub.rows) == 8 and len(pub.warnings) == 1
    assert "pythia-v1.1-410m" in pub.warnings[0] and "pythia-160m" in pub.warnings[0]
    none = read_published([f], parent_name="pythia-410m", num_fewshot=5)
    assert none.rows.empty and "num_fewshot 5" in none.warnings[0]
    assert normalize_model("EleutherAI/pythia-v1.1-160m-deduped") == "pythia-160m-deduped"


@pytest.mark.parametrize("content, expect", [
    ({"results": {"piqa": {"acc,none": 0.6, "acc_stderr,none": 0.01}}, "versions": {}, "config": {"model": "hf"}},
     "lm-eval 0.4 output"),
    ({"accuracy": 0.5}, "expected top-level results, versions and config"),
    ({"results": {"piqa": {"acc": 0.6}}, "versions": {}, "config": {"model_args": "pretrained=x", "num_fewshot": 0}},
     "names no revision=stepN"),
    ("not json at all {", "not a JSON file"),
])
def test_another_schema_is_one_clear_line(tmp_path, content, expect):
    f = tmp_path / "bad.json"
    f.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError) as e:
        read_published([f])
    msg = str(e.value)
    assert "\n" not in msg and expect in msg and str(f) in msg


def test_missing_paths(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        read_published([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .json file"):
        read_published([tmp_path / "empty"])
