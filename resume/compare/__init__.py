"""Compare branches with their parent run: held-out loss, Δloss, KL, top-1 agreement, parameter distance.

Entry points: ``resume.compare.api.compare`` (Python) and ``branchpoint compare`` (CLI). Modules:
``runs`` (opening trajectories / registry runs), ``evalset`` (the fixed held-out batches),
``metrics`` (the arithmetic), ``evaluate`` (the evaluation loop), ``cache`` (content-keyed results),
``table`` (the tidy table), ``plots`` (figures), ``summary`` (Markdown).
"""
