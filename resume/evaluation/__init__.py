"""Study-grade evaluation: lm-evaluation-harness tasks on trajectories, paired tests, noise bands,
the parent's published numbers.

Entry points: ``resume.evaluation.api.evaluate`` (Python) and ``branchpoint eval`` (CLI);
``branchpoint compare --tasks ...`` runs the same task evaluation next to the held-out loss.
Modules: ``stats`` (McNemar, paired bootstrap), ``bands`` (seed, checkpoint-noise and
repeated-control bands, verdicts), ``analysis`` (paired tests and bands over a table of
measurements), ``tasks`` (finding lm-eval tasks offline), ``lmeval`` (one checkpoint through
``lm_eval.simple_evaluate``, cached by content), ``published`` (Pythia's released eval JSONs),
``plots`` and ``summary``.
"""
