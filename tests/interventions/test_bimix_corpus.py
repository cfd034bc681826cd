"""BiMix on a labelled corpus: a generated parquet table whose domains have known entropies, packed
within each domain, cached, drawn deterministically, repeated when a domain runs out; a text
corpus through a tokenizer; and branches of the toy that train on it.

The corpus: three domains, documents interleaved in the table, of varied lengths:
- ``iid4``: tokens i.i.d. uniform over 4 ids: H(X'|X) = H(X) = ln 4;
- ``iid32``: i.i.d. uniform over 32 ids: ln 32 (4·32² pairs per bin on average: plug-in bias < 0.3 %);
- ``cycle``: one cycle of 7 ids, cut into documents that continue each other, so that packing the
  domain restores the cycle: H(X'|X) = 0 exactly, H(X) = ln 7.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from checkpoints_cache.errors import UserError
from data_order import labelled
from data_order.labelled import EntropyCounts, prepare_labelled
from resume.interventions.base import BranchContext
from resume.interventions.bimix import BiMix, largest_remainder, softmax

from .conftest import context, run_branch

SEQ_LEN = 32  # the tiny toy's; rows of 33 tokens
EXACT = {"conditional": {"iid4": math.log(4), "iid32": math.log(32), "cycle": 0.0},
         "shannon": {"iid4": math.log(4), "iid32": math.log(32), "cycle": math.log(7)}}


def make_docs(seed: int = 0, tokens: dict[str, int] | None = None) -> list[dict]:
    """Interleaved documents of the three domains; ids < 128 (the tiny toy's vocabulary)."""
    rng = np.random.default_rng(seed)
    tokens = tokens or {"iid4": 40_000, "iid32": 130_000, "cycle": 8_000}
    streams = {
        "iid4": rng.integers(10, 14, tokens["iid4"]),
        "iid32": rng.integers(20, 52, tokens["iid32"]),
        "cycle": 60 + np.arange(tokens["cycle"]) % 7,
    }
    docs: dict[str, list[np.ndarray]] = {}
    for name, stream in streams.items():
        cuts = np.cumsum(rng.integers(5, 200, len(stream)))
        cuts = cuts[cuts < len(stream)]
        docs[name] = np.split(stream, cuts)
    rows = []
    for i in range(max(len(v) for v in docs.values())):
        for name in ("iid32", "cycle", "iid4"):
            if i < len(docs[name]):
                rows.append({"domain": name, "token_ids": docs[name][i].tolist(), "n": i})
    return rows


def write_parquet(path, docs) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(docs), path)
    return str(path)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("corpus") / "labelled.parquet", make_docs())


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCHPOINT_HOME", str(tmp_path / "bp-home"))
    return tmp_path / "bp-home"


def expected_rows(docs, name: str, row_len: int) -> np.ndarray:
    stream = np.concatenate([np.asarray(d["token_ids"]) for d in docs if d["domain"] == name])
    n = len(stream) // row_len
    return stream[: n * row_len].reshape(n, row_len)


def test_packed_within_domain_labelled_and_entropies_within_one_percent(corpus_file, tmp_path):
    docs = make_docs()
    corpus = prepare_labelled(corpus_file, domain_column="domain", token_column="token_ids", seq_len=SEQ_LEN,
                              cache_root=tmp_path / "cache", progress=False)
    assert corpus.names == ["cycle", "iid32", "iid4"]  # sorted domain values -> label ids 0, 1, 2
    labels = np.asarray(corpus.labels())
    rows = corpus.token_rows(8).rows(0, corpus.num_rows)
    for d, name in enumerate(corpus.names):
        expect = expected_rows(docs, name, SEQ_LEN + 1)
        got = rows[labels == d]
        assert got.shape == expect.shape and (got == expect).all(), name  # packed within the domain, in order
        assert corpus.meta["rows"][name] == len(expect)
        total = sum(len(x["token_ids"]) for x in docs if x["domain"] == name)
        assert corpus.meta["tokens"][name] == total
        assert corpus.meta["dropped_tokens"][name] == total - len(expect) * (SEQ_LEN + 1)
    for kind, exact in EXACT.items():
        for name, value in exact.items():
            got = corpus.entropy(kind)[name]
            assert got == pytest.approx(value, rel=0.01, abs=1e-12), (kind, name, got)
    assert corpus.entropy("conditional")["cycle"] == 0.0  # the packed cycle is deterministic again
    assert corpus.meta["max_token"] == 66 and corpus.meta["dtype"] == "uint16"


def test_second_preparation_reads_the_cache(corpus_file, tmp_path, monkeypatch):
    first = prepare_labelled(corpus_file, domain_column="domain", token_column="token_ids", seq_len=SEQ_LEN,
                             cache_root=tmp_path / "cache", progress=False)
    stamp = (first.root / "rows.bin").stat().st_mtime_ns

    def must_not_build(*a, **k):
        raise AssertionError("the corpus was prepared again")

    monkeypatch.setattr(labelled, "_build", must_not_build)
    again = prepare_labelled(corpus_file, domain_column="domain", token_column="token_ids", seq_len=SEQ_LEN,
                             cache_root=tmp_path / "cache", progress=False)
    assert again.root == first.root and (again.root / "rows.bin").stat().st_mtime_ns == stamp
    other = tmp_path / "cache"
    with pytest.raises(AssertionError, match="prepared again"):  # another row length is another corpus
        prepare_labelled(corpus_file, domain_column="domain", token_column="token_ids", seq_len=16,
                         cache_root=other, progress=False)


def corpus_ctx(branch_step: int = 4, end_step: int = 8, batch_size: int = 8, num_rows: int | None = 512):
    base = context(branch_step=branch_step, end_step=end_step, batch_size=batch_size, seq_len=SEQ_LEN)
    return BranchContext(branch_step=branch_step, end_step=end_step, recipe=base.recipe, parent_grid=[0],
                         num_rows=num_rows)


def test_mixture_from_a_corpus_is_the_softmax_drawn_deterministically_with_repeats(corpus_file, home):
    spec = dict(source=corpus_file, domain_column="domain", token_column="token_ids")
    iv = BiMix(**spec)
    iv.setup(corpus_ctx(end_step=400))
    mix = iv.describe()["params"]["mixture"]
    h = np.array([mix[n]["entropy"] for n in ("cycle", "iid32", "iid4")])
    assert h == pytest.approx([0.0, math.log(32), math.log(4)], rel=0.01, abs=1e-12)
    counts = largest_remainder(softmax(h), 8)
    assert [mix[n]["rows_per_batch"] for n in ("cycle", "iid32", "iid4")] == counts.tolist() == [0, 7, 1]
    # the corpus's rows come after the parent's 512 rows; batch k draws 7 iid32 rows then 1 iid4 row
    labels = np.asarray(iv.corpus.labels())
    pools = {d: np.flatnonzero(labels == d) for d in (1, 2)}
    seed = iv.params["seed"]
    order = {d: pools[d][np.random.default_rng([seed, d, 0]).permutation(len(pools[d]))] for d in (1, 2)}
    b4 = iv.batch_row_indices(4, np.arange(32, 40))
    assert b4.tolist() == (np.concatenate([order[1][:7], order[2][:1]]) + 512).tolist()
    b5 = iv.batch_row_indices(5, np.arange(40, 48))
    assert b5.tolist() == (np.concatenate([order[1][7:14], order[2][1:2]]) + 512).tolist()
    again = BiMix(**spec)
    again.setup(corpus_ctx(end_step=400))
    assert all((again.batch_row_indices(k, b4) == iv.batch_row_indices(k, b4)).all() for k in range(4, 400))
    # iid32 has n32 rows, 7 per batch: batch 4 + n32 // 7 is the first to reach past them, and takes the
    # rest of its rows from a second pass, counted in metrics.jsonl (the row of step k + 1)
    n32 = len(pools[1])
    k = 4 + n32 // 7
    assert n32 % 7 and iv.metrics(k)["bimix_repeated_rows"] == 0 and iv.metrics(k)["bimix_epoch.iid32"] == 0
    assert iv.metrics(k + 1)["bimix_repeated_rows"] == 7 - n32 % 7 and iv.metrics(k + 1)["bimix_epoch.iid32"] == 1
    assert iv.metrics(k + 2)["bimix_repeated_rows"] == 7
    second = np.random.default_rng([seed, 1, 1]).permutation(n32)
    assert (iv.batch_row_indices(k, b4)[:7] - 512).tolist() == (
        order[1][(k - 4) * 7:].tolist() + pools[1][second[: 7 - n32 % 7]].tolist())
    rows = iv.token_rows(None).take(b4 - 512)  # without parent rows the corpus starts at index 0
    assert rows.shape == (8, SEQ_LEN + 1)


def test_repeat_error_names_the_last_supported_step(corpus_file, home):
    iv = BiMix(source=corpus_file, domain_column="domain", token_column="token_ids", repeat="error")
    with pytest.raises(UserError, match=r"domain\(s\) iid32, iid4 run out .* supports branches up to step 566 with repeat=error"):
        iv.setup(corpus_ctx(end_step=100_000))


def test_bad_corpus_specs_are_one_line_errors(corpus_file, home, tmp_path):
    with pytest.raises(UserError, match="needs domain_column"):
        BiMix(source=corpus_file, token_column="token_ids")
    with pytest.raises(UserError, match="exactly one of text_column"):
        BiMix(source=corpus_file, domain_column="domain")
    with pytest.raises(UserError, match="give source=PATH_OR_DATASET"):
        BiMix(domain_column="domain")
    with pytest.raises(UserError, match="domain_column=kind: .* has columns domain, token_ids, n"):
        BiMix(source=corpus_file, domain_column="kind", token_column="token_ids").setup(corpus_ctx())
    with pytest.raises(UserError, match="neither a local file or folder nor a Hub dataset name"):
        BiMix(source=str(tmp_path / "missing.parquet"), domain_column="d", token_column="t").setup(corpus_ctx())
    with pytest.raises(UserError, match="needs the parent's tokenizer and the parent has none"):
        BiMix(source=corpus_file, domain_column="domain", text_column="domain").setup(corpus_ctx())


def test_streaming_counts_match_the_one_shot_counts_and_miller_madow_corrects_a_sample():
    rng = np.random.default_rng(3)
    # Zipf(1.1) over 2000 ids, i.i.d.: exact H(X'|X) = H(X) of the Zipf law
    p = 1.0 / np.arange(1, 2001) ** 1.1
    p /= p.sum()
    exact = float(-(p * np.log(p)).sum())
    rows = rng.choice(2000, size=(4000, 65), p=p)
    whole = EntropyCounts().add(rows)
    chunked = EntropyCounts()
    chunked.FLUSH = 1000  # merge often: the sorted merge must give the same counts
    for i in range(0, 4000, 37):
        chunked.add(rows[i:i + 37])
    assert chunked.conditional() == pytest.approx(whole.conditional(), rel=1e-12)
    assert whole.shannon() == pytest.approx(exact, rel=0.005)
    sample = EntropyCounts().add(rows[:64])  # 4096 tokens of a 2000-id law: the plug-in is biased low
    plug, mm = sample.shannon(), sample.shannon(miller_madow=True)
    assert plug < 0.97 * exact and abs(mm - exact) < 0.7 * abs(plug - exact)
    big = EntropyCounts().add(rows[:2000])  # 130k tokens: Miller-Madow within 1 % of the full count
    assert big.shannon(miller_madow=True) == pytest.approx(whole.shannon(), rel=0.01)


def test_bimix_trains_the_toy_on_the_corpus_to_the_end_of_its_grid(toy, corpus_file, home, tmp_path):
    out = run_branch(toy, tmp_path / "b", f"bimix:source={corpus_file},domain_column=domain,token_column=token_ids",
                     from_step=48, steps=16)
    meta = json.loads((out / "trajectory.json").read_text())
    assert meta["complete"] and meta["end_step"] == 64
    resolved = meta["intervention"]["resolved"]
    assert resolved["rows_from"] == "corpus" and resolved["entropy_estimate"] == "exact counts over each whole domain"
    offset = resolved["corpus_row_offset"]
    assert offset == (64 + 16) * 8  # the toy's data order: 80 batches of 8 rows; the corpus rows follow
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(49, 65))
    assert all("bimix_repeated_rows" in r and math.isfinite(r["loss"]) for r in rows)
    # the engine trained on exactly the corpus rows the mixture draws (metrics carry a hash of the row ids)
    import hashlib

    iv = BiMix(source=corpus_file, domain_column="domain", token_column="token_ids")
    iv.setup(BranchContext(branch_step=48, end_step=64, recipe=context(batch_size=8, seq_len=SEQ_LEN).recipe,
                           parent_grid=[0], num_rows=offset))
    for r in rows:
        ids = np.sort(iv.batch_row_indices(r["step"] - 1, np.zeros(8, dtype=np.int64)).astype(np.int64))
        assert r["batch_rows"] == hashlib.sha1(ids.tobytes()).hexdigest()[:16]


def test_a_parent_without_a_data_order_branches_on_a_corpus(toy, corpus_file, home, tmp_path):
    """A released checkpoint's weights (and here its optimizer state) without any of its data rows."""
    import shutil

    parent = tmp_path / "weights-only"
    shutil.copytree(toy, parent, ignore=shutil.ignore_patterns("data"))
    meta = json.loads((parent / "trajectory.json").read_text())
    meta["data_order"] = None
    (parent / "trajectory.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="no local data order"):
        run_branch(parent, tmp_path / "control", "none", from_step=48, steps=2)
    out = run_branch(parent, tmp_path / "b", f"bimix:source={corpus_file},domain_column=domain,token_column=token_ids",
                     from_step=48, steps=2)
    done = json.loads((out / "trajectory.json").read_text())
    assert done["complete"] and done["optimizer_state"]["mode"] == "exact"
    assert done["intervention"]["resolved"]["corpus_row_offset"] == 0


def test_text_corpus_is_tokenized_with_a_tokenizer_and_end_of_text(tmp_path, home):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(40)]
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>")
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    rng = np.random.default_rng(1)
    docs = [{"text": " ".join(rng.choice(words[:8] if i % 2 else words, rng.integers(3, 40))),
             "src": "narrow" if i % 2 else "wide"} for i in range(300)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    iv = BiMix(source=str(path), domain_column="src", text_column="text", tokenizer=str(tok_dir))
    iv.setup(corpus_ctx(batch_size=4, num_rows=0))
    corpus = iv.corpus
    labels = np.asarray(corpus.labels())
    rows = corpus.token_rows(4).rows(0, corpus.num_rows)
    for d, name in enumerate(corpus.names):
        ids = [vocab[w] for x in docs if x["src"] == name for w in x["text"].split() + ["<|endoftext|>"]]
        n = len(ids) // (SEQ_LEN + 1)
        assert (rows[labels == d] == np.asarray(ids[: n * (SEQ_LEN + 1)]).reshape(n, SEQ_LEN + 1)).all(), name
        texts = [x["text"] for x in docs if x["src"] == name]  # the same ids as the tokenizer's own call
        assert ids == [i for t in tok(texts, add_special_tokens=False)["input_ids"] for i in t + [0]]
    assert corpus.meta["tokenizer"]["digest"] and corpus.meta["append_eos"] is True
    mix = iv.describe()["params"]["mixture"]
    assert mix["wide"]["entropy"] > mix["narrow"]["entropy"]  # 40 words vs 8 (+ end of text)


def test_amber_like_chunk_records_stay_rows_with_their_source_labels(tmp_path):
    """An LLM360 Amber chunk: jsonl records {"token_ids": [seq_len + 1 ids], "source": ...} (llm360.md §3.1);
    with token_column=token_ids,domain_column=source each record is one row, labelled by its source."""
    rng = np.random.default_rng(5)
    records = [{"token_ids": rng.integers(0, 128, SEQ_LEN + 1).tolist(), "source": s}
               for s in rng.choice(["arxiv", "c4", "github"], 60)]
    path = tmp_path / "train_000.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    corpus = prepare_labelled(str(path), domain_column="source", token_column="token_ids", seq_len=SEQ_LEN,
                              cache_root=tmp_path / "cache", progress=False)
    labels = np.asarray(corpus.labels())
    rows = corpus.token_rows(4).rows(0, corpus.num_rows)
    for d, name in enumerate(corpus.names):
        mine = [r["token_ids"] for r in records if r["source"] == name]
        assert rows[labels == d].tolist() == mine and corpus.meta["dropped_tokens"][name] == 0
