"""GPU functional check of the exact Pythia import (neox_ckpt.md §13 step 6; issue 11 §3, last bullet).

Needs the Hugging Face Hub and one GPU (not run on the development machine, which has neither).

1. Picks the run: pythia-70m if its card names a per-step NeoX repo holding step K, else pythia-160m
   (``EleutherAI/neox-ckpt-pythia-160m``, all 154 branches); pythia-70m's known repo holds only step 143000.
2. Fetches its HF checkpoints K and M (the next released step; M = 2K on the log-spaced grid), the data rows of
   batches K-m .. M-1 (m = the batches `reestimate` replays) and imports the NeoX optimizer state of step K.
3. Branches from K to M on the exact batches with no intervention, once per optimizer state: exact (the import:
   fp32 masters, Adam moments, num_iters + 1, schedule offset), reestimate, fresh -- NeoX numerics, in the
   parent's precision (fp16 for pythia-160m, with DeepSpeed's loss scaler from the import).
4. Reports, per mode, the weight distance of the branch's step M to the released step M (absolute, and relative
   to the parent's own movement K -> M), and the loss of each model on two batches after M.

Expect exact << reestimate < fresh, not bit equality (other kernels; fp16 vs fp32 masters, neox_ckpt.md §13).

    python scripts/gpu_exact_pythia.py --step 256                  # 256 -> 512 (the reference's example)
    python scripts/gpu_exact_pythia.py --step 32 --micro-batch 16  # 32 -> 64: about 3 x 32 updates of 2M tokens
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", type=int, default=256, help="branch step K (a released step with NeoX state)")
    ap.add_argument("--to-step", type=int, default=None, help="released step M to compare at (default: the next one)")
    ap.add_argument("--run", default=None, help="registry run (default: pythia-70m if it has per-step NeoX state, else pythia-160m)")
    ap.add_argument("--modes", default="exact,reestimate,fresh")
    ap.add_argument("--micro-batch", type=int, default=None, help="rows per forward pass (default: the engine's)")
    ap.add_argument("--out", default="out/gpu-exact-pythia")
    args = ap.parse_args()

    import torch

    from checkpoints_cache.fetch import ensure_checkpoint
    from checkpoints_cache.neox_fetch import import_optimizer_state, neox_steps, unsupported_reason
    from checkpoints_cache.registry import resolve_run
    from data_order.remote import fetch_data_steps
    from resume.branching import branch, reestimate_count

    if not torch.cuda.is_available():
        print("warning: no GPU: this check is meant for one (it runs, slowly, on CPU in fp32)", file=sys.stderr)
    name = args.run
    if name is None:
        name = "pythia-70m" if unsupported_reason(resolve_run("pythia-70m"), args.step) is None else "pythia-160m"
    run = resolve_run(name)
    k = args.step
    later = [s for s in run.steps if s > k]
    m = args.to_step or (later[0] if later else None)
    if m is None or m not in run.steps or k not in neox_steps(run):
        print(f"error: {name} needs NeoX state at {k} and a released step after it", file=sys.stderr)
        return 2
    replay = reestimate_count(run.recipe.betas[1], k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    for s in (k, m):
        ensure_checkpoint(run, s)
    fetch_data_steps(run, k - replay, (m - k) + replay + 2)  # reestimate's batches, the branch, 2 eval batches
    folder = import_optimizer_state(run, k)
    info = json.loads((folder / "optimizer.json").read_text())
    print(f"imported {info['source']['repo_id']}@{info['source']['revision']} ({info['source']['commit'][:10]}): "
          f"iteration {info['iteration']}, num_iters {info['num_iters']}, skipped_steps {info['skipped_steps']}, "
          f"loss scale {(info['loss_scale'] or {}).get('cur_scale')}, {len(info['release_defects'])} release defect(s) "
          f"[{time.time() - t0:.0f} s]")

    released = {s: _weights(ensure_checkpoint(run, s)) for s in (k, m)}
    moved = _distance(released[m], released[k])
    results = {"run": name, "from": k, "to": m, "parent_movement": moved, "import": info["source"], "modes": {}}
    for mode in args.modes.split(","):
        t = time.time()
        traj = branch(name, k, m - k, optimizer_state=mode, out=out / mode, resume=(out / mode).exists(),
                      micro_batch_size=args.micro_batch, numerics="neox")
        w = _weights(traj / "checkpoints" / f"step{m}")
        d = _distance(w, released[m])
        results["modes"][mode] = {"distance": d, "relative": d / moved, "seconds": time.time() - t,
                                  "eval_loss": _eval_loss(traj / "checkpoints" / f"step{m}", run, m)}
        print(f"{mode:>10}: |theta_{m} - released| = {d:.4f} ({d / moved:.4f} of the parent's movement {k}->{m}), "
              f"eval loss {results['modes'][mode]['eval_loss']:.4f} [{time.time() - t:.0f} s]")
    results["released_eval_loss"] = _eval_loss(ensure_checkpoint(run, m), run, m)
    print(f"  released: eval loss {results['released_eval_loss']:.4f}")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out / 'results.json'}")
    return 0


def _weights(folder: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {n: p.detach() for n, p in model.named_parameters()}


def _distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float(((a[n].double() - b[n].double()) ** 2).sum()) for n in a))


def _eval_loss(folder: Path, run, step: int, batches: int = 2) -> float:
    """Token-mean loss on the global batches right after ``step`` (rows fetched above), in the parent's precision."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from data_order.source import TokenRows
    from checkpoints_cache.registry import resolve_run

    order = resolve_run(run.name).data_order
    data = TokenRows(order["path"], int(order["batch_size"]), int(order["seq_len"]))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(dev).eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(dev, dtype=torch.float16, enabled=dev == "cuda"):
        for b in range(step, step + batches):
            rows = torch.from_numpy(np.asarray(data.batch(b), dtype=np.int64))
            for chunk in rows.split(16):
                chunk = chunk.to(dev)
                logits = model(input_ids=chunk[:, :-1]).logits.float()
                total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction="sum"))
                count += chunk[:, 1:].numel()
    return total / count


if __name__ == "__main__":
    sys.exit(main())
