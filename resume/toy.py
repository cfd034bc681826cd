"""The embedded toy trajectory: a tiny Pythia trained from step 0 by the engine, offline, in seconds.

It is laid out exactly like a released run (DESIGN.md, "The embedded default"): checkpoints at
step 0, log-spaced steps, then a regular grid; the preshuffled data order as ``document.idx`` +
shards; and, unlike the releases, the full optimizer state at every checkpoint (the ground truth a
control branch must reproduce).

The corpus is generated: several domains, each a first-order Markov chain over the vocabulary with
a different branching factor, so their entropies differ clearly and are known exactly (the loss
floor). Every row is one domain's chain of ``seq_len + 1`` tokens; its label is kept per row.

The toy has a real tokenizer: word-level (``tokenizers``), one pseudo-word per token id, saved with
every checkpoint as ``save_pretrained`` writes it, so its rows decode to text (``batch --decode``)
and text tasks (lm-eval) run on its checkpoints. The ids, and so the corpus and the weights, are
the same as without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from checkpoints_cache.errors import UserError
from checkpoints_cache.recipe import Recipe
from checkpoints_cache.locks import output_lock
from checkpoints_cache.trajectory import (
    FORMAT,
    TRAJECTORY_FILE,
    Trajectory,
    atomic_dir,
    atomic_write_json,
    check_output_dir,
    clean_orphans,
    has_content,
)


@dataclass(frozen=True)
class ToySize:
    vocab: int
    hidden: int
    layers: int
    heads: int
    seq_len: int
    batch_size: int  # rows per global batch
    train_iters: int
    log_until: int  # log-spaced checkpoints 1, 2, 4, ... up to here (Pythia: 512)
    grid_every: int  # then every this many steps (Pythia: 1000)
    lr: float
    heldout_batches: int  # batches after the end of training, for evaluation
    num_shards: int


TOY_SIZES: dict[str, ToySize] = {
    "tiny": ToySize(vocab=128, hidden=32, layers=2, heads=4, seq_len=32, batch_size=8, train_iters=64,
                    log_until=32, grid_every=16, lr=3e-3, heldout_batches=16, num_shards=3),
    "small": ToySize(vocab=256, hidden=64, layers=4, heads=4, seq_len=64, batch_size=16, train_iters=800,
                     log_until=64, grid_every=50, lr=3e-3, heldout_batches=32, num_shards=5),
}


@dataclass(frozen=True)
class Domain:
    name: str
    branching: int  # successors per token
    concentration: float  # Dirichlet concentration of the transition probabilities
    share: float  # fraction of rows


DOMAINS = (
    Domain("structured", branching=2, concentration=1.0, share=0.5),
    Domain("prose", branching=8, concentration=1.0, share=0.3),
    Domain("noise", branching=64, concentration=8.0, share=0.2),
)
FIRST_TOKEN = 2  # ids 0 (end of text) and 1 (padding) are reserved as in Pythia's tokenizer (pythia.md §4.1)
EOT_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|padding|>"  # ids 0 and 1, named as in Pythia's tokenizer
# Pseudo-words: consonant-vowel syllables; ids 2..71 are one syllable, later ids two (vocab <= 4902).
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def pseudo_word(token_id: int) -> str:
    """The toy's word for ``token_id`` (>= FIRST_TOKEN): "ba", "be", ..., "zu", "beba", "bebe", ..."""
    j = token_id - FIRST_TOKEN
    n = len(_SYLLABLES)
    if j < 0 or j >= n + n * n:
        raise ValueError(f"token id {token_id} has no pseudo-word (ids {FIRST_TOKEN}..{FIRST_TOKEN + n + n * n - 1})")
    return _SYLLABLES[j] if j < n else _SYLLABLES[(j - n) // n + 1] + _SYLLABLES[(j - n) % n]


def toy_tokenizer(vocab: int, max_length: int | None = None) -> Any:
    """A word-level tokenizer over the toy vocabulary: whitespace-separated pseudo-words <-> ids.

    Special tokens as in Pythia (pythia.md §4.1): ``<|endoftext|>`` (id 0) is BOS, EOS and UNK,
    ``<|padding|>`` (id 1) pads. Decoding joins words with single spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {EOT_TOKEN: 0, PAD_TOKEN: 1, **{pseudo_word(i): i for i in range(FIRST_TOKEN, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token=EOT_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"model_max_length": max_length} if max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT_TOKEN, eos_token=EOT_TOKEN, unk_token=EOT_TOKEN,
                                   pad_token=PAD_TOKEN, clean_up_tokenization_spaces=False, **extra)


def checkpoint_grid(size: ToySize) -> list[int]:
    """0, 1, 2, 4, ... up to log_until, then every grid_every steps to the end (like Pythia's 154)."""
    steps = {0, size.train_iters}
    s = 1
    while s <= size.log_until:
        steps.add(s)
        s *= 2
    steps.update(range(size.grid_every, size.train_iters + 1, size.grid_every))
    return sorted(steps)


def toy_recipe(size: ToySize, seed: int) -> Recipe:
    """The Pythia recipe scaled down (pythia.md §2): NeoX cosine with 1% warmup and the floor at 10%,
    AdamW 0.9/0.95, eps 1e-8, weight decay 0.1, clip 1.0, a fixed global batch. fp32: it is built on CPU."""
    return Recipe(
        lr=size.lr,
        min_lr=0.1 * size.lr,
        warmup_iters=max(1, math.ceil(0.01 * size.train_iters)),
        decay_iters=size.train_iters,
        train_iters=size.train_iters,
        schedule="neox-cosine",
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        grad_clip=1.0,
        batch_size=size.batch_size,
        seq_len=size.seq_len,
        precision="fp32",
        seed=seed,
    )


# --- the corpus ---------------------------------------------------------------------------------
@dataclass
class MarkovChain:
    successors: np.ndarray  # [V, b] next-token ids
    probs: np.ndarray  # [V, b]
    stationary: np.ndarray  # [V]

    def entropy_rate(self) -> float:
        """H(X_{t+1} | X_t) under the stationary distribution, in nats: the loss floor."""
        h = -(self.probs * np.log(self.probs)).sum(axis=1)
        return float((self.stationary * h).sum())


def make_chain(rng: np.random.Generator, vocab: int, domain: Domain) -> MarkovChain:
    tokens = np.arange(FIRST_TOKEN, vocab)
    succ = np.zeros((vocab, domain.branching), dtype=np.int64)
    probs = np.zeros((vocab, domain.branching))
    for v in range(vocab):
        succ[v] = rng.choice(tokens, size=domain.branching, replace=False)
        probs[v] = rng.dirichlet(np.full(domain.branching, domain.concentration))
    probs = np.clip(probs, 1e-6, None)
    probs /= probs.sum(axis=1, keepdims=True)
    dense = np.zeros((vocab, vocab))
    np.add.at(dense, (np.repeat(np.arange(vocab), domain.branching), succ.ravel()), probs.ravel())
    pi = np.full(vocab, 1.0 / vocab)
    for _ in range(2000):  # power iteration to the stationary distribution
        nxt = pi @ dense
        if np.abs(nxt - pi).sum() < 1e-13:
            break
        pi = nxt
    return MarkovChain(succ, probs, pi / pi.sum())


def sample_rows(rng: np.random.Generator, chain: MarkovChain, n: int, length: int) -> np.ndarray:
    """n stationary chains of ``length`` tokens (the first token drawn from the stationary law)."""
    out = np.empty((n, length), dtype=np.int64)
    out[:, 0] = rng.choice(len(chain.stationary), size=n, p=chain.stationary)
    cum = np.cumsum(chain.probs, axis=1)
    for t in range(1, length):
        cur = out[:, t - 1]
        u = rng.random(n)
        j = (u[:, None] > cum[cur]).sum(axis=1).clip(max=chain.probs.shape[1] - 1)
        out[:, t] = chain.successors[cur, j]
    return out


CORPUS_SEED = 1234  # the language itself; a toy --seed changes the init and the shuffle only


def make_corpus(size: ToySize, shuffle_seed: int, corpus_seed: int = CORPUS_SEED) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(rows [N, seq_len + 1] uint16 in training order, domain label per row, corpus facts).

    The chains and their samples come from ``corpus_seed``; the preshuffled order from
    ``shuffle_seed``. Like the PolyPythias (pythia.md §1.1: a seed changes the init and the data
    shuffle), toy seed variants see the same corpus in another order."""
    rng = np.random.default_rng(corpus_seed)
    total = (size.train_iters + size.heldout_batches) * size.batch_size
    counts = [int(round(d.share * total)) for d in DOMAINS[:-1]]
    counts.append(total - sum(counts))
    rows, labels, entropy = [], [], {}
    for i, (domain, n) in enumerate(zip(DOMAINS, counts)):
        chain = make_chain(rng, size.vocab, domain)
        rows.append(sample_rows(rng, chain, n, size.seq_len + 1))
        labels.append(np.full(n, i, dtype=np.int64))
        entropy[domain.name] = chain.entropy_rate()
    # the preshuffled order: global batch k = rows [kB, (k+1)B)
    order = np.random.default_rng([shuffle_seed, 1]).permutation(total)
    all_rows = np.concatenate(rows)[order].astype(np.uint16)
    all_labels = np.concatenate(labels)[order]
    floor = sum(entropy[d.name] * c / total for d, c in zip(DOMAINS, counts))
    facts = {
        "names": [d.name for d in DOMAINS],
        "entropy": entropy,
        "rows_per_domain": dict(zip([d.name for d in DOMAINS], counts)),
        "entropy_floor": floor,
        "entropy_unit": "nats per predicted token (conditional entropy rate of each domain's Markov chain)",
    }
    return all_rows, all_labels, facts


# --- the model ----------------------------------------------------------------------------------
def toy_config(size: ToySize) -> Any:
    """GPT-NeoX as in Pythia (pythia.md §1.3): parallel residual, rotary on 25% of the head dims,
    untied embeddings, LayerNorm eps 1e-5, GELU, 4x MLP, no dropout."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=4 * size.hidden,
        hidden_act="gelu",
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=size.seq_len,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def init_pythia_(model: Any, seed: int) -> None:
    """Pythia's small_init N(0, sqrt(2/(5d))) everywhere and wang_init N(0, 2/(L sqrt(d))) on the
    attention and MLP output layers (pythia.md §2.2); zero biases, unit norms."""
    g = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    layers = model.config.num_hidden_layers
    small, wang = math.sqrt(2.0 / (5 * d)), 2.0 / (layers * math.sqrt(d))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name or name.endswith(".bias"):
                p.fill_(1.0 if name.endswith("weight") and "norm" in name else 0.0)
            else:
                std = wang if name.endswith(("attention.dense.weight", "mlp.dense_4h_to_h.weight")) else small
                p.copy_(torch.randn(p.shape, generator=g) * std)


# --- building the trajectory --------------------------------------------------------------------
def build_toy(out: str | Path, size: str = "small", seed: int = 1234, progress: bool = True) -> Path:
    """Train the toy from step 0 and write it to ``out`` (atomically: all or nothing)."""
    check_size(size, seed)
    out = Path(out)
    check_output_dir(out)
    with output_lock(out):  # one builder per toy; the build is atomic, so a killed one leaves only temporaries
        clean_orphans(None, siblings_of=out)  # the temporary folder of a killed build
        if has_content(out):
            raise UserError(f"output directory {out} already exists; choose another --out or remove it")
        return _build_toy(out, size, seed, progress)


def check_size(size: str, seed: int = 1234) -> None:
    if size not in TOY_SIZES:
        raise UserError(f"--size {size!r}: use one of {', '.join(TOY_SIZES)}")
    if int(seed) != seed or seed < 0:
        raise UserError(f"--seed {seed}: use a non-negative integer (default 1234)")


def _build_toy(out: Path, size: str, seed: int, progress: bool) -> Path:
    import tempfile

    from data_order.mmidx import write_sharded
    from data_order.source import TokenRows
    from resume.branching import library_versions
    from resume.engine import TrainJob, make_accelerator, train, write_start
    from resume.optim import build_optimizer
    from transformers import GPTNeoXForCausalLM

    spec = TOY_SIZES[size]
    recipe = toy_recipe(spec, seed)
    grid = checkpoint_grid(spec)

    with atomic_dir(out, overwrite=True) as tmp, tempfile.TemporaryDirectory(prefix=".toy-tokenizer.") as tok_dir:
        toy_tokenizer(spec.vocab, spec.seq_len).save_pretrained(tok_dir)  # copied into every checkpoint
        rows, labels, facts = make_corpus(spec, seed)
        data_dir = tmp / "data"
        write_sharded(data_dir, list(rows), dtype=np.uint16, num_shards=spec.num_shards)
        np.save(data_dir / "row_domains.npy", labels)

        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(toy_config(spec))
        init_pythia_(model, seed)
        model.config.architectures = ["GPTNeoXForCausalLM"]
        meta = {
            "format": FORMAT,
            "name": f"toy-{size}" + ("" if seed == 1234 else f"-seed{seed}"),
            "architecture": {"model_type": "gpt_neox", "config": model.config.to_dict()},
            "recipe": recipe.to_dict(),
            "steps": grid,
            "data_order": {
                "kind": "mmidx",
                "path": "data",
                "batch_size": spec.batch_size,
                "seq_len": spec.seq_len,
                "exactness": "exact",
                "num_batches": spec.train_iters + spec.heldout_batches,
                "heldout_batches": [spec.train_iters, spec.train_iters + spec.heldout_batches],
                "domains": {"labels": "data/row_domains.npy", **facts},
            },
            "parent": None,
            "toy": {"size": size, **{k: getattr(spec, k) for k in spec.__dataclass_fields__}},
            "seeds": {"corpus": CORPUS_SEED, "shuffle": seed, "init": seed, "recipe": seed},
            "versions": library_versions(),
            "engine": {"micro_batch_size": spec.batch_size, "world_size": 1},
        }
        atomic_write_json(tmp / TRAJECTORY_FILE, meta)

        data = TokenRows(data_dir, spec.batch_size, spec.seq_len)
        job = TrainJob(
            out=tmp,
            model=model,
            recipe=recipe,
            data=data,
            start_step=0,
            end_step=spec.train_iters,
            save_steps=set(grid),
            optimizer_state=build_optimizer(model, recipe).state_dict(),  # step 0: empty moments
            micro_batch_size=spec.batch_size,
            resumable=False,  # the build is atomic as a whole: no rolling resume state
            progress=progress,
            precision="fp32",
            tokenizer_dir=Path(tok_dir),
        )
        accelerator = make_accelerator(recipe, "fp32")
        write_start(job, model)
        job.optimizer_state = None  # the optimizer starts from zeros (a fresh optimizer has no state)
        train(job, accelerator)
    return out


def existing_toy(out: str | Path, size: str, seed: int = 1234, flag: str = "--out") -> Path | None:
    """``out`` if it holds the complete toy of this size and seed; None if there is no trajectory;
    else a one-line error naming what differs (``--size`` / ``--seed``) or that it is not a toy."""
    check_size(size, seed)
    out = Path(out)
    if not Trajectory.is_trajectory(out):
        return None
    traj = Trajectory.open(out)
    toy = traj.meta.get("toy")
    if not toy or traj.parent:
        raise UserError(f"{flag} {out} holds another trajectory ({traj.name}), not a toy; choose another {flag}")
    have_size, have_seed = toy.get("size"), int((traj.meta.get("seeds") or {}).get("init", 1234))
    differs = []
    if have_size != size:
        differs.append(f"--size {have_size}")
    if have_seed != seed:
        differs.append(f"--seed {have_seed}")
    if differs:
        raise UserError(f"{flag} {out} holds the {have_size} toy with seed {have_seed}, not the {size} toy with seed "
                        f"{seed}; pass {' '.join(differs)} to use it, or choose another {flag}")
    if not traj.steps or traj.steps[-1] != TOY_SIZES[size].train_iters:
        raise UserError(f"{flag} {out} holds an incomplete {size} toy (last checkpoint {traj.steps[-1] if traj.steps else None}, "
                        f"not {TOY_SIZES[size].train_iters}); remove it and build it again")
    return out


def ensure_toy(out: str | Path, size: str = "small", seed: int = 1234, progress: bool = True, flag: str = "--out") -> Path:
    """Build the toy at ``out`` unless the complete toy of this size and seed is already there."""
    return existing_toy(out, size, seed, flag) or build_toy(out, size=size, seed=seed, progress=progress)
