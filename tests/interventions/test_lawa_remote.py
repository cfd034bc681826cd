"""LAWA window=run on a released parent: the window's checkpoints before N are fetched through the
run's card (checkpoints_cache.fetch.ensure_checkpoint) from the loopback Hub stand-in, and the
average is the mean of the released checkpoints (independent arithmetic on the generated weights).

The stand-in's ``pythia-70m-deduped`` (tests/checkpoints_cache/repos.py) holds tiny weights at
step0 (seed 0), step1 (seed 1, ``pytorch_model.bin`` only), step2 (= step0) and step4 (seed 4,
sharded safetensors): a branch from N = 4 with k = 3 on the Pythia grid averages steps 1, 2, 4.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tests.checkpoints_cache.conftest import env, hub, world  # noqa: F401  (the stand-in fixtures)
from tests.checkpoints_cache.repos import RUN, _model

REPO = Path(__file__).resolve().parents[2]

# In a child process, so that huggingface_hub reads HF_ENDPOINT (the stand-in) at import.
CHILD = """
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from resume.branching import branch_context, load_model
from resume.interventions.lawa import LAWA
from resume.parent import open_parent

out = Path(sys.argv[2])
parent = open_parent(sys.argv[1])
ctx = branch_context(parent, 4, 8, out / "branch", None)  # no data order needed for the window
lawa = LAWA(k=3, mode="eval")
lawa.setup(ctx)
lawa.on_load(load_model(parent.checkpoint_dir(4)), ctx)
save_file(lawa.average(), str(out / "average.safetensors"))
(out / "info.json").write_text(json.dumps({"window": lawa.window_steps(), "every": lawa.every,
                                           "held": lawa.snapshot_steps()}))
"""


def test_window_run_fetches_the_released_parents_checkpoints(env, tmp_path):  # noqa: F811
    import json

    proc = subprocess.run([sys.executable, "-c", CHILD, RUN, str(tmp_path)], cwd=REPO, env=env.vars(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "info.json").read_text())
    assert info == {"window": [1, 2, 4], "every": 4, "held": [1, 2, 4]}  # the Pythia grid; its next gap at 4 is 4
    got = load_file(str(tmp_path / "average.safetensors"))
    released = {s: dict(_model(seed).named_parameters()) for s, seed in ((1, 1), (2, 0), (4, 4))}
    for name, value in got.items():
        parts = [released[s][name].detach().numpy().astype(np.float32) for s in (1, 2, 4)]
        expect = (parts[0] + parts[1] + parts[2]) / np.float32(3)
        assert torch.equal(value, torch.from_numpy(expect)), name
    assert sorted(f.name for f in (tmp_path / "branch" / "lawa").iterdir()) == [
        "step1.safetensors", "step2.safetensors", "step4.safetensors"]
