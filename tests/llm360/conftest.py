"""Tiny LLM360-shaped releases on the loopback Hub stand-in, with run cards that scale the recipes down.

``amber-tiny`` (Amber-shaped): a tiny LlamaForCausalLM at revisions ``ckpt_000 .. ckpt_004`` of
``test/amber-tiny`` (ckpt_k = the weights after (k+1)*3 updates) and ``test/amber-tiny-data`` with
one chunk ``train/train_00k.jsonl`` per checkpoint: 13 lines of ``{"token_ids": [9 ints], "source": ...}``
in subset order (arxiv, c4, github). Card: batch 4, seq_len 8, examples_per_chunk 13, so 3 steps per
chunk (one line dropped), seed_base 11111, order seeded.

``k2-tiny`` (K2-shaped): ``test/k2-tiny`` at ``ckpt_1 .. ckpt_4`` (ckpt_k = 2k updates, 1-based as K2),
``test/k2-tiny-data`` with ``chunk_{i}.jsonl`` of 8 lines (``subset_name`` labels), read in the chunk
order [0, 2, 1, 3] (a K2-style move), 2 steps of 4 rows per chunk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ..checkpoints_cache.hub_standin import HubStandin

REPO_ROOT = Path(__file__).resolve().parents[2]
CARD_CLI = Path(__file__).with_name("card_cli.py")

VOCAB, B, T = 64, 4, 8  # rows of T + 1 = 9 tokens
AMBER = dict(name="amber-tiny", model="test/amber-tiny", data="test/amber-tiny-data", E=13, S=3, chunks=5, seed=11111)
K2 = dict(name="k2-tiny", model="test/k2-tiny", data="test/k2-tiny-data", E=8, S=2, chunks=4, order=[0, 2, 1, 3])
SOURCES = ["arxiv"] * 5 + ["c4"] * 4 + ["github"] * 4  # subset order, as AmberDatasets' chunks


def tiny_llama(seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, max_position_embeddings=16, rms_norm_eps=1e-6,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).float()


def _saved(seed: int) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        tiny_llama(seed).save_pretrained(d)
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def amber_chunk(k: int) -> list[dict]:
    rng = np.random.default_rng(1000 + k)
    return [{"token_ids": rng.integers(0, VOCAB, T + 1).tolist(), "source": SOURCES[i]} for i in range(AMBER["E"])]


def k2_chunk(k: int) -> list[dict]:
    rng = np.random.default_rng(2000 + k)
    return [{"token_ids": rng.integers(0, VOCAB, T + 1).tolist(), "subset_name": ["web", "code"][i % 2],
             "line_idx_in_src": i} for i in range(K2["E"])]


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def build_releases(hub: HubStandin) -> None:
    for k in range(AMBER["chunks"]):
        hub.add_commit("model", AMBER["model"], f"ckpt_{k:03d}", _saved(100 + k))
    hub.add_commit("dataset", AMBER["data"], "main",
                   {f"train/train_{k:03d}.jsonl": jsonl(amber_chunk(k)) for k in range(AMBER["chunks"])})
    # Revision "broken": chunk 2 has a line without token_ids, chunk 3 a row of the wrong length.
    no_tokens, short = amber_chunk(2), amber_chunk(3)
    del no_tokens[4]["token_ids"]
    short[6]["token_ids"] = short[6]["token_ids"][:-2]
    hub.add_commit("dataset", AMBER["data"], "broken", {"train/train_002.jsonl": jsonl(no_tokens),
                                                        "train/train_003.jsonl": jsonl(short)})
    for k in range(1, K2["chunks"] + 1):
        hub.add_commit("model", K2["model"], f"ckpt_{k}", _saved(200 + k))
    hub.add_commit("dataset", K2["data"], "main", {f"chunk_{i}.jsonl": jsonl(k2_chunk(i)) for i in range(K2["chunks"])})


RECIPE = """
[recipe]
lr = 0.001
min_lr = 0.0001
warmup_iters = 2
decay_iters = 15
train_iters = 15
schedule = "linear-warmup-cosine"
betas = [0.9, 0.95]
eps = 1e-08
weight_decay = 0.1
grad_clip = 1.0
batch_size = 4
seq_len = 8
precision = "bf16"
seed = 11111
weight_decay_scope = "{scope}"

[architecture]
model_type = "llama"
architectures = ["LlamaForCausalLM"]
num_hidden_layers = 2
hidden_size = 16
intermediate_size = 32
num_attention_heads = 2
vocab_size = 64
max_position_embeddings = 16
"""


def _card(what: str, run: dict, family: str, grid: list[int], scope: str, **data_order) -> str:
    lines = [f"# A scaled-down {what}-shaped release (tests/llm360/conftest.py)", f'name = "{run["name"]}"',
             f'repo_id = "{run["model"]}"', f'family = "{family}"', f'scheme = "{family}"', f"grid = {grid}",
             RECIPE.format(scope=scope), "[data_order]"]
    order = {"repo_id": run["data"], "repo_type": "dataset", "revision": "main", "batch_size": B, "seq_len": T,
             "n_chunks": run["chunks"], "examples_per_chunk": run["E"], "steps_per_chunk": run["S"], **data_order}
    lines += [f"{k} = {json.dumps(v)}" for k, v in order.items()]  # JSON scalars and lists are valid TOML
    return "\n".join(lines) + "\n"


def amber_card_text() -> str:
    return _card("Amber", AMBER, "amber", [(k + 1) * AMBER["S"] for k in range(AMBER["chunks"])], "all",
                 kind="amber-chunks", chunk_file="train/train_{k:03d}.jsonl", seed_base=AMBER["seed"], order="seeded",
                 exactness="rows-of-chunk exact, order approximate")


def k2_card_text() -> str:
    return _card("K2", K2, "k2", [k * K2["S"] for k in range(1, K2["chunks"] + 1)], "matrices",
                 kind="k2-chunks", chunk_file="chunk_{k}.jsonl", chunk_order=[[c, c] for c in K2["order"]],
                 order="sequential", label_field="subset_name",
                 exactness="exact if the released chunks are the shuffled files (unverified)")


@pytest.fixture(scope="session")
def llm360_hub() -> HubStandin:
    hub = HubStandin().start()
    build_releases(hub)
    yield hub
    hub.stop()


@dataclass
class Env:
    root: Path
    endpoint: str
    cards: list[Path]

    @property
    def home(self) -> Path:
        return self.root / "hf"

    @property
    def cache(self) -> Path:
        return self.home / "hub"

    @property
    def bp_home(self) -> Path:
        return self.home / "branchpoint"

    def vars(self, offline: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BRANCHPOINT_"))}
        env.update(HF_ENDPOINT=self.endpoint, HF_HOME=str(self.home), HF_HUB_CACHE=str(self.cache),
                   BRANCHPOINT_HOME=str(self.bp_home), HF_HUB_OFFLINE="1" if offline else "0",
                   BRANCHPOINT_RETRY_BASE_S="0.01", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
                   OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        return env

    def cli(self, *commands: list[str], offline: bool = False, timeout: int = 600) -> list[dict]:
        """Each ``branchpoint ARGS`` of ``commands``, in turn, in one subprocess with the test cards and the stand-in
        as HF_ENDPOINT; returns ``[{"args", "rc", "stdout", "stderr"}]``."""
        results = self.root / f"cli-{len(list(self.root.glob('cli-*.json')))}.json"
        argv: list[str] = []
        for i, args in enumerate(commands):
            argv += (["--next"] if i else []) + [str(a) for a in args]
        cmd = [sys.executable, str(CARD_CLI), str(results), *map(str, self.cards), "--", *argv]
        proc = subprocess.run(cmd, env=self.vars(offline), capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.root))
        assert proc.returncode == 0 and results.is_file(), proc.stderr[-3000:]
        return json.loads(results.read_text())

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The same cards and BRANCHPOINT_HOME for in-process calls (offline: the suite sets HF_HUB_OFFLINE=1)."""
        from .card_cli import install_cards

        monkeypatch.setenv("BRANCHPOINT_HOME", str(self.bp_home))
        install_cards([str(p) for p in self.cards], monkeypatch.setattr, monkeypatch.setenv)


def make_env(root: Path, endpoint: str) -> Env:
    root.mkdir(parents=True, exist_ok=True)
    cards = []
    for name, text in (("amber-tiny.toml", amber_card_text()), ("k2-tiny.toml", k2_card_text())):
        (root / "cards").mkdir(exist_ok=True)
        (root / "cards" / name).write_text(text)
        cards.append(root / "cards" / name)
    return Env(root, endpoint, cards)


SCENARIO = {  # the CLI runs every end-to-end test reads, in this order, in one subprocess
    "seeded": ["branch", "amber-tiny", "--from-step", "ckpt_001", "--steps", "3", "--eval-batches", "2", "--out", "seeded"],
    "file": ["branch", "amber-tiny", "--from-step", "6", "--steps", "3", "--order", "file", "--optimizer-state", "fresh",
             "--no-compare", "--out", "file"],
    "k2-fetch": ["fetch", "k2-tiny", "--step", "6", "--data-steps", "2", "--no-progress"],
    "k2": ["branch", "k2-tiny", "--from-step", "ckpt_2", "--steps", "2", "--no-compare", "--out", "k2"],
}


@pytest.fixture(scope="session")
def scenario(llm360_hub: HubStandin, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run SCENARIO once: {name: {"args", "rc", "stdout", "stderr", "log"}} plus "env"; "log" is the stand-in's
    requests during that command."""
    env = make_env(tmp_path_factory.mktemp("llm360"), llm360_hub.url)
    llm360_hub.log.clear()
    results = env.cli(*SCENARIO.values())
    log, cuts = list(llm360_hub.log), []
    for i in range(len(results)):
        cuts.append(next(j for j, r in enumerate(log) if r["path"] == f"/__command__/{i}"))
    out: dict = {"env": env}
    start = 0
    for name, result, cut in zip(SCENARIO, results, cuts):
        out[name] = {**result, "log": log[start:cut]}
        start = cut + 1
    return out


# -- independent readings of the released files (json + numpy only, none of branchpoint's readers) ----------
def amber_rows(k: int) -> np.ndarray:
    return np.array([r["token_ids"] for r in amber_chunk(k)])


def amber_lines(k: int, order: str = "seeded") -> np.ndarray:
    """Chunk k's lines in training order, the way amber-train draws them (global NumPy RNG, as the issue states)."""
    used = AMBER["E"] // B * B
    if order == "file":
        return np.arange(used)
    state = np.random.get_state()
    try:
        np.random.seed(AMBER["seed"])
        perms = [np.random.permutation(AMBER["E"]) for _ in range(k + 1)]
    finally:
        np.random.set_state(state)
    return perms[k][:used]


def amber_batch(step: int, order: str = "seeded") -> tuple[np.ndarray, np.ndarray]:
    """(tokens, global row ids) of global batch ``step``: chunk step // S, step j of it = entries [B j, B (j+1))."""
    k, j = divmod(step, AMBER["S"])
    lines = amber_lines(k, order)[B * j:B * (j + 1)]
    return amber_rows(k)[lines], k * AMBER["E"] + lines


def k2_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """K2: the chunk files concatenated in chunk order, read sequentially."""
    concat = np.concatenate([np.array([r["token_ids"] for r in k2_chunk(c)]) for c in K2["order"]])
    ids = np.concatenate([c * K2["E"] + np.arange(K2["E"]) for c in K2["order"]])
    return concat[step * B:(step + 1) * B], ids[step * B:(step + 1) * B]
