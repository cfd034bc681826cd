"""Small text tasks over the toy corpus, as local lm-eval YAMLs over generated jsonl files.

The toy's checkpoints carry a word-level tokenizer (``resume.toy.toy_tokenizer``), so its held-out
rows read as text. Documents come from the data order's held-out batches (after training; never
seen by the toy or by branches that train on its order):

- ``toy_next_word`` (multiple_choice; acc, acc_norm): the first ``context`` words of a row, then
  which of 4 words comes next: the row's own next word or 3 distinct distractors drawn from the
  vocabulary (seeded).
- ``toy_continuation`` (loglikelihood; perplexity, acc): the log-likelihood of the row's next
  ``span`` words given the first ``context`` ones (acc: whether they are the greedy continuation).

Usage::

    from resume.evaluation.toy_task import write_toy_tasks
    task_dir = write_toy_tasks("runs/toy-tiny", "runs/toy-tasks")   # -> --include-path
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import Trajectory, atomic_write_text

NEXT_WORD = "toy_next_word"
CONTINUATION = "toy_continuation"


def _yaml(name: str, data: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            f"test_split: test\n{body}metadata:\n  version: 1.0\n")


def write_toy_tasks(traj: str | Path, out: str | Path, docs: int = 64, context: int = 12, span: int = 2,
                    seed: int = 0) -> Path:
    """Write ``toy_next_word`` and ``toy_continuation`` (YAML + jsonl) into ``out``; return ``out``."""
    from data_order.source import TokenRows
    from resume.toy import FIRST_TOKEN, pseudo_word

    t = Trajectory.open(traj)
    order = t.data_order or {}
    held = order.get("heldout_batches")
    if not held or not order.get("path"):
        raise UserError(f"{traj} declares no held-out batches; toy tasks are drawn from the toy's own held-out rows")
    vocab = int(t.model_config.get("vocab_size"))
    path = Path(order["path"])
    rows = TokenRows(path if path.is_absolute() else t.root / path, int(order["batch_size"]), int(order["seq_len"]))
    first, last = int(held[0]) * rows.batch_size, int(held[1]) * rows.batch_size
    if last - first < docs:
        raise UserError(f"{traj} has {last - first} held-out rows; ask for at most that many documents")
    if context + span > rows.row_len:
        raise UserError(f"context {context} + span {span} words exceed the toy's rows of {rows.row_len} tokens")
    block = np.asarray(rows.rows(first, first + docs), dtype=np.int64)
    rng = np.random.default_rng(seed)
    words = np.arange(FIRST_TOKEN, vocab)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    choice_docs, cont_docs = [], []
    for i, row in enumerate(block):
        ctx = " ".join(pseudo_word(int(x)) for x in row[:context])
        answer = int(row[context])
        distractors = rng.choice(words[words != answer], size=3, replace=False)
        options = [answer, *(int(x) for x in distractors)]
        perm = rng.permutation(4)
        choice_docs.append({"id": i, "context": ctx, "choices": [pseudo_word(options[k]) for k in perm],
                            "label": int(np.flatnonzero(perm == 0)[0])})
        cont_docs.append({"id": i, "context": ctx, "continuation": " ".join(pseudo_word(int(x)) for x in row[context:context + span])})
    for name, docs_ in ((NEXT_WORD, choice_docs), (CONTINUATION, cont_docs)):
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(d) + "\n" for d in docs_))
    atomic_write_text(out / f"{NEXT_WORD}.yaml", _yaml(NEXT_WORD, (out / f"{NEXT_WORD}.jsonl").resolve(),
        'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: label\ntarget_delimiter: " "\nmetric_list:\n  - metric: acc\n    aggregation: mean\n'
        '    higher_is_better: true\n  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n'))
    atomic_write_text(out / f"{CONTINUATION}.yaml", _yaml(CONTINUATION, (out / f"{CONTINUATION}.jsonl").resolve(),
        'output_type: loglikelihood\ndoc_to_text: "{{context}}"\ndoc_to_target: "{{\' \' + continuation}}"\n'
        'metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n'
        '  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'))
    return out
