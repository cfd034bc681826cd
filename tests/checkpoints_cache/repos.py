"""Small generated repos laid out like the released ones, for the Hub stand-in.

``EleutherAI/pythia-70m-deduped`` (a registry run, so the CLI resolves it) with tiny GPTNeoX
weights made by transformers from a tiny config:
  step0      model.safetensors (seed 0)
  step1      pytorch_model.bin only (seed 1)
  step2      model.safetensors byte-identical to step0 (a pythia#205-style duplicate)
  step4      sharded safetensors: model-0000k-of-0000n.safetensors + index (seed 4)
  step8      config.json only, no weights (missing files)
  step1000   model.safetensors (seed 1000)
  step143000 and main: the same files (main equals the last step, pythia.md §1.2)
  bigstep    -- not a grid step; see ``add_oversized``.
Every other grid step has no branch (missing revisions).

``EleutherAI/pile-deduped-pythia-preshuffled``: ``document.idx`` + 21 shards written with
``data_order.mmidx.write_sharded`` (rows of 2049 uint16 tokens, odd shard size so rows straddle
shard edges), ``NUM_ROWS`` rows: enough for global batches 0..6 at B = 1024.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np

from .hub_standin import HubStandin

MODEL_REPO = "EleutherAI/pythia-70m-deduped"
RUN = "pythia-70m-deduped"
DATA_REPO = "EleutherAI/pile-deduped-pythia-preshuffled"
BATCH, ROW = 1024, 2049
NUM_ROWS = 7 * BATCH + 100  # batches 0..6 whole, plus a partial tail
AUX = {"tokenizer_config.json": b'{"model_max_length": 2048}\n', "special_tokens_map.json": b"{}\n"}


def tiny_config():
    from transformers import GPTNeoXConfig

    # The Pythia architecture (parallel residual, 25% rotary, untied), tiny.
    return GPTNeoXConfig(vocab_size=96, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, rotary_pct=0.25,
                         use_parallel_residual=True, tie_word_embeddings=False)


def _model(seed: int):
    import torch
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(tiny_config())


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def safetensors_files(seed: int, max_shard_size: str | None = None) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        _model(seed).save_pretrained(d, **kwargs)
        files = _read_folder(Path(d))
    return {**files, **AUX}


def bin_files(seed: int) -> dict[str, bytes]:
    """config.json + pytorch_model.bin (a plain torch.save of the state dict, as Pythia's step branches hold)."""
    import torch

    model = _model(seed)
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, buf)
    config = json.dumps(model.config.to_dict(), indent=2).encode()
    return {"config.json": config, "pytorch_model.bin": buf.getvalue(), **AUX}


def build_model_repo(hub: HubStandin) -> dict[str, dict[str, bytes]]:
    branches: dict[str, dict[str, bytes]] = {}
    branches["step0"] = safetensors_files(0)
    branches["step1"] = bin_files(1)
    branches["step2"] = dict(branches["step0"])
    branches["step4"] = safetensors_files(4, max_shard_size="8KB")
    branches["step8"] = {"config.json": branches["step0"]["config.json"], **AUX}
    branches["step1000"] = safetensors_files(1000)
    branches["step143000"] = safetensors_files(143000)
    branches["main"] = dict(branches["step143000"])
    for name, files in branches.items():
        hub.add_commit("model", MODEL_REPO, name, files)
    return branches


def add_oversized(hub: HubStandin, branch: str = "step2000", claimed: int = 10**16) -> None:
    """A branch whose listing claims a 10 PB weight file (for the disk-space refusal)."""
    files = safetensors_files(2000)
    hub.add_commit("model", MODEL_REPO, branch, files)
    hub.repos[("model", MODEL_REPO)].fake_sizes["model.safetensors"] = claimed


def data_rows() -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.integers(0, 50277, size=(NUM_ROWS, ROW), dtype=np.uint16)


def build_data_repo(hub: HubStandin, rows: np.ndarray) -> dict[str, bytes]:
    from data_order.mmidx import write_sharded

    with tempfile.TemporaryDirectory() as d:
        total = rows.size * 2
        shard = total // 20 - 777  # odd size, so rows straddle shard edges; the last shard is the shortest
        write_sharded(d, iter(rows), dtype=np.uint16, num_shards=21, shard_size=shard)
        files = _read_folder(Path(d))
    hub.add_commit("dataset", DATA_REPO, "main", files)
    return files
