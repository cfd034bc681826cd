"""`branchpoint gstack-plan`: the README's Llama examples to the printed precision, and bad input."""

from __future__ import annotations

import pytest

from resume.cli import main


@pytest.mark.parametrize(
    "params, tokens, d",
    [("7B", "2T", "11.11B"), ("8B", "15T", "6.58B"), ("13B", "2T", "15.84B"), ("70B", "2T", "42.48B")],
)
def test_readme_llama_examples(capsys, params, tokens, d):
    assert main(["gstack-plan", "--target-params", params, "--tokens", tokens]) == 0
    assert f"grow at d = {d} tokens" in capsys.readouterr().out


def test_plan_wording_counts_the_base_model_with_its_embeddings(capsys):
    assert main(["gstack-plan", "--target-params", "7B", "--tokens", "2T"]) == 0
    out = capsys.readouterr().out
    assert "non-embedding parameters N/g" not in out  # N is a total: N/g is not the base model's non-embedding count
    assert "1/4 of its non-embedding parameters" in out
    assert main(["gstack-plan", "--target-params", "7B", "--tokens", "2T", "--embedding-params", "1B"]) == 0
    assert "base model: (N - E)/g + E = 2.50B parameters (1.50B non-embedding, E = 1.00B)" in capsys.readouterr().out


def test_budget_flops_equals_tokens_form(capsys):
    assert main(["gstack-plan", "--target-params", "7e9", "--budget-flops", "8.4e22", "--tokens-per-step", "2097152"]) == 0
    out = capsys.readouterr().out
    assert "grow at d = 11.11B tokens" in out
    assert "d = 5300 optimizer steps" in out  # ceil(1.11130e10 / 2097152) = ceil(5299.07)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target-params", "seven", "--tokens", "2T"], "--target-params 'seven' is not a number"),
        (["--target-params", "7B", "--tokens=-2T"], "--tokens '-2T' is not a number"),
        (["--target-params", "7B", "--budget-flops", "0"], "--budget-flops '0' must be a positive number"),
        (["--target-params", "7B", "--tokens", "2T", "--g", "0"], "--g 0"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    assert main(["gstack-plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
