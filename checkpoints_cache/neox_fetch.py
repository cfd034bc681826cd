"""Import a released run's own optimizer state from its NeoX checkpoint: ``branchpoint fetch RUN --step N --optimizer``.

The run's card names the repo (``RunInfo.optimizer_state``: ``kind = "neox-zero1"``, ``repo_id``,
``revision``; neox_ckpt.md §15). The import downloads through huggingface_hub, verified like every
other file (``fetch.download_verified``: LFS sha256), only ``mp_rank_00_model_states.pt`` and the
optimizer shards (a layer file only when a weight check needs it), reads them with ``neox_ckpt`` and
writes, atomically, one folder:

- ``optimizer.safetensors``: fp32 ``{name}.master``, ``{name}.exp_avg``, ``{name}.exp_avg_sq`` for every
  ``name`` of ``named_parameters()`` of the transformers ``GPTNeoXForCausalLM`` that loads the run's HF
  checkpoint of the same step -- the "optimizer states in HF format" people ask for (pythia#101, #152);
- ``optimizer.json``: ``iteration``, ``num_iters`` (the scheduler count), ``skipped_steps``, ``loss_scale``,
  ``source`` (repo id, revision, commit sha), the check results and any release defect found.

Without ``out`` the folder is ``$BRANCHPOINT_HOME/optimizer/<run>/step<N>/``, where ``branch`` finds it.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import hub
from .errors import UserError
from .fetch import PlannedFile, _snapshot, _verify_cached, _write_small, download_verified, ensure_checkpoint
from .neox_ckpt import (
    NeoXCheckpointError,
    Zero1State,
    cast_mismatch,
    check_args,
    check_counters,
    check_model_states_format,
    check_shard_format,
    check_values,
    find_layout,
    hf_name,
    layer_file_key,
    read_counters,
    read_zero1,
    safe_load,
    tensor_sha256,
)
from .registry import RunInfo
from .trajectory import atomic_dir, atomic_write_json, describe_nearest

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
FORMAT = "branchpoint-optimizer/1"
TRAIN_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


# -- what the card says -----------------------------------------------------------------------------------
def neox_source(run: RunInfo) -> dict[str, Any] | None:
    src = run.optimizer_state
    return src if src and src.get("kind") == "neox-zero1" else None


def neox_steps(run: RunInfo) -> list[int]:
    """The steps whose NeoX state the repo holds: every grid step for a ``step{N}`` template (or the
    card's ``steps``), else the one ``step`` its fixed branch holds (e.g. ``main`` = 143000)."""
    src = neox_source(run) or {}
    if "{N}" in str(src.get("revision", "")):
        return sorted(int(s) for s in (src.get("steps") or run.steps))
    return [int(src["step"])] if src.get("step") is not None else []


def neox_revision(run: RunInfo, step: int) -> str:
    """The branch of the NeoX repo holding ``step``, or a UserError naming the steps that exist."""
    src = neox_source(run)
    if src is None:
        raise UserError(f"{run.name} names no NeoX checkpoint repo (its card has no [optimizer_state] of kind "
                        "neox-zero1); use --optimizer-state reestimate or fresh")
    steps = neox_steps(run)
    if step not in steps:
        listed = ", ".join(map(str, steps)) if len(steps) <= 3 else f"nearest: {describe_nearest(steps, step)}"
        raise UserError(f"{src['repo_id']} holds the NeoX optimizer state of {run.name} only at step(s) {listed}, "
                        f"not at step {step}")
    return str(src["revision"]).replace("{N}", str(step))


def unsupported_reason(run: RunInfo, step: int) -> str | None:
    """Why an exact import of ``step`` is not possible (None when it is)."""
    src = neox_source(run)
    if src is None:
        return f"{run.name} names no NeoX checkpoint repo"
    mp = int(src.get("model_parallel", 1))
    if mp > 1:
        return (f"its NeoX checkpoints ({src['repo_id']}) are model-parallel (mp {mp}), which the importer does not "
                "merge (neox_ckpt.md §7)")
    try:
        neox_revision(run, step)
    except UserError as e:
        return str(e)
    return None


def imported_dir(run_name: str, step: int) -> Path:
    """Where ``fetch --optimizer`` puts the import of ``run_name`` at ``step`` (next to the data store)."""
    return hub.branchpoint_home() / "optimizer" / run_name / f"step{step}"


def is_import(folder: Path) -> bool:
    return (folder / OPTIMIZER_TENSORS).is_file() and (folder / OPTIMIZER_META).is_file()


def find_imported(run: RunInfo, step: int) -> Path | None:
    d = imported_dir(run.name, step)
    return d if is_import(d) else None


def load_imported(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, optimizer.json) of an import."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_import(folder):
        raise UserError(f"{folder} is not an optimizer import (needs {OPTIMIZER_TENSORS} and {OPTIMIZER_META}); "
                        "make one with `branchpoint fetch RUN --step N --optimizer`")
    meta = json.loads((folder / OPTIMIZER_META).read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{folder / OPTIMIZER_META} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return load_file(folder / OPTIMIZER_TENSORS), meta


# -- one revision of the NeoX repo, online or from the cache ------------------------------------------------
class _Revision:
    def __init__(self, repo_id: str, revision: str, *, endpoint: str | None, cache_dir: str | os.PathLike | None,
                 progress: bool, max_workers: int = 8):
        self.repo_id, self.revision = repo_id, revision
        self.endpoint, self.cache_dir, self.progress, self.max_workers = endpoint, cache_dir, progress, max_workers
        self.cache = hub.hub_cache(cache_dir)
        self.offline = hub.is_offline()
        self.where = f"{repo_id}@{revision}"
        if self.offline:
            commit = hub.cached_commit(self.cache, repo_id, revision)
            self.snap = _snapshot(self.cache, repo_id, commit) if commit else None
            if self.snap is None or not self.snap.is_dir():
                raise UserError(f"{self.where} is not in the cache {self.cache} and the Hub is off (HF_HUB_OFFLINE=1); "
                                "run `branchpoint fetch RUN --step N --optimizer` with network access first")
            self.commit = commit
            self.sizes = {str(p.relative_to(self.snap)): p.stat().st_size for p in self.snap.rglob("*") if p.is_file()}
            self.entries = {}
        else:
            self.commit = hub.resolve_commit(repo_id, revision, endpoint=endpoint)
            self.entries = hub.list_files(repo_id, self.commit, endpoint=endpoint)
            self.sizes = {n: e.size for n, e in self.entries.items()}

    @property
    def names(self) -> set[str]:
        return set(self.sizes)

    def cached(self, name: str) -> bool:
        return (_snapshot(self.cache, self.repo_id, self.commit) / name).exists()

    def get(self, names: list[str]) -> list[Path]:
        """Local, verified paths of ``names`` (downloaded in parallel when online)."""
        if self.offline:
            out = []
            for n in names:
                if n not in self.sizes:
                    raise UserError(f"{n} of {self.where} is not in the cache and the Hub is off; fetch with network access")
                _verify_cached(self.snap / n)
                out.append(self.snap / n)
            return out

        def one(name: str) -> Path:
            return download_verified(self.repo_id, name, self.commit, self.entries[name], endpoint=self.endpoint,
                                     cache_dir=self.cache_dir, progress=self.progress)

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_workers, len(names)))) as pool:
            return list(pool.map(one, names))

    def pin(self) -> None:
        """Record branch -> commit as huggingface_hub does, so offline use finds this revision."""
        if not self.offline:
            _write_small(hub.repo_folder(self.cache, self.repo_id) / "refs" / self.revision, self.commit)


# -- plan (--dry-run) ------------------------------------------------------------------------------------
def plan_optimizer(run: RunInfo, step: int, *, endpoint: str | None = None,
                   cache_dir: str | os.PathLike | None = None) -> list[PlannedFile]:
    """The NeoX files an import of ``step`` downloads (mp_rank_00 + every optimizer shard), with sizes.
    Empty when the import is already in the branchpoint cache. Moves nothing but metadata."""
    src, rev = neox_source(run), neox_revision(run, step)
    if find_imported(run, step) is not None:
        return []
    files = _Revision(src["repo_id"], rev, endpoint=endpoint, cache_dir=cache_dir, progress=False)
    layout = find_layout(files.names, files.where)
    _refuse_model_parallel(layout.mp, files.where)
    wanted = [layout.model_states[0]] + [n for (mp, _), n in sorted(layout.shards.items()) if mp == 0]
    return [PlannedFile(src["repo_id"], rev, files.commit, n, files.sizes[n], files.cached(n)) for n in wanted]


def _refuse_model_parallel(mp: int, where: str) -> None:
    if mp > 1:
        raise NeoXCheckpointError(
            f"{where} is model-parallel (mp {mp}); merging its ranks and the mp x LR of the row-parallel biases "
            "(neox_ckpt.md §7) are not implemented, so only mp-1 checkpoints (70M-2.8B) import"
        )


# -- the import -------------------------------------------------------------------------------------------
def import_optimizer_state(
    run: RunInfo, step: int, out: str | os.PathLike | None = None, *, endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None, progress: bool = True, max_workers: int = 8,
) -> Path:
    """Download, read, check and convert the NeoX optimizer state of ``run`` at ``step``; return the folder
    holding ``optimizer.safetensors`` and ``optimizer.json``. An existing import in the cache is reused."""
    import torch

    src, rev = neox_source(run), neox_revision(run, step)
    dest = Path(out) if out is not None else imported_dir(run.name, step)
    if out is None and is_import(dest):
        return dest
    if out is not None and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"--out {dest} already exists; choose a new folder")

    files = _Revision(src["repo_id"], rev, endpoint=endpoint, cache_dir=cache_dir, progress=progress,
                      max_workers=max_workers)
    where = files.where
    layout = find_layout(files.names, where)
    _refuse_model_parallel(layout.mp, where)

    # 1. counters and format from the small file first (§3): nothing large moves before they pass
    ms_name = layout.model_states[0]
    (ms_path,) = files.get([ms_name])
    ms = safe_load(ms_path, ms_name)
    check_model_states_format(ms, f"{where}/{ms_name}")
    counters = read_counters(ms, f"{where}/{ms_name}")
    _refuse_model_parallel(counters.mp_world_size, where)
    check_counters(counters, step, f"{where}/{ms_name}")
    del ms

    # 2. the shards (§13 step 1: all dp ranks present, structure identical)
    dp = counters.dp_world_size
    missing = layout.missing_shards(dp)
    if missing:
        raise NeoXCheckpointError(f"{missing[0]} is missing from {where} (dp_world_size {dp} means zero_pp_rank_0.."
                                  f"{dp - 1}); the revision is incomplete")
    extra = sorted(n for (mp, r), n in layout.shards.items() if mp == 0 and r >= dp)
    if extra:
        raise NeoXCheckpointError(f"{where} holds {extra[0]}, beyond dp_world_size {dp}: shards of two runs are mixed")
    names = layout.shard_names(dp)
    _say(progress, f"reading {dp} ZeRO-1 shard(s) of {where}")
    shards = []
    for name, path in zip(names, files.get(names)):
        state = safe_load(path, name)
        check_shard_format(state, f"{where}/{name}")
        shards.append((name, state))
    zero = read_zero1(shards)
    if zero.dp != dp:
        raise NeoXCheckpointError(f"{where}: the shards say partition_count {zero.dp}, {ms_name} says dp_world_size {dp}")
    values = check_values(zero, tuple(run.recipe.betas), counters)

    # 3. the HF checkpoint of the same step: the names, the config, the fp16 weights the masters must match
    ckpt = ensure_checkpoint(run, step, endpoint=endpoint, cache_dir=cache_dir, progress=progress)
    config = json.loads((Path(ckpt) / "config.json").read_text())
    check_args(counters.args, config, f"{where}/{ms_name}")

    # 4. names (§7) and weights (§13 step 3)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="auto")
    hf_params = {n: p.detach() for n, p in model.named_parameters()}
    head = next(n for n, p in model.named_parameters() if p is model.get_output_embeddings().weight)
    num_layers = int(config["num_hidden_layers"])
    mapping = {n: hf_name(n, num_layers, head) for n in zero.param_shapes}
    if sorted(mapping.values()) != sorted(hf_params):
        gone = sorted(set(hf_params) - set(mapping.values()))
        raise NeoXCheckpointError(f"{where} has no state for {gone[0] if gone else 'some'} of the HF model's parameters")
    for n, h in mapping.items():
        if tuple(zero.param_shapes[n]) != tuple(hf_params[h].shape):
            raise NeoXCheckpointError(f"{where}: {n} has shape {list(zero.param_shapes[n])} but {h} in the HF "
                                      f"checkpoint {list(hf_params[h].shape)}")
    train_dtype = getattr(torch, TRAIN_DTYPES.get(run.recipe.precision, "float32"))
    hf_where = f"{run.repo_id or run.name}@{_revision_of(run, step)}"
    mismatches = {n: mask for n in zero.param_shapes
                  if (mask := cast_mismatch(zero.master[n], hf_params[mapping[n]], train_dtype)) is not None}
    defects = _explain(zero, mismatches, mapping, hf_params, layout, files, train_dtype, step, hf_where) if mismatches else []

    # 5. write atomically
    from safetensors.torch import save_file

    tensors = {}
    for n, h in mapping.items():
        tensors[f"{h}.master"] = zero.master[n].contiguous()
        tensors[f"{h}.exp_avg"] = zero.exp_avg[n].contiguous()
        tensors[f"{h}.exp_avg_sq"] = zero.exp_avg_sq[n].contiguous()
    loss_scale = None
    if zero.loss_scaler is not None:
        loss_scale = {**zero.loss_scaler, "overflow": zero.overflow, "dynamic_loss_scale": zero.dynamic_loss_scale}
    meta = {
        "format": FORMAT,
        "run": run.name,
        "step": step,
        "iteration": counters.iteration,
        "global_steps": counters.global_steps,
        "num_iters": counters.num_iters,
        "skipped_steps": counters.skipped_steps,
        # neox_ckpt.md §8: the shards hold no Adam step; num_iters + 1 reproduces an uninterrupted NeoX process
        "adam_step": counters.num_iters + 1,
        "loss_scale": loss_scale,
        "source": {"kind": "neox-zero1", "repo_id": src["repo_id"], "revision": rev, "commit": files.commit},
        "weights": {"repo_id": run.repo_id, "revision": _revision_of(run, step), "path": str(ckpt),
                    "commit": Path(ckpt).name if run.repo_id else None},
        "dp_world_size": dp,
        "mp_world_size": counters.mp_world_size,
        "num_comm_intervals_per_group": zero.comm_intervals,
        "lr_scheduler": counters.lr_scheduler,
        # the shards carry no hyperparameters (neox_ckpt.md §4): these are the run's recipe
        "hyperparameters": {"betas": list(run.recipe.betas), "eps": run.recipe.eps,
                            "weight_decay": run.recipe.weight_decay},
        "names": "named_parameters() of transformers GPTNeoXForCausalLM loading the HF checkpoint above",
        "keys": ["{name}.master", "{name}.exp_avg", "{name}.exp_avg_sq"],
        "checks": {
            "structure": f"{dp} shard(s), ZeRO stage 1, comm intervals {zero.comm_intervals}, param_shapes identical",
            "counts": "sum of the pieces equals sum of param_shapes for every group",
            "counters": "iteration == global_steps == step; num_iters == step - skipped_steps",
            "weights": {"compared_with": hf_where, "parameters": len(mapping), "equal": len(mapping) - len(defects)},
            "moments": values,
        },
        "release_defects": defects,
        "versions": {"torch": torch.__version__},
    }
    with atomic_dir(dest) as tmp:
        save_file(tensors, str(tmp / OPTIMIZER_TENSORS), metadata={"format": FORMAT})
        atomic_write_json(tmp / OPTIMIZER_META, meta)
    files.pin()
    return dest


def _revision_of(run: RunInfo, step: int) -> str:
    return run.revision(step) if not run.is_local else f"step{step}"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr)


def _explain(zero: Zero1State, mismatches: dict, mapping: dict[str, str], hf_params: dict, layout, files: _Revision,
             train_dtype, step: int, hf_where: str) -> list[dict[str, Any]]:
    """Masters that disagree with the HF weights: a release defect (pythia#205/#206 style) if they equal the
    NeoX layer file of the same step -- reported with both hashes, the import keeps the masters -- and an
    import error otherwise (a shard from another step, a misread)."""
    import torch

    needed = sorted({ln for n in mismatches if (ln := layout.layer_name(layer_file_key(n)[0])) is not None})
    layer_states = {}
    for name, path in zip(needed, files.get(needed)):
        layer_states[name] = safe_load(path, name)
    defects, bad = [], {}
    for n, mask in mismatches.items():
        idx, key = layer_file_key(n)
        lname = layout.layer_name(idx)
        ref = layer_states.get(lname, {}).get(key) if lname else None
        hf = hf_params[mapping[n]]
        if isinstance(ref, torch.Tensor) and cast_mismatch(zero.master[n], ref, train_dtype) is None:
            d = {"param": mapping[n], "neox_param": n, "elements": int(mask.sum()), "hf": hf_where,
                 "hf_sha256": tensor_sha256(hf), "master_sha256": tensor_sha256(zero.master[n].to(hf.dtype)),
                 "layer_file": f"{files.where}/{lname}"}
            defects.append(d)
            print(f"warning: release defect (pythia#205/#206 style): {hf_where} {d['param']} differs from the fp32 "
                  f"master of step {step} cast to {str(hf.dtype).removeprefix('torch.')} at {d['elements']} elements "
                  f"(HF sha256 {d['hf_sha256'][:16]}..., NeoX sha256 {d['master_sha256'][:16]}..., which equals "
                  f"{lname}); the import keeps the NeoX masters", file=sys.stderr)
        else:
            bad[n] = (mask, lname, ref is not None)
    if bad:
        ranks = set().union(*(zero.ranks_holding(n, m.reshape(-1).nonzero().flatten()) for n, (m, _, _) in bad.items()))
        count = sum(int(m.sum()) for m, _, _ in bad.values())
        if len(ranks) == 1 and zero.dp > 1:
            (r,) = ranks
            raise NeoXCheckpointError(
                f"{zero.shard_names[r]}: its fp32 masters disagree with the fp16 weights of step {step} ({hf_where} "
                f"and the layer files) at {count} elements of {len(bad)} parameter(s): a shard from another step"
            )
        n, (m, lname, had_layer) = next(iter(bad.items()))
        hf = hf_params[mapping[n]]
        layer = f"and with {lname}" if had_layer else "and the repo has no layer file to decide"
        raise NeoXCheckpointError(
            f"the fp32 master of {mapping[n]} disagrees with {hf_where} (HF sha256 {tensor_sha256(hf)[:16]}..., "
            f"master sha256 {tensor_sha256(zero.master[n].to(hf.dtype))[:16]}...) {layer} at {int(m.sum())} elements "
            f"({len(bad)} parameter(s) in all); the import is not trusted"
        )
    return defects

