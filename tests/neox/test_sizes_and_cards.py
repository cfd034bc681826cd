"""Pure arithmetic: the fixture writer's ZeRO-1 split gives the shard sizes the Hub shows for the real Pythia
repos (neox_ckpt.md §6.3-§6.4); and the registry facts this issue fixed or added."""

from __future__ import annotations

import pytest

from checkpoints_cache.registry import resolve_run
from resume.cli import main as cli

from .writer import best_max_elems_per_comm, pythia_group_sizes, shard_tensor_bytes, sub_partitions

# (vocab, d, layers, mp, dp, reduce_bucket_size) from the ymls; observed shard size on the Hub (neox_ckpt.md §6.4)
PUBLISHED = {
    "70m-deduped-v0": ((50304, 512, 6, 1, 32, 5e8), "26.4 MB"),
    "160m-deduped-v0": ((50304, 768, 12, 1, 64, 5e8), "30.4 MB"),
    "1b-deduped-v0": ((50304, 2048, 16, 1, 64, 5e8), "191 MB"),
    "12b-v1": ((50688, 5120, 36, 4, 64, 1.26e9), "722 MB"),
}


@pytest.mark.parametrize("repo", sorted(PUBLISHED))
def test_writer_shard_sizes_match_the_hub(repo):
    (vocab, d, layers, mp, dp, bucket), shown = PUBLISHED[repo]
    mb = shard_tensor_bytes(pythia_group_sizes(vocab, d, layers, mp), dp, int(bucket)) / 1e6
    digits = len(shown.split()[0].split(".")[1]) if "." in shown else 0
    assert f"{mb:.{digits}f} MB" == shown, (repo, mb)  # the Hub rounds to three significant figures


def test_worked_examples_of_the_split():
    n0, n1 = pythia_group_sizes(50304, 2048, 16)  # 1B, dp 64, M 5e8
    assert (n0, n1) == (1_011_351_552, 430_080)
    assert best_max_elems_per_comm(n0, int(5e8), 64) == 507_901_184
    assert sub_partitions(n0, int(5e8), 64) == (2, 7_935_956, 4_450_816)
    assert 7_935_956 - max(0, 128 * 7_935_956 - n0) == 3_485_140  # piece 127 (rank 63, interval 1) keeps this
    assert sub_partitions(n1, int(5e8), 64) == (1, 6_720, 0)
    n12 = pythia_group_sizes(50688, 5120, 36, mp=4)[0]
    k, s, pad = sub_partitions(n12, int(1.26e9), 64)
    assert (n12, k, s, pad) == (2_960_916_480, 3, 20_048_940, 888_480_000)
    keeps = [s - min(max((j + 1) * s - n12, 0), s) for j in range(k * 64)]
    assert keeps[147] == 13_722_300 and all(x == 0 for x in keeps[148:]) and all(x == s for x in keeps[:147])
    groups = pythia_group_sizes(50688, 5120, 36, mp=4)
    contiguous = 12 * sum(-(-n // 64) for n in groups)  # a plain 1/dp split, as modern ZeRO saves it
    assert round(contiguous / 1e6) == 555 and round(shard_tensor_bytes(groups, 64, int(1.26e9)) / 1e6) == 722


def test_registry_precision_and_neox_cards():
    assert resolve_run("pythia-1b").recipe.precision == "bf16"
    assert resolve_run("pythia-1b-deduped").recipe.precision == "fp16"  # pythia#171
    assert {resolve_run(n).recipe.precision for n in ("pythia-160m", "pythia-12b", "pythia-14m")} == {"fp16"}
    src = resolve_run("pythia-160m").optimizer_state
    assert src == {"kind": "neox-zero1", "repo_id": "EleutherAI/neox-ckpt-pythia-160m", "revision": "step{N}",
                   "model_parallel": 1, "note": src["note"]}
    main_only = resolve_run("pythia-70m-deduped").optimizer_state
    assert main_only["revision"] == "main" and main_only["step"] == 143000
    assert resolve_run("pythia-12b-deduped").optimizer_state["model_parallel"] == 4
    assert resolve_run("pythia-410m").optimizer_state is None
    for name in ("pythia-14m", "pythia-31m", "pythia-70m-seed3", "pythia-160m-data-seed1"):
        assert any("not established" in n for n in resolve_run(name).branch_notes), name
    assert resolve_run("pythia-160m").branch_notes == []


def test_branch_prints_the_schedule_note(capsys):
    rc = cli(["branch", "pythia-14m", "--from-step", "1000", "--steps", "1", "--no-compare"])
    err = capsys.readouterr().err
    assert rc == 2  # no data order here; the note comes first anyway
    assert "note: pythia-14m: which GPT-NeoX version trained this run (and so its LR schedule" in err
