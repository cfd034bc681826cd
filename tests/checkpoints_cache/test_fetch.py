"""Fetch through huggingface_hub against the loopback Hub stand-in: formats, verification, faults."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import load_file

from checkpoints_cache import hub as hubmod
from checkpoints_cache.errors import UserError
from checkpoints_cache.fetch import ensure_checkpoint, plan_fetch
from checkpoints_cache.registry import resolve_run

from .repos import RUN, add_oversized


def _fetch(env, step, **kw):
    return ensure_checkpoint(resolve_run(RUN), step, endpoint=env.endpoint, cache_dir=env.cache, progress=False, **kw)


def _blob_names(env) -> list[str]:
    blobs = env.cache / "models--EleutherAI--pythia-70m-deduped" / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


def test_safetensors_branch_lands_in_the_hf_cache_byte_exact(env, hub, world):
    path = _fetch(env, 0)
    assert path.parent.name == "snapshots" and path.is_relative_to(env.cache)
    want = world.branches["step0"]
    assert sorted(p.name for p in path.iterdir()) == sorted(want)
    for name, data in want.items():
        assert (path / name).read_bytes() == data
    assert (env.cache / "models--EleutherAI--pythia-70m-deduped" / "refs" / "step0").is_file()
    # the weights load and are the generated ones
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(path)
    ref = load_file(str(path / "model.safetensors"))
    assert torch.equal(model.state_dict()["gpt_neox.embed_in.weight"], ref["gpt_neox.embed_in.weight"])


def test_bin_only_branch_falls_back_to_pytorch_model_bin(env, hub, world):
    path = _fetch(env, 1)
    assert "pytorch_model.bin" in os.listdir(path) and "model.safetensors" not in os.listdir(path)
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    assert "gpt_neox.embed_in.weight" in state
    assert (path / "pytorch_model.bin").read_bytes() == world.branches["step1"]["pytorch_model.bin"]


def test_sharded_branch_fetches_index_and_every_shard(env, hub, world):
    path = _fetch(env, 4)
    shards = sorted(n for n in world.branches["step4"] if n.startswith("model-"))
    assert len(shards) >= 2
    for n in shards + ["model.safetensors.index.json"]:
        assert (path / n).read_bytes() == world.branches["step4"][n]


def test_second_fetch_downloads_nothing(env, hub, world):
    _fetch(env, 0)
    hub.log.clear()
    _fetch(env, 0)
    assert hub.requests("GET", "/lfs-cdn/") == []


def test_corrupt_body_is_removed_and_downloaded_again(env, hub, world, capfd):
    hub.inject("corrupt", "/lfs-cdn/")
    path = _fetch(env, 1000)
    assert (path / "model.safetensors").read_bytes() == world.branches["step1000"]["model.safetensors"]
    assert len(hub.requests("GET", "/lfs-cdn/")) == 2
    assert "downloading again" in capfd.readouterr().err


def test_corrupt_twice_is_a_clear_error_and_leaves_no_blob(env, hub, world):
    hub.inject("corrupt", "/lfs-cdn/", times=2)
    with pytest.raises(hubmod.ChecksumError, match=r"model.safetensors@\w+ arrived corrupt twice .*removed from the cache"):
        _fetch(env, 1000)
    sha = hashlib.sha256(world.branches["step1000"]["model.safetensors"]).hexdigest()
    assert sha not in _blob_names(env)
    snaps = list((env.cache / "models--EleutherAI--pythia-70m-deduped" / "snapshots").rglob("model.safetensors"))
    assert snaps == []


def test_dropped_connection_mid_file_is_retried(env, hub, world):
    # huggingface_hub resumes from the bytes it has already written (10 MB chunks); a tiny file
    # is simply fetched again. Either way the blob is complete and verified.
    hub.inject("drop", "/lfs-cdn/")
    path = _fetch(env, 1000)
    assert (path / "model.safetensors").read_bytes() == world.branches["step1000"]["model.safetensors"]
    gets = hub.requests("GET", "/lfs-cdn/")
    size = len(world.branches["step1000"]["model.safetensors"])
    assert len(gets) == 2 and sorted(g["bytes"] for g in gets) == [size // 2, size]


@pytest.mark.parametrize("where,method", [("/lfs-cdn/", "GET"), ("/revision/step1000", "GET"),
                                          ("/resolve/", "HEAD")])
def test_one_server_error_is_retried(env, hub, world, where, method):
    hub.inject("500", where, method=method)
    path = _fetch(env, 1000)
    assert (path / "model.safetensors").read_bytes() == world.branches["step1000"]["model.safetensors"]
    assert any(r["status"] == 500 for r in hub.log)


def test_missing_revision_on_the_hub_says_so(env, hub):
    with pytest.raises(hubmod.MissingRevisionError, match=r"revision 'step16' of EleutherAI/pythia-70m-deduped does not exist on the Hub"):
        _fetch(env, 16)


def test_revision_without_weights_is_refused(env, hub):
    with pytest.raises(UserError, match=r"@step8: this revision has no weights"):
        _fetch(env, 8)


def test_plan_lists_files_and_bytes_without_downloading(env, hub, world):
    plan = plan_fetch(resolve_run(RUN), [0, 4], endpoint=env.endpoint, cache_dir=env.cache)
    files = {(f.revision, f.filename): f.size for f in plan.files}
    assert files[("step0", "model.safetensors")] == len(world.branches["step0"]["model.safetensors"])
    total = sum(len(d) for b in ("step0", "step4") for d in world.branches[b].values())
    assert plan.weights_bytes == total
    # Nothing but metadata moved: the shard index (a small JSON, read to list the shards) and no weight.
    assert hub.requests("GET", "/lfs-cdn/") == []
    index = len(world.branches["step4"]["model.safetensors.index.json"])
    assert plan.download_bytes == total - index
    assert plan.lines()[-1].startswith("total: ")


def test_not_enough_disk_refuses_before_downloading(env, hub, world):
    add_oversized(hub, "step2000")
    try:
        plan = plan_fetch(resolve_run(RUN), [2000], endpoint=env.endpoint, cache_dir=env.cache)
        with pytest.raises(UserError, match=r"not enough disk: the fetch needs 10.00 PB"):
            plan.check_disk(env.cache)
        assert hub.requests("GET", "/lfs-cdn/") == []
    finally:
        repo = hub.repos[("model", "EleutherAI/pythia-70m-deduped")]
        repo.branches.pop("step2000")
        repo.fake_sizes.clear()


def test_crystal_needs_the_explicit_opt_in(env):
    with pytest.raises(UserError, match="--trust-remote-code"):
        ensure_checkpoint(resolve_run("crystal"), 55500, endpoint=env.endpoint, cache_dir=env.cache)


def test_offline_from_a_hand_seeded_cache(env, world, tmp_path, capfd):
    """ecosystem.md §3.5: refs/<rev> holding a sha + snapshots/<sha>/files is a cache huggingface_hub accepts."""
    from huggingface_hub import constants

    sha = "a" * 40
    repo = env.cache / "models--EleutherAI--pythia-70m-deduped"
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "step1000").write_text(sha)
    for name, data in world.branches["step1000"].items():
        (snap / name).write_bytes(data)
    constants.HF_HUB_OFFLINE = True  # restored by the env fixture's monkeypatch
    path = _fetch(env, 1000)
    assert path == snap and "offline" in capfd.readouterr().err
    with pytest.raises(UserError, match=r"step 2000 .* is not in the cache .* fetch it with network access first"):
        _fetch(env, 2000)


def test_file_choice_prefers_safetensors_and_handles_shards():
    from checkpoints_cache.fetch import choose_files

    common = {"config.json", "tokenizer.json", "README.md", ".gitattributes"}
    assert choose_files(common | {"model.safetensors", "pytorch_model.bin"}) == (
        ["config.json", "tokenizer.json", "model.safetensors"], "safetensors")
    shards = {"pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"}
    files, fmt = choose_files(common | shards)  # 6.9b step branches: .bin shards only (pythia.md §1.3)
    assert fmt == "bin" and files[-3:] == ["pytorch_model.bin.index.json", *sorted(shards - {"pytorch_model.bin.index.json"})]
    index = '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
    st = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"}
    assert choose_files(common | st, read_index=lambda name: index)[0][-2:] == sorted(st - {"model.safetensors.index.json"})
    with pytest.raises(UserError, match="references model-00002-of-00002.safetensors"):
        choose_files(common | {"model.safetensors.index.json", "model-00001-of-00002.safetensors"},
                     read_index=lambda name: index)
    with pytest.raises(UserError, match="no config.json"):
        choose_files({"model.safetensors"})
    assert "modeling_crystal.py" in choose_files(common | {"model.safetensors", "modeling_crystal.py"}, True)[0]
    assert "modeling_crystal.py" not in choose_files(common | {"model.safetensors", "modeling_crystal.py"})[0]


def test_local_trajectory_checkpoint_needs_no_hub(tmp_path):
    import json

    ckpt = tmp_path / "t" / "checkpoints" / "step3"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    meta = {"name": "t", "recipe": resolve_run("pythia-14m").recipe.to_dict()}
    (tmp_path / "t" / "trajectory.json").write_text(json.dumps(meta))
    run = resolve_run(str(tmp_path / "t"))
    assert ensure_checkpoint(run, 3) == ckpt
    with pytest.raises(UserError, match="nearest available: 3"):
        ensure_checkpoint(run, 4)


def test_a_blob_corrupted_on_disk_is_caught_offline_and_removed(env, hub, world):
    from huggingface_hub import constants

    path = _fetch(env, 1000)
    blob = (path / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))  # a flipped bit on disk: size unchanged
    constants.HF_HUB_OFFLINE = True  # restored by the env fixture's monkeypatch
    with pytest.raises(hubmod.ChecksumError, match=r"cached model.safetensors is corrupt .* removed from the cache"):
        _fetch(env, 1000)
    assert not blob.exists() and not (path / "model.safetensors").exists()
    constants.HF_HUB_OFFLINE = False
    again = _fetch(env, 1000)  # online again: fetched anew, verified
    assert (again / "model.safetensors").read_bytes() == world.branches["step1000"]["model.safetensors"]
