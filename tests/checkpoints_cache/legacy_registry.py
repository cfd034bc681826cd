"""FROZEN copy of ``checkpoints_cache/runs_table.py`` and ``defects.py`` as they were before run cards.

Test data only: ``test_cards.py`` checks that the bundled TOML cards describe exactly these runs,
field for field, and the same known defects. Do not edit to make a test pass; the cards are the
source of truth now. (Taken from main after issues 11 and 15 had added ``optimizer_state``,
``branch_notes``, ``weight_decay_scope`` and the LLM360 ``[data_order]`` keys to the rows.)

Original docstring: the released runs branchpoint knows, as plain data rows.

Sources: pythia.md §1.1 (names), §1.3 (config facts), §2.1-§2.2 (recipes), §4.1 (data-order repos);
llm360.md §1.1/§1.3/§1.4 (repos, revisions), §3 (data order), §4 (recipes); neox_ckpt.md §15 (NeoX
checkpoint repos: ``optimizer_state``); neox_fidelity.md §4-§5 (precision per run, unsettled schedules).
"""

from __future__ import annotations

from typing import Any

# The grids as checkpoints_cache/grids.py defined them (inlined so this copy stays frozen).
PYTHIA_LOG_STEPS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PYTHIA_GRID: tuple[int, ...] = PYTHIA_LOG_STEPS + tuple(range(1000, 143001, 1000))
AMBER_GRID: tuple[int, ...] = tuple((k + 1) * 762 for k in range(360))
K2_GRID: tuple[int, ...] = tuple(941 * k for k in range(1, 361))

# size: (layers, d_model, heads, peak lr, vocab_size, precision, init)   -- pythia.md §2.2, §1.3
PYTHIA_SIZES: dict[str, tuple[int, int, int, float, int, str, str]] = {
    "14m": (6, 128, 4, 1e-3, 50304, "fp16", "small_init/wang_init"),
    "31m": (6, 256, 8, 1e-3, 50304, "fp16", "small_init/wang_init"),
    "70m": (6, 512, 8, 1e-3, 50304, "fp16", "small_init/wang_init"),
    "160m": (12, 768, 12, 6e-4, 50304, "fp16", "small_init/wang_init"),
    "410m": (24, 1024, 16, 3e-4, 50304, "fp16", "small_init/wang_init"),
    # 1b: the yml says fp16 and lr 2.5e-4; the README says the standard run was bf16 (pythia.md §2.1); the
    # deduped run was fp16 (pythia#171, neox_fidelity.md §4): see PRECISION_OVERRIDES.
    "1b": (16, 2048, 8, 2.5e-4, 50304, "fp16", "small_init/wang_init"),
    "1.4b": (24, 2048, 16, 2e-4, 50304, "fp16", "small_init/wang_init"),
    "2.8b": (32, 2560, 32, 1.6e-4, 50304, "fp16", "small_init/wang_init"),
    # 6.9b / 12b: default init normal(0.02) + scaled_normal (pythia.md §2.2, pythia#135); vocab per pythia#68.
    "6.9b": (32, 4096, 32, 1.2e-4, 50432, "fp16", "normal/scaled_normal"),
    "12b": (36, 5120, 40, 1.2e-4, 50688, "fp16", "normal/scaled_normal"),
}
# Only pythia-1b (standard) trained in bf16 (README); pythia-1b-deduped in fp16 (pythia#171; neox_fidelity.md §4).
PRECISION_OVERRIDES: dict[str, str] = {"pythia-1b": "bf16"}
MAIN_SUITE = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
SEED_SIZES = ("14m", "31m", "70m", "160m", "410m")  # PolyPythias -seed1..9 (pythia.md §1.1)

PILE_DEDUPED = "EleutherAI/pile-deduped-pythia-preshuffled"
PILE_STANDARD = "EleutherAI/pile-standard-pythia-preshuffled"


def _pythia_recipe(lr: float, precision: str, init: str, seed: int = 1234) -> dict[str, Any]:
    # pythia.md §2.1: warmup 0.01 * 143000 = 1430, lr-decay-iters 143000, min_lr = 0.1 lr, Adam(W)
    # betas 0.9/0.95 eps 1e-8, weight decay 0.1, clip 1.0, global batch 1024 x seq 2048, seed 1234.
    return dict(
        lr=lr, min_lr=round(lr * 0.1, 12), warmup_iters=1430, decay_iters=143000, train_iters=143000,
        schedule="neox-cosine", betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip=1.0,
        batch_size=1024, seq_len=2048, precision=precision, seed=seed, extra={"init": init},
    )


def _pythia_arch(layers: int, d: int, heads: int, vocab: int) -> dict[str, Any]:
    # pythia.md §1.3: GPTNeoX, parallel residual, rotary on 25% of dims (base 10000), untied embeddings.
    return {
        "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "num_hidden_layers": layers,
        "hidden_size": d, "num_attention_heads": heads, "intermediate_size": 4 * d, "vocab_size": vocab,
        "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True, "tie_word_embeddings": False,
        "layer_norm_eps": 1e-5, "hidden_act": "gelu", "max_position_embeddings": 2048,
    }


def _mmidx_order(repo: str | None, exactness: str, note: str = "") -> dict[str, Any]:
    return {"kind": "mmidx" if repo else "unknown", "repo_id": repo, "repo_type": "dataset", "revision": "main",
            "batch_size": 1024, "seq_len": 2048, "exactness": exactness, "note": note}


# EleutherAI's GPT-NeoX/DeepSpeed checkpoints (fp32 master weights, Adam moments, counters) of a run, as far as
# known (neox_ckpt.md §15, pythia.md §3). ``revision`` is a branch-name template with {N} (every grid step, or
# ``steps`` where only some exist) or a fixed branch holding one ``step``. ``model_parallel`` > 1 (6.9B, 12B) is
# listed as a fact; the importer refuses it (the mp merge is DERIVED, not run: neox_ckpt.md §7).
_LOG_SPACED_20 = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 143000)
NEOX_REPOS: dict[str, dict[str, Any]] = {
    "pythia-160m": {"repo_id": "EleutherAI/neox-ckpt-pythia-160m", "revision": "step{N}",
                    "note": "all 154 branches (repo README); dp read from the shards"},
    "pythia-70m-deduped": {"repo_id": "EleutherAI/neox-ckpt-pythia-70m-deduped-v1", "revision": "main", "step": 143000,
                           "note": "final step only (main)"},
    "pythia-1b-deduped": {"repo_id": "EleutherAI/neox-ckpt-pythia-1b-deduped-v1", "revision": "main", "step": 143000,
                          "note": "final step only (main)"},
    "pythia-6.9b": {"repo_id": "EleutherAI/neox-ckpt-pythia-6.9b-v1", "revision": "main", "step": 143000,
                    "model_parallel": 2, "note": "final step only (main)"},
    "pythia-6.9b-deduped": {"repo_id": "EleutherAI/neox-ckpt-pythia-6.9b-deduped-v1", "revision": "main", "step": 143000,
                            "model_parallel": 2, "note": "final step only (main)"},
    "pythia-12b": {"repo_id": "EleutherAI/neox-ckpt-pythia-12b-v1", "revision": "main", "step": 143000,
                   "model_parallel": 4, "note": "final step only (main)"},
    "pythia-12b-deduped": {"repo_id": "EleutherAI/neox-ckpt-pythia-12b-deduped", "revision": "step{N}",
                           "steps": list(_LOG_SPACED_20), "model_parallel": 4,
                           "note": "20 log-spaced branches; the -v1 repo holds main = step143000"},
    "pythia-410m-seed8": {"repo_id": "EleutherAI/neox-ckpt-pythia-410m-seed8", "revision": "step{N}",
                          "note": "PolyPythias: which NeoX/DeepSpeed wrote it is not established; the format is "
                                  "detected from the keys"},
}


def _optimizer_state(name: str) -> dict[str, Any] | None:
    src = NEOX_REPOS.get(name)
    return None if src is None else {"kind": "neox-zero1", "model_parallel": 1, **src}


# neox_fidelity.md §5: NeoX main changed the cosine in Aug 2023; these runs came later and no source says
# which NeoX trained them, so their LR schedule (up to 83% off the v1.0 one) is not established.
UNSETTLED_SCHEDULE = ("which GPT-NeoX version trained this run (and so its LR schedule: NeoX main changed the "
                      "cosine in Aug 2023, gpt-neox#1008/#1011) is not established; branchpoint uses the v1.0 "
                      "schedule of the other Pythia runs (neox_fidelity.md §5)")


def pythia_rows() -> list[dict[str, Any]]:
    rows = []
    for size in MAIN_SUITE:
        L, d, h, lr, vocab, prec, init = PYTHIA_SIZES[size]
        for dedup in (False, True):
            name = f"pythia-{size}" + ("-deduped" if dedup else "")
            rows.append(dict(
                name=name, repo_id=f"EleutherAI/{name}", family="pythia", scheme="stepN", grid=PYTHIA_GRID,
                recipe=_pythia_recipe(lr, PRECISION_OVERRIDES.get(name, prec), init),
                architecture=_pythia_arch(L, d, h, vocab),
                data_order=_mmidx_order(PILE_DEDUPED if dedup else PILE_STANDARD, "exact"),
                notes=["step143000 equals main (pythia.md §1.2)"], optimizer_state=_optimizer_state(name),
            ))
    for size in ("14m", "31m"):
        L, d, h, lr, vocab, prec, init = PYTHIA_SIZES[size]
        rows.append(dict(
            name=f"pythia-{size}", repo_id=f"EleutherAI/pythia-{size}", family="pythia", scheme="stepN",
            grid=PYTHIA_GRID, recipe=_pythia_recipe(lr, prec, init), architecture=_pythia_arch(L, d, h, vocab),
            # Its yml points at the deduped Pile; which Pile it really used is unverified (pythia.md §1.1).
            data_order=_mmidx_order(PILE_DEDUPED, "unknown", "yml says deduped Pile; unverified (pythia.md §1.1)"),
            notes=["added 2023-11; training data (standard vs deduped Pile) unverified"],
            branch_notes=[UNSETTLED_SCHEDULE], optimizer_state=_optimizer_state(f"pythia-{size}"),
        ))
    seed_note = "main holds only .gitattributes: always load a stepN revision (pythia.md §1.1)"
    unknown_order = ("standard Pile shuffled with this seed; only index maps exist (EleutherAI/pile-preshuffled-seeds),"
                     " no preshuffled rows")
    for size in SEED_SIZES:
        L, d, h, lr, vocab, prec, init = PYTHIA_SIZES[size]
        for k in range(1, 10):
            name = f"pythia-{size}-seed{k}"
            rows.append(dict(
                name=name, repo_id=f"EleutherAI/{name}", family="pythia",
                scheme="stepN", grid=PYTHIA_GRID, recipe=_pythia_recipe(lr, prec, init, seed=k),
                architecture=_pythia_arch(L, d, h, vocab),
                # A seed changes both init and data shuffle (pythia#142).
                data_order=_mmidx_order(None, "unknown", unknown_order), notes=[seed_note],
                branch_notes=[UNSETTLED_SCHEDULE], optimizer_state=_optimizer_state(name),
            ))
    L, d, h, lr, vocab, prec, init = PYTHIA_SIZES["160m"]
    for k in range(1, 4):
        rows.append(dict(
            name=f"pythia-160m-data-seed{k}", repo_id=f"EleutherAI/pythia-160m-data-seed{k}", family="pythia",
            scheme="stepN", grid=PYTHIA_GRID, recipe=_pythia_recipe(lr, prec, init, seed=k),
            architecture=_pythia_arch(L, d, h, vocab),
            data_order=_mmidx_order(None, "unknown", unknown_order), notes=[seed_note, "only the data order differs"],
            branch_notes=[UNSETTLED_SCHEDULE],
        ))
        rows.append(dict(
            name=f"pythia-160m-weight-seed{k}", repo_id=f"EleutherAI/pythia-160m-weight-seed{k}", family="pythia",
            scheme="stepN", grid=PYTHIA_GRID, recipe=_pythia_recipe(lr, prec, init, seed=k),
            architecture=_pythia_arch(L, d, h, vocab),
            # Only the init differs, so the data order is the standard run's (model card "Naming Convention").
            data_order=_mmidx_order(PILE_STANDARD, "exact"), notes=[seed_note, "only the init differs"],
            branch_notes=[UNSETTLED_SCHEDULE],
        ))
    return rows


# K2's chunk order, as the value of the list expression in k2-train/main.py @869fbb9 (llm360.md §3.3):
# chunks 0-15, 32-37, 44-51, then the rest in order, with the chunks at the two loss-spike restarts
# (positions 160 and 185, i.e. chunks 160 and 186) moved to the end. Inclusive [first, last] ranges.
K2_CHUNK_ORDER = [[0, 15], [32, 37], [44, 51], [16, 31], [38, 43], [52, 159], [161, 185], [187, 359], [160, 160],
                  [186, 186]]

AMBER_EXACTNESS = "rows-of-chunk exact, order approximate"
K2_EXACTNESS = "exact if the released chunks are the shuffled files (unverified, llm360.md §3.3)"


def llm360_rows() -> list[dict[str, Any]]:
    amber = dict(
        name="amber", repo_id="LLM360/Amber", family="amber", scheme="amber", grid=AMBER_GRID,
        # llm360.md §4: AdamW 0.9/0.95, wd 0.1, clip 1.0, lr 3e-4, warmup 2000, cosine to 3e-5 over 274,320;
        # amber-train main.py decays every parameter (one AdamW group over model.parameters()).
        recipe=dict(lr=3e-4, min_lr=3e-5, warmup_iters=2000, decay_iters=274320, train_iters=274320,
                    schedule="linear-warmup-cosine", betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip=1.0,
                    batch_size=2240, seq_len=2048, precision="bf16", seed=11111, weight_decay_scope="all"),
        # llm360.md §1.1: LlamaForCausalLM, 32 x 4096, MLP 11008, 32 heads, RMSNorm 1e-6, vocab 32000.
        architecture={"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 32,
                      "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                      "rms_norm_eps": 1e-6, "vocab_size": 32000, "max_position_embeddings": 2048},
        # llm360.md §3.1 (amber-train main.py / main_utils.py @64bc595): chunk k = train_{k:03d}.jsonl, trained
        # whole before ckpt_k; a permutation of examples_per_chunk lines per chunk, truncated to the batch.
        data_order={"kind": "amber-chunks", "repo_id": "LLM360/AmberDatasets", "repo_type": "dataset",
                    "revision": "main", "batch_size": 2240, "seq_len": 2048,
                    "chunk_file": "train/train_{k:03d}.jsonl", "n_chunks": 360, "examples_per_chunk": 1706976,
                    "steps_per_chunk": 762, "seed_base": 11111, "order": "seeded",
                    "token_field": "token_ids", "label_field": "source", "exactness": AMBER_EXACTNESS,
                    "note": ("ckpt_k trained on train_k.jsonl (exact); the order within a chunk depends on the run's "
                             "unpublished restart history (llm360.md §3.1): order=seeded is the permutation of a run "
                             "that never restarted, order=file the file's (subset) order")},
        notes=["ckpt_000 is after the first chunk (step 762), not the initialization; fp32 .bin shards, ~27 GB each"],
    )
    k2 = dict(
        name="k2", repo_id="LLM360/K2", family="k2", scheme="k2", grid=K2_GRID,
        # llm360.md §4: lr 1.5e-4, warmup 2000, cosine to 1.5e-5 over 338,760, batch 2040, bf16, seed 22238.
        recipe=dict(lr=1.5e-4, min_lr=1.5e-5, warmup_iters=2000, decay_iters=338760, train_iters=338760,
                    schedule="linear-warmup-cosine", betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip=1.0,
                    batch_size=2040, seq_len=2048, precision="bf16", seed=22238, weight_decay_scope="matrices"),
        architecture={"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 80,
                      "hidden_size": 8192, "intermediate_size": 22016, "num_attention_heads": 64,
                      "rms_norm_eps": 1e-5, "vocab_size": 32032, "max_position_embeddings": 2048},
        # llm360.md §3.3: chunk_{i}.jsonl shuffled offline (seed 11111 + i), read sequentially (Megatron's
        # sequential sampler) in K2_CHUNK_ORDER; 941 iterations x 2040 = 1,919,640 rows per chunk (unverified).
        # Records: Megatron --seq-length 2048, labels shifted with the last position masked (main.py get_batch),
        # i.e. rows of 2048 tokens = 2047 inputs + 1 here (the record length itself is unverified).
        data_order={"kind": "k2-chunks", "repo_id": "LLM360/K2Datasets", "repo_type": "dataset", "revision": "main",
                    "batch_size": 2040, "seq_len": 2047, "chunk_file": "chunk_{k}.jsonl", "n_chunks": 360,
                    "examples_per_chunk": 1919640, "steps_per_chunk": 941, "chunk_order": K2_CHUNK_ORDER,
                    "order": "sequential", "token_field": "token_ids", "label_field": "subset_name",
                    "exactness": K2_EXACTNESS,
                    "note": ("chunk order hard-coded in k2-train/main.py with the loss-spike moves; rows are exact only "
                             "if the released chunks are the shuffled ones (k2-data-prep shuffle.py has N_CHUNKS = 32) "
                             "and hold 1,919,640 rows of 2048 tokens each (unverified, llm360.md §3.3)")},
        notes=["ckpt_k = iteration 941*k (1-based naming inferred, llm360.md §1.4); stage 2 not covered"],
    )
    crystal_refusal = (
        "its data are Cerebras HDF5 mixtures (CrystalCoderDatasets phase1-3) whose step -> rows mapping needs Cerebras "
        "ModelZoo loader semantics (weighted mixture sampling, not published as code branchpoint can run), and its "
        "model is a muP CrystalCoderLMHeadModel that loads only with trust_remote_code (llm360.md §1.3, §3.2)"
    )
    crystal = dict(
        name="crystal", repo_id="LLM360/CrystalCoder", family="crystal", scheme="crystal", grid=(),
        # llm360.md §4, phase 1 values; phases 2-3 change lr and schedule (see "extra").
        recipe=dict(lr=0.012, min_lr=1.2408e-4, warmup_iters=86, decay_iters=294337, train_iters=79721,
                    schedule="linear-warmup-linear", betas=(0.9, 0.95), eps=1e-9, weight_decay=0.1, grad_clip=1.0,
                    batch_size=2112, seq_len=2048, precision="bf16", seed=1,
                    extra={"mup": True, "phases": 3, "note": "phase 2/3 recipes differ (llm360.md §4)"}),
        architecture={"model_type": "crystalcoder", "architectures": ["CrystalCoderLMHeadModel"], "n_layer": 32,
                      "n_embd": 4096, "n_inner": 10922, "n_head": 32, "vocab_size": 32032, "n_positions": 2048},
        data_order={"kind": "unknown", "repo_id": "LLM360/CrystalCoderDatasets", "repo_type": "dataset",
                    "revision": "main", "batch_size": 2112, "seq_len": 2048, "exactness": "unknown",
                    "note": "Cerebras HDF5 mixtures; step -> rows needs ModelZoo sampling semantics (llm360.md §3.2)",
                    "not_branchable": crystal_refusal},
        trust_remote_code=True,
        notes=["branches CrystalCoder_phase{1,2,3}_checkpoint_NNNNNN; the grid is known only from the Hub (--remote)",
               "not branchable: " + crystal_refusal],
    )
    return [amber, k2, crystal]


def all_rows() -> list[dict[str, Any]]:
    return pythia_rows() + llm360_rows()


def _defect(issue, steps, text, runs=(), family="pythia") -> dict:
    return {"issue": issue, "steps": steps, "text": text, "runs": tuple(runs), "family": family}


# pythia#205: 76 step branches of pythia-2.8b hold a model.safetensors byte-identical to main:
# steps 0-512, every 1000 from 1000 to 53000, and 55k, 60k, ..., 140k (pythia.md §1.4).
_P28B_DUP_STEPS = frozenset(
    list(PYTHIA_LOG_STEPS)
    + list(range(1000, 53001, 1000))
    + [55000, 60000, 65000, 70000, 80000, 90000, 100000, 103000, 110000, 120000, 130000, 140000]
)

DEFECTS: list[dict] = [
    _defect(
        "EleutherAI/pythia#83",
        frozenset({0, 1}),
        "step0 and step1 are identical for every Pythia model (the first update ran with lr = 0)",
    ),
    _defect(
        "EleutherAI/pythia#198",
        frozenset({0, 2}),
        "step0 and step2 are reported identical too (cause unverified, possibly an fp16 overflow skip)",
    ),
    _defect(
        "EleutherAI/pythia#205",
        _P28B_DUP_STEPS,
        "model.safetensors of this branch is byte-identical to main (wrong upload); only non-round steps 66000-142000 are unique",
        runs=("pythia-2.8b",),
    ),
    _defect(
        "EleutherAI/pythia#195",
        frozenset(s for s in PYTHIA_GRID if s <= 6300),
        "weights reported byte-identical between step0 and step6300",
        runs=("pythia-2.8b",),
    ),
    _defect(
        "EleutherAI/pythia#206",
        frozenset({50000, 58000}),
        "the first shard (holding embed_in) equals the shard on main",
        runs=("pythia-12b",),
    ),
    _defect(
        "EleutherAI/pythia#202",
        frozenset({40000}),
        "this branch has no weights",
        runs=("pythia-410m-seed9",),
    ),
    _defect("EleutherAI/pythia#202", frozenset({88000}), "this branch has no weights", runs=("pythia-410m-seed6",)),
    _defect("EleutherAI/pythia#202", frozenset({111000}), "this branch has no weights", runs=("pythia-410m-seed2",)),
    _defect(
        "EleutherAI/pythia#203",
        frozenset(s for s in PYTHIA_GRID if s >= 1),
        "checkpoints at step >= 1 do not descend from this run's own step0",
        runs=("pythia-160m-weight-seed1", "pythia-160m-weight-seed2"),
    ),
]


def legacy_defects_for(run_name: str, family: str) -> list[dict]:
    """The defects the old family-based lookup attached to ``run_name`` (as dicts: issue, steps, text)."""
    out = []
    for d in DEFECTS:
        if d["family"] != family or (d["runs"] and run_name not in d["runs"]):
            continue
        out.append({"issue": d["issue"], "steps": None if d["steps"] is None else sorted(d["steps"]), "text": d["text"]})
    return out
