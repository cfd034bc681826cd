"""The toy's word-level tokenizer: with every checkpoint (branches' and averaged weights' too), ids
unchanged, rows decode to text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resume.cli import main
from resume.toy import FIRST_TOKEN, TOY_SIZES, pseudo_word, toy_tokenizer


def test_pseudo_words_are_unique_and_round_trip():
    vocab = TOY_SIZES["small"].vocab
    words = [pseudo_word(i) for i in range(FIRST_TOKEN, vocab)]
    assert len(set(words)) == len(words) and all(w.isalpha() and w.islower() for w in words)
    tok = toy_tokenizer(vocab)
    ids = list(range(FIRST_TOKEN, vocab))
    text = tok.decode(ids)
    assert text == " ".join(words)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert (tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 1, 0)  # Pythia's ids (pythia.md §4.1)


def test_every_checkpoint_carries_the_tokenizer(toy_tiny: Path, branches):
    from transformers import AutoTokenizer

    from data_order.source import TokenRows

    folders = [toy_tiny / "checkpoints" / "step0", toy_tiny / "checkpoints" / "step64",
               branches["control"] / "checkpoints" / "step48", branches["lawa_eval"] / "checkpoints" / "step48" / "averaged"]
    for f in folders:
        assert (f / "tokenizer.json").is_file() and (f / "tokenizer_config.json").is_file(), f
    assert (toy_tiny / "checkpoints" / "step0" / "tokenizer.json").read_bytes() == \
        (branches["lawa_eval"] / "checkpoints" / "step48" / "averaged" / "tokenizer.json").read_bytes()
    tok = AutoTokenizer.from_pretrained(folders[-1])
    row = np.asarray(TokenRows(toy_tiny / "data", 8, 32).batch(70)[0], dtype=np.int64)
    text = tok.decode(row.tolist())
    assert text.split() == [pseudo_word(int(t)) for t in row]
    assert tok(text, add_special_tokens=False)["input_ids"] == row.tolist()


def test_batch_decode_shows_text(toy_tiny: Path, capsys):
    assert main(["batch", str(toy_tiny), "--step", "3", "--decode"]) == 0
    out = capsys.readouterr().out
    texts = [line for line in out.splitlines() if " text: " in line]
    assert len(texts) == 3 and all(w.isalpha() for w in texts[0].split("text: ")[1].strip("'").split())
