"""LAWA under two CPU processes (torchrun + accelerate): the window is held once, by the main
process, and a replacement reaches the other rank, so both train on the same averaged weights."""

from __future__ import annotations

import json

import torch

from tests.engine.helpers import torchrun

from .conftest import run_branch, weights

RECORDER = '''
import json, os
from resume.interventions.lawa import LAWA

class Recorder(LAWA):
    """LAWA that writes, per rank, the snapshot bytes it holds in memory after every update."""
    def after_step(self, model, step):
        super().after_step(model, step)
        rank = int(os.environ.get("RANK", "0"))
        path = self.ctx.out_dir / f"held-rank{rank}.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "held": self.window.held_bytes(), "steps": self.snapshot_steps(),
                                "weights": sum(float(p.double().sum()) for p in model.parameters())}) + "\\n")
'''


def test_window_held_once_and_replacement_broadcast(toy, tmp_path):
    plugin = tmp_path / "recorder.py"
    plugin.write_text(RECORDER)
    spec = f"{plugin}:Recorder:k=3,every=16,mode=replace,store=host"
    two = tmp_path / "two"
    torchrun(["-m", "resume", "branch", str(toy), "--from-step", "32", "--steps", "20", "--micro-batch-size", "4",
              "--intervention", spec, "--out", str(two), "--no-compare"])

    rows = {r: [json.loads(x) for x in (two / f"held-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    one_copy = sum(t.numel() * t.element_size() for t in weights(toy, 32).values())
    assert rows[0][-1]["held"] == 3 * one_copy  # the main process: k = 3 snapshots (0, 16, 32 -> 16, 32, 48)
    assert rows[0][-1]["steps"] == [16, 32, 48]
    assert all(r["held"] == 0 for r in rows[1])  # the other rank: none, at every update
    # the replacement at 48 reached rank 1: both ranks hold the same weights after every update
    assert [r["weights"] for r in rows[0]] == [r["weights"] for r in rows[1]]

    # both ranks trained from the same averaged weights: the result matches one process up to the
    # fp32 summation-order floor of a 2-process run (tests/engine/test_two_processes.py: <= 1e-5)
    one = run_branch(toy, tmp_path / "one", "lawa:k=3,every=16,mode=replace,store=host", steps=20)
    a, b = weights(two, 52), weights(one, 52)
    dist = torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a))
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in b.values()))
    assert float(dist / norm) <= 1e-5
    assert not torch.equal(weights(two, 48)["gpt_neox.embed_in.weight"], weights(toy, 48)["gpt_neox.embed_in.weight"])
