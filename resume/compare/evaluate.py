"""Evaluate the parent and the compared models step by step on the held-out batches.

At each compared step the parent's checkpoint is loaded once; every compared model of that step
(each branch's trained and averaged weights, each seed run) is loaded once; then, batch by batch,
the parent's logits are computed once and each compared model's logits are scored against them
(loss, KL(parent || model), top-1 agreement) token block by token block, and freed. Each model's
loss is also kept per held-out sequence (row), for the paired test of Δloss over sequences.
Parameter distances are computed from the same loaded models. Results are cached by content
(``cache.EvalCache``), so a re-plot loads nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .cache import EvalCache
from .evalset import EvalSet
from .metrics import (LossSums, PairSums, ParamNorm, block_elements_for, pair_sums, param_l2_distance,
                      reference_block, token_blocks)
from .runs import RunRef

# Bytes of float32 logits held at once (the parent's and a group's): rows per forward =
# budget / (T * V * 4 * (1 + GROUP_SIZE)), at least 1 (Pythia, T = 2048: one row, ~2 GB).
FORWARD_BUDGET_BYTES = 1 << 30
# Compared models held in memory at once next to the parent (the parent's forward is repeated
# once per group, so larger groups are faster and use more memory).
GROUP_SIZE = 4
# Part of every cache key: bump when a metric's definition or arithmetic changes, so that old
# cached values are never mixed with new ones. 2: float32 elementwise work, per-sequence losses.
METRICS_VERSION = "2"


@dataclass
class Subject:
    """A compared model: run label x weights kind x step."""

    label: str
    weights: str  # "trained" | "averaged"
    step: int
    path: Path
    ref_step: int  # N: the branch point its parameter distance is measured from


@dataclass
class PairResult:
    loss: float
    kl: float
    top1_agreement: float
    parent_loss: float
    tokens: int
    rows: list[float] = field(default_factory=list)  # mean loss per held-out sequence, in eval-set order


@dataclass
class Results:
    parent_loss: dict[int, float] = field(default_factory=dict)
    parent_rows: dict[int, list[float]] = field(default_factory=dict)  # per-sequence losses of the parent
    pairs: dict[tuple[str, str, int], PairResult] = field(default_factory=dict)
    distance: dict[tuple[str, str, int], ParamNorm] = field(default_factory=dict)  # ‖θ − θ_parent(S)‖
    travel: dict[tuple[str, str, int], ParamNorm] = field(default_factory=dict)  # ‖θ_parent(S) − θ_parent(N)‖
    loaded_models: int = 0
    forwards: int = 0


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load "Loading weights" bar (compare shows its own progress)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load_model(path: Path, device: torch.device, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    from checkpoints_cache.corrupt import reading_checkpoint

    with _quiet_transformers(), reading_checkpoint(path):  # a damaged file is named, with what to do
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def _params(model) -> list[tuple[str, torch.Tensor]]:
    return [(n, p.detach()) for n, p in model.named_parameters()]


def rows_per_forward(batch_size: int, seq_len: int, vocab: int) -> int:
    return max(1, min(batch_size, FORWARD_BUDGET_BYTES // max(seq_len * vocab * 4 * (1 + GROUP_SIZE), 1)))


def _chunks(eval_set: EvalSet, vocab: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) per forward: batch by batch, rows split to bound the logits' memory."""
    B = eval_set.batch_size
    per = rows_per_forward(B, eval_set.seq_len, vocab)
    for b in range(len(eval_set.batch_indices)):
        batch = eval_set.rows[b * B : (b + 1) * B]
        for i in range(0, B, per):
            rows = torch.from_numpy(np.ascontiguousarray(batch[i : i + per]).astype(np.int64))
            yield rows[:, :-1].to(device), rows[:, 1:].to(device)


def _num_chunks(eval_set: EvalSet, vocab: int) -> int:
    per = rows_per_forward(eval_set.batch_size, eval_set.seq_len, vocab)
    return len(eval_set.batch_indices) * -(-eval_set.batch_size // per)


class Evaluator:
    def __init__(self, parent: RunRef, eval_set: EvalSet, cache: EvalCache, vocab: int,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32, progress: bool = True):
        self.parent = parent
        self.eval_set = eval_set
        self.cache = cache
        self.vocab = vocab
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.progress = progress
        self.es_fp = eval_set.fingerprint
        self.block = block_elements_for(self.device)
        self._ref_params: dict[int, list[tuple[str, torch.Tensor]]] = {}
        self.ref_steps: set[int] = set()

    # -- cache keys ----------------------------------------------------------------------------
    # Keys name the device type too: CPU and GPU kernels round differently, and a control's exact
    # zero needs both sides of a pair (and the parent's loss) from the same arithmetic.
    def _loss_key(self, fp: str) -> list[str]:
        return [fp, self.es_fp, str(self.dtype), self.device.type, METRICS_VERSION]

    def _pair_key(self, fp_parent: str, fp: str) -> list[str]:
        return [fp_parent, fp, self.es_fp, str(self.dtype), self.device.type, METRICS_VERSION]

    def _l2_key(self, a: str, b: str) -> list[str]:
        return [*sorted([a, b]), str(self.dtype), self.device.type, METRICS_VERSION]

    # -- parameter distances ---------------------------------------------------------------------
    def _l2(self, fa: str, pa, fb: str, pb) -> ParamNorm:
        hit = self.cache.get("l2", self._l2_key(fa, fb))
        if hit is not None:
            return ParamNorm(hit["value"], hit.get("reason", ""), hit.get("numel", 0))
        norm = param_l2_distance(pa() if callable(pa) else pa, pb() if callable(pb) else pb)
        self.cache.put("l2", self._l2_key(fa, fb), {"value": norm.value, "reason": norm.reason, "numel": norm.numel})
        return norm

    def _parent_at(self, step: int) -> tuple[str, object]:
        """(fingerprint, lazy params) of θ_parent(N); the params are loaded on first use and kept."""
        path = self.parent.checkpoint(step)
        fp = self.cache.checkpoint_fingerprint(path)

        def params():
            if step not in self._ref_params:
                model = load_model(path, self.device, self.dtype)
                self._ref_params[step] = _params(model)
            return self._ref_params[step]

        return fp, params

    # -- the loop ----------------------------------------------------------------------------
    def run(self, subjects_by_step: dict[int, list[Subject]]) -> Results:
        from checkpoints_cache.progress import progress_bar

        res = Results()
        steps = sorted(subjects_by_step)
        self.ref_steps = {s.ref_step for subs in subjects_by_step.values() for s in subs}
        plan = []
        total = 0
        n_chunks = _num_chunks(self.eval_set, self.vocab)
        # Content-hash every checkpoint up front, in parallel (a no-op for files hashed before).
        self.cache.prefetch([self.parent.checkpoint(st) for st in steps] +
                            [sub.path for st in steps for sub in subjects_by_step[st]])
        for step in steps:
            ppath = self.parent.checkpoint(step)
            fp_p = self.cache.checkpoint_fingerprint(ppath)
            ploss = self.cache.get("loss", self._loss_key(fp_p))
            todo = []
            for s in subjects_by_step[step]:
                fp = self.cache.checkpoint_fingerprint(s.path)
                pair = self.cache.get("pair", self._pair_key(fp_p, fp))
                todo.append((s, fp, pair))
            need_eval = [t for t in todo if t[2] is None]
            groups = -(-len(need_eval) // GROUP_SIZE)
            if ploss is None and groups == 0:
                groups = 1  # the parent alone (a step where only the parent's loss is missing)
            total += groups * n_chunks + len(need_eval) * n_chunks
            plan.append((step, ppath, fp_p, ploss, todo, need_eval))
        self.cache.flush()

        bar = progress_bar(total=total, desc="compare: evaluating", unit="fwd", enabled=self.progress and total > 0)
        try:
            for step, ppath, fp_p, ploss, todo, need_eval in plan:
                self._run_step(res, step, ppath, fp_p, ploss, todo, need_eval, bar)
        finally:
            bar.close()
            self.cache.flush()
        return res

    def _run_step(self, res: Results, step: int, ppath: Path, fp_p: str, ploss, todo, need_eval, bar) -> None:
        parent_model = None

        def parent_params():
            nonlocal parent_model
            if parent_model is None:
                parent_model = load_model(ppath, self.device, self.dtype)
                res.loaded_models += 1
            return _params(parent_model)

        if ploss is None or need_eval:
            parent_params()
        if parent_model is not None and step in self.ref_steps and step not in self._ref_params:
            self._ref_params[step] = _params(parent_model)  # a branch point: keep θ_parent(N) for later steps
        # Evaluate in groups of compared models, the parent's forward shared within a group.
        groups = [need_eval[i : i + GROUP_SIZE] for i in range(0, len(need_eval), GROUP_SIZE)] or ([[]] if ploss is None else [])
        for group in groups:
            models = []
            for s, fp, _ in group:
                m = load_model(s.path, self.device, self.dtype)
                res.loaded_models += 1
                models.append(m)
            parent_sums = LossSums()
            sums = [PairSums() for _ in group]
            parent_rows: list[torch.Tensor] = []
            rows = [[] for _ in group]
            with torch.inference_mode():
                for inputs, labels in _chunks(self.eval_set, self.vocab, self.device):
                    all_logits = []
                    for m in (parent_model, *models):
                        all_logits.append(m(input_ids=inputs).logits)
                        res.forwards += 1
                        bar.update(1)
                    # Token block by token block: the parent's side is computed once per block and
                    # used for every model while it is still in cache, then dropped.
                    blocks = zip(*(token_blocks(lg, labels, self.block) for lg in all_logits))
                    p_ce, q_ce = [], [[] for _ in group]
                    for (p_block, lb), *others in blocks:
                        ref = reference_block(p_block, lb)
                        parent_sums.tokens += int(lb.numel())
                        parent_sums.ce_sum += ref.ce_sum
                        p_ce.append(ref.ce)
                        for acc, ces, (q_block, _) in zip(sums, q_ce, others):
                            block = pair_sums(ref, q_block)
                            acc.add(block)
                            ces.append(block.ce)
                    del all_logits
                    # Per-sequence sums of this forward's tokens (rows x T, flattened in row order).
                    shape = labels.shape
                    parent_rows.append(torch.cat(p_ce).view(shape).sum(dim=1))
                    for r, ces in zip(rows, q_ce):
                        r.append(torch.cat(ces).view(shape).sum(dim=1))
            T = self.eval_set.seq_len
            if ploss is None:
                ploss = {"loss": parent_sums.loss, "tokens": parent_sums.tokens,
                         "rows": (torch.cat(parent_rows) / T).tolist()}
                self.cache.put("loss", self._loss_key(fp_p), ploss)
            for (s, fp, _), acc, r in zip(group, sums, rows):
                means = acc.means()
                pair = {**means, "parent_loss": ploss["loss"], "tokens": acc.tokens, "rows": (torch.cat(r) / T).tolist()}
                self.cache.put("pair", self._pair_key(fp_p, fp), pair)
                res.pairs[(s.label, s.weights, s.step)] = PairResult(**pair)
            # Parameter distances while the group's models are in memory.
            for (s, fp, _), m in zip(group, models):
                self._distances(res, s, fp, fp_p, parent_params, lambda m=m: _params(m))
            del models  # freed by refcount (a gc.collect() here costs ~0.5 s with transformers loaded)
        res.parent_loss[step] = ploss["loss"]
        res.parent_rows[step] = ploss["rows"]
        for s, fp, pair in todo:
            if pair is not None:
                res.pairs[(s.label, s.weights, s.step)] = PairResult(**{k: pair[k] for k in PairResult.__dataclass_fields__})
                self._distances(res, s, fp, fp_p, parent_params,
                                lambda s=s: _params(load_model(s.path, self.device, self.dtype)))
        del parent_model

    def _distances(self, res: Results, s: Subject, fp: str, fp_p: str, parent_params, own_params) -> None:
        key = (s.label, s.weights, s.step)
        res.distance[key] = self._l2(fp, own_params, fp_p, parent_params)
        if s.ref_step == s.step:
            res.travel[key] = ParamNorm(0.0)  # the parent has not moved yet at its own branch point
        else:
            ref_fp, ref_params = self._parent_at(s.ref_step)
            res.travel[key] = self._l2(fp_p, parent_params, ref_fp, ref_params)
