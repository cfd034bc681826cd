"""Shrink-and-perturb at the branch step (Ash & Adams 2020): θ ← λ·θ + σ·ε, then train as the parent.

    branchpoint branch runs/toy --from-step 32 --steps 32 \
        --intervention examples/my_intervention.py:ShrinkPerturb:shrink=0.5,noise=0.01
"""
import torch

from resume.interventions.params import DeclaredIntervention, Param


class ShrinkPerturb(DeclaredIntervention):
    name = "shrink-perturb"
    PARAMS = (  # validated like the built-ins: shrink=2 or an unknown key is a one-line error
        Param("shrink", float, 0.5, "λ: every weight is multiplied by this", min=0.0, max=1.0),
        Param("noise", float, 0.01, "σ: std of the Gaussian noise added", min=0.0),
        Param("seed", int, 0, "noise seed", min=0),
    )

    @torch.no_grad()
    def on_load(self, model, ctx):  # the engine saves the result as the branch's stepN
        gen = torch.Generator().manual_seed(self.params["seed"])
        for p in model.parameters():
            p.mul_(self.params["shrink"]).add_(self.params["noise"] * torch.randn(p.shape, generator=gen))
        return model
